"""Validation and canonical form of attention arguments, shared by every attention path.

All checks run on static shapes and dtypes, so they raise at trace time (under ``jit`` too)
with the argument's name and the shapes involved.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax import _checks, flex

__all__ = ["AttentionInputs", "canonicalize_attention_inputs"]


class AttentionInputs(NamedTuple):
    """One attention call in canonical batched form: what every path (materialized, flash,
    fused kernels) and :func:`attention_jax.select_implementation` consume.

    Attributes:
      query: ``[B, T, N, H]``.
      key: ``[B, S, K, H]``.
      value: ``[B, S, K, H]``.
      bias: ``[B|1, N|1, T|1, S|1]`` float, or None.
      mask: ``[B|1, N|1, T|1, S|1]`` bool, or None.
      scale: the logit scale (a Python float, or a traced scalar).
      is_causal: a Python bool.
      query_seq_lengths: ``[B]`` int, or None.
      key_value_seq_lengths: ``[B]`` int, or None.
      local_window_size: ``(left, right)`` or None.
      query_segment_ids: ``[B, T]`` int, or None.
      key_value_segment_ids: ``[B, S]`` int, or None.
      query_positions: ``[T]`` or ``[B, T]`` int, or None (positions = indices).
      key_value_positions: ``[S]`` or ``[B, S]`` int, or None.
      bias_fn: ``(query_positions, key_value_positions) -> bias``, or None.
      softcap: a positive Python float, or None.
      score_mod: ``(score, batch, head, q_idx, kv_idx) -> score``, or None.
      mask_mod: ``(batch, head, q_idx, kv_idx) -> bool``, or None (the block mask's, when
        only ``block_mask`` is given).
      block_mask: a :class:`attention_jax.flex.BlockMask` for this call's shapes, or None.
      sinks: ``[N]`` float sink logits (one per query head), or None.
      logits_head_mix: ``[N, N]`` talking-heads mix of the logits, or None.
      weights_head_mix: ``[N, N]`` talking-heads mix of the weights, or None.
      unbatched: True when the caller passed ``[T, N, H]`` arrays.
    """

    query: jax.Array
    key: jax.Array
    value: jax.Array
    bias: jax.Array | None = None
    mask: jax.Array | None = None
    scale: Any = None
    is_causal: bool = False
    query_seq_lengths: jax.Array | None = None
    key_value_seq_lengths: jax.Array | None = None
    local_window_size: tuple[int, int] | None = None
    query_segment_ids: jax.Array | None = None
    key_value_segment_ids: jax.Array | None = None
    query_positions: jax.Array | None = None
    key_value_positions: jax.Array | None = None
    bias_fn: Callable | None = None
    softcap: float | None = None
    score_mod: Callable | None = None
    mask_mod: Callable | None = None
    block_mask: Any = None
    sinks: jax.Array | None = None
    logits_head_mix: jax.Array | None = None
    weights_head_mix: jax.Array | None = None
    unbatched: bool = False

    @property
    def dims(self) -> tuple[int, int, int, int, int, int]:
        """``(B, T, S, N, K, H)``."""
        b, t, n, h = self.query.shape
        return b, t, self.key.shape[1], n, self.key.shape[2], h


def canonicalize_attention_inputs(
    query,
    key,
    value,
    bias=None,
    mask=None,
    *,
    scale=None,
    is_causal: bool = False,
    query_seq_lengths=None,
    key_value_seq_lengths=None,
    local_window_size=None,
    segment_ids=None,
    query_positions=None,
    key_value_positions=None,
    bias_fn: Callable | None = None,
    softcap=None,
    score_mod: Callable | None = None,
    mask_mod: Callable | None = None,
    block_mask=None,
    sinks=None,
    logits_head_mix=None,
    weights_head_mix=None,
    fn: str = "dot_product_attention",
) -> AttentionInputs:
    """Validates attention arguments and returns them batched, with masks split out.

    Args follow :func:`attention_jax.dot_product_attention`. ``segment_ids`` is ``[B, T]``
    (self-attention, ``T == S``) or a pair ``([B, T], [B, S])``. ``fn`` names the public
    function in error messages.

    Raises:
      TypeError: integer query/key/value/bias, a non-boolean mask, non-integer lengths,
        segment ids or positions, mixed query/key/value dtypes, a traced softcap.
      ValueError: ranks other than 3 or 4 or that differ, mismatched batch, head dim or key/value
        length, ``N % K != 0``, a bias or mask that does not broadcast to ``[B, N, T, S]``,
        lengths not ``[B]``, bad window sizes, a softcap that is not positive, a non-finite
        scale.
    """
    query = _checks.float_array(query, "query", fn=fn)
    key = _checks.float_array(key, "key", fn=fn)
    value = _checks.float_array(value, "value", fn=fn)
    shapes = f"query {query.shape}, key {key.shape}, value {value.shape}"
    if query.ndim not in (3, 4) or not query.ndim == key.ndim == value.ndim:
        raise ValueError(
            f"{fn}: query, key and value must be of shape [B, T, N, H], [B, S, K, H], "
            f"[B, S, K, H] (or all unbatched), got {shapes}."
        )
    unbatched = query.ndim == 3
    if unbatched:
        query, key, value = query[None], key[None], value[None]
    if not (query.dtype == key.dtype == value.dtype):
        raise TypeError(
            f"{fn}: query, key and value must share a dtype, got {query.dtype}, {key.dtype}, "
            f"{value.dtype}."
        )
    b, t, n, h = query.shape
    bk, s, k, hk = key.shape
    if hk != h:
        raise ValueError(f"{fn}: key must have the head dim H={h} of query, got {shapes}.")
    if value.shape != key.shape:
        raise ValueError(f"{fn}: value must have the shape of key, got {shapes}.")
    if bk != b:
        raise ValueError(f"{fn}: key must have the batch size B={b} of query, got {shapes}.")
    if k == 0 or n % k != 0:
        raise ValueError(
            f"{fn}: the number of query heads N={n} must be a multiple of the key/value heads "
            f"K={k}, got {shapes}."
        )
    target = (b, n, t, s)
    what = "[N, T, S]" if unbatched else "[B, N, T, S]"

    def logits_shaped(x, name):
        shown = target[1:] if unbatched else target
        x = _checks.broadcastable(x, name, shown, fn=fn, what=what)
        return x[None] if unbatched else x

    if bias is not None:
        bias = logits_shaped(_checks.float_array(bias, "bias", fn=fn), "bias")
    if mask is not None:
        mask = _checks.bool_array(
            mask, "mask", fn=fn, hint=" (True = attend; pass additive masks as bias)"
        )
        mask = logits_shaped(mask, "mask")
    lengths = {}
    for name, x in (
        ("query_seq_lengths", query_seq_lengths),
        ("key_value_seq_lengths", key_value_seq_lengths),
    ):
        if x is not None:
            x = _checks.int_array(x, name, fn=fn)
            x = jnp.reshape(x, (1,)) if unbatched and x.ndim == 0 else x
            lengths[name] = _checks.int_array(x, name, fn=fn, shape=(b,))
    q_seg = kv_seg = None
    if segment_ids is not None:
        if isinstance(segment_ids, tuple | list):
            q_seg, kv_seg = segment_ids
        else:
            q_seg = kv_seg = segment_ids
        q_seg, kv_seg = jnp.asarray(q_seg), jnp.asarray(kv_seg)
        if unbatched:
            q_seg, kv_seg = q_seg[None], kv_seg[None]
        q_seg = _checks.int_array(q_seg, "segment_ids (query)", fn=fn, shape=(b, t))
        kv_seg = _checks.int_array(kv_seg, "segment_ids (key/value)", fn=fn, shape=(b, s))
    q_pos = _checks.positions(query_positions, "query_positions", fn=fn, batch=b, length=t)
    kv_pos = _checks.positions(key_value_positions, "key_value_positions", fn=fn, batch=b, length=s)
    if scale is None:
        scale = 1.0 / math.sqrt(h)
    elif isinstance(scale, int | float | np.floating) and not math.isfinite(scale):
        raise ValueError(f"{fn}: scale must be finite, got {scale!r}.")
    if bias_fn is not None and not callable(bias_fn):
        raise TypeError(f"{fn}: bias_fn must be None or a callable, got {bias_fn!r}.")
    score_mod = flex.check_score_mod(score_mod, fn=fn)
    mask_mod = flex.check_mask_mod(mask_mod, fn=fn)
    if block_mask is not None:
        _check_block_mask(block_mask, mask_mod, (b, n, t, s), unbatched, fn)
        mask_mod = block_mask.mask_mod
    if sinks is not None:
        sinks = _checks.float_array(sinks, "sinks", fn=fn)
        if sinks.shape != (n,):
            raise ValueError(
                f"{fn}: sinks must be of shape [N]=({n},) (one logit per query head), got "
                f"{_checks.describe(sinks)}."
            )
    mixes = {}
    for name, mix in (("logits_head_mix", logits_head_mix), ("weights_head_mix", weights_head_mix)):
        if mix is not None:
            mix = _checks.float_array(mix, name, fn=fn)
            if mix.shape != (n, n):
                raise ValueError(
                    f"{fn}: {name} must be of shape [N, N]=({n}, {n}), got {_checks.describe(mix)}."
                )
        mixes[name] = mix
    return AttentionInputs(
        query=query,
        key=key,
        value=value,
        bias=bias,
        mask=mask,
        scale=scale,
        is_causal=bool(is_causal),
        query_seq_lengths=lengths.get("query_seq_lengths"),
        key_value_seq_lengths=lengths.get("key_value_seq_lengths"),
        local_window_size=_checks.check_window(local_window_size, fn=fn),
        query_segment_ids=q_seg,
        key_value_segment_ids=kv_seg,
        query_positions=q_pos,
        key_value_positions=kv_pos,
        bias_fn=bias_fn,
        softcap=_checks.check_softcap(softcap, fn=fn),
        score_mod=score_mod,
        mask_mod=mask_mod,
        block_mask=block_mask,
        sinks=sinks,
        logits_head_mix=mixes["logits_head_mix"],
        weights_head_mix=mixes["weights_head_mix"],
        unbatched=unbatched,
    )


def _check_block_mask(block_mask, mask_mod, shape, unbatched: bool, fn: str) -> None:
    """A :class:`~attention_jax.flex.BlockMask` made for this call's ``[B, N, T, S]``."""
    if not isinstance(block_mask, flex.BlockMask):
        raise TypeError(
            f"{fn}: block_mask must be None or a BlockMask from create_block_mask, got "
            f"{type(block_mask).__name__}."
        )
    b, n, t, s = shape
    made = block_mask.shape
    fits = (
        made[0] in (None, b)
        and made[1] in (None, n)
        and made[2:] == (t, s)
        and not (unbatched and made[0] not in (None, 1))
    )
    if not fits:
        raise ValueError(
            f"{fn}: block_mask must be made for the call's [B, N, T, S]={shape} (None: any), "
            f"got a block_mask made for {made}."
        )
    if mask_mod is not None and mask_mod is not block_mask.mask_mod:
        raise ValueError(
            f"{fn}: mask_mod must be the block_mask's own mask_mod when both are given (a "
            "block mask only describes its own), got another callable; pass block_mask alone "
            "or combine the mods with flex.and_masks before create_block_mask."
        )
