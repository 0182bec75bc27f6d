"""Boolean attention masks: True = the query may attend to the key.

Every mask is shaped to broadcast against attention logits ``[B, N, T, S]`` (batch, heads,
query length, key length). :func:`attention_mask` builds the combination of the structural
masks at given query and key indices; both the materialized and the flash path call it
(the flash path once per block), so the two can never disagree on what is masked.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "causal_mask",
    "padding_mask",
    "sliding_window_mask",
    "segment_mask",
    "combine_masks",
    "attention_mask",
]


def _check_len(value, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative Python int, got {value!r}.")


def _is_int(x) -> bool:
    return isinstance(x, int | np.integer) and not isinstance(x, bool)


def _window(local_window_size) -> tuple[int, int]:
    if _is_int(local_window_size):
        left = right = local_window_size
    else:
        try:
            left, right = local_window_size
        except (TypeError, ValueError):
            raise ValueError(
                f"local_window_size must be an int or a (left, right) pair, got {local_window_size!r}."
            ) from None
    for w in (left, right):
        if not _is_int(w) or w < 0:
            raise ValueError(
                f"local_window_size must hold non-negative ints, got {local_window_size!r}."
            )
    return int(left), int(right)


def causal_mask(q_len: int, kv_len: int | None = None, *, offset=0) -> jax.Array:
    r"""Causal mask: query :math:`i` sees keys :math:`j \le i + \mathrm{offset}`.

    Args:
      q_len: number of queries ``T``.
      kv_len: number of keys ``S`` (defaults to ``T``).
      offset: position of the first query among the keys (an int, possibly traced). With
        ``offset = S - T`` the queries sit at the end of the key sequence, as in cached
        decoding. The default 0 aligns the first query with the first key, as
        ``jax.nn.dot_product_attention(is_causal=True)`` does.

    Returns:
      ``[1, 1, T, S]`` boolean mask.
    """
    kv_len = q_len if kv_len is None else kv_len
    _check_len(q_len, "q_len")
    _check_len(kv_len, "kv_len")
    q = jnp.arange(q_len)[:, None] + offset
    k = jnp.arange(kv_len)[None, :]
    return (k <= q)[None, None]


def padding_mask(q_lengths, kv_lengths, q_len: int, kv_len: int) -> jax.Array:
    """Padding mask from per-example lengths: valid queries attend to valid keys.

    Args:
      q_lengths: ``[B]`` integer number of valid queries per example, or None (all valid).
      kv_lengths: ``[B]`` integer number of valid keys per example, or None (all valid).
      q_len: padded query length ``T``.
      kv_len: padded key length ``S``.

    Returns:
      ``[B, 1, T, S]`` boolean mask (``[1, 1, T, S]`` when both lengths are None).
    """
    _check_len(q_len, "q_len")
    _check_len(kv_len, "kv_len")
    out = attention_mask(
        jnp.arange(q_len),
        jnp.arange(kv_len),
        query_seq_lengths=q_lengths,
        key_value_seq_lengths=kv_lengths,
    )
    if out is None:
        return jnp.ones((1, 1, q_len, kv_len), bool)
    return jnp.broadcast_to(out, (out.shape[0], 1, q_len, kv_len))


def sliding_window_mask(q_len: int, kv_len: int, window) -> jax.Array:
    r"""Local (sliding-window) mask: query :math:`i` sees keys :math:`i - l \le j \le i + r`.

    Args:
      q_len: number of queries ``T``.
      kv_len: number of keys ``S``.
      window: ``(left, right)`` window sizes, or one int for a symmetric window, as
        ``local_window_size`` in ``jax.nn.dot_product_attention``.

    Returns:
      ``[1, 1, T, S]`` boolean mask.
    """
    _check_len(q_len, "q_len")
    _check_len(kv_len, "kv_len")
    return attention_mask(jnp.arange(q_len), jnp.arange(kv_len), local_window_size=window)


def segment_mask(q_segment_ids: jax.Array, kv_segment_ids: jax.Array | None = None) -> jax.Array:
    """Mask for packed sequences: a query sees only keys of its own segment.

    Args:
      q_segment_ids: ``[B, T]`` integer segment id of each query.
      kv_segment_ids: ``[B, S]`` integer segment id of each key (defaults to the query ids).

    Returns:
      ``[B, 1, T, S]`` boolean mask.
    """
    q_segment_ids = jnp.asarray(q_segment_ids)
    kv_segment_ids = q_segment_ids if kv_segment_ids is None else jnp.asarray(kv_segment_ids)
    for name, ids in (("q_segment_ids", q_segment_ids), ("kv_segment_ids", kv_segment_ids)):
        if ids.ndim != 2 or not jnp.issubdtype(ids.dtype, jnp.integer):
            raise ValueError(
                f"{name} must be an integer array [B, T], got {ids.dtype} {ids.shape}."
            )
    if q_segment_ids.shape[0] != kv_segment_ids.shape[0]:
        raise ValueError(
            f"q_segment_ids {q_segment_ids.shape} and kv_segment_ids {kv_segment_ids.shape} "
            "have different batch sizes."
        )
    return q_segment_ids[:, None, :, None] == kv_segment_ids[:, None, None, :]


def combine_masks(*masks: jax.Array | None) -> jax.Array | None:
    """Logical AND of boolean masks, broadcasting them; ``None`` entries are ignored.

    Returns:
      The combined mask, or None when every entry is None.
    """
    out = None
    for m in masks:
        if m is None:
            continue
        m = jnp.asarray(m)
        if m.dtype != jnp.bool_:
            raise TypeError(f"combine_masks takes boolean masks, got dtype {m.dtype} {m.shape}.")
        out = m if out is None else jnp.logical_and(out, m)
    return out


def _rows(x: jax.Array) -> jax.Array:
    """``[t]`` or ``[B, t]`` -> ``[1|B, 1, t, 1]``."""
    x = x[None] if x.ndim == 1 else x
    return x[:, None, :, None]


def _cols(x: jax.Array) -> jax.Array:
    """``[s]`` or ``[B, s]`` -> ``[1|B, 1, 1, s]``."""
    x = x[None] if x.ndim == 1 else x
    return x[:, None, None, :]


def attention_mask(
    q_index: jax.Array,
    kv_index: jax.Array,
    *,
    q_positions: jax.Array | None = None,
    kv_positions: jax.Array | None = None,
    is_causal: bool = False,
    local_window_size=None,
    query_seq_lengths: jax.Array | None = None,
    key_value_seq_lengths: jax.Array | None = None,
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
) -> jax.Array | None:
    """The structural attention mask for a set of query rows and key columns.

    Used with full ranges by the materialized path and per block by the flash path. Padding
    lengths compare against *indices* (where a row sits in the padded array); causality and
    local windows compare *positions*, which default to the indices but may be offset (cached
    decoding puts the queries after the cached keys).

    Args:
      q_index: ``[t]`` integer indices of the query rows.
      kv_index: ``[s]`` integer indices of the key columns.
      q_positions: ``[t]`` or ``[B, t]`` positions of those queries (default ``q_index``).
      kv_positions: ``[s]`` or ``[B, s]`` positions of those keys (default ``kv_index``).
      is_causal: keys at positions after the query's are masked.
      local_window_size: ``(left, right)`` or int; keys outside
        ``[pos - left, pos + right]`` are masked.
      query_seq_lengths: ``[B]``; query rows at index >= length are masked.
      key_value_seq_lengths: ``[B]``; key columns at index >= length are masked.
      q_segment_ids: ``[B, t]`` segment ids of the queries (already taken at ``q_index``).
      kv_segment_ids: ``[B, s]`` segment ids of the keys (already taken at ``kv_index``).

    Returns:
      A boolean mask broadcastable to ``[B, 1, t, s]``, or None when nothing is masked.
    """
    q_pos = q_index if q_positions is None else q_positions
    kv_pos = kv_index if kv_positions is None else kv_positions
    pieces = []
    if is_causal:
        pieces.append(_cols(kv_pos) <= _rows(q_pos))
    if local_window_size is not None:
        left, right = _window(local_window_size)
        pieces.append(
            (_cols(kv_pos) >= _rows(q_pos) - left) & (_cols(kv_pos) <= _rows(q_pos) + right)
        )
    if query_seq_lengths is not None:
        lengths = jnp.asarray(query_seq_lengths)
        pieces.append(q_index[None, None, :, None] < lengths[:, None, None, None])
    if key_value_seq_lengths is not None:
        lengths = jnp.asarray(key_value_seq_lengths)
        pieces.append(kv_index[None, None, None, :] < lengths[:, None, None, None])
    if q_segment_ids is not None:
        pieces.append(segment_mask(q_segment_ids, kv_segment_ids))
    return combine_masks(*pieces)
