r"""Read-outs of attention weights: what a stack of attention layers looks at.

Attention weights of one layer say how each token mixes the *previous layer's* tokens; to
relate the last layer to the input, the layers have to be composed, and the residual
connections (which carry each token's own state past the attention) accounted for.
:func:`attention_rollout` does this as Abnar & Zuidema (2020), "Quantifying Attention Flow
in Transformers", Sec. 3.

The weights come from ``dot_product_attention(..., return_weights=True)`` or from a model's
sown weights, one ``[B, N, T, T]`` array per layer, stacked or in a list. Everything is
computed in float32 whatever the input dtype.

Shape letters::

  L = number of layers
  B = batch size
  N = number of heads
  T = sequence length (queries = keys: self-attention)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from attention_jax._checks import check_choice, check_real_in, describe, float_array

__all__ = ["HEAD_REDUCTIONS", "attention_rollout"]

HEAD_REDUCTIONS = ("mean", "max", "min")


def attention_rollout(
    weights: ArrayLike | Sequence[ArrayLike],
    *,
    head_reduce: str = "mean",
    residual_weight: float = 0.5,
) -> jax.Array:
    r"""Attention rollout (Abnar & Zuidema 2020): attention composed through the layers.

    For each layer :math:`l = 1 \dots L` the heads are reduced and the residual
    connection added as an identity, then the rows renormalized:

    .. math::

      A_l = \mathrm{normalize\_rows}\big(\alpha I + (1 - \alpha)\,
            \mathrm{reduce}_h W_l[:, h]\big),
      \qquad
      \mathrm{rollout} = A_L A_{L-1} \cdots A_1,

    with :math:`\alpha` = ``residual_weight`` and ``normalize_rows(M)[i, j] = M[i, j] /
    sum_j M[i, j]``. ``rollout[b, i, j]`` is how much token ``i`` after the last layer
    draws from input token ``j``; each row is a distribution over the ``T`` input tokens
    (it sums to 1), so ``rollout[b, 0]`` is the usual map of a ViT's class token.

    Rows of :math:`A_l` that sum to zero (a query that attends to nothing, whose weights
    are zero, with ``residual_weight = 0``) stay zero instead of becoming NaN.

    Args:
      weights: attention weights of the ``L`` layers, first layer first: a floating array
        ``[L, B, N, T, T]``, or a list or tuple of ``L`` arrays ``[B, N, T, T]`` of one
        shape. Rows are the queries' distributions over the keys.
      head_reduce: how the heads of a layer are combined, one of ``"mean"`` (the paper),
        ``"max"`` or ``"min"`` (keyword-only, static).
      residual_weight: weight :math:`\alpha \in [0, 1]` of the identity, i.e. of the
        residual stream; ``0.5`` is the paper's ``0.5 W + 0.5 I`` and ``0`` composes the
        raw reduced weights (keyword-only, static).

    Returns:
      float32 array ``[B, T, T]``.

    Raises:
      TypeError: ``weights`` is not floating.
      ValueError: ``weights`` of the wrong rank, not square in its last two axes, an empty
        list or list entries of different shapes; an unknown ``head_reduce``; a
        ``residual_weight`` outside ``[0, 1]``.
    """
    fn = "attention_rollout"
    head_reduce = check_choice(head_reduce, "head_reduce", HEAD_REDUCTIONS, fn=fn)
    residual_weight = check_real_in(residual_weight, "residual_weight", fn=fn, low=0, high=1)
    if isinstance(weights, list | tuple):
        if not weights:
            raise ValueError(
                f"{fn}: weights must be an array [L, B, N, T, T] or a non-empty sequence of "
                "L arrays [B, N, T, T], got an empty sequence."
            )
        layers = [float_array(w, f"weights[{i}]", fn=fn) for i, w in enumerate(weights)]
        first = layers[0]
        if first.ndim != 4:
            raise ValueError(
                f"{fn}: weights[0] must be of shape [B, N, T, T], got {describe(first)}."
            )
        for i, w in enumerate(layers[1:], start=1):
            if w.shape != first.shape:
                raise ValueError(
                    f"{fn}: weights[{i}] must be of shape {first.shape} like weights[0], "
                    f"got {describe(w)}."
                )
        dtype = jnp.result_type(*layers)
        weights = jnp.stack([w.astype(dtype) for w in layers])
    else:
        weights = float_array(weights, "weights", fn=fn)
        if weights.ndim != 5:
            raise ValueError(
                f"{fn}: weights must be of shape [L, B, N, T, T] (or a sequence of L arrays "
                f"[B, N, T, T]), got {describe(weights)}."
            )
    if weights.shape[-1] != weights.shape[-2]:
        raise ValueError(
            f"{fn}: weights must be square in their last two axes [T, T] (self-attention), "
            f"got {describe(weights)}."
        )
    return _rollout(weights, head_reduce=head_reduce, residual_weight=residual_weight)


@functools.partial(jax.jit, static_argnames=("head_reduce", "residual_weight"))
def _rollout(weights: jax.Array, *, head_reduce: str, residual_weight: float) -> jax.Array:
    reduce = {"mean": jnp.mean, "max": jnp.max, "min": jnp.min}[head_reduce]
    per_layer = reduce(weights.astype(jnp.float32), axis=2)  # [L, B, T, T]
    seq_len = weights.shape[-1]
    eye = jnp.eye(seq_len, dtype=jnp.float32)
    mixed = residual_weight * eye + (1.0 - residual_weight) * per_layer
    row_sums = jnp.sum(mixed, axis=-1, keepdims=True)
    safe = jnp.where(row_sums == 0, 1.0, row_sums)
    layers = mixed / safe  # rows of zeros stay zero

    rollout = layers[0]
    for layer in range(1, weights.shape[0]):
        # A_l @ (A_{l-1} ... A_1); HIGHEST keeps accelerators from rounding to bf16/tf32.
        rollout = jnp.matmul(layers[layer], rollout, precision=jax.lax.Precision.HIGHEST)
    return rollout
