"""The softmax family: normalizers that turn attention logits into weights.

``NORMALIZERS`` maps the names accepted by ``dot_product_attention(normalizer=...)`` to
these functions; :func:`get_normalizer` resolves a name or a callable.

Every function here takes an optional boolean ``where`` (True = the entry takes part) that
broadcasts against ``x``. Masked entries get weight exactly zero, and a row with no True entry
gives all zeros (never NaN, never uniform weights), with finite gradients. Inputs of lower
precision than float32 (bfloat16, float16) are computed in float32 and returned in their own
dtype.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from attention_jax._checks import (
    bool_array,
    broadcastable,
    check_choice,
    check_positive,
    compute_dtype,
    float_array,
)

__all__ = [
    "NORMALIZERS",
    "get_normalizer",
    "log_softmax",
    "sigmoid",
    "softcap",
    "softmax",
    "softmax_one",
    "sparsemax",
]

Axis = int | tuple[int, ...]


def _prepare(x, where, fn: str):
    x = float_array(x, "x", fn=fn)
    if where is not None:
        where = bool_array(where, "where", fn=fn)
        broadcastable(where, "where", x.shape, fn=fn, what="x")
    return x, where, x.astype(compute_dtype(x.dtype))


def _stable_shift(x: jax.Array, axis: Axis, where: jax.Array | None) -> jax.Array:
    """``x - max(x)`` over ``axis`` with masked entries set to -inf.

    The max is taken over allowed entries only and treated as a constant (it cancels out of
    softmax exactly), and a fully masked row uses 0 so nothing becomes ``-inf - -inf``.
    """
    masked = x if where is None else jnp.where(where, x, -jnp.inf)
    m = jnp.max(masked, axis=axis, keepdims=True)
    m = lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0.0))
    return masked - m


def softmax(
    x: jax.Array,
    axis: Axis = -1,
    *,
    where: jax.Array | None = None,
    temperature: float = 1.0,
) -> jax.Array:
    r"""Masked, numerically stable softmax.

    .. math::
      \mathrm{softmax}(x)_i = \frac{w_i \exp((x_i - m) / \tau)}{\sum_j w_j \exp((x_j - m) / \tau)}

    where :math:`w` is ``where`` (1 for allowed entries), :math:`m` the maximum allowed logit
    and :math:`\tau` the temperature. A row with no allowed entry gives zeros.

    Args:
      x: logits, any floating shape ``[...]``.
      axis: the axis or axes to normalize over.
      where: optional boolean array broadcastable to ``x``; False entries get weight 0.
      temperature: a positive Python float dividing the logits.

    Returns:
      Weights of the shape and dtype of ``x``, summing to 1 over ``axis`` (or 0 for a fully
      masked row).
    """
    x, where, xc = _prepare(x, where, "softmax")
    if not isinstance(temperature, jax.Array):
        temperature = check_positive(temperature, "temperature", fn="softmax")
    if isinstance(temperature, jax.Array) or temperature != 1.0:
        xc = xc / temperature
    e = jnp.exp(_stable_shift(xc, axis, where))
    total = jnp.sum(e, axis=axis, keepdims=True)
    # A fully masked row has total 0: divide by 1 instead so its weights stay 0.
    out = e / jnp.where(total > 0, total, 1.0)
    return out.astype(x.dtype)


def log_softmax(x: jax.Array, axis: Axis = -1, *, where: jax.Array | None = None) -> jax.Array:
    r"""Masked, numerically stable log-softmax.

    .. math::
      \mathrm{log\_softmax}(x)_i = x_i - \log \sum_j w_j \exp(x_j)

    Masked entries, and every entry of a fully masked row, are ``-inf``; gradients stay finite.

    Args:
      x: logits, any floating shape ``[...]``.
      axis: the axis or axes to normalize over.
      where: optional boolean array broadcastable to ``x``.

    Returns:
      Log-probabilities of the shape and dtype of ``x``.
    """
    x, where, xc = _prepare(x, where, "log_softmax")
    shifted = _stable_shift(xc, axis, where)
    total = jnp.sum(jnp.exp(shifted), axis=axis, keepdims=True)
    safe_total = jnp.where(total > 0, total, 1.0)
    out = shifted - jnp.log(safe_total)
    if where is not None:
        # `shifted` is already -inf where masked; the explicit select keeps fully masked rows
        # at -inf and routes no gradient through them.
        out = jnp.where(where & (total > 0), out, -jnp.inf)
    return out.astype(x.dtype)


def softmax_one(x: jax.Array, axis: Axis = -1, *, where: jax.Array | None = None) -> jax.Array:
    r"""Off-by-one softmax ("softmax_1"): a head may attend to nothing.

    .. math::
      \mathrm{softmax\_one}(x)_i = \frac{w_i \exp(x_i)}{1 + \sum_j w_j \exp(x_j)}

    Computed stably as :math:`\exp(x_i - m) / (\exp(-m) + \sum_j \exp(x_j - m))` with
    :math:`m = \max(0, \max_j x_j)`, so large logits do not overflow. Weights sum to less than 1.

    Args:
      x: logits, any floating shape ``[...]``.
      axis: the axis or axes to normalize over.
      where: optional boolean array broadcastable to ``x``.

    Returns:
      Weights of the shape and dtype of ``x``.
    """
    x, where, xc = _prepare(x, where, "softmax_one")
    masked = xc if where is None else jnp.where(where, xc, -jnp.inf)
    # The implicit extra logit is 0, so the max includes 0 and is always finite.
    m = lax.stop_gradient(jnp.maximum(jnp.max(masked, axis=axis, keepdims=True), 0.0))
    e = jnp.exp(masked - m)
    out = e / (jnp.exp(-m) + jnp.sum(e, axis=axis, keepdims=True))
    return out.astype(x.dtype)


@jax.custom_jvp
def _sparsemax_last(z: jax.Array, valid: jax.Array) -> jax.Array:
    """Sparsemax over the last axis; ``z`` is finite, ``valid`` marks allowed entries."""
    n = z.shape[-1]
    big = jnp.finfo(z.dtype).max
    # Masked entries sort to the end and never enter the support.
    zm = jnp.where(valid, z, -big)
    z_sorted = -jnp.sort(-zm, axis=-1)
    k = jnp.arange(1, n + 1, dtype=z.dtype)
    valid_sorted = jnp.arange(n) < jnp.sum(valid, axis=-1, keepdims=True)
    cumsum = jnp.cumsum(jnp.where(valid_sorted, z_sorted, 0.0), axis=-1)
    in_support = valid_sorted & (1.0 + k * z_sorted > cumsum)
    support_size = jnp.sum(in_support, axis=-1, keepdims=True)
    safe_size = jnp.maximum(support_size, 1)
    cumsum_at_k = jnp.take_along_axis(cumsum, safe_size - 1, axis=-1)
    tau = (cumsum_at_k - 1.0) / safe_size.astype(z.dtype)
    p = jnp.where(valid & (support_size > 0), jnp.maximum(z - tau, 0.0), 0.0)
    # Back onto the simplex: under jit XLA may recompute z in each fusion that reads it,
    # rounded differently, so the z here and the z of tau can differ by an ulp of the logits
    # (seen with --xla_backend_optimization_level=0: a one-hot row of logits near 1e6 summed
    # to 1.045 before this division).
    total = jnp.sum(p, axis=-1, keepdims=True)
    return p / jnp.where(total > 0, total, 1.0)


@_sparsemax_last.defjvp
def _sparsemax_last_jvp(primals, tangents):
    (z, valid), (dz, _) = primals, tangents
    p = _sparsemax_last(z, valid)
    # Jacobian: diag(s) - s s^T / |S| with s the support indicator (Martins & Astudillo, eq. 14).
    s = (p > 0).astype(p.dtype)
    size = jnp.maximum(jnp.sum(s, axis=-1, keepdims=True), 1.0)
    dz_mean = jnp.sum(s * dz, axis=-1, keepdims=True) / size
    return p, s * (dz - dz_mean)


def sparsemax(x: jax.Array, axis: int = -1, *, where: jax.Array | None = None) -> jax.Array:
    r"""Sparsemax (Martins & Astudillo, 2016): the Euclidean projection onto the simplex.

    .. math::
      \mathrm{sparsemax}(x) = \arg\min_{p \in \Delta} \|p - x\|^2 = \max(x - \tau(x), 0)

    with :math:`\tau` chosen so the result sums to 1. Unlike softmax it gives exact zeros. The
    gradient is the exact one, :math:`J = \mathrm{diag}(s) - s s^\top / |S|` over the support
    :math:`S`.

    Args:
      x: logits, any floating shape ``[...]``.
      axis: the single axis to normalize over.
      where: optional boolean array broadcastable to ``x``; masked entries are outside the
        simplex (weight 0). A fully masked row gives zeros.

    Returns:
      Weights of the shape and dtype of ``x``.
    """
    x, where, xc = _prepare(x, where, "sparsemax")
    if not isinstance(axis, int):
        raise TypeError(
            f"sparsemax: axis must be one int (sparsemax normalizes over one axis), got {axis!r}."
        )
    valid = jnp.ones(x.shape, bool) if where is None else jnp.broadcast_to(where, x.shape)
    zc, valid = jnp.moveaxis(xc, axis, -1), jnp.moveaxis(valid, axis, -1)
    # Sparsemax is shift invariant: subtracting the max allowed logit keeps the cumulative sums
    # (and so the threshold) accurate for large logits.
    zc = _stable_shift(zc, -1, valid)
    out = _sparsemax_last(jnp.where(valid, zc, 0.0), valid)
    return jnp.moveaxis(out, -1, axis).astype(x.dtype)


def softcap(x: jax.Array, cap: float) -> jax.Array:
    r"""Logit soft-capping: :math:`\mathrm{cap} \cdot \tanh(x / \mathrm{cap})`.

    Smoothly bounds logits to ``(-cap, cap)`` (Gemma 2, Grok). Computed in float32 for
    half-precision inputs.

    Args:
      x: logits, any floating shape ``[...]``.
      cap: a positive float.

    Returns:
      The capped logits, shape and dtype of ``x``.
    """
    x = float_array(x, "x", fn="softcap")
    if not isinstance(cap, jax.Array):
        cap = check_positive(cap, "cap", fn="softcap")
    xc = x.astype(compute_dtype(x.dtype))
    return (cap * jnp.tanh(xc / cap)).astype(x.dtype)


def sigmoid(x: jax.Array, *, where: jax.Array | None = None) -> jax.Array:
    r"""Elementwise sigmoid weights, :math:`w_i = \sigma(x_i)` (sigmoid attention, Ramapuram et
    al. 2024): no normalization across keys; masked entries get weight 0.

    Args:
      x: logits, any floating shape ``[...]``.
      where: optional boolean array broadcastable to ``x``.

    Returns:
      Weights of the shape and dtype of ``x``.
    """
    x, where, xc = _prepare(x, where, "sigmoid")
    w = jax.nn.sigmoid(xc)
    return (w if where is None else jnp.where(where, w, 0.0)).astype(x.dtype)


NORMALIZERS: dict[str, Callable] = {
    "softmax": softmax,
    "softmax_one": softmax_one,
    "sparsemax": sparsemax,
    "sigmoid": sigmoid,
}


def get_normalizer(normalizer: str | Callable, *, fn: str = "get_normalizer") -> Callable:
    """The normalizer function for a name in :data:`NORMALIZERS`, or ``normalizer`` itself if
    it is a callable ``(logits, where) -> weights``.

    Raises:
      ValueError: an unknown name (the message names ``fn``, the caller).
    """
    check_choice(normalizer, "normalizer", sorted(NORMALIZERS), fn=fn, callable_ok=True)
    return normalizer if callable(normalizer) else NORMALIZERS[normalizer]
