"""Validation and canonical form of attention arguments, shared by every attention path.

All checks run on static shapes and dtypes, so they raise at trace time (under ``jit`` too)
with the argument's name and the shapes involved.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax.masks import _window


class AttentionInputs(NamedTuple):
    """Attention arguments in canonical batched form.

    Attributes:
      query: ``[B, T, N, H]``.
      key: ``[B, S, K, H]``.
      value: ``[B, S, K, H]``.
      bias: ``[B|1, N|1, T|1, S|1]`` float, or None.
      mask: ``[B|1, N|1, T|1, S|1]`` bool, or None.
      scale: the logit scale (a Python float).
      query_seq_lengths: ``[B]`` int, or None.
      key_value_seq_lengths: ``[B]`` int, or None.
      local_window_size: ``(left, right)`` or None.
      q_segment_ids: ``[B, T]`` int, or None.
      kv_segment_ids: ``[B, S]`` int, or None.
      q_positions: ``[T]`` or ``[B, T]`` int, or None (positions = indices).
      kv_positions: ``[S]`` or ``[B, S]`` int, or None.
      unbatched: True when the caller passed ``[T, N, H]`` arrays.
    """

    query: jax.Array
    key: jax.Array
    value: jax.Array
    bias: jax.Array | None
    mask: jax.Array | None
    scale: Any
    query_seq_lengths: jax.Array | None
    key_value_seq_lengths: jax.Array | None
    local_window_size: tuple[int, int] | None
    q_segment_ids: jax.Array | None
    kv_segment_ids: jax.Array | None
    q_positions: jax.Array | None
    kv_positions: jax.Array | None
    unbatched: bool

    @property
    def dims(self) -> tuple[int, int, int, int, int, int]:
        """``(B, T, S, N, K, H)``."""
        b, t, n, h = self.query.shape
        return b, t, self.key.shape[1], n, self.key.shape[2], h


def _float_array(x, name: str) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"{name} must be a floating-point array, got dtype {x.dtype} (shape {x.shape})."
        )
    return x


def _int_array(x, name: str, shape: tuple[int, ...] | None = None) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(f"{name} must be an integer array, got dtype {x.dtype} (shape {x.shape}).")
    if shape is not None and x.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {x.shape}.")
    return x


def _broadcastable(x: jax.Array, name: str, target: tuple[int, ...], unbatched: bool) -> jax.Array:
    """Left-pads ``x`` to rank 4 and checks it broadcasts to ``target`` = ``[B, N, T, S]``."""
    if x.ndim > 4:
        raise ValueError(
            f"{name} must have rank <= 4 to broadcast to [B, N, T, S]={target}, got {x.shape}."
        )
    x4 = x.reshape((1,) * (4 - x.ndim) + x.shape)
    if any(d not in (1, t) for d, t in zip(x4.shape, target, strict=True)):
        shown = target[1:] if unbatched else target
        what = "[N, T, S]" if unbatched else "[B, N, T, S]"
        raise ValueError(f"{name} of shape {x.shape} does not broadcast to {what}={shown}.")
    return x4


def _positions(x, name: str, batch: int, length: int) -> jax.Array | None:
    if x is None:
        return None
    x = _int_array(x, name)
    if x.shape not in ((length,), (batch, length)):
        raise ValueError(
            f"{name} must have shape [{length}] or [{batch}, {length}], got {x.shape}."
        )
    return x


def canonicalize_attention_inputs(
    query,
    key,
    value,
    bias=None,
    mask=None,
    *,
    scale=None,
    query_seq_lengths=None,
    key_value_seq_lengths=None,
    local_window_size=None,
    segment_ids=None,
    query_positions=None,
    key_value_positions=None,
) -> AttentionInputs:
    """Validates attention arguments and returns them batched, with masks split out.

    Args follow :func:`attention_jax.dot_product_attention`. ``segment_ids`` is ``[B, T]``
    (self-attention, ``T == S``) or a pair ``([B, T], [B, S])``.

    Raises:
      TypeError: integer query/key/value/bias, a non-boolean mask, non-integer lengths,
        segment ids or positions, mixed query/key/value dtypes.
      ValueError: ranks other than 3 or 4 or that differ, mismatched batch, head dim or key/value
        length, ``N % K != 0``, a bias or mask that does not broadcast to ``[B, N, T, S]``,
        lengths not ``[B]``, bad window sizes.
    """
    query = _float_array(query, "query")
    key = _float_array(key, "key")
    value = _float_array(value, "value")
    ranks = (query.ndim, key.ndim, value.ndim)
    if len(set(ranks)) != 1:
        raise ValueError(
            "query, key and value must have the same rank, got "
            f"query {query.shape}, key {key.shape}, value {value.shape}."
        )
    if query.ndim not in (3, 4):
        raise ValueError(
            f"query, key and value must be [B, T, N, H] or unbatched [T, N, H], got query {query.shape}."
        )
    unbatched = query.ndim == 3
    if unbatched:
        query, key, value = query[None], key[None], value[None]
    if not (query.dtype == key.dtype == value.dtype):
        raise TypeError(
            f"query, key and value must share a dtype, got {query.dtype}, {key.dtype}, {value.dtype}."
        )
    b, t, n, h = query.shape
    bk, s, k, hk = key.shape
    if hk != h:
        raise ValueError(f"head dim of key {key.shape} must equal head dim of query {query.shape}.")
    if value.shape[1] != s:
        raise ValueError(
            f"key and value must have the same sequence length, got key {key.shape}, value {value.shape}."
        )
    if value.shape != key.shape:
        raise ValueError(
            f"value must have the shape of key, got key {key.shape}, value {value.shape}."
        )
    if bk != b:
        raise ValueError(f"query {query.shape} and key {key.shape} have different batch sizes.")
    if k == 0 or n % k != 0:
        raise ValueError(
            f"number of query heads N={n} must be a multiple of key/value heads K={k} "
            f"(query {query.shape}, key {key.shape})."
        )
    target = (b, n, t, s)
    if bias is not None:
        bias = _broadcastable(_float_array(bias, "bias"), "bias", target, unbatched)
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.dtype != jnp.bool_:
            raise TypeError(
                f"mask must be boolean (True = attend; pass additive masks as bias), got dtype {mask.dtype}."
            )
        mask = _broadcastable(mask, "mask", target, unbatched)
    if unbatched:
        if query_seq_lengths is not None:
            query_seq_lengths = jnp.reshape(query_seq_lengths, (1,))
        if key_value_seq_lengths is not None:
            key_value_seq_lengths = jnp.reshape(key_value_seq_lengths, (1,))
    if query_seq_lengths is not None:
        query_seq_lengths = _int_array(query_seq_lengths, "query_seq_lengths", (b,))
    if key_value_seq_lengths is not None:
        key_value_seq_lengths = _int_array(key_value_seq_lengths, "key_value_seq_lengths", (b,))
    if local_window_size is not None:
        local_window_size = _window(local_window_size)
    q_seg = kv_seg = None
    if segment_ids is not None:
        if isinstance(segment_ids, tuple | list):
            q_seg, kv_seg = segment_ids
        else:
            q_seg = kv_seg = segment_ids
        q_seg, kv_seg = jnp.asarray(q_seg), jnp.asarray(kv_seg)
        if unbatched:
            q_seg, kv_seg = q_seg[None], kv_seg[None]
        q_seg = _int_array(q_seg, "segment_ids (query)", (b, t))
        kv_seg = _int_array(kv_seg, "segment_ids (key/value)", (b, s))
    q_pos = _positions(query_positions, "query_positions", b, t)
    kv_pos = _positions(key_value_positions, "key_value_positions", b, s)
    if scale is None:
        scale = 1.0 / math.sqrt(h)
    elif isinstance(scale, int | float | np.floating) and not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}.")
    return AttentionInputs(
        query,
        key,
        value,
        bias,
        mask,
        scale,
        query_seq_lengths,
        key_value_seq_lengths,
        local_window_size,
        q_seg,
        kv_seg,
        q_pos,
        kv_pos,
        unbatched,
    )
