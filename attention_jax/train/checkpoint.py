"""Checkpoints of the training state with orbax-checkpoint.

A checkpoint ``<directory>/<step>/`` holds two items:

* ``state``: every array of ``(model, optimizer)`` (parameters, optimizer moments and
  counters, any other NNX variables) as a nested dict with string keys;
* ``meta``: JSON with the step and whatever the caller adds (seed, model config,
  tokenizer, command-line flags). With the data stream a pure function of
  ``(seed, step)`` that is all a resumed run needs to continue bit for bit.

Orbax writes each checkpoint into a temporary directory and renames it into place only
once complete, so a crash mid-save leaves a ``<step>.orbax-checkpoint-tmp-*`` directory
that is never listed or restored (and is removed on the next start), and never a
half-written ``<step>/``. Only the newest ``max_to_keep`` checkpoints are kept.
"""

import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

__all__ = ["Checkpointer", "load_params"]


def _to_tree(state: nnx.State):
    """nnx.State -> nested dicts with str keys (orbax wants homogeneous string keys)."""

    def conv(x):
        if isinstance(x, Mapping):
            return {str(k): conv(v) for k, v in x.items()}
        return x

    return conv(nnx.to_pure_dict(state))


def _from_tree(template: nnx.State, tree) -> nnx.State:
    """Inverse of :func:`_to_tree`, key types taken from ``template``."""

    def conv(tmpl, x):
        if isinstance(tmpl, Mapping):
            return {k: conv(v, x[str(k)]) for k, v in tmpl.items()}
        return x

    pure = conv(nnx.to_pure_dict(template), tree)
    state = jax.tree.map(lambda x: x, template)  # a copy to fill in
    nnx.replace_by_pure_dict(state, pure)
    return state


def _encode_keys(tree):
    # Typed PRNG keys (e.g. an nnx.Rngs inside a model) are stored as their raw uint32 data.
    return jax.tree.map(
        lambda x: (
            jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
        ),
        tree,
    )


def _abstract(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))


def _decode_keys(template, tree):
    return jax.tree.map(
        lambda t, x: (
            jax.random.wrap_key_data(x, impl=jax.random.key_impl(t))
            if jax.dtypes.issubdtype(t.dtype, jax.dtypes.prng_key)
            else x
        ),
        template,
        tree,
    )


class Checkpointer:
    """Saves and restores ``(state, metadata)`` by step in ``directory``.

    Args:
      directory: where the step folders go (created if absent).
      max_to_keep: keep only the newest this many checkpoints (None: all).

    Saving is synchronous: a checkpoint is complete on disk when :meth:`save` returns
    (the step donates the state buffers right after, and the checkpoints are small).
    """

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int | None = 3):
        self.directory = os.path.abspath(os.fspath(directory))
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                enable_async_checkpointing=False,
                cleanup_tmp_directories=True,
                create=True,
            ),
            item_names=("state", "meta"),
        )

    def all_steps(self) -> list[int]:
        """Steps of the complete checkpoints, ascending."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """Newest complete checkpoint, or None."""
        return self._manager.latest_step()

    def save(self, step: int, state: nnx.State, metadata: Mapping[str, Any] | None = None) -> bool:
        """Writes checkpoint ``step``; a step that already exists is left as is.

        Args:
          step: number of completed updates.
          state: ``nnx.State`` (e.g. ``nnx.state((model, optimizer))``).
          metadata: JSON-serializable dict stored beside it (``step`` is added).

        Returns:
          True if written.
        """
        if step in self._manager.all_steps():
            return False
        meta = {**dict(metadata or {}), "step": int(step)}
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(_encode_keys(_to_tree(state))),
                meta=ocp.args.JsonSave(meta),
            ),
        )
        self._manager.wait_until_finished()
        return True

    def restore(self, template: nnx.State, step: int | None = None) -> tuple[nnx.State, dict]:
        """Reads checkpoint ``step`` (default: the latest) shaped and placed like ``template``.

        Args:
          template: an ``nnx.State`` with the structure, dtypes and shardings to restore
            into (e.g. the freshly initialized state); it is not modified.
          step: which checkpoint; None for the latest.

        Returns:
          ``(state, metadata)``.

        Raises:
          FileNotFoundError: if there is no (such) complete checkpoint.
        """
        step = self.latest_step() if step is None else step
        if step is None or step not in self._manager.all_steps():
            raise FileNotFoundError(
                f"no checkpoint {step if step is not None else ''} in {self.directory}"
            )
        tree = _to_tree(template)
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(jax.tree.map(_abstract, tree)),
                meta=ocp.args.JsonRestore(),
            ),
        )
        arrays = _decode_keys(tree, restored["state"])
        return _from_tree(template, arrays), dict(restored["meta"])

    def close(self) -> None:
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def load_params(model: nnx.Module, directory: str | os.PathLike, step: int) -> None:
    """Copies the parameters of a :class:`Checkpointer` checkpoint of ``(model, optimizer)``
    (as :func:`attention_jax.train.train` writes them) into ``model``.

    Only the model's ``nnx.Param`` leaves are read, so neither the optimizer nor anything of
    ``model`` that has no parameters (e.g. ``max_len`` for relative positions) needs to match
    the trained run.

    Raises:
      ValueError: naming the parameter, if a saved shape differs from the model's.
    """
    with ocp.CheckpointManager(os.path.abspath(directory), item_names=("state", "meta")) as manager:
        restored = manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()),
        )
    saved = restored["state"]["0"]  # (model, optimizer)[0]

    def fill(template, tree, path=()):
        if isinstance(template, dict):
            return {k: fill(v, tree[str(k)], (*path, str(k))) for k, v in template.items()}
        value = np.asarray(tree)
        if value.shape != template.shape:
            raise ValueError(
                f"{'/'.join(path)}: checkpoint shape {value.shape} != model {template.shape}"
            )
        return jnp.asarray(value, template.dtype)

    params = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(params, fill(nnx.to_pure_dict(params), saved))
    nnx.update(model, params)
