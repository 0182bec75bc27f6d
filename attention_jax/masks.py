"""Boolean attention masks: True = the query may attend to the key.

Every mask is shaped to broadcast against attention logits ``[B, N, T, S]`` (batch, heads,
query length, key length). :func:`attention_mask` builds the combination of the structural
masks at given query and key indices; both the materialized and the flash path call it
(the flash path once per block), so the two can never disagree on what is masked.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from attention_jax._checks import bool_array, check_int, check_window, int_array

__all__ = [
    "causal_mask",
    "padding_mask",
    "sliding_window_mask",
    "segment_mask",
    "combine_masks",
    "attention_mask",
]


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
    check_int(q_len, "q_len", fn="causal_mask", minimum=0)
    check_int(kv_len, "kv_len", fn="causal_mask", minimum=0)
    q = jnp.arange(q_len)[:, None] + offset
    k = jnp.arange(kv_len)[None, :]
    return (k <= q)[None, None]


def padding_mask(query_seq_lengths, key_value_seq_lengths, q_len: int, kv_len: int) -> jax.Array:
    """Padding mask from per-example lengths: valid queries attend to valid keys.

    Args:
      query_seq_lengths: ``[B]`` integer number of valid queries per example, or None (all
        valid).
      key_value_seq_lengths: ``[B]`` integer number of valid keys per example, or None.
      q_len: padded query length ``T``.
      kv_len: padded key length ``S``.

    Returns:
      ``[B, 1, T, S]`` boolean mask (``[1, 1, T, S]`` when both lengths are None).
    """
    check_int(q_len, "q_len", fn="padding_mask", minimum=0)
    check_int(kv_len, "kv_len", fn="padding_mask", minimum=0)
    for name, x in (
        ("query_seq_lengths", query_seq_lengths),
        ("key_value_seq_lengths", key_value_seq_lengths),
    ):
        if x is not None:
            int_array(x, name, fn="padding_mask")
    out = attention_mask(
        jnp.arange(q_len),
        jnp.arange(kv_len),
        query_seq_lengths=query_seq_lengths,
        key_value_seq_lengths=key_value_seq_lengths,
    )
    if out is None:
        return jnp.ones((1, 1, q_len, kv_len), bool)
    return jnp.broadcast_to(out, (out.shape[0], 1, q_len, kv_len))


def sliding_window_mask(q_len: int, kv_len: int, local_window_size) -> jax.Array:
    r"""Local (sliding-window) mask: query :math:`i` sees keys :math:`i - l \le j \le i + r`.

    Args:
      q_len: number of queries ``T``.
      kv_len: number of keys ``S``.
      local_window_size: ``(left, right)`` window sizes, or one int for a symmetric window,
        as in ``jax.nn.dot_product_attention``.

    Returns:
      ``[1, 1, T, S]`` boolean mask.
    """
    check_int(q_len, "q_len", fn="sliding_window_mask", minimum=0)
    check_int(kv_len, "kv_len", fn="sliding_window_mask", minimum=0)
    local_window_size = check_window(local_window_size, fn="sliding_window_mask")
    return attention_mask(
        jnp.arange(q_len), jnp.arange(kv_len), local_window_size=local_window_size
    )


def segment_mask(
    query_segment_ids: jax.Array, key_value_segment_ids: jax.Array | None = None
) -> jax.Array:
    """Mask for packed sequences: a query sees only keys of its own segment.

    Args:
      query_segment_ids: ``[B, T]`` integer segment id of each query.
      key_value_segment_ids: ``[B, S]`` integer segment id of each key (defaults to the
        query ids).

    Returns:
      ``[B, 1, T, S]`` boolean mask.
    """
    fn = "segment_mask"
    q = int_array(query_segment_ids, "query_segment_ids", fn=fn)
    kv = q if key_value_segment_ids is None else key_value_segment_ids
    kv = int_array(kv, "key_value_segment_ids", fn=fn)
    for name, ids in (("query_segment_ids", q), ("key_value_segment_ids", kv)):
        if ids.ndim != 2:
            raise ValueError(f"{fn}: {name} must be of shape [B, T], got {ids.dtype} {ids.shape}.")
    if q.shape[0] != kv.shape[0]:
        raise ValueError(
            f"{fn}: query_segment_ids and key_value_segment_ids must share the batch size, got "
            f"{q.shape} and {kv.shape}."
        )
    return q[:, None, :, None] == kv[:, None, None, :]


def combine_masks(*masks: jax.Array | None) -> jax.Array | None:
    """Logical AND of boolean masks, broadcasting them; ``None`` entries are ignored.

    Returns:
      The combined mask, or None when every entry is None.
    """
    out = None
    for m in masks:
        if m is None:
            continue
        m = bool_array(m, "masks", fn="combine_masks")
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
    query_positions: jax.Array | None = None,
    key_value_positions: jax.Array | None = None,
    is_causal: bool = False,
    local_window_size=None,
    query_seq_lengths: jax.Array | None = None,
    key_value_seq_lengths: jax.Array | None = None,
    query_segment_ids: jax.Array | None = None,
    key_value_segment_ids: jax.Array | None = None,
) -> jax.Array | None:
    """The structural attention mask for a set of query rows and key columns.

    Used with full ranges by the materialized path and per block by the flash path. Padding
    lengths compare against *indices* (where a row sits in the padded array); causality and
    local windows compare *positions*, which default to the indices but may be offset (cached
    decoding puts the queries after the cached keys).

    Args:
      q_index: ``[t]`` integer indices of the query rows.
      kv_index: ``[s]`` integer indices of the key columns.
      query_positions: ``[t]`` or ``[B, t]`` positions of those queries (default ``q_index``).
      key_value_positions: ``[s]`` or ``[B, s]`` positions of those keys (default
        ``kv_index``).
      is_causal: keys at positions after the query's are masked.
      local_window_size: ``(left, right)`` or int; keys outside
        ``[pos - left, pos + right]`` are masked.
      query_seq_lengths: ``[B]``; query rows at index >= length are masked.
      key_value_seq_lengths: ``[B]``; key columns at index >= length are masked.
      query_segment_ids: ``[B, t]`` segment ids of the queries (already taken at
        ``q_index``).
      key_value_segment_ids: ``[B, s]`` segment ids of the keys (already taken at
        ``kv_index``).

    Returns:
      A boolean mask broadcastable to ``[B, 1, t, s]``, or None when nothing is masked.
    """
    q_pos = q_index if query_positions is None else query_positions
    kv_pos = kv_index if key_value_positions is None else key_value_positions
    pieces = []
    if is_causal:
        pieces.append(_cols(kv_pos) <= _rows(q_pos))
    if local_window_size is not None:
        left, right = check_window(local_window_size, fn="attention_mask")
        pieces.append(
            (_cols(kv_pos) >= _rows(q_pos) - left) & (_cols(kv_pos) <= _rows(q_pos) + right)
        )
    if query_seq_lengths is not None:
        lengths = jnp.asarray(query_seq_lengths)
        pieces.append(q_index[None, None, :, None] < lengths[:, None, None, None])
    if key_value_seq_lengths is not None:
        lengths = jnp.asarray(key_value_seq_lengths)
        pieces.append(kv_index[None, None, None, :] < lengths[:, None, None, None])
    if query_segment_ids is not None:
        pieces.append(segment_mask(query_segment_ids, key_value_segment_ids))
    return combine_masks(*pieces)
