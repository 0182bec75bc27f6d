"""Memory-efficient (flash) attention in plain JAX: blockwise, with the online softmax.

The forward pass walks over blocks of queries and, for each, over blocks of keys, keeping a
running row maximum, normalizer and output (Milakov & Gimelshein 2018; Rabe & Staats 2021;
the loop order of FlashAttention-2, Dao 2023). The backward pass is a ``jax.custom_vjp`` that
recomputes each block of probabilities from the saved output and log-sum-exp, so neither pass
holds a ``[T, S]`` array. Blocks that causal or local-window masking hides entirely are never
visited.

Internal layout. Query heads are grouped by the key/value head they share
(``N = K * G``): queries become ``[B, K, T * G, H]`` with rows ordered (token, group), keys
and values ``[B, K, S, H]``. One ``dot_general`` with batch dims ``(B, K)`` then serves every
head of every example in a block, and GQA/MQA never repeat K/V in memory. A block of
``bq`` query tokens is ``M = bq * G`` contiguous rows, viewed as ``[B, K, bq, G, bk]`` when
masks and biases are applied.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from attention_jax import _checks
from attention_jax._inputs import AttentionInputs, canonicalize_attention_inputs
from attention_jax.masks import attention_mask, combine_masks

__all__ = ["flash_attention", "merge_attention", "DEFAULT_BLOCK_Q", "DEFAULT_BLOCK_K"]

# Chosen by the sweep recorded in benchmarks/RESULTS.md (2-core x86 CPU, float32).
DEFAULT_BLOCK_Q = 512
DEFAULT_BLOCK_K = 256


@dataclasses.dataclass(frozen=True)
class _Config:
    """Static description of one flash call (hashable: it is a ``nondiff_argnums`` arg)."""

    t: int  # real query length
    s: int  # real key length
    bq: int
    bk: int
    nq: int
    nk: int
    groups: int  # G = N // K
    softcap: float | None
    is_causal: bool
    window: tuple[int, int] | None
    default_positions: bool  # no query/key positions given: block skipping is arithmetic
    bias_fn: Callable | None  # closure-converted: (q_pos, k_pos, *consts) -> internal layout
    acc: Any  # accumulation dtype: float32, or float64 for float64 inputs
    always_mask: bool  # a dense mask or segment ids: every visited block is masked
    has_lengths: bool  # query or key/value lengths given


def _ceil_div(a, b):
    return -((-a) // b)


def _band(cfg: _Config) -> tuple[int | None, int | None]:
    """``(left, right)``: a key at position c is visible from position r only if
    ``r - left <= c <= r + right``; None = unbounded on that side."""
    left = right = None
    if cfg.window is not None:
        left, right = cfg.window
    if cfg.is_causal:
        right = 0 if right is None else min(right, 0)
    return left, right


# ----------------------------------------------------------------------------------------
# Which blocks to visit.
# ----------------------------------------------------------------------------------------


def _kv_ranges(cfg: _Config, i, aux):
    """Key-block ranges for query block ``i``: ``(lo, flo, fhi, hi)``.

    Blocks ``[lo, hi)`` may hold a visible entry; blocks ``[flo, fhi)`` (a sub-range) are fully
    visible and need no mask. With positions given, ``[lo, hi)`` is only trimmed by the
    lengths and the per-block decision is left to :func:`_block_visible`.
    """
    left, right = _band(cfg)
    lo = jnp.int32(0)
    hi = jnp.int32(cfg.nk)
    s_valid = jnp.int32(cfg.s)
    if aux["kv_len"] is not None:
        kv_len = jnp.clip(aux["kv_len"], 0, cfg.s).astype(jnp.int32)
        hi = jnp.minimum(hi, _ceil_div(jnp.max(kv_len), cfg.bk))
        s_valid = jnp.min(kv_len)
    rows_valid = True
    if aux["q_len"] is not None:
        q_len = aux["q_len"].astype(jnp.int32)
        # Query blocks made only of padding rows attend to nothing.
        hi = jnp.where(i * cfg.bq >= jnp.max(q_len), lo, hi)
        rows_valid = (i + 1) * cfg.bq <= jnp.min(q_len)
    if not cfg.default_positions:
        return lo, lo, lo, jnp.maximum(hi, lo)
    r0, r1 = i * cfg.bq, (i + 1) * cfg.bq - 1  # first and last row of the block
    flo, fhi = lo, hi
    if right is not None:
        hi = jnp.minimum(hi, (r1 + right) // cfg.bk + 1)
        fhi = jnp.minimum(fhi, (r0 + right + 1) // cfg.bk)
    if left is not None:
        lo = jnp.maximum(lo, (r0 - left) // cfg.bk)
        flo = jnp.maximum(flo, _ceil_div(r1 - left, cfg.bk))
    hi = jnp.maximum(hi, lo)
    fhi = jnp.minimum(fhi, s_valid // cfg.bk)  # blocks with padded keys need the mask
    flo = jnp.clip(flo, lo, hi)
    fhi = jnp.clip(fhi, flo, hi)
    if cfg.always_mask:
        flo = fhi = lo
    else:
        fhi = jnp.where(rows_valid, fhi, flo)
    return lo, flo, fhi, hi


def _q_ranges(cfg: _Config, j, aux):
    """Query-block ranges for key block ``j`` (the transpose of :func:`_kv_ranges`)."""
    left, right = _band(cfg)
    lo = jnp.int32(0)
    hi = jnp.int32(cfg.nq)
    cols_valid = (j + 1) * cfg.bk <= cfg.s
    if aux["q_len"] is not None:
        q_len = aux["q_len"].astype(jnp.int32)
        hi = jnp.minimum(hi, _ceil_div(jnp.clip(jnp.max(q_len), 0, cfg.t), cfg.bq))
        fq = jnp.clip(jnp.min(q_len), 0, cfg.t) // cfg.bq
    else:
        fq = jnp.int32(cfg.nq)  # padded query rows need no mask: their cotangent is 0
    if aux["kv_len"] is not None:
        kv_len = jnp.clip(aux["kv_len"], 0, cfg.s).astype(jnp.int32)
        hi = jnp.where(j * cfg.bk >= jnp.max(kv_len), lo, hi)
        cols_valid = (j + 1) * cfg.bk <= jnp.min(kv_len)
    if not cfg.default_positions:
        return lo, lo, lo, jnp.maximum(hi, lo)
    c0, c1 = j * cfg.bk, (j + 1) * cfg.bk - 1
    flo, fhi = lo, jnp.minimum(hi, fq)
    if right is not None:
        lo = jnp.maximum(lo, (c0 - right) // cfg.bq)
        flo = jnp.maximum(flo, _ceil_div(c1 - right, cfg.bq))
    if left is not None:
        hi = jnp.minimum(hi, (c1 + left) // cfg.bq + 1)
        fhi = jnp.minimum(fhi, (c0 + left + 1) // cfg.bq)
    hi = jnp.maximum(hi, lo)
    flo = jnp.clip(flo, lo, hi)
    fhi = jnp.clip(fhi, flo, hi)
    if cfg.always_mask:
        flo = fhi = lo
    else:
        fhi = jnp.where(cols_valid, fhi, flo)
    return lo, flo, fhi, hi


def _block_visible(cfg: _Config, i, j, aux):
    """Whether block (i, j) may hold a visible entry, from the min/max positions of its rows
    and columns (exact for sorted positions, conservative otherwise); None when that is
    decided statically by the loop ranges."""
    left, right = _band(cfg)
    if cfg.default_positions or (left is None and right is None):
        return None
    q_index, kv_index, q_pos, kv_pos = _block_positions(cfg, i, j, aux)
    q_pos = q_index if q_pos is None else q_pos
    kv_pos = kv_index if kv_pos is None else kv_pos
    visible = jnp.bool_(True)
    if right is not None:
        visible &= jnp.min(kv_pos) <= jnp.max(q_pos) + right
    if left is not None:
        visible &= jnp.max(kv_pos) >= jnp.min(q_pos) - left
    return visible


def _loops(cfg: _Config, forward: bool) -> tuple[bool, bool]:
    """``(unmasked, masked)``: which of the two block loops can run, decided statically so
    that no empty loop is traced (each loop body costs compile time)."""
    if cfg.always_mask or not cfg.default_positions:
        return False, True
    left, right = _band(cfg)
    ragged = cfg.s % cfg.bk != 0 or cfg.has_lengths
    # Forward: the partially visible key blocks of a query block sit at the left edge of the
    # window and at the causal/right edge; the backward pass transposes the roles.
    lower = (left if forward else right) is not None
    upper = (right if forward else left) is not None or ragged
    return True, lower or upper


def _run_loops(ranges, loops, body, carry):
    """Runs ``body(index, carry, masked=False)`` over ``[flo, fhi)``, then
    ``body(index, carry, masked=True)`` over ``[lo, flo)`` and ``[fhi, hi)`` in one loop."""
    lo, flo, fhi, hi = ranges
    unmasked, masked = loops
    if unmasked:
        carry = lax.fori_loop(flo, fhi, functools.partial(body, masked=False), carry)
    if masked:
        n_lower = flo - lo

        def edge(n, c):
            return body(jnp.where(n < n_lower, lo + n, fhi + (n - n_lower)), c, masked=True)

        carry = lax.fori_loop(0, n_lower + (hi - fhi), edge, carry)
    return carry


# ----------------------------------------------------------------------------------------
# One block.
# ----------------------------------------------------------------------------------------


def _slice_rows_cols(x, i, j, cfg: _Config, row_axis: int, col_axis: int):
    """Slices block (i, j) out of an internal-layout array, keeping broadcast dims of 1."""
    starts = [jnp.int32(0)] * x.ndim  # one index dtype, also under x64
    sizes = list(x.shape)
    if x.shape[row_axis] != 1:
        starts[row_axis], sizes[row_axis] = i * cfg.bq, cfg.bq
    if x.shape[col_axis] != 1:
        starts[col_axis], sizes[col_axis] = j * cfg.bk, cfg.bk
    return lax.dynamic_slice(x, starts, sizes)


def _slice_seq(x, i, size):
    """``[L]`` or ``[B, L]`` -> block ``i`` of length ``size`` along the last axis."""
    if x is None:
        return None
    return lax.dynamic_slice_in_dim(x, i * size, size, axis=x.ndim - 1)


def _block_positions(cfg: _Config, i, j, aux):
    q_index = i * cfg.bq + jnp.arange(cfg.bq, dtype=jnp.int32)
    kv_index = j * cfg.bk + jnp.arange(cfg.bk, dtype=jnp.int32)
    q_pos = _slice_seq(aux["q_pos"], i, cfg.bq)
    kv_pos = _slice_seq(aux["kv_pos"], j, cfg.bk)
    return q_index, kv_index, q_pos, kv_pos


def _block_mask(cfg: _Config, i, j, aux):
    """The boolean mask of block (i, j), ``[B|1, K|1, bq, G|1, bk]``, or None."""
    q_index, kv_index, q_pos, kv_pos = _block_positions(cfg, i, j, aux)
    structural = attention_mask(
        q_index,
        kv_index,
        query_positions=q_pos,
        key_value_positions=kv_pos,
        is_causal=cfg.is_causal,
        local_window_size=cfg.window,
        query_seq_lengths=aux["q_len"],
        key_value_seq_lengths=aux["kv_len"],
        query_segment_ids=_slice_seq(aux["q_seg"], i, cfg.bq),
        key_value_segment_ids=_slice_seq(aux["kv_seg"], j, cfg.bk),
    )
    if structural is not None:  # [B|1, 1, bq, bk] -> [B|1, 1, bq, 1, bk]
        structural = structural[:, :, :, None, :]
    pad = None
    if cfg.nk * cfg.bk != cfg.s:  # keys padded to a whole number of blocks
        pad = (kv_index < cfg.s)[None, None, None, None, :]
    dense = None
    if aux["mask"] is not None:
        dense = _slice_rows_cols(aux["mask"], i, j, cfg, 2, 4)
    return combine_masks(structural, pad, dense)


def _bias_fn_block(cfg: _Config, i, j, aux, consts):
    q_index, kv_index, q_pos, kv_pos = _block_positions(cfg, i, j, aux)
    q_pos = q_index if q_pos is None else q_pos
    kv_pos = kv_index if kv_pos is None else kv_pos
    return cfg.bias_fn(q_pos, kv_pos, *consts)


def _scores(cfg: _Config, q_blk, k_blk, bias_blk, fn_bias):
    """Logits of one block in ``cfg.acc``, ``[B, K, bq, G, bk]``, and ``tanh`` of the softcap."""
    s = lax.dot_general(
        q_blk, k_blk, (((3,), (3,)), ((0, 1), (0, 1))), preferred_element_type=cfg.acc
    )
    b, k, _, _ = s.shape
    s = s.reshape(b, k, cfg.bq, cfg.groups, cfg.bk)
    t = None
    if cfg.softcap is not None:
        t = jnp.tanh(s * (1.0 / cfg.softcap))
        s = cfg.softcap * t
    if bias_blk is not None:
        s = s + bias_blk.astype(cfg.acc)
    if fn_bias is not None:
        s = s + fn_bias.astype(s.dtype)
    return s, t


def _flat(x):
    """``[B, K, bq, G, X]`` -> ``[B, K, bq * G, X]``."""
    b, k, bq, g, n = x.shape
    return x.reshape(b, k, bq * g, n)


# ----------------------------------------------------------------------------------------
# Forward.
# ----------------------------------------------------------------------------------------


def _forward(cfg: _Config, q, k, v, bias, consts, aux):
    """q: [nq, B, K, M, H] (pre-scaled); k, v: [nk, B, K, bk, H].

    Returns out [nq, B, K, M, H] (dtype of v) and lse [nq, B, K, M] in cfg.acc.
    """
    _, b, kh, m_rows, h = q.shape

    def q_step(_, xs):
        i, q_blk = xs

        def kv_step(j, carry, masked):
            m_prev, l_prev, acc = carry
            bias_blk = None if bias is None else _slice_rows_cols(bias, i, j, cfg, 2, 4)
            fn_bias = None if cfg.bias_fn is None else _bias_fn_block(cfg, i, j, aux, consts)
            s, _ = _scores(cfg, q_blk, k[j], bias_blk, fn_bias)
            if masked:
                mask = _block_mask(cfg, i, j, aux)
                if mask is not None:
                    s = jnp.where(mask, s, -jnp.inf)
            s = _flat(s)
            m_new = jnp.maximum(m_prev, jnp.max(s, axis=-1))
            # A row that has seen no visible key keeps m = -inf; shift it by 0 instead so
            # that exp(-inf - -inf) never appears.
            m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
            p = jnp.exp(s - m_safe[..., None])
            alpha = jnp.exp(m_prev - m_safe)
            l_new = alpha * l_prev + jnp.sum(p, axis=-1)
            pv = lax.dot_general(
                p.astype(v.dtype),
                v[j],
                (((3,), (2,)), ((0, 1), (0, 1))),
                preferred_element_type=cfg.acc,
            )
            return m_new, l_new, alpha[..., None] * acc + pv

        def visited(j, carry, masked):
            visible = _block_visible(cfg, i, j, aux)
            if visible is None:
                return kv_step(j, carry, masked)
            return lax.cond(visible, lambda c: kv_step(j, c, masked), lambda c: c, carry)

        init = (
            jnp.full((b, kh, m_rows), -jnp.inf, cfg.acc),
            jnp.zeros((b, kh, m_rows), cfg.acc),
            jnp.zeros((b, kh, m_rows, h), cfg.acc),
        )
        m_fin, l_fin, acc = _run_loops(_kv_ranges(cfg, i, aux), _loops(cfg, True), visited, init)
        empty = l_fin == 0.0
        out = acc / jnp.where(empty, 1.0, l_fin)[..., None]
        lse = jnp.where(empty, -jnp.inf, m_fin + jnp.log(jnp.where(empty, 1.0, l_fin)))
        return None, (out.astype(v.dtype), lse)

    _, (out, lse) = lax.scan(q_step, None, (jnp.arange(cfg.nq, dtype=jnp.int32), q))
    return out, lse


# ----------------------------------------------------------------------------------------
# Backward (FlashAttention-2: key blocks outer, dQ accumulated).
# ----------------------------------------------------------------------------------------


def _reduce_to(x, shape):
    """Sums ``x`` over the axes where ``shape`` has a broadcast dim of 1."""
    axes = tuple(a for a, (d, n) in enumerate(zip(shape, x.shape, strict=True)) if d == 1 != n)
    return jnp.sum(x, axis=axes, keepdims=True) if axes else x


def _backward(cfg: _Config, res, cotangents):
    q, k, v, bias, consts, aux, out, lse = res
    d_out, d_lse = cotangents
    _, b, kh, m_rows, h = q.shape
    # D_i = rowsum(dO * O) - dlse: the softmax Jacobian term of every row, and the lse
    # cotangent enters the same place (d lse / d s = p).
    delta = jnp.sum(d_out.astype(cfg.acc) * out.astype(cfg.acc), axis=-1)
    delta = delta - d_lse
    # Rows with lse = -inf saw no key; +inf makes exp(s - lse) exactly 0 there.
    lse = jnp.where(lse == -jnp.inf, jnp.inf, lse)

    def kv_step(carry, xs):
        dq, dbias, dconsts = carry
        j, k_blk, v_blk = xs

        def q_step(i, c, masked):
            dk, dv, dq, dbias, dconsts = c
            q_blk, do_blk = q[i], d_out[i]
            bias_blk = None if bias is None else _slice_rows_cols(bias, i, j, cfg, 2, 4)
            fn_bias = fn_vjp = None
            if cfg.bias_fn is not None:
                if consts:
                    fn_bias, fn_vjp = jax.vjp(
                        lambda *cs: _bias_fn_block(cfg, i, j, aux, cs), *consts
                    )
                else:
                    fn_bias = _bias_fn_block(cfg, i, j, aux, consts)
            s, t = _scores(cfg, q_blk, k_blk, bias_blk, fn_bias)
            p = jnp.exp(s - lse[i].reshape(b, kh, cfg.bq, cfg.groups, 1))
            if masked:
                mask = _block_mask(cfg, i, j, aux)
                if mask is not None:
                    p = jnp.where(mask, p, 0.0)
            p = _flat(p)
            # dK and dV are accumulated transposed, [B, K, H, bk]: dO^T P and dS^T Q contract
            # over rows with the [.., H] operand first, which XLA:CPU runs faster than
            # P^T dO (measured); one transpose per key block at the end.
            dv = dv + lax.dot_general(
                do_blk,
                p.astype(do_blk.dtype),
                (((2,), (2,)), ((0, 1), (0, 1))),
                preferred_element_type=cfg.acc,
            )
            dp = lax.dot_general(
                do_blk, v_blk, (((3,), (3,)), ((0, 1), (0, 1))), preferred_element_type=cfg.acc
            )
            ds = p * (dp - delta[i][..., None])  # d logits (after softcap and bias)
            ds5 = ds.reshape(b, kh, cfg.bq, cfg.groups, cfg.bk)
            if bias is not None:
                db = _reduce_to(ds5, bias_blk.shape)
                zero = jnp.int32(0)
                start = [zero, zero, i * cfg.bq, zero, j * cfg.bk]
                start = [st if dbias.shape[a] != 1 else zero for a, st in enumerate(start)]
                cur = lax.dynamic_slice(dbias, start, db.shape)
                dbias = lax.dynamic_update_slice(dbias, cur + db, start)
            if fn_vjp is not None:
                g = fn_vjp(_reduce_to(ds5, fn_bias.shape).astype(fn_bias.dtype))
                dconsts = tuple(a + gb.astype(a.dtype) for a, gb in zip(dconsts, g, strict=True))
            if t is not None:
                ds = _flat(ds5 * (1.0 - t * t))  # through softcap * tanh(x / softcap)
            ds_in = ds.astype(q_blk.dtype)
            dk = dk + lax.dot_general(
                q_blk, ds_in, (((2,), (2,)), ((0, 1), (0, 1))), preferred_element_type=cfg.acc
            )
            dq_i = lax.dot_general(
                ds_in, k_blk, (((3,), (2,)), ((0, 1), (0, 1))), preferred_element_type=cfg.acc
            )
            # A plain read-modify-write of block i (``.at[i].add`` would lower to a scatter).
            dq = lax.dynamic_update_index_in_dim(dq, dq[i] + dq_i, i, 0)
            return dk, dv, dq, dbias, dconsts

        def visited(i, c, masked):
            visible = _block_visible(cfg, i, j, aux)
            if visible is None:
                return q_step(i, c, masked)
            return lax.cond(visible, lambda cc: q_step(i, cc, masked), lambda cc: cc, c)

        zeros = jnp.zeros((b, kh, h, cfg.bk), cfg.acc)
        c = (zeros, zeros, dq, dbias, dconsts)
        dk, dv, dq, dbias, dconsts = _run_loops(
            _q_ranges(cfg, j, aux), _loops(cfg, False), visited, c
        )
        dk, dv = jnp.swapaxes(dk, 2, 3), jnp.swapaxes(dv, 2, 3)
        return (dq, dbias, dconsts), (dk.astype(k.dtype), dv.astype(v.dtype))

    dq0 = jnp.zeros(q.shape, cfg.acc)
    dbias0 = None if bias is None else jnp.zeros(bias.shape, cfg.acc)
    dconsts0 = tuple(jnp.zeros(c.shape, cfg.acc) for c in consts)
    (dq, dbias, dconsts), (dk, dv) = lax.scan(
        kv_step, (dq0, dbias0, dconsts0), (jnp.arange(cfg.nk, dtype=jnp.int32), k, v)
    )
    dbias = None if bias is None else dbias.astype(bias.dtype)
    dconsts = tuple(d.astype(c.dtype) for d, c in zip(dconsts, consts, strict=True))
    return dq.astype(q.dtype), dk, dv, dbias, dconsts, None


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash_core(cfg, q, k, v, bias, consts, aux):
    return _forward(cfg, q, k, v, bias, consts, aux)


def _flash_core_fwd(cfg, q, k, v, bias, consts, aux):
    out, lse = _forward(cfg, q, k, v, bias, consts, aux)
    return (out, lse), (q, k, v, bias, consts, aux, out, lse)


_flash_core.defvjp(_flash_core_fwd, _backward)


# ----------------------------------------------------------------------------------------
# Public API.
# ----------------------------------------------------------------------------------------


def _pad_axis(x, axis: int, new: int, value=0):
    if x.shape[axis] == new:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, new - x.shape[axis])
    return jnp.pad(x, widths, constant_values=value)


def _pad_edge(x, new: int):
    """Pads the last axis to ``new`` by repeating the last entry (keeps min/max ranges)."""
    if x is None or x.shape[-1] == new:
        return x
    widths = [(0, 0)] * (x.ndim - 1) + [(0, new - x.shape[-1])]
    return jnp.pad(x, widths, mode="edge")


def _to_internal(x, n: int, kh: int, t: int, s: int, tp: int, sp: int, fill):
    """``[B|1, N|1, T|1, S|1]`` -> padded ``[B|1, K|1, Tp|1, G|1, Sp|1]``."""
    b0, n0, t0, s0 = x.shape
    if n0 == n and n > 1:
        x = x.reshape(b0, kh, n // kh, t0, s0)
    else:
        x = x.reshape(b0, 1, 1, t0, s0)
    x = jnp.swapaxes(x, 2, 3)
    if t0 == t:
        x = _pad_axis(x, 2, tp, fill)
    if s0 == s:
        x = _pad_axis(x, 4, sp, fill)
    return x


def _bias_fn_internal(bias_fn, b: int, n: int, kh: int, bq: int, bk: int):
    """Wraps ``bias_fn(q_pos, k_pos) -> [B|1, N|1, bq|1, bk|1]`` to the internal layout."""

    def fn(q_pos, kv_pos):
        x = jnp.asarray(bias_fn(q_pos, kv_pos))
        if not jnp.issubdtype(x.dtype, jnp.floating) or x.ndim > 4:
            raise ValueError(
                f"bias_fn must return a float array broadcastable to [B, N, t, s]="
                f"{(b, n, bq, bk)}, got {x.dtype} {x.shape}."
            )
        x4 = x.reshape((1,) * (4 - x.ndim) + x.shape)
        if any(d not in (1, e) for d, e in zip(x4.shape, (b, n, bq, bk), strict=True)):
            raise ValueError(
                f"bias_fn returned shape {x.shape}, which does not broadcast to [B, N, t, s]="
                f"{(b, n, bq, bk)} for a block of {bq} queries and {bk} keys."
            )
        b0, n0, t0, s0 = x4.shape
        if n0 == n and n > 1:
            x4 = x4.reshape(b0, kh, n // kh, t0, s0)
        else:
            x4 = x4.reshape(b0, 1, 1, t0, s0)
        return jnp.swapaxes(x4, 2, 3).astype(_checks.compute_dtype(x4.dtype))

    return fn


def _empty_result(inp: AttentionInputs):
    b, t, _, n, _, h = inp.dims
    acc = _checks.compute_dtype(inp.query.dtype)
    return jnp.zeros((b, t, n, h), inp.query.dtype), jnp.full((b, n, t), -jnp.inf, acc)


def flash_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    bias: jax.Array | None = None,
    mask: jax.Array | None = None,
    *,
    scale: float | None = None,
    is_causal: bool = False,
    query_seq_lengths: jax.Array | None = None,
    key_value_seq_lengths: jax.Array | None = None,
    local_window_size: int | tuple[int, int] | None = None,
    segment_ids: jax.Array | tuple[jax.Array, jax.Array] | None = None,
    query_positions: jax.Array | None = None,
    key_value_positions: jax.Array | None = None,
    bias_fn: Callable | None = None,
    softcap: float | None = None,
    block_q: int | None = None,
    block_k: int | None = None,
    return_residuals: bool = False,
):
    r"""Memory-efficient scaled dot-product attention (blockwise, online softmax).

    Computes the same function as :func:`attention_jax.dot_product_attention` with the softmax
    normalizer,

    .. math::
      \mathrm{Attention}(Q, K, V) = \mathrm{softmax}\big(\mathrm{softcap}(s\,QK^\top) + B,
      \ \mathrm{mask}\big)\,V,

    without ever forming the ``[T, S]`` logits. Queries are processed in blocks of
    ``block_q`` tokens and keys in blocks of ``block_k``; for each query row a running maximum
    :math:`m`, normalizer :math:`\ell` and output are rescaled as key blocks arrive:

    .. math::
      m' = \max(m, \max_j s_j), \quad \ell' = e^{m - m'}\ell + \sum_j e^{s_j - m'}, \quad
      o' = e^{m - m'} o + \sum_j e^{s_j - m'} v_j.

    The backward pass (a ``jax.custom_vjp``) recomputes the probabilities of each block from
    the saved output and log-sum-exp :math:`L = m + \log \ell`, looping over key blocks outside
    and query blocks inside (FlashAttention-2). Memory is
    :math:`O(B N (T + S) H)` plus one block of ``[B, N, block_q, block_k]`` in both passes.
    Causal and local-window attention skip the blocks that are entirely masked (for the
    default positions the skip pattern is computed from the block indices; with positions
    given, each block is tested on the min/max of its positions).

    Shapes (``B`` batch, ``T`` queries, ``S`` keys, ``N`` query heads, ``K`` key/value heads,
    ``H`` head dim)::

      query: [B, T, N, H]    key, value: [B, S, K, H]    (or unbatched [T, N, H], [S, K, H])

    ``N`` must be a multiple of ``K`` (GQA/MQA; K/V are never repeated in memory). ``T`` and
    ``S`` need not be multiples of the block sizes: the inputs are padded internally and the
    padding masked. Logits, softmax and accumulation run in float32 (float64 for float64
    inputs); the output has the input dtype.

    Block sizes. The defaults (``block_q = 512``, ``block_k = 256``) were the fastest or
    within 4% of the fastest in each of forward / forward+backward, causal or not, in the
    sweep recorded in ``benchmarks/RESULTS.md`` (idle 2-core x86 CPU, float32, ``H = 64``);
    smaller blocks left XLA:CPU's second thread mostly idle (process CPU time 1.2x the wall
    time at 256x256, 1.9x at 512x256). Blocks are clamped to ``T`` and ``S``. On GPUs and
    TPUs, where a plain-JAX loop launches one kernel per block, larger blocks amortize the
    launch cost: ``block_q = block_k = 512`` to ``1024`` for ``H <= 128`` (keep
    ``block_q * block_k`` float32 scores per head within a few MiB), and multiples of 128 on
    TPU to match the MXU tiles. A fused kernel (``implementation="cudnn"`` or ``"tokamax"``
    in :func:`attention_jax.dot_product_attention`) is faster there.

    Args:
      query: ``[B, T, N, H]`` floating array.
      key: ``[B, S, K, H]``, same dtype as ``query``.
      value: ``[B, S, K, H]``, same dtype as ``query``.
      bias: optional additive bias broadcastable to ``[B, N, T, S]``; it is sliced per block
        (dims of size 1 stay broadcast) and its gradient has its own shape.
      mask: optional boolean mask broadcastable to ``[B, N, T, S]`` (True = attend).
      scale: logit scale, default ``1 / sqrt(H)``.
      is_causal: query ``i`` sees keys ``j <= i`` (in positions; see ``query_positions``).
      query_seq_lengths: ``[B]`` int; query rows at index >= length output zeros.
      key_value_seq_lengths: ``[B]`` int; key columns at index >= length are masked.
      local_window_size: ``(left, right)`` or int: query at position ``i`` sees keys in
        ``[i - left, i + right]``.
      segment_ids: ``[B, T]`` int (self-attention) or a pair ``([B, T], [B, S])``.
      query_positions: ``[T]`` or ``[B, T]`` int positions of the queries for
        ``is_causal``, ``local_window_size`` and ``bias_fn`` (default ``arange(T)``).
      key_value_positions: ``[S]`` or ``[B, S]`` int positions of the keys.
      bias_fn: optional ``(q_positions, k_positions) -> bias`` broadcastable to
        ``[B, N, t, s]``, called once per block with the ``[t]`` or ``[B, t]`` positions of
        the block's queries and keys (ALiBi, T5 relative bias). Arrays it closes over are
        differentiated (a learned T5 table gets its gradient).
      softcap: optional positive float: logits become ``softcap * tanh(logits / softcap)``
        before the bias is added.
      block_q: query block size in tokens (a positive int; None: ``DEFAULT_BLOCK_Q``).
      block_k: key block size in tokens (a positive int; None: ``DEFAULT_BLOCK_K``).
      return_residuals: also return the float32 log-sum-exp of each row, ``[B, N, T]``
        (``[N, T]`` unbatched); ``-inf`` for rows with no visible key (whose output is 0),
        the convention :func:`merge_attention` expects.

    Returns:
      ``[B, T, N, H]`` (``[T, N, H]`` unbatched) in the dtype of ``query``; with
      ``return_residuals=True`` the pair ``(output, lse)``.

    Raises:
      TypeError, ValueError: at trace time, as :func:`attention_jax.dot_product_attention`
        (via :func:`attention_jax._inputs.canonicalize_attention_inputs`), for a softcap that
        is not positive, for block sizes that are not positive ints, and for a ``bias_fn``
        whose output does not broadcast to ``[B, N, t, s]``.
    """
    inp = canonicalize_attention_inputs(
        query,
        key,
        value,
        bias,
        mask,
        scale=scale,
        is_causal=is_causal,
        query_seq_lengths=query_seq_lengths,
        key_value_seq_lengths=key_value_seq_lengths,
        local_window_size=local_window_size,
        segment_ids=segment_ids,
        query_positions=query_positions,
        key_value_positions=key_value_positions,
        bias_fn=bias_fn,
        softcap=softcap,
        fn="flash_attention",
    )
    out, lse = flash_attention_canonical(
        inp, block_q=block_q, block_k=block_k, fn="flash_attention"
    )
    if inp.unbatched:
        out, lse = out[0], lse[0]
    return (out, lse) if return_residuals else out


def flash_attention_canonical(
    inp: AttentionInputs,
    *,
    block_q: int | None = None,
    block_k: int | None = None,
    fn: str = "dot_product_attention",
) -> tuple[jax.Array, jax.Array]:
    """:func:`flash_attention` on validated inputs (the entry point of the dispatcher).

    Args:
      inp: canonical inputs from :func:`attention_jax.canonicalize_attention_inputs`
        (batched; ``inp.unbatched`` is ignored).
      block_q, block_k: as in :func:`flash_attention`.
      fn: the public function named in error messages.

    Returns:
      ``(out, lse)``: ``[B, T, N, H]`` in the query dtype and float32 ``[B, N, T]``.
    """
    block_q = DEFAULT_BLOCK_Q if block_q is None else _checks.check_int(block_q, "block_q", fn=fn)
    block_k = DEFAULT_BLOCK_K if block_k is None else _checks.check_int(block_k, "block_k", fn=fn)
    bias_fn = inp.bias_fn
    b, t, s, n, kh, h = inp.dims
    if t == 0 or s == 0:
        return _empty_result(inp)
    g = n // kh
    bq, bk = min(block_q, t), min(block_k, s)
    nq, nk = -(-t // bq), -(-s // bk)
    tp, sp = nq * bq, nk * bk

    dtype = inp.query.dtype
    q = inp.query
    if jnp.finfo(dtype).bits >= 32:
        q = q * jnp.asarray(inp.scale, dtype)
    else:  # scale half-precision queries in float32, then round once
        q = (q.astype(jnp.float32) * jnp.asarray(inp.scale, jnp.float32)).astype(dtype)
    # [B, T, N, H] -> [nq, B, K, bq * G, H]: pre-blocked, one transpose for the whole call.
    q = _pad_axis(q, 1, tp).reshape(b, nq, bq, kh, g, h)
    q = q.transpose(1, 0, 3, 2, 4, 5).reshape(nq, b, kh, bq * g, h)
    k = _pad_axis(inp.key, 1, sp).reshape(b, nk, bk, kh, h).transpose(1, 0, 3, 2, 4)
    v = _pad_axis(inp.value, 1, sp).reshape(b, nk, bk, kh, h).transpose(1, 0, 3, 2, 4)

    bias_int = None
    if inp.bias is not None:
        bias_int = _to_internal(inp.bias, n, kh, t, s, tp, sp, 0)
    mask_int = None
    if inp.mask is not None:
        mask_int = _to_internal(inp.mask, n, kh, t, s, tp, sp, False)

    def positions(x, length):
        return None if x is None else _pad_edge(x.astype(jnp.int32), length)

    aux: dict[str, Any] = {
        "mask": mask_int,
        "q_len": inp.query_seq_lengths,
        "kv_len": inp.key_value_seq_lengths,
        "q_seg": positions(inp.query_segment_ids, tp),
        "kv_seg": positions(inp.key_value_segment_ids, sp),
        "q_pos": positions(inp.query_positions, tp),
        "kv_pos": positions(inp.key_value_positions, sp),
    }

    internal_bias_fn, consts = None, ()
    if bias_fn is not None:
        q_ex = jnp.zeros((bq,) if aux["q_pos"] is None else aux["q_pos"][..., :bq].shape, "int32")
        kv_ex = jnp.zeros(
            (bk,) if aux["kv_pos"] is None else aux["kv_pos"][..., :bk].shape, "int32"
        )
        # Hoists arrays that bias_fn closes over into explicit arguments, so the custom VJP
        # can differentiate them (a learned relative-position table, say).
        internal_bias_fn, consts = jax.closure_convert(
            _bias_fn_internal(bias_fn, b, n, kh, bq, bk), q_ex, kv_ex
        )
        consts = tuple(consts)

    cfg = _Config(
        t=t,
        s=s,
        bq=bq,
        bk=bk,
        nq=nq,
        nk=nk,
        groups=g,
        softcap=inp.softcap,
        acc=_checks.compute_dtype(dtype),
        is_causal=inp.is_causal,
        window=inp.local_window_size,
        default_positions=inp.query_positions is None and inp.key_value_positions is None,
        bias_fn=internal_bias_fn,
        always_mask=inp.mask is not None or inp.query_segment_ids is not None,
        has_lengths=inp.query_seq_lengths is not None or inp.key_value_seq_lengths is not None,
    )
    out, lse = _flash_core(cfg, q, k, v, bias_int, consts, aux)
    # [nq, B, K, bq * G, H] -> [B, T, N, H]; lse [nq, B, K, bq * G] -> [B, N, T].
    out = out.reshape(nq, b, kh, bq, g, h).transpose(1, 0, 3, 2, 4, 5).reshape(b, tp, n, h)
    lse = lse.reshape(nq, b, kh, bq, g).transpose(1, 2, 4, 0, 3).reshape(b, n, tp)
    return out[:, :t], lse[..., :t]


def merge_attention(out_a, lse_a, out_b, lse_b):
    r"""Combines attention over two disjoint sets of keys into attention over their union.

    With :math:`L = \log \sum_j e^{s_j}` the log-sum-exp of each query row over a key set,

    .. math::
      L = \log(e^{L_a} + e^{L_b}), \qquad
      o = e^{L_a - L}\,o_a + e^{L_b - L}\,o_b,

    which is exact (the building block of ring / sequence-parallel attention, where each
    device attends to one shard of the keys). A row that sees no key in one part has
    :math:`L = -\infty` there and takes the other part unchanged; a row that sees no key in
    either part outputs 0 with :math:`L = -\infty`. Computed in float32.

    Args:
      out_a: ``[B, T, N, H]`` (or ``[T, N, H]``) attention output over the first key set, as
        from ``flash_attention(..., return_residuals=True)``.
      lse_a: ``[B, N, T]`` (or ``[N, T]``) its log-sum-exp.
      out_b: output over the second key set, the shape of ``out_a``.
      lse_b: its log-sum-exp, the shape of ``lse_a``.

    Returns:
      ``(out, lse)``: ``[B, T, N, H]`` in the dtype of ``out_a`` and float32 ``[B, N, T]``.

    Raises:
      ValueError: if the shapes do not match each other.
    """
    out_a, out_b = jnp.asarray(out_a), jnp.asarray(out_b)
    lse_a, lse_b = jnp.asarray(lse_a), jnp.asarray(lse_b)
    if out_a.shape != out_b.shape or lse_a.shape != lse_b.shape:
        raise ValueError(
            f"merge_attention needs matching shapes, got outputs {out_a.shape} and "
            f"{out_b.shape}, lse {lse_a.shape} and {lse_b.shape}."
        )
    if out_a.ndim not in (3, 4) or lse_a.shape != out_a.shape[:-3] + (
        out_a.shape[-2],
        out_a.shape[-3],
    ):
        raise ValueError(
            f"out must be [B, T, N, H] (or [T, N, H]) and lse [B, N, T] (or [N, T]), got "
            f"out {out_a.shape} and lse {lse_a.shape}."
        )
    ct = _checks.compute_dtype(lse_a.dtype)
    lse_a, lse_b = lse_a.astype(ct), lse_b.astype(ct)
    m = jnp.maximum(lse_a, lse_b)
    m_safe = jnp.where(m == -jnp.inf, 0.0, m)
    w_a, w_b = jnp.exp(lse_a - m_safe), jnp.exp(lse_b - m_safe)
    total = w_a + w_b
    empty = total == 0.0
    total_safe = jnp.where(empty, 1.0, total)
    lse = jnp.where(empty, -jnp.inf, m_safe + jnp.log(total_safe))

    def rows(w):  # [.., N, T] -> [.., T, N, 1]
        return jnp.swapaxes(w / total_safe, -1, -2)[..., None]

    out = rows(w_a) * out_a.astype(ct) + rows(w_b) * out_b.astype(ct)
    return out.astype(out_a.dtype), lse
