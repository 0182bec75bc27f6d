"""Compiled training and evaluation steps for any NNX model and ``nnx.Optimizer``.

The step is a pure function of the split state of ``(model, optimizer)``::

    (state leaves, step, data, rng) -> (new state leaves, metrics)

compiled once with ``jax.jit``, the state buffers donated (updated in place), the batch
computed *inside* the step as ``batch_fn(step, data)``. Keeping the state as a flat list
of arrays between steps, instead of going through ``nnx.jit`` and the module graph each
call, leaves no per-step Python work but one dispatch; computing the batch in the step
means no host-to-device copy and a data stream that is a pure function of the step (so a
resumed run sees exactly the batches of an uninterrupted one).

Between steps the live state is :attr:`TrainStep.leaves`; the ``model`` and
``optimizer`` objects are stale (their old buffers were donated) until
:meth:`TrainStep.sync` writes the state back into them.
"""

import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from attention_jax.train.loss import lm_loss
from attention_jax.train.sharding import (
    constrain_batch,
    data_mesh,
    place,
    replicated,
    state_shardings,
)

__all__ = ["TrainStep", "make_eval_fn", "step_key"]

LossFn = Callable[[nnx.Module, Any, jax.Array | None], tuple[jax.Array, dict]]
BatchFn = Callable[[jax.Array, Any], Any]


def step_key(key: jax.Array, step) -> jax.Array:
    """The PRNG key of training step ``step``: ``fold_in(key, step)``, a pure function of both."""
    return jax.random.fold_in(key, step)


def _given_batch(step, data):
    del step
    return data


def _make_step_fn(graphdef, treedef, batch_fn, loss_fn, mesh):
    def step_fn(leaves, step, data, rng):
        # The mesh is visible to the model while tracing, so that layers configured for
        # context parallelism find the "sequence" axis (jax.sharding.get_abstract_mesh).
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return traced_step(leaves, step, data, rng)

    def traced_step(leaves, step, data, rng):
        model, optimizer = nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))
        batch = constrain_batch(batch_fn(step, data), mesh)
        key = None if rng is None else step_key(rng, step)

        def loss_of(m):
            return loss_fn(m, batch, key)

        (loss, aux), grads = nnx.value_and_grad(loss_of, has_aux=True)(model)
        optimizer.update(model, grads)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}
        return jax.tree.leaves(nnx.state((model, optimizer))), metrics

    return step_fn


# Compiled steps shared by every TrainStep with the same structure (model and optimizer
# graph, batch and loss functions, placement): a second model of the same architecture,
# e.g. a resumed run or another seed, reuses the compilation.
_JIT_CACHE: dict = {}
_JIT_CACHE_SIZE = 32


def _jitted_step(graphdef, treedef, batch_fn, loss_fn, mesh, shardings, donate):
    key = (graphdef, treedef, batch_fn, loss_fn, mesh, tuple(shardings), donate)
    fn = _JIT_CACHE.pop(key, None)
    if fn is None:
        fn = jax.jit(
            _make_step_fn(graphdef, treedef, batch_fn, loss_fn, mesh),
            donate_argnums=(0,) if donate else (),
            out_shardings=(list(shardings), replicated(mesh)),
        )
    _JIT_CACHE[key] = fn  # most recently used last
    while len(_JIT_CACHE) > _JIT_CACHE_SIZE:
        _JIT_CACHE.pop(next(iter(_JIT_CACHE)))
    return fn


class TrainStep:
    """One optimizer step on ``(model, optimizer)``, compiled and with donated state.

    Args:
      model: an NNX module (``inputs [B, T] -> logits [B, T, V]`` for the default loss).
      optimizer: an ``nnx.Optimizer`` over ``model`` (``wrt=nnx.Param``).
      batch_fn: jit-able ``batch_fn(step, data) -> batch`` with ``step`` an int32 scalar
        tracer; the batch is anything ``loss_fn`` takes (for :func:`lm_loss`: ``(x, y)``,
        an :class:`attention_jax.data.Batch`, ...). None: ``data`` is the batch itself.
      loss_fn: ``loss_fn(model, batch, rng) -> (scalar loss, aux dict of scalars)``;
        ``rng`` is None unless a key is passed to :meth:`__call__`.
      mesh: device mesh with axis ``"data"`` (default: all devices). The batch is split
        over it along its first dimension; on a mesh from :func:`make_mesh` with
        ``sequence > 1`` the tokens are split over ``"sequence"`` too, and layers whose config
        sets ``context_parallel`` shard their attention over it (positions stay global).
      shard_params: split parameters and optimizer state over the mesh (FSDP-style)
        instead of replicating them.
      donate: update the state buffers in place.

    Calling ``step_fn(step, data, rng=None)`` performs one update and returns the metrics
    as device scalars (no host sync): ``loss``, ``grad_norm`` (before clipping) and the
    loss function's aux values.

    Compiled steps are shared between instances whose model/optimizer graphs (NNX
    ``GraphDef``: module types, static attributes, the optax transformation object),
    ``batch_fn``, ``loss_fn`` and placement are equal, as ``jax.jit`` shares them between
    calls; behaviour that depends on anything else (a global flag read at trace time) is
    not seen.
    """

    def __init__(
        self,
        model: nnx.Module,
        optimizer: nnx.Optimizer,
        *,
        batch_fn: BatchFn | None = None,
        loss_fn: LossFn = lm_loss,
        mesh: Mesh | None = None,
        shard_params: bool = False,
        donate: bool = True,
    ):
        self.model = model
        self.optimizer = optimizer
        self.batch_fn = _given_batch if batch_fn is None else batch_fn
        self.loss_fn = loss_fn
        self.mesh = data_mesh() if mesh is None else mesh
        graphdef, state = nnx.split((model, optimizer))
        leaves, self.treedef = jax.tree.flatten(state)
        self.shardings = state_shardings(leaves, self.mesh, shard_params=shard_params)
        self.leaves = place(leaves, self.shardings)
        self._jit = _jitted_step(
            graphdef, self.treedef, self.batch_fn, loss_fn, self.mesh, self.shardings, donate
        )
        self._compiled = {}

    def _args(self, step, data, rng):
        return self.leaves, jnp.asarray(step, jnp.int32), data, rng

    def compile(self, step: int = 0, data=None, rng: jax.Array | None = None) -> float:
        """Compiles ahead of time for these argument types; returns the seconds it took
        (about 0 when an identical step was compiled before in this process)."""
        t0 = time.perf_counter()
        key = rng is None
        if key not in self._compiled:
            self._compiled[key] = self._jit.lower(*self._args(step, data, rng)).compile()
        return time.perf_counter() - t0

    def __call__(self, step, data=None, rng: jax.Array | None = None) -> dict[str, jax.Array]:
        """One update on ``batch_fn(step, data)``; returns device-scalar metrics."""
        fn = self._compiled.get(rng is None, self._jit)
        self.leaves, metrics = fn(*self._args(step, data, rng))
        return metrics

    @property
    def state(self) -> nnx.State:
        """The live state of ``(model, optimizer)`` as an ``nnx.State`` (no copy)."""
        return jax.tree.unflatten(self.treedef, self.leaves)

    def set_state(self, state: nnx.State) -> None:
        """Replaces the live state (e.g. by a restored checkpoint), placed per the mesh."""
        leaves, treedef = jax.tree.flatten(state)
        if treedef != self.treedef:
            raise ValueError("set_state: state structure differs from (model, optimizer).")
        self.leaves = place(leaves, self.shardings)

    def sync(self) -> None:
        """Writes the live state into ``model`` and ``optimizer`` (they share its buffers
        until the next step donates them)."""
        nnx.update((self.model, self.optimizer), self.state)


def make_eval_fn(
    batch_fn: BatchFn | None = None,
    *,
    num_batches: int = 1,
    loss_fn: LossFn = lm_loss,
) -> Callable[[nnx.Module, Any], jax.Array]:
    """A compiled ``eval(model, data) -> mean loss`` over ``num_batches`` batches.

    Batch ``i`` is ``batch_fn(i, data)`` (``i`` an int32 tracer, so the batches are the
    same at every evaluation, which makes successive evaluations comparable); with
    ``batch_fn=None``, ``data`` is the single batch. The loop over batches runs inside one
    compiled function (``lax.fori_loop``), so an evaluation is one dispatch. The model is
    called in inference mode (``rng=None``).

    Returns:
      ``eval_fn(model, data) -> scalar float32`` (device array), the mean of the batches'
      mean losses.
    """
    batch_fn = _given_batch if batch_fn is None else batch_fn

    @nnx.jit
    def eval_fn(model, data):
        def body(i, total):
            loss, _ = loss_fn(model, batch_fn(i, data), None)
            return total + loss

        total = jax.lax.fori_loop(0, num_batches, body, jnp.float32(0.0))
        return total / num_batches

    return eval_fn
