"""Memory-efficient (flash) attention in plain JAX: blockwise, with the online softmax.

The forward pass walks over blocks of queries and, for each, over blocks of keys, keeping a
running row maximum, normalizer and output (Milakov & Gimelshein 2018; Rabe & Staats 2021;
the loop order of FlashAttention-2, Dao 2023). The backward pass is a ``jax.custom_vjp`` that
recomputes each block of probabilities from the saved output and log-sum-exp, so neither pass
holds a ``[T, S]`` array.

Block plan. Before the loops, every mask source (causal and local windows from each block's
min/max positions, padding lengths, padded keys, dense masks and segment ids, a block mask
from :func:`attention_jax.flex.create_block_mask`) is folded into one ``[nq, nk]`` plan: empty
blocks are never visited, full blocks run without evaluating any mask, partial blocks apply
the mask (``mask_mod`` included). Everything between ``q k^T`` and the mask (softcap, the
dense bias, ``bias_fn``, ``score_mod``) is one score term, differentiated by one VJP per block
in the backward pass, so the built-in options and user mods share one code path per pass.

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
from attention_jax.flex import (
    BlockMask,
    create_block_mask,
    evaluate_on_grid,
    mask_grid_counts,
    reads_batch_and_head,
)
from attention_jax.masks import attention_mask, combine_masks

__all__ = [
    "flash_attention",
    "flash_attention_backward_at",
    "merge_attention",
    "DEFAULT_BLOCK_Q",
    "DEFAULT_BLOCK_K",
]

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
    # Score terms after softcap and the dense bias: bias_fn and score_mod, closure-converted,
    # (s, q_pos, kv_pos, *consts) -> s in the internal layout; None = none.
    terms: Callable | None
    mask_mod: Callable | None  # closure-converted (b, h, q, kv, *mask_consts) -> bool
    mask_reads: tuple[bool, bool]  # whether mask_mod reads (batch, head)
    acc: Any  # accumulation dtype: float32, or float64 for float64 inputs
    can_be_full: bool  # some block may need no mask: the unmasked loop is traced
    can_be_partial: bool  # some block may need a mask: the masked loop is traced


# ----------------------------------------------------------------------------------------
# Which blocks to visit: one [nq, nk] plan from every mask source.
# ----------------------------------------------------------------------------------------


def _block_extent(pos, index_blocks, size: int, real: int):
    """Per block ``(min, max)`` position of its real rows: ``[n]`` each.

    ``pos`` is ``[L]`` or ``[B, L]`` padded positions (None: the indices); only rows below
    ``real`` count (padded rows repeat the last position, so min/max are unchanged).
    """
    if pos is None:
        lo = index_blocks * size
        return lo, jnp.minimum(lo + size, real) - 1
    p = pos.reshape(pos.shape[:-1] + (-1, size))
    if p.ndim == 3:  # [B, n, size]: the extent over the whole batch
        return jnp.min(p, axis=(0, 2)), jnp.max(p, axis=(0, 2))
    return jnp.min(p, axis=-1), jnp.max(p, axis=-1)


def block_plan(cfg: _Config, aux) -> jax.Array:
    """``[nq, nk]`` int32: 0 = no visible entry (skipped), 1 = partial (masked), 2 = full.

    Every mask source is one term: causal/window from the min/max positions of each block
    (exact for sorted positions, conservative otherwise), padding lengths, padded keys, a dense
    mask or segment ids (partial wherever visible), a ``mask_mod`` (partial everywhere unless a
    block mask says which blocks are empty or full, over every batch element and head).
    """
    i, j = jnp.arange(cfg.nq), jnp.arange(cfg.nk)
    q_lo, q_hi = _block_extent(aux["q_pos"], i, cfg.bq, cfg.t)
    k_lo, k_hi = _block_extent(aux["kv_pos"], j, cfg.bk, cfg.s)
    q_lo, q_hi, k_lo, k_hi = q_lo[:, None], q_hi[:, None], k_lo[None, :], k_hi[None, :]
    visible = jnp.ones((cfg.nq, cfg.nk), bool)
    full = jnp.ones((cfg.nq, cfg.nk), bool)
    left = right = None
    if cfg.window is not None:
        left, right = cfg.window
    if cfg.is_causal:
        right = 0 if right is None else min(right, 0)
    if right is not None:
        visible &= k_lo <= q_hi + right
        full &= k_hi <= q_lo + right
    if left is not None:
        visible &= k_hi >= q_lo - left
        full &= k_lo >= q_hi - left
    rows0, rows1 = (i * cfg.bq)[:, None], jnp.minimum((i + 1) * cfg.bq, cfg.t)[:, None]
    cols0, cols1 = (j * cfg.bk)[None, :], ((j + 1) * cfg.bk)[None, :]
    full &= cols1 <= cfg.s  # padded keys need the mask
    if aux["kv_len"] is not None:
        kv_len = jnp.clip(aux["kv_len"], 0, cfg.s).astype(jnp.int32)
        visible &= cols0 < jnp.max(kv_len)
        full &= cols1 <= jnp.min(kv_len)
    if aux["q_len"] is not None:
        q_len = aux["q_len"].astype(jnp.int32)
        # Query blocks made only of padding rows attend to nothing (they output zeros).
        visible &= rows0 < jnp.max(q_len)
        full &= rows1 <= jnp.min(q_len)
    if aux["mask"] is not None or aux["q_seg"] is not None:
        full &= False
    if cfg.mask_mod is not None:
        if aux["block_state"] is None:
            full &= False
        else:
            state = aux["block_state"].reshape(-1, cfg.nq, cfg.nk)
            visible &= jnp.any(state > 0, axis=0)
            full &= jnp.all(state == 2, axis=0)
    return jnp.where(visible, jnp.where(full, 2, 1), 0).astype(jnp.int32)


def _visit_order(plan):
    """Per row of ``plan``: the columns to visit, full ones first (ascending), then partial;
    and the number of each. ``(order [n, m], n_full [n], n_partial [n])``."""
    m = plan.shape[1]
    rank = jnp.where(plan == 2, 0, jnp.where(plan == 1, 1, 2)) * m + jnp.arange(m)
    order = jnp.argsort(rank, axis=1).astype(jnp.int32)
    return order, jnp.sum(plan == 2, axis=1), jnp.sum(plan == 1, axis=1)


def _run_loops(cfg: _Config, visits, r, body, carry):
    """``body(index, carry, masked=False)`` over the full blocks of row ``r`` of the plan,
    then ``body(index, carry, masked=True)`` over its partial blocks. A loop that no block can
    take is not traced (each loop body costs compile time)."""
    order, n_full, n_partial = visits
    row = order[r]
    if cfg.can_be_full:
        carry = lax.fori_loop(0, n_full[r], lambda n, c: body(row[n], c, masked=False), carry)
    if cfg.can_be_partial:
        start = n_full[r] if cfg.can_be_full else jnp.int32(0)
        carry = lax.fori_loop(
            start, start + n_partial[r], lambda n, c: body(row[n], c, masked=True), carry
        )
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
    """Indices and positions (the indices where none are given) of block (i, j)'s rows and
    columns: ``q_index [bq]``, ``kv_index [bk]``, ``q_pos [bq]|[B, bq]``, ``kv_pos``."""
    q_index = i * cfg.bq + jnp.arange(cfg.bq, dtype=jnp.int32)
    kv_index = j * cfg.bk + jnp.arange(cfg.bk, dtype=jnp.int32)
    q_pos = _slice_seq(aux["q_pos"], i, cfg.bq)
    kv_pos = _slice_seq(aux["kv_pos"], j, cfg.bk)
    q_pos = q_index if q_pos is None else q_pos
    kv_pos = kv_index if kv_pos is None else kv_pos
    return q_index, kv_index, q_pos, kv_pos


def _grid_args(b: int, kh: int, g: int, q_pos, kv_pos):
    """Index arrays of the internal block layout ``[B, K, bq, G, bk]`` for
    :func:`evaluate_on_grid`: batch, key/value head, group, query and key positions."""
    return [
        (jnp.arange(b, dtype=jnp.int32), (0,)),
        (jnp.arange(kh, dtype=jnp.int32), (1,)),
        (jnp.arange(g, dtype=jnp.int32), (3,)),
        (q_pos, (0, 2) if q_pos.ndim == 2 else (2,)),
        (kv_pos, (0, 4) if kv_pos.ndim == 2 else (4,)),
    ]


def _block_mask(cfg: _Config, i, j, aux, mask_consts, b: int, kh: int):
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
    mod = None
    if cfg.mask_mod is not None:
        g = cfg.groups

        def point(bi, ki, gi, qi, kvi):
            return cfg.mask_mod(bi, ki * g + gi, qi, kvi, *mask_consts)

        # A mask that does not read batch or head is evaluated once and broadcast.
        b_eval, n_eval = mask_grid_counts(cfg.mask_reads, b, kh * g, q_pos, kv_pos)
        kh_eval, g_eval = (kh, g) if n_eval == kh * g else (1, 1)
        sizes = (b_eval, kh_eval, cfg.bq, g_eval, cfg.bk)
        args = _grid_args(b_eval, kh_eval, g_eval, q_pos, kv_pos)
        mod = evaluate_on_grid(point, sizes, args)
    return combine_masks(structural, pad, dense, mod)


def _score_terms(cfg: _Config, s, bias_blk, q_pos, kv_pos, consts):
    """Everything between ``scale * q k^T`` and the mask: softcap, the dense bias, then
    ``bias_fn`` and ``score_mod`` (``cfg.terms``). ``s``: ``[B, K, bq, G, bk]`` in cfg.acc."""
    if cfg.softcap is not None:
        s = cfg.softcap * jnp.tanh(s * (1.0 / cfg.softcap))
    if bias_blk is not None:
        s = s + bias_blk.astype(cfg.acc)
    if cfg.terms is not None:
        s = cfg.terms(s, q_pos, kv_pos, *consts).astype(cfg.acc)
    return s


def _has_terms(cfg: _Config, bias) -> bool:
    return cfg.softcap is not None or bias is not None or cfg.terms is not None


def _logits(cfg: _Config, q_blk, k_blk):
    """``q k^T`` of one block (q pre-scaled) in ``cfg.acc``, ``[B, K, bq, G, bk]``."""
    s = lax.dot_general(
        q_blk, k_blk, (((3,), (3,)), ((0, 1), (0, 1))), preferred_element_type=cfg.acc
    )
    b, k, _, _ = s.shape
    return s.reshape(b, k, cfg.bq, cfg.groups, cfg.bk)


def _flat(x):
    """``[B, K, bq, G, X]`` -> ``[B, K, bq * G, X]``."""
    b, k, bq, g, n = x.shape
    return x.reshape(b, k, bq * g, n)


# ----------------------------------------------------------------------------------------
# Forward.
# ----------------------------------------------------------------------------------------


def _sink_rows(cfg: _Config, sinks, kh: int):
    """``[N]`` sink logits -> ``[1, K, M]`` rows of the internal layout (rows are (token,
    group) pairs, head ``k * G + g``), in cfg.acc."""
    rows = jnp.tile(sinks.astype(cfg.acc).reshape(1, kh, 1, cfg.groups), (1, 1, cfg.bq, 1))
    return rows.reshape(1, kh, cfg.bq * cfg.groups)


def _forward(cfg: _Config, q, k, v, bias, sinks, consts, aux, mask_consts):
    """q: [nq, B, K, M, H] (pre-scaled); k, v: [nk, B, K, bk, H]; sinks: [N] or None.

    Returns out [nq, B, K, M, H] (dtype of v) and lse [nq, B, K, M] in cfg.acc.
    """
    _, b, kh, m_rows, h = q.shape
    visits = _visit_order(block_plan(cfg, aux))

    def q_step(_, xs):
        i, q_blk = xs

        def kv_step(j, carry, masked):
            m_prev, l_prev, acc = carry
            bias_blk = None if bias is None else _slice_rows_cols(bias, i, j, cfg, 2, 4)
            _, _, q_pos, kv_pos = _block_positions(cfg, i, j, aux)
            s = _score_terms(cfg, _logits(cfg, q_blk, k[j]), bias_blk, q_pos, kv_pos, consts)
            if masked:
                mask = _block_mask(cfg, i, j, aux, mask_consts, b, kh)
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

        if sinks is None:
            m0, l0 = jnp.full((b, kh, m_rows), -jnp.inf, cfg.acc), jnp.zeros((b, kh, m_rows))
        else:
            # The sink is one more logit per row, with value 0: the running max starts at it
            # and the running normalizer at exp(sink - max) = 1.
            m0 = jnp.broadcast_to(_sink_rows(cfg, sinks, kh), (b, kh, m_rows))
            l0 = jnp.ones((b, kh, m_rows))
        init = (m0, l0.astype(cfg.acc), jnp.zeros((b, kh, m_rows, h), cfg.acc))
        m_fin, l_fin, acc = _run_loops(cfg, visits, i, kv_step, init)
        empty = l_fin == 0.0
        out = acc / jnp.where(empty, 1.0, l_fin)[..., None]
        lse = jnp.where(empty, -jnp.inf, m_fin + jnp.log(jnp.where(empty, 1.0, l_fin)))
        return None, (out.astype(v.dtype), lse)

    _, (out, lse) = lax.scan(q_step, None, (jnp.arange(cfg.nq, dtype=jnp.int32), q))
    return out, lse


# ----------------------------------------------------------------------------------------
# Backward (FlashAttention-2: key blocks outer, dQ accumulated).
# ----------------------------------------------------------------------------------------


def _backward(cfg: _Config, res, cotangents):
    q, k, v, bias, sinks, consts, aux, mask_consts, out, lse = res
    d_out, d_lse = cotangents
    _, b, kh, m_rows, h = q.shape
    visits = _visit_order(block_plan(cfg, aux).T)
    # D_i = rowsum(dO * O) - dlse: the softmax Jacobian term of every row, and the lse
    # cotangent enters the same place (d lse / d s = p).
    delta = jnp.sum(d_out.astype(cfg.acc) * out.astype(cfg.acc), axis=-1)
    delta = delta - d_lse
    dsinks = None
    if sinks is not None:
        # The sink's weight p = exp(sink - lse) has a zero value vector, so its logit
        # gradient is p * (0 - delta), summed over every row of its head.
        p_sink = jnp.exp(_sink_rows(cfg, sinks, kh)[None] - lse)  # [nq, B, K, M]
        d = -(p_sink * delta).reshape(-1, b, kh, cfg.bq, cfg.groups)
        dsinks = jnp.sum(d, axis=(0, 1, 3)).reshape(-1).astype(sinks.dtype)
    # Rows with lse = -inf saw no key; +inf makes exp(s - lse) exactly 0 there.
    lse = jnp.where(lse == -jnp.inf, jnp.inf, lse)
    has_terms = _has_terms(cfg, bias)

    def kv_step(carry, xs):
        dq, dbias, dconsts = carry
        j, k_blk, v_blk = xs

        def q_step(i, c, masked):
            dk, dv, dq, dbias, dconsts = c
            q_blk, do_blk = q[i], d_out[i]
            bias_blk = None if bias is None else _slice_rows_cols(bias, i, j, cfg, 2, 4)
            _, _, q_pos, kv_pos = _block_positions(cfg, i, j, aux)
            logits = _logits(cfg, q_blk, k_blk)
            terms_vjp = None
            if has_terms:
                # One rule for every score term (softcap, bias, bias_fn, score_mod): the
                # gradient flows back through their VJP, to the logits, the dense bias and
                # every array the mods capture.
                def terms(s, bias_blk, *cs):
                    return _score_terms(cfg, s, bias_blk, q_pos, kv_pos, cs)

                s, terms_vjp = jax.vjp(terms, logits, bias_blk, *consts)
            else:
                s = logits
            p = jnp.exp(s - lse[i].reshape(b, kh, cfg.bq, cfg.groups, 1))
            if masked:
                mask = _block_mask(cfg, i, j, aux, mask_consts, b, kh)
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
            ds = p * (dp - delta[i][..., None])  # d (logits after every score term)
            if terms_vjp is not None:
                ds5, db, *dcs = terms_vjp(ds.reshape(logits.shape))
                ds = _flat(ds5)
                if bias is not None:
                    zero = jnp.int32(0)
                    start = [zero, zero, i * cfg.bq, zero, j * cfg.bk]
                    start = [st if dbias.shape[a] != 1 else zero for a, st in enumerate(start)]
                    cur = lax.dynamic_slice(dbias, start, db.shape)
                    dbias = lax.dynamic_update_slice(dbias, cur + db.astype(cur.dtype), start)
                dconsts = tuple(a + g.astype(a.dtype) for a, g in zip(dconsts, dcs, strict=True))
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

        zeros = jnp.zeros((b, kh, h, cfg.bk), cfg.acc)
        c = (zeros, zeros, dq, dbias, dconsts)
        dk, dv, dq, dbias, dconsts = _run_loops(cfg, visits, j, q_step, c)
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
    return dq.astype(q.dtype), dk, dv, dbias, dsinks, dconsts, None, None


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash_core(cfg, q, k, v, bias, sinks, consts, aux, mask_consts):
    return _forward(cfg, q, k, v, bias, sinks, consts, aux, mask_consts)


def _flash_core_fwd(cfg, q, k, v, bias, sinks, consts, aux, mask_consts):
    out, lse = _forward(cfg, q, k, v, bias, sinks, consts, aux, mask_consts)
    return (out, lse), (q, k, v, bias, sinks, consts, aux, mask_consts, out, lse)


_flash_core.defvjp(_flash_core_fwd, _backward)


# The backward pass at given residuals: the forward returns the output and log-sum-exp it is
# handed (no work) and the VJP is flash attention's backward at them. With the residuals of
# attention over a larger key set (ring attention's merged result), the VJP is this key
# block's exact share of the gradient, with nothing recomputed.
@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash_given(cfg, q, k, v, bias, sinks, consts, aux, mask_consts, out, lse):
    return out, lse


def _flash_given_fwd(cfg, q, k, v, bias, sinks, consts, aux, mask_consts, out, lse):
    return (out, lse), (q, k, v, bias, sinks, consts, aux, mask_consts, out, lse)


def _flash_given_bwd(cfg, res, cotangents):
    return (*_backward(cfg, res, cotangents), None, None)


_flash_given.defvjp(_flash_given_fwd, _flash_given_bwd)


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


def _user_terms(bias_fn, score_mod, b: int, n: int, kh: int, bq: int, bk: int):
    """``bias_fn`` and ``score_mod`` as one score term in the internal block layout:
    ``(s [B, K, bq, G, bk], q_pos, kv_pos) -> s``.

    ``bias_fn(q_pos, kv_pos)`` must broadcast to ``[B, N, bq, bk]``; ``score_mod`` is applied
    to every score with its batch, query head (``k * G + g``), query and key position.
    """
    g = n // kh

    def internal_bias(q_pos, kv_pos):
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
            x4 = x4.reshape(b0, kh, g, t0, s0)
        else:
            x4 = x4.reshape(b0, 1, 1, t0, s0)
        return jnp.swapaxes(x4, 2, 3).astype(_checks.compute_dtype(x4.dtype))

    def point(score, bi, ki, gi, qi, kvi):
        return score_mod(score, bi, ki * g + gi, qi, kvi)

    def terms(s, q_pos, kv_pos):
        if bias_fn is not None:
            s = s + internal_bias(q_pos, kv_pos)
        if score_mod is not None:
            args = [(s, (0, 1, 2, 3, 4))] + _grid_args(b, kh, g, q_pos, kv_pos)
            s = evaluate_on_grid(point, s.shape, args)
        return s

    return terms


def _empty_result(inp: AttentionInputs):
    b, t, _, n, _, h = inp.dims
    acc = _checks.compute_dtype(inp.query.dtype)
    lse = jnp.full((b, n, t), -jnp.inf, acc)
    if inp.sinks is not None:  # only the sink: its log-sum-exp is the sink logit
        lse = jnp.broadcast_to(inp.sinks.astype(acc)[None, :, None], (b, n, t))
    return jnp.zeros((b, t, n, h), inp.query.dtype), lse


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
    score_mod: Callable | None = None,
    mask_mod: Callable | None = None,
    block_mask: BlockMask | None = None,
    sinks: jax.Array | None = None,
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
    Blocks that the masks hide entirely are skipped and fully visible ones run without a
    mask: causal and local windows from the min/max positions of each block (exact for
    sorted positions), padding lengths, and a ``block_mask`` (made from ``mask_mod`` when only
    that is given).

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
      score_mod: optional ``(score, batch, head, q_idx, kv_idx) -> score``, written as for
        scalars (FlexAttention's ``score_mod``; applied with ``jax.vmap`` over every index):
        ``score`` is the float32 logit after scaling, softcap, ``bias`` and ``bias_fn``,
        ``head`` the query head (also under GQA), ``q_idx``/``kv_idx`` the positions.
        Arrays it captures are differentiated (a learned table gets its gradient).
      mask_mod: optional ``(batch, head, q_idx, kv_idx) -> bool`` (True = may attend), written
        as for scalars and ANDed with every other mask source.
      block_mask: optional :class:`attention_jax.flex.BlockMask` from
        :func:`attention_jax.flex.create_block_mask` for this call's shapes: its
        ``mask_mod`` applies, and the flash path skips its empty blocks, evaluates the mask
        only on partial ones and runs with its block sizes.
      sinks: optional ``[N]`` float sink logits, one per query head: the sink joins the
        online-softmax denominator (the running max starts at it), so
        ``w_ij = exp(l_ij) / (exp(sinks_h) + sum_j exp(l_ij))``; its gradient is
        ``-sum_i exp(sinks_h - L_i) D_i`` over the rows of head ``h``. The returned
        log-sum-exp includes the sink.
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
        score_mod=score_mod,
        mask_mod=mask_mod,
        block_mask=block_mask,
        sinks=sinks,
        fn="flash_attention",
    )
    out, lse = flash_attention_canonical(
        inp, block_q=block_q, block_k=block_k, fn="flash_attention"
    )
    if inp.unbatched:
        out, lse = out[0], lse[0]
    return (out, lse) if return_residuals else out


def flash_attention_backward_at(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    out: jax.Array,
    lse: jax.Array,
    *,
    block_q: int | None = None,
    block_k: int | None = None,
    **options,
) -> tuple[jax.Array, jax.Array]:
    """Flash attention's backward pass at given residuals, as a differentiable function.

    Returns ``(out, lse)`` unchanged and computes nothing forward; its VJP with respect to
    ``query``, ``key``, ``value`` (and arrays that ``bias_fn`` / ``score_mod`` close over)
    is the backward pass of :func:`flash_attention` with ``out`` and ``lse`` as residuals.
    Given the output and log-sum-exp of attention over a *larger* key set that contains
    these keys, the weights ``exp(s - lse)`` are the final ones and the VJP is exactly this
    key set's share of the gradient: how ring attention runs its backward ring without
    recomputing any forward block.

    Args:
      query: ``[B, T, N, H]``.
      key, value: ``[B, S, K, H]``.
      out: ``[B, T, N, H]``, the (merged) attention output.
      lse: ``[B, N, T]`` float32, its log-sum-exp (``-inf`` for rows with no key).
      block_q, block_k, **options: as in :func:`flash_attention` (no ``return_residuals``).

    Returns:
      ``(out, lse)``, the same arrays.
    """
    inp = canonicalize_attention_inputs(query, key, value, **options, fn="flash_attention")
    if inp.unbatched:
        raise ValueError(
            "flash_attention_backward_at: query must be batched [B, T, N, H], got "
            f"{_checks.describe(query)}."
        )
    return flash_attention_canonical(
        inp, block_q=block_q, block_k=block_k, fn="flash_attention", residuals=(out, lse)
    )


def _block_sizes(inp: AttentionInputs, block_q, block_k, fn: str) -> tuple[int, int]:
    """The flash block sizes: explicit ones, else the block mask's, else the defaults."""
    if block_q is not None:
        block_q = _checks.check_int(block_q, "block_q", fn=fn)
    if block_k is not None:
        block_k = _checks.check_int(block_k, "block_k", fn=fn)
    bm = inp.block_mask
    if bm is None:
        return block_q or DEFAULT_BLOCK_Q, block_k or DEFAULT_BLOCK_K
    _, t, s, _, _, _ = inp.dims
    asked = (min(block_q or bm.block_q, t), min(block_k or bm.block_k, s))
    if asked != (bm.block_q, bm.block_k):
        raise ValueError(
            f"{fn}: block_mask must have the block sizes the call runs with, got a block_mask "
            f"of blocks {(bm.block_q, bm.block_k)} and block_q, block_k = {asked}; leave "
            "block_q/block_k unset to run with the block mask's sizes."
        )
    return bm.block_q, bm.block_k


def flash_attention_canonical(
    inp: AttentionInputs,
    *,
    block_q: int | None = None,
    block_k: int | None = None,
    fn: str = "dot_product_attention",
    residuals: tuple[jax.Array, jax.Array] | None = None,
) -> tuple[jax.Array, jax.Array]:
    """:func:`flash_attention` on validated inputs (the entry point of the dispatcher).

    Args:
      inp: canonical inputs from :func:`attention_jax.canonicalize_attention_inputs`
        (batched; ``inp.unbatched`` is ignored).
      block_q, block_k: as in :func:`flash_attention`.
      fn: the public function named in error messages.
      residuals: None, or a given ``(out [B, T, N, H], lse [B, N, T])``: then nothing is
        computed, they are returned as they are, and the VJP is flash attention's backward
        pass at them (see :func:`flash_attention_backward_at`).

    Returns:
      ``(out, lse)``: ``[B, T, N, H]`` in the query dtype and float32 ``[B, N, T]``.
    """
    b, t, s, n, kh, h = inp.dims
    if t == 0 or s == 0:
        _block_sizes(inp, block_q, block_k, fn)
        return _empty_result(inp) if residuals is None else residuals
    cfg, q, k, v, bias_int, consts, aux, mask_consts = _setup(inp, block_q, block_k, fn)
    nq, bq, g = cfg.nq, cfg.bq, cfg.groups
    if residuals is None:
        out, lse = _flash_core(cfg, q, k, v, bias_int, inp.sinks, consts, aux, mask_consts)
    else:
        # [B, T, N, H] -> [nq, B, K, bq * G, H] and [B, N, T] -> [nq, B, K, bq * G]; padded
        # query rows get lse = -inf (no key: zero weights) and, by autodiff, zero dO.
        out_u, lse_u = residuals
        out_i = _query_rows_to_internal(out_u, nq, bq, kh, g)
        lse_i = _lse_to_internal(lse_u.astype(cfg.acc), nq, bq, kh, g)
        out, lse = _flash_given(
            cfg, q, k, v, bias_int, inp.sinks, consts, aux, mask_consts, out_i, lse_i
        )
    return _query_rows_from_internal(out, t, g), _lse_from_internal(lse, t, g)


def flash_block_plan(
    inp: AttentionInputs, *, block_q: int | None = None, block_k: int | None = None
) -> jax.Array:
    """Which blocks the flash path visits for a call: ``[nq, nk]`` int32, 0 = skipped,
    1 = visited with a mask, 2 = visited without one (see :func:`block_plan`). The forward
    pass walks each row's visited blocks, the backward pass each column's."""
    cfg, *_, aux, _ = _setup(inp, block_q, block_k, "flash_block_plan")
    return block_plan(cfg, aux)


def _query_rows_to_internal(x, nq: int, bq: int, kh: int, g: int):
    """``[B, T, N, H]`` -> ``[nq, B, K, bq * G, H]`` (padded to ``nq * bq`` rows): the
    pre-blocked layout of the queries (and of the output), one transpose per call."""
    b, h = x.shape[0], x.shape[-1]
    x = _pad_axis(x, 1, nq * bq).reshape(b, nq, bq, kh, g, h)
    return x.transpose(1, 0, 3, 2, 4, 5).reshape(nq, b, kh, bq * g, h)


def _query_rows_from_internal(x, t: int, g: int):
    """``[nq, B, K, bq * G, H]`` -> ``[B, T, N, H]`` (the padded rows dropped)."""
    nq, b, kh, m, h = x.shape
    bq = m // g
    x = x.reshape(nq, b, kh, bq, g, h).transpose(1, 0, 3, 2, 4, 5)
    return x.reshape(b, nq * bq, kh * g, h)[:, :t]


def _lse_to_internal(x, nq: int, bq: int, kh: int, g: int):
    """``[B, N, T]`` -> ``[nq, B, K, bq * G]``; padded rows get ``-inf`` (no key: zero
    weights)."""
    b = x.shape[0]
    x = _pad_axis(x, 2, nq * bq, -jnp.inf).reshape(b, kh, g, nq, bq)
    return x.transpose(3, 0, 1, 4, 2).reshape(nq, b, kh, bq * g)


def _lse_from_internal(x, t: int, g: int):
    """``[nq, B, K, bq * G]`` -> ``[B, N, T]``."""
    nq, b, kh, m = x.shape
    bq = m // g
    x = x.reshape(nq, b, kh, bq, g).transpose(1, 2, 4, 0, 3)
    return x.reshape(b, kh * g, nq * bq)[..., :t]


def _keys_to_internal(x, nk: int, bk: int):
    """``[B, S, K, H]`` -> ``[nk, B, K, bk, H]`` (zero-padded to ``nk * bk`` keys)."""
    b, _, kh, h = x.shape
    return _pad_axis(x, 1, nk * bk).reshape(b, nk, bk, kh, h).transpose(1, 0, 3, 2, 4)


def _setup(inp: AttentionInputs, block_q, block_k, fn: str, *, plan_mask_mod: bool = True):
    """The static config and the internal-layout operands of one flash call.

    ``plan_mask_mod=False`` leaves ``aux["block_state"]`` None for a ``mask_mod`` without a
    block mask, for callers that build one per key set themselves (ring attention)."""
    block_q, block_k = _block_sizes(inp, block_q, block_k, fn)
    if inp.logits_head_mix is not None or inp.weights_head_mix is not None:
        raise ValueError(
            f"{fn}: logits_head_mix and weights_head_mix must be None on the flash path "
            "(talking heads mix whole logit rows across heads; use implementation='xla')."
        )
    b, t, s, n, kh, h = inp.dims
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
    q = _query_rows_to_internal(q, nq, bq, kh, g)
    k, v = _keys_to_internal(inp.key, nk, bk), _keys_to_internal(inp.value, nk, bk)

    bias_int = None
    if inp.bias is not None:
        bias_int = _to_internal(inp.bias, n, kh, t, s, tp, sp, 0)
    mask_int = None
    if inp.mask is not None:
        mask_int = _to_internal(inp.mask, n, kh, t, s, tp, sp, False)

    def positions(x, length):
        return None if x is None else _pad_edge(x.astype(jnp.int32), length)

    mask_mod, block_mask = inp.mask_mod, inp.block_mask
    if mask_mod is not None and block_mask is None and plan_mask_mod:
        # Without a block mask every block would be evaluated: one pass over the grid
        # (block by block, never [T, S]) finds the empty and full blocks first.
        block_mask = create_block_mask(
            mask_mod,
            b,
            n,
            t,
            s,
            block_q=bq,
            block_k=bk,
            query_positions=inp.query_positions,
            key_value_positions=inp.key_value_positions,
        )
    aux: dict[str, Any] = {
        "mask": mask_int,
        "q_len": inp.query_seq_lengths,
        "kv_len": inp.key_value_seq_lengths,
        "q_seg": positions(inp.query_segment_ids, tp),
        "kv_seg": positions(inp.key_value_segment_ids, sp),
        "q_pos": positions(inp.query_positions, tp),
        "kv_pos": positions(inp.key_value_positions, sp),
        "block_state": None if block_mask is None else block_mask.state,
    }

    q_ex = jnp.zeros((bq,) if aux["q_pos"] is None else aux["q_pos"][..., :bq].shape, "int32")
    kv_ex = jnp.zeros((bk,) if aux["kv_pos"] is None else aux["kv_pos"][..., :bk].shape, "int32")
    terms, consts = None, ()
    if inp.bias_fn is not None or inp.score_mod is not None:
        s_ex = jnp.zeros((b, kh, bq, g, bk), _checks.compute_dtype(dtype))
        # Hoists arrays that bias_fn and score_mod close over into explicit arguments, so the
        # custom VJP can differentiate them (a learned relative-position table, say).
        terms, consts = jax.closure_convert(
            _user_terms(inp.bias_fn, inp.score_mod, b, n, kh, bq, bk), s_ex, q_ex, kv_ex
        )
        consts = tuple(consts)
    internal_mask_mod, mask_consts = None, ()
    if mask_mod is not None:
        i32 = jnp.zeros((), jnp.int32)
        internal_mask_mod, mask_consts = jax.closure_convert(mask_mod, i32, i32, i32, i32)
        mask_consts = tuple(mask_consts)

    needs_mask = (
        inp.is_causal
        or inp.local_window_size is not None
        or inp.query_seq_lengths is not None
        or inp.key_value_seq_lengths is not None
        or inp.mask is not None
        or inp.query_segment_ids is not None
        or mask_mod is not None
        or s % bk != 0
    )
    cfg = _Config(
        t=t,
        s=s,
        bq=bq,
        bk=bk,
        nq=nq,
        nk=nk,
        groups=g,
        softcap=inp.softcap,
        is_causal=inp.is_causal,
        window=inp.local_window_size,
        terms=terms,
        mask_mod=internal_mask_mod,
        mask_reads=(True, True) if mask_mod is None else reads_batch_and_head(mask_mod),
        acc=_checks.compute_dtype(dtype),
        can_be_full=inp.mask is None and inp.query_segment_ids is None,
        can_be_partial=needs_mask,
    )
    return cfg, q, k, v, bias_int, consts, aux, mask_consts


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
    out, lse = _merge_rows(out_a, jnp.swapaxes(lse_a, -1, -2), out_b, jnp.swapaxes(lse_b, -1, -2))
    return out.astype(out_a.dtype), jnp.swapaxes(lse, -1, -2)


def _merge_rows(out_a, lse_a, out_b, lse_b):
    """:func:`merge_attention` for any layout whose ``lse`` is ``out``'s shape without its
    last (head-dim) axis; the output in the compute dtype of ``lse_a``."""
    ct = _checks.compute_dtype(lse_a.dtype)
    lse_a, lse_b = lse_a.astype(ct), lse_b.astype(ct)
    m = jnp.maximum(lse_a, lse_b)
    m_safe = jnp.where(m == -jnp.inf, 0.0, m)
    w_a, w_b = jnp.exp(lse_a - m_safe), jnp.exp(lse_b - m_safe)
    total = w_a + w_b
    empty = total == 0.0
    total_safe = jnp.where(empty, 1.0, total)
    lse = jnp.where(empty, -jnp.inf, m_safe + jnp.log(total_safe))
    w_a, w_b = (w_a / total_safe)[..., None], (w_b / total_safe)[..., None]
    return w_a * out_a.astype(ct) + w_b * out_b.astype(ct), lse
