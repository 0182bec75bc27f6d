"""AdamW with linear warmup, cosine decay, global-norm clipping and gradient accumulation.

The recipe is nanoGPT's (``train.py`` / ``model.configure_optimizers``):

* learning rate ``lr * (t + 1) / (warmup_steps + 1)`` for ``t < warmup_steps``, then a
  half cosine from ``lr`` down to ``end_lr`` at ``t = decay_steps``, then ``end_lr``;
* gradients clipped to global norm ``clip_norm`` before AdamW;
* decoupled weight decay only on parameters with ``ndim >= 2`` (matmul weights and
  embedding tables); biases and norm scales are not decayed. ``decay_embeddings=False``
  additionally exempts embedding tables (any parameter whose path names ``embed``), as
  in recipes that do not treat embeddings as weights.

Everything is a composition of stock optax transforms, so the state is a plain pytree
that checkpoints and shards like the parameters.
"""

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import optax

__all__ = ["make_schedule", "make_optimizer", "decay_mask"]


def make_schedule(
    lr: float, *, warmup_steps: int, decay_steps: int, end_lr: float
) -> Callable[[jax.Array], jax.Array]:
    """nanoGPT's learning-rate schedule as an optax schedule.

    Args:
      lr: peak learning rate, reached at ``t = warmup_steps``.
      warmup_steps: linear warmup length; step ``t < warmup_steps`` uses
        ``lr * (t + 1) / (warmup_steps + 1)`` (never exactly 0, unlike
        ``optax.linear_schedule`` from 0, so the first update is not wasted).
      decay_steps: step at which the cosine reaches ``end_lr`` (counted from 0, warmup
        included, as nanoGPT's ``lr_decay_iters``); constant ``end_lr`` afterwards (right
        after warmup if ``decay_steps <= warmup_steps``).
      end_lr: final learning rate.

    Returns:
      ``schedule(t) -> lr`` for an integer optimizer step ``t`` (scalar, jit-able).
    """
    if warmup_steps < 0 or decay_steps < 0:
        raise ValueError(
            f"need warmup_steps >= 0 and decay_steps >= 0, got {warmup_steps}, {decay_steps}."
        )

    def schedule(t):
        t = jnp.asarray(t, jnp.float32)
        warm = lr * (t + 1.0) / (warmup_steps + 1.0)
        span = max(decay_steps - warmup_steps, 1)
        ratio = jnp.clip((t - warmup_steps) / span, 0.0, 1.0)
        cos = end_lr + 0.5 * (1.0 + jnp.cos(math.pi * ratio)) * (lr - end_lr)
        return jnp.where(t < warmup_steps, warm, cos)

    return schedule


def _path_names(path) -> str:
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
    return "/".join(parts)


def decay_mask(params, *, exclude: Sequence[str] = ()):
    """Which parameters get weight decay: ``ndim >= 2``, minus names matching ``exclude``.

    Args:
      params: parameter pytree (an ``nnx.State`` or nested dicts of arrays).
      exclude: case-insensitive substrings of the parameter path (``"a/b/kernel"``)
        whose parameters are not decayed even when 2-D, e.g. ``("embed",)``.

    Returns:
      A pytree of bools with the structure of ``params``.
    """
    exclude = tuple(s.lower() for s in exclude)

    def leaf(path, p):
        name = _path_names(path).lower()
        return jnp.ndim(p) >= 2 and not any(s in name for s in exclude)

    return jax.tree_util.tree_map_with_path(leaf, params)


def make_optimizer(
    lr: float,
    *,
    warmup_steps: int,
    decay_steps: int,
    end_lr: float,
    b1: float = 0.9,
    b2: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 0.1,
    clip_norm: float | None = 1.0,
    decay_embeddings: bool = True,
    accumulate_steps: int = 1,
) -> optax.GradientTransformation:
    """``clip_by_global_norm -> adamw(schedule)``, optionally accumulated over micro-steps.

    Args:
      lr, warmup_steps, decay_steps, end_lr: the schedule, see :func:`make_schedule`.
        Counted in optimizer updates, i.e. micro-steps / ``accumulate_steps``.
      b1, b2, eps: Adam moments (defaults: nanoGPT's Shakespeare-char setting).
      weight_decay: decoupled decay coefficient (scaled by the learning rate, like
        PyTorch's ``AdamW``), applied per :func:`decay_mask`.
      clip_norm: global gradient-norm bound; None or 0 disables clipping.
      decay_embeddings: False exempts parameters whose path names ``embed``.
      accumulate_steps: k > 1 wraps the chain in ``optax.MultiSteps``: each call
        accumulates the mean gradient and only every k-th call updates the parameters,
        so k micro-batches of size B act as one batch of size kB.

    Returns:
      An ``optax.GradientTransformation`` (pass it to ``nnx.Optimizer(model, tx,
      wrt=nnx.Param)``).
    """
    if accumulate_steps < 1:
        raise ValueError(f"accumulate_steps must be >= 1, got {accumulate_steps}.")
    schedule = make_schedule(lr, warmup_steps=warmup_steps, decay_steps=decay_steps, end_lr=end_lr)
    exclude = () if decay_embeddings else ("embed",)
    tx = optax.chain(
        optax.clip_by_global_norm(clip_norm) if clip_norm else optax.identity(),
        optax.adamw(
            schedule,
            b1=b1,
            b2=b2,
            eps=eps,
            weight_decay=weight_decay,
            mask=lambda params: decay_mask(params, exclude=exclude),
        ),
    )
    if accumulate_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=accumulate_steps).gradient_transformation()
    return tx
