"""Masked next-token cross-entropy and the default language-model loss."""

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["cross_entropy", "unpack_batch", "lm_loss"]


def cross_entropy(logits: jax.Array, targets: jax.Array, loss_mask: jax.Array | None = None):
    """Mean token cross-entropy over the positions where ``loss_mask`` is True.

    Computed in float32 whatever the logits' dtype.

    Args:
      logits: ``[..., V]`` unnormalized scores.
      targets: ``[...]`` integer token ids in ``[0, V)``.
      loss_mask: optional ``[...]`` bool/0-1 weights; None counts every position.

    Returns:
      ``(loss, num_tokens)``: scalar mean negative log-likelihood over the counted
      positions (0 when none count) and the float32 count of those positions.
    """
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    # One-hot contraction rather than a gather: its gradient is a dense multiply instead
    # of a scatter, which XLA fuses into the softmax backward.
    onehot = jax.nn.one_hot(targets, logits.shape[-1], dtype=logits.dtype)
    nll = lse - jnp.sum(logits * onehot, axis=-1)
    if loss_mask is None:
        return jnp.mean(nll), jnp.float32(nll.size)
    w = loss_mask.astype(jnp.float32)
    n = jnp.sum(w)
    return jnp.sum(nll * w) / jnp.maximum(n, 1.0), n


def unpack_batch(batch):
    """``(inputs [B, T], targets [B, T], loss_mask [B, T] | None)`` from a batch.

    Accepts a :class:`attention_jax.data.Batch` (or any object with ``inputs`` and
    ``targets`` attributes, ``loss_mask`` optional), a mapping with those keys, or a
    tuple ``(inputs, targets)`` / ``(inputs, targets, loss_mask)`` such as
    :func:`attention_jax.data.random_windows` returns.
    """
    if hasattr(batch, "inputs") and hasattr(batch, "targets"):
        return batch.inputs, batch.targets, getattr(batch, "loss_mask", None)
    if isinstance(batch, Mapping):
        return batch["inputs"], batch["targets"], batch.get("loss_mask")
    if isinstance(batch, tuple | list) and len(batch) in (2, 3):
        return batch[0], batch[1], (batch[2] if len(batch) == 3 else None)
    raise TypeError(
        "batch must have inputs/targets[/loss_mask] (attributes or keys) or be a tuple "
        f"(inputs, targets[, loss_mask]); got {type(batch).__name__}."
    )


def lm_loss(model, batch, rng: jax.Array | None = None):
    """Next-token loss of a model mapping ``inputs [B, T] -> logits [B, T, V]``.

    The default ``loss_fn`` of :func:`attention_jax.train.train`. Without ``rng`` the
    model is called as ``model(inputs)`` (any such module works); with ``rng`` it is
    called in training mode as ``model(inputs, deterministic=False,
    rngs=nnx.Rngs(dropout=rng))`` (the :class:`attention_jax.nn.TransformerLM`
    convention) so dropout draws from a key that is a pure function of the step.

    Args:
      model: an NNX module.
      batch: anything :func:`unpack_batch` accepts.
      rng: optional PRNG key for dropout.

    Returns:
      ``(loss, aux)`` with ``aux = {"tokens": number of counted target tokens}``.
    """
    inputs, targets, mask = unpack_batch(batch)
    if rng is None:
        logits = model(inputs)
    else:
        logits = model(inputs, deterministic=False, rngs=nnx.Rngs(dropout=rng))
    loss, n = cross_entropy(logits, targets, mask)
    return loss, {"tokens": n}
