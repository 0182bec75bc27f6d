"""Tests for attention_jax.flash: flash_attention and merge_attention.

The reference is an independent float64 NumPy implementation of masked softmax attention
and of its gradient (written out by hand, not differentiated by JAX).
"""

from __future__ import annotations

import functools
import math

import chex
import hypothesis.strategies as st
import jax
import jax.extend as jex
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from jax.test_util import check_grads

from attention_jax import (
    canonicalize_attention_inputs,
    dot_product_attention,
    flash_attention,
    merge_attention,
)
from attention_jax.flash import flash_block_plan

# ----------------------------------------------------------------------------------------
# float64 NumPy reference (forward and hand-written backward).
# ----------------------------------------------------------------------------------------


def np_attention(
    q,
    k,
    v,
    bias=None,
    mask=None,
    *,
    d_out=None,
    scale=None,
    is_causal=False,
    query_seq_lengths=None,
    key_value_seq_lengths=None,
    local_window_size=None,
    segment_ids=None,
    query_positions=None,
    key_value_positions=None,
    bias_fn=None,
    softcap=None,
):
    """Returns ``out [B, T, N, H]``, ``lse [B, N, T]`` and, with ``d_out``, the gradients
    ``(dq, dk, dv, dbias)`` of ``sum(out * d_out)``."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    b, t, n, h = q.shape
    s, kh = k.shape[1], k.shape[2]
    g = n // kh
    scale = 1.0 / math.sqrt(h) if scale is None else scale
    kr, vr = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)  # head i uses kv head i // g
    raw = np.einsum("btnh,bsnh->bnts", q, kr) * scale
    tt = None
    logits = raw
    if softcap is not None:
        tt = np.tanh(raw / softcap)
        logits = softcap * tt
    if bias is not None:
        logits = logits + np.asarray(bias, np.float64)
    qp = np.broadcast_to(
        np.arange(t) if query_positions is None else np.asarray(query_positions), (b, t)
    )
    kp = np.broadcast_to(
        np.arange(s) if key_value_positions is None else np.asarray(key_value_positions), (b, s)
    )
    if bias_fn is not None:
        logits = logits + bias_fn(qp[:, None, :, None], kp[:, None, None, :])
    allowed = np.ones((b, n, t, s), bool)
    rows, cols = qp[:, None, :, None], kp[:, None, None, :]
    if is_causal:
        allowed &= cols <= rows
    if local_window_size is not None:
        left, right = (
            (local_window_size,) * 2 if isinstance(local_window_size, int) else local_window_size
        )
        allowed &= (cols >= rows - left) & (cols <= rows + right)
    if query_seq_lengths is not None:
        allowed &= (
            np.arange(t)[None, None, :, None] < np.asarray(query_seq_lengths)[:, None, None, None]
        )
    if key_value_seq_lengths is not None:
        allowed &= (
            np.arange(s)[None, None, None, :]
            < np.asarray(key_value_seq_lengths)[:, None, None, None]
        )
    if segment_ids is not None:
        qs, ks = segment_ids if isinstance(segment_ids, tuple) else (segment_ids, segment_ids)
        allowed &= np.asarray(qs)[:, None, :, None] == np.asarray(ks)[:, None, None, :]
    if mask is not None:
        allowed &= np.asarray(mask)
    m = np.max(np.where(allowed, logits, -np.inf), axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.where(allowed, np.exp(np.where(allowed, logits, 0.0) - m), 0.0)
    total = e.sum(-1, keepdims=True)
    p = e / np.where(total > 0, total, 1.0)
    out = np.einsum("bnts,bsnh->btnh", p, vr)
    lse = np.where(
        total[..., 0] > 0, m[..., 0] + np.log(np.where(total > 0, total, 1.0))[..., 0], -np.inf
    )
    if d_out is None:
        return out, lse
    d_out = np.asarray(d_out, np.float64)
    dvr = np.einsum("bnts,btnh->bsnh", p, d_out)
    dp = np.einsum("btnh,bsnh->bnts", d_out, vr)
    ds = p * (dp - np.sum(dp * p, axis=-1, keepdims=True))
    dbias = None
    if bias is not None:
        shape = np.shape(bias)  # [B|1, N|1, T|1, S|1]
        axes = tuple(i for i, d in enumerate(shape) if d == 1 and ds.shape[i] != 1)
        dbias = ds.sum(axis=axes, keepdims=True)
    draw = ds if tt is None else ds * (1.0 - tt**2)
    dq = np.einsum("bnts,bsnh->btnh", draw, kr) * scale
    dkr = np.einsum("bnts,btnh->bsnh", draw, q) * scale
    dk = dkr.reshape(b, s, kh, g, h).sum(3)
    dv = dvr.reshape(b, s, kh, g, h).sum(3)
    return out, lse, (dq, dk, dv, dbias)


# ----------------------------------------------------------------------------------------
# Helpers.
# ----------------------------------------------------------------------------------------


def alibi_like(num_heads):
    """An ALiBi-like bias_fn: -slope_n * |i - j|, broadcastable to [B, N, t, s]."""
    slopes = 2.0 ** (-np.arange(1, num_heads + 1))

    def fn(q_pos, k_pos):
        q_pos, k_pos = jnp.asarray(q_pos), jnp.asarray(k_pos)
        if q_pos.ndim == 1:
            dist = jnp.abs(q_pos[:, None] - k_pos[None, :])[None, None]
        else:
            dist = jnp.abs(q_pos[:, :, None] - k_pos[:, None, :])[:, None]
        return -jnp.asarray(slopes, jnp.float32)[None, :, None, None] * dist

    def np_fn(q_pos, k_pos):  # q_pos [B, 1, T, 1], k_pos [B, 1, 1, S]
        return -slopes[None, :, None, None] * np.abs(q_pos - k_pos)

    return fn, np_fn


def make_inputs(seed, b, t, s, n, kh, h, dtype=jnp.float32, bias_shape=None):
    # NumPy draws: jax.random would compile a kernel per new shape.
    rng = np.random.default_rng(seed)

    def normal(shape, dt=dtype):
        return jnp.asarray(rng.standard_normal(shape, np.float32), dt)

    q, k, v = normal((b, t, n, h)), normal((b, s, kh, h)), normal((b, s, kh, h))
    d_out = normal((b, t, n, h))
    bias = None if bias_shape is None else normal(bias_shape, jnp.float32)
    return q, k, v, bias, d_out


# Tests compile many small programs and run each once: ask XLA for a cheaper compile.
fast_jit = functools.partial(
    jax.jit,
    compiler_options={
        "xla_backend_optimization_level": 0,
        "xla_llvm_disable_expensive_passes": True,
    },
)


def out_and_grads(fn, q, k, v, bias, d_out):
    """``fn``'s output and the gradients of ``sum(out * d_out)`` (one jitted call)."""

    @fast_jit
    def run(q, k, v, bias, d_out):
        out, vjp = jax.vjp(fn, q, k, v, bias)
        return out, vjp(d_out.astype(out.dtype))

    out, (dq, dk, dv, dbias) = run(q, k, v, bias, d_out)
    return out, (dq, dk, dv, dbias)


def f64(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def assert_matches_reference(q, k, v, bias, d_out, *, atol, block_q, block_k, **opts):
    np_opts = {kk: vv for kk, vv in opts.items() if kk != "bias_fn"}
    bias_fn = opts.get("bias_fn")
    if bias_fn is not None:
        np_opts["bias_fn"] = opts["np_bias_fn"]
        del np_opts["np_bias_fn"]
    opts = {kk: vv for kk, vv in opts.items() if kk != "np_bias_fn"}

    def flash(q, k, v, bias):
        return flash_attention(q, k, v, bias, block_q=block_q, block_k=block_k, **opts)

    def materialized(q, k, v, bias):
        return dot_product_attention(q, k, v, bias, implementation="xla", **opts)

    out, grads = out_and_grads(flash, q, k, v, bias, d_out)
    chex.assert_shape(out, q.shape)
    assert out.dtype == q.dtype
    ref_out, _, ref_grads = np_attention(q, k, v, bias, d_out=d_out, **np_opts)
    ref_grads = ref_grads[:3] + ((ref_grads[3],) if bias is not None else (None,))
    grads = grads[:3] + ((grads[3],) if bias is not None else (None,))
    for got in jax.tree.leaves((out, grads)):
        assert np.all(np.isfinite(np.asarray(got, np.float64)))
    chex.assert_trees_all_close(f64(out), ref_out, atol=atol, rtol=atol)
    chex.assert_trees_all_close(f64(grads), ref_grads, atol=atol, rtol=atol)
    xla_out, xla_grads = out_and_grads(materialized, q, k, v, bias, d_out)
    xla_grads = xla_grads[:3] + ((xla_grads[3],) if bias is not None else (None,))
    chex.assert_trees_all_close(f64(out), f64(xla_out), atol=atol, rtol=atol)
    chex.assert_trees_all_close(f64(grads), f64(xla_grads), atol=atol, rtol=atol)


# ----------------------------------------------------------------------------------------
# Equality with the reference and with the materialized path.
# ----------------------------------------------------------------------------------------

B, T, S = 2, 13, 19  # neither a multiple of the blocks below
ALIBI, NP_ALIBI = alibi_like(4)


def _segments(b, length, seed):
    rng = np.random.default_rng(seed)
    return jnp.asarray(np.sort(rng.integers(0, 3, (b, length)), axis=1), jnp.int32)


CASES = {
    "causal_t_ne_s": dict(is_causal=True),
    "mqa_window": dict(t=S, kh=1, local_window_size=(3, 2)),
    "causal_left_window": dict(t=S, is_causal=True, local_window_size=(5, 0)),
    "padding": dict(query_seq_lengths=jnp.array([9, 0]), key_value_seq_lengths=jnp.array([4, 19])),
    "segment_ids": dict(t=S, segment_ids=_segments(B, S, 0), is_causal=True),
    "bias_fn_alibi": dict(t=S, is_causal=True, bias_fn=ALIBI, np_bias_fn=NP_ALIBI),
    "softcap_bias": dict(softcap=1.5, bias_shape=(B, 4, T, S)),
    "gqa_bias_per_query": dict(t=S, kh=2, is_causal=True, bias_shape=(B, 1, S, 1)),
    "bias_per_key": dict(bias_shape=(1, 4, 1, S)),
    "dense_mask": dict(mask=jnp.asarray(np.random.default_rng(7).random((B, 1, T, S)) < 0.6)),
    "decode_positions": dict(
        t=5, is_causal=True, query_positions=jnp.arange(5) + S - 5, local_window_size=(6, 0)
    ),
    "batched_positions_window": dict(
        t=S,
        local_window_size=(2, 3),
        query_positions=jnp.stack([jnp.arange(S), jnp.arange(S) * 2]),
        key_value_positions=jnp.stack([jnp.arange(S), jnp.arange(S) * 2]),
        bias_fn=ALIBI,
        np_bias_fn=NP_ALIBI,
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_matches_reference_float32(name):
    opts = dict(CASES[name])
    t = opts.pop("t", T)
    kh = opts.pop("kh", 4)
    bias_shape = opts.pop("bias_shape", None)
    q, k, v, bias, d_out = make_inputs(1, B, t, S, 4, kh, 8, bias_shape=bias_shape)
    assert_matches_reference(q, k, v, bias, d_out, atol=1e-5, block_q=4, block_k=8, **opts)


@pytest.mark.parametrize(
    "opts",
    [dict(is_causal=True, kh=2), dict(bias_shape=(1, 4, T, S), local_window_size=(4, 1))],
    ids=["causal_gqa", "bias_window"],
)
def test_matches_reference_bfloat16(opts):
    opts = dict(opts)
    kh = opts.pop("kh", 4)
    bias_shape = opts.pop("bias_shape", None)
    q, k, v, bias, d_out = make_inputs(
        2, B, T, S, 4, kh, 8, dtype=jnp.bfloat16, bias_shape=bias_shape
    )
    assert_matches_reference(q, k, v, bias, d_out, atol=2e-2, block_q=8, block_k=8, **opts)


@given(
    b=st.integers(1, 2),
    t=st.integers(1, 20),
    s=st.integers(1, 20),
    kh=st.integers(1, 2),
    g=st.integers(1, 2),
    h=st.sampled_from([4, 8]),
    block_q=st.sampled_from([3, 4, 8]),
    block_k=st.sampled_from([4, 5, 16]),
    is_causal=st.booleans(),
    window=st.one_of(st.none(), st.tuples(st.integers(0, 6), st.integers(0, 6))),
    kv_fraction=st.one_of(st.none(), st.floats(0.0, 1.0)),
    softcap=st.one_of(st.none(), st.just(2.0)),
)
def test_matches_reference_hypothesis(
    b, t, s, kh, g, h, block_q, block_k, is_causal, window, kv_fraction, softcap
):
    q, k, v, _, d_out = make_inputs(3, b, t, s, kh * g, kh, h)
    kv_len = None if kv_fraction is None else jnp.full((b,), int(kv_fraction * s), jnp.int32)
    opts = dict(
        is_causal=is_causal,
        local_window_size=window,
        key_value_seq_lengths=kv_len,
        softcap=softcap,
    )

    def flash(q, k, v, bias):
        del bias
        return flash_attention(q, k, v, block_q=block_q, block_k=block_k, **opts)

    out, grads = out_and_grads(flash, q, k, v, None, d_out)
    ref_out, _, ref_grads = np_attention(q, k, v, d_out=d_out, **opts)
    chex.assert_trees_all_close(f64(out), ref_out, atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(f64(grads[:3]), ref_grads[:3], atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------
# Residuals, merging, edge cases.
# ----------------------------------------------------------------------------------------


class FlashVariantsTest(chex.TestCase):
    """Forward properties, run with and without jit."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_lse_matches_reference(self):
        q, k, v, _, _ = make_inputs(4, 1, 9, 11, 2, 1, 4)
        lens = jnp.array([0])  # every row empty: lse -inf, output 0
        fn = self.variant(
            lambda q, k, v, lens: (
                flash_attention(
                    q, k, v, is_causal=True, block_q=4, block_k=4, return_residuals=True
                )
                + flash_attention(
                    q,
                    k,
                    v,
                    key_value_seq_lengths=lens,
                    block_q=4,
                    block_k=4,
                    return_residuals=True,
                )
            )
        )
        out, lse, empty_out, empty_lse = fn(q, k, v, lens)
        ref_out, ref_lse = np_attention(q, k, v, is_causal=True)
        chex.assert_shape(lse, (1, 2, 9))
        chex.assert_trees_all_close(f64(out), ref_out, atol=1e-5)
        chex.assert_trees_all_close(f64(lse), ref_lse, atol=1e-5)
        chex.assert_trees_all_close(f64(empty_out), np.zeros(q.shape))
        assert np.all(np.isneginf(np.asarray(empty_lse)))

    @chex.variants(with_jit=True, without_jit=True)
    def test_unbatched(self):
        q, k, v, _, _ = make_inputs(5, 1, 6, 7, 2, 2, 4)
        fn = self.variant(
            lambda q, k, v: flash_attention(q, k, v, block_q=4, block_k=4, return_residuals=True)
        )
        out, lse = fn(q[0], k[0], v[0])
        chex.assert_shape(out, (6, 2, 4))
        chex.assert_shape(lse, (2, 6))
        ref_out, ref_lse = np_attention(q, k, v)
        chex.assert_trees_all_close(f64(out), ref_out[0], atol=1e-5)
        chex.assert_trees_all_close(f64(lse), ref_lse[0], atol=1e-5)


def test_merge_attention_of_halves_equals_whole():
    q, k, v, _, _ = make_inputs(6, 2, 10, 12, 4, 2, 4)
    split = 5

    def halves(q, k, v):
        # Causal over the second half leaves rows 0..4 without keys there: lse = -inf.
        a = flash_attention(
            q, k[:, :split], v[:, :split], block_q=4, block_k=4, return_residuals=True
        )
        b = flash_attention(
            q,
            k[:, split:],
            v[:, split:],
            is_causal=True,
            query_positions=jnp.arange(10),
            key_value_positions=jnp.arange(split, 12),
            block_q=4,
            block_k=4,
            return_residuals=True,
        )
        return merge_attention(*a, *b)

    out, lse = fast_jit(halves)(q, k, v)
    # The whole: every key of the first half, causal keys of the second.
    mask = np.concatenate(
        [np.ones((10, split), bool), np.arange(split, 12)[None, :] <= np.arange(10)[:, None]],
        axis=1,
    )
    ref_out, ref_lse = np_attention(q, k, v, mask=mask[None, None])
    chex.assert_trees_all_close(f64(out), ref_out, atol=1e-5)
    chex.assert_trees_all_close(f64(lse), ref_lse, atol=1e-5)


def test_merge_attention_gradients_match_whole():
    q, k, v, _, d_out = make_inputs(8, 1, 8, 10, 2, 2, 4)

    def merged(q, k, v, bias):
        del bias
        a = flash_attention(q, k[:, :6], v[:, :6], block_q=4, block_k=4, return_residuals=True)
        b = flash_attention(q, k[:, 6:], v[:, 6:], block_q=4, block_k=4, return_residuals=True)
        return merge_attention(*a, *b)[0]

    out, grads = out_and_grads(merged, q, k, v, None, d_out)
    ref_out, _, ref_grads = np_attention(q, k, v, d_out=d_out)
    chex.assert_trees_all_close(f64(out), ref_out, atol=1e-5)
    chex.assert_trees_all_close(f64(grads[:3]), ref_grads[:3], atol=1e-5)


def test_merge_attention_both_empty_rows_and_shape_errors():
    out = jnp.ones((1, 3, 2, 4))
    lse = jnp.full((1, 2, 3), -jnp.inf)
    merged, merged_lse = merge_attention(out, lse, out, lse)
    chex.assert_trees_all_close(merged, jnp.zeros_like(out))
    assert np.all(np.isneginf(np.asarray(merged_lse)))
    with pytest.raises(ValueError, match="matching shapes"):
        merge_attention(out, lse, out[:, :2], lse)
    with pytest.raises(ValueError, match=r"lse \[B, N, T\]"):
        merge_attention(out, lse[:, :, :2], out, lse[:, :, :2])


def test_fully_masked_rows_are_zero_with_finite_gradients():
    q, k, v, _, d_out = make_inputs(9, 2, 7, 9, 2, 2, 4)
    seg_q = jnp.array([[0, 0, 1, 1, 5, 5, 5], [1, 1, 1, 1, 1, 1, 1]], jnp.int32)
    seg_k = jnp.array([[0, 0, 0, 1, 1, 1, 2, 2, 2], [0, 0, 0, 0, 0, 0, 0, 0, 0]], jnp.int32)
    opts = dict(segment_ids=(seg_q, seg_k), query_seq_lengths=jnp.array([6, 7]))

    def flash(q, k, v, bias):
        del bias
        return flash_attention(q, k, v, block_q=4, block_k=4, **opts)

    out, grads = out_and_grads(flash, q, k, v, None, d_out)
    out = np.asarray(out)
    np.testing.assert_array_equal(out[0, 4:], 0.0)  # segment 5 has no key; row 6 is padding
    np.testing.assert_array_equal(out[1], 0.0)  # no key shares segment 1
    for x in grads[:3]:
        assert np.all(np.isfinite(np.asarray(x)))
    ref_out, _, ref_grads = np_attention(q, k, v, d_out=d_out, **opts)
    chex.assert_trees_all_close(f64(out), ref_out, atol=1e-5)
    chex.assert_trees_all_close(f64(grads[:3]), ref_grads[:3], atol=1e-5)


def test_large_logits_stay_finite():
    q, k, v, _, d_out = make_inputs(10, 1, 9, 9, 2, 2, 4)
    bias = jnp.where(jnp.arange(9)[:, None] % 2 == jnp.arange(9)[None, :] % 2, 1e4, -1e4)
    q = q * 100.0  # logits of order 1e2 on top of a +-1e4 bias

    def flash(q, k, v, bias):
        return flash_attention(q, k, v, bias, block_q=4, block_k=4, is_causal=True)

    out, grads = out_and_grads(flash, q, k, v, bias, d_out)
    for x in jax.tree.leaves((out, grads)):
        assert np.all(np.isfinite(np.asarray(x)))
    ref_out, _ = np_attention(q, k, v, bias, is_causal=True)
    chex.assert_trees_all_close(f64(out), ref_out, atol=1e-4)


def test_learned_bias_fn_table_gets_its_gradient():
    q, k, v, _, _ = make_inputs(11, 1, 6, 6, 2, 2, 4)
    table = jnp.linspace(-1.0, 1.0, 11)

    def loss(table, implementation):
        def bias_fn(q_pos, k_pos):
            rel = jnp.clip(k_pos[None, :] - q_pos[:, None] + 5, 0, 10)
            return table[rel]

        out = dot_product_attention(q, k, v, bias_fn=bias_fn, implementation=implementation)
        return jnp.sum(out**2)

    g_flash = fast_jit(jax.grad(loss), static_argnums=1)(table, "flash")
    g_xla = fast_jit(jax.grad(loss), static_argnums=1)(table, "xla")
    chex.assert_trees_all_close(g_flash, g_xla, atol=1e-5)
    assert float(jnp.abs(g_flash).sum()) > 0


def test_check_grads_float64():
    with jax.enable_x64(True):
        rng = np.random.default_rng(12)
        q, k, v, bias = (
            jnp.asarray(rng.standard_normal(shape), jnp.float64)
            for shape in ((1, 5, 2, 3), (1, 6, 1, 3), (1, 6, 1, 3), (1, 2, 5, 6))
        )

        def fn(q, k, v, bias):
            return flash_attention(q, k, v, bias, is_causal=True, softcap=3.0, block_q=2, block_k=4)

        check_grads(jax.jit(fn), (q, k, v, bias), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_dot_product_attention_routes_to_flash():
    q, k, v, bias, _ = make_inputs(13, 2, 5, 7, 4, 2, 4, bias_shape=(2, 1, 1, 7))
    routed = fast_jit(lambda *a: dot_product_attention(*a, is_causal=True, implementation="flash"))(
        q, k, v, bias
    )
    direct = fast_jit(lambda *a: flash_attention(*a, is_causal=True))(q, k, v, bias)
    chex.assert_trees_all_close(routed, direct)


# ----------------------------------------------------------------------------------------
# Argument checks.
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(key=jnp.ones((1, 4, 2, 5))), ValueError, "head dim"),
        (
            dict(query=jnp.ones((1, 3, 3, 4))),
            ValueError,
            r"flash_attention: the number of query heads N=3 must be a multiple of the key/value heads K=2",
        ),
        (dict(query=jnp.ones((1, 3, 2, 4), jnp.int32)), TypeError, "floating-point"),
        (dict(mask=jnp.ones((1, 2, 3, 4))), TypeError, "boolean"),
        (
            dict(bias=jnp.ones((3, 3, 4))),
            ValueError,
            r"flash_attention: bias must be broadcastable to \[B, N, T, S\]=\(1, 2, 3, 4\), got float32 array of shape \(3, 3, 4\)",
        ),
        (dict(softcap=0.0), ValueError, "softcap"),
        (dict(block_q=0), ValueError, "block_q"),
        (dict(block_k=2.5), ValueError, "block_k"),
        (dict(bias_fn=lambda qp, kp: jnp.ones((3, 3, 3))), ValueError, "bias_fn"),
    ],
)
def test_argument_errors(kwargs, error, match):
    args = dict(
        query=jnp.ones((1, 3, 2, 4)), key=jnp.ones((1, 4, 2, 4)), value=jnp.ones((1, 4, 2, 4))
    )
    args.update(kwargs)
    with pytest.raises(error, match=match):
        flash_attention(**args)


def test_same_errors_as_materialized_path():
    q, k = jnp.ones((2, 3, 2, 4)), jnp.ones((2, 4, 2, 4))
    for kwargs in (dict(query_seq_lengths=jnp.ones((3,), jnp.int32)), dict(local_window_size=-1)):
        messages = []
        for fn in (flash_attention, dot_product_attention):
            with pytest.raises(ValueError) as info:
                fn(q, k, k, **kwargs)
            caller, message = str(info.value).split(": ", 1)
            assert caller == fn.__name__
            messages.append(message)
        assert messages[0] == messages[1]


# ----------------------------------------------------------------------------------------
# Memory and block skipping (structure only: tracing, no execution).
# ----------------------------------------------------------------------------------------


def _subjaxprs(params):
    """Sub-jaxprs of an equation: scan/while bodies, cond branches, custom_vjp calls."""
    for value in params.values():
        for item in value if isinstance(value, tuple | list) else (value,):
            if isinstance(item, jex.core.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, jex.core.Jaxpr):
                yield item


def _largest_var(jaxpr) -> int:
    largest = 0
    for var in list(jaxpr.invars) + list(jaxpr.constvars):
        largest = max(largest, math.prod(getattr(var.aval, "shape", ())))
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            largest = max(largest, math.prod(getattr(var.aval, "shape", ())))
        for sub in _subjaxprs(eqn.params):
            largest = max(largest, _largest_var(sub))
    return largest


@pytest.mark.parametrize("is_causal", [False, True])
def test_no_t_by_s_array_in_forward_or_backward(is_causal):
    t = s = 2048
    q = jax.ShapeDtypeStruct((1, t, 2, 16), jnp.float32)

    def loss(q, k, v):
        return jnp.sum(flash_attention(q, k, v, is_causal=is_causal))

    for fn in (loss, jax.grad(loss, argnums=(0, 1, 2))):
        largest = _largest_var(jax.make_jaxpr(fn)(q, q, q).jaxpr)
        assert largest < t * s, largest
    # The walker does see a [T, S] array where there is one.
    dense = jax.make_jaxpr(lambda q, k, v: dot_product_attention(q, k, v, implementation="xla"))
    assert _largest_var(dense(q, q, q).jaxpr) >= t * s


def _plan(t, s, bq, bk, **kw):
    q, k = jnp.zeros((1, t, 1, 4)), jnp.zeros((1, s, 1, 4))
    inp = canonicalize_attention_inputs(q, k, k, **kw)
    return np.asarray(flash_block_plan(inp, block_q=bq, block_k=bk))


@pytest.mark.parametrize(
    "kw",
    [
        dict(is_causal=True),
        dict(local_window_size=(5, 3)),
        dict(is_causal=True, local_window_size=(9, 4)),
        dict(local_window_size=(0, 12)),
        dict(is_causal=True, query_positions=np.arange(29) + 8),
        dict(key_value_seq_lengths=np.array([21], np.int32)),
    ],
)
def test_block_plan_visits_exactly_the_visible_blocks(kw):
    t, s, bq, bk = 29, 37, 4, 8
    nq, nk = -(-t // bq), -(-s // bk)
    plan = _plan(t, s, bq, bk, **kw)
    chex.assert_shape(plan, (nq, nk))
    rows = np.asarray(kw.get("query_positions", np.arange(t)))
    rows = np.concatenate([rows, np.full(nq * bq - t, -(10**6))])[:, None]  # padded rows
    cols = np.arange(nk * bk)[None, :]
    visible = np.broadcast_to(cols < s, (rows.size, cols.size)).copy()
    visible &= rows > -(10**6)
    left, right = kw.get("local_window_size", (None, None))
    if left is not None:
        visible &= (cols >= rows - left) & (cols <= rows + right)
    if kw.get("is_causal"):
        visible &= cols <= rows
    if "key_value_seq_lengths" in kw:
        visible &= cols < kw["key_value_seq_lengths"][0]
    blocks = visible.reshape(nq, bq, nk, bk)
    real = (np.arange(nq * bq) < t).reshape(nq, bq)[:, :, None, None]
    any_visible = blocks.any((1, 3))
    all_visible = (blocks | ~real).all((1, 3))
    np.testing.assert_array_equal(plan > 0, any_visible)  # skips exactly the empty blocks
    assert not np.any((plan == 2) & ~all_visible)  # unmasked blocks are fully visible


def test_causal_visits_about_half_the_blocks():
    plan = _plan(4096, 4096, 256, 256, is_causal=True)
    assert np.sum(plan > 0) == 16 * 17 // 2
    assert np.sum(plan == 1) == 16  # only the diagonal blocks are masked


def test_dot_product_attention_forwards_flash_block_sizes():
    rng = np.random.default_rng(11)
    q = jnp.asarray(rng.normal(size=(2, 37, 4, 8)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(2, 29, 2, 8)), jnp.float32)
    expected = dot_product_attention(q, k, k, is_causal=True, implementation="xla")
    for bq, bk in ((8, 16), (None, 7)):
        out = dot_product_attention(
            q, k, k, is_causal=True, implementation="flash", block_q=bq, block_k=bk
        )
        chex.assert_trees_all_close(out, expected, atol=1e-5, rtol=1e-5)
        direct = flash_attention(q, k, k, is_causal=True, block_q=bq, block_k=bk)
        chex.assert_trees_all_close(out, direct, atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"dot_product_attention: block_k must be an int >= 1"):
        dot_product_attention(q, k, k, implementation="flash", block_k=0)


def test_backward_at_merged_residuals_splits_the_gradient_exactly():
    """``flash_attention_backward_at`` with the output and log-sum-exp of the whole key set
    gives each key subset its exact share: the shares add up to flash attention's VJP
    (dq summed, dk/dv per subset, the captured bias table summed)."""
    from attention_jax.flash import flash_attention_backward_at

    ks = jax.random.split(jax.random.key(7), 5)
    b, t, s, n, kh, h = 2, 13, 22, 4, 2, 8
    q = jax.random.normal(ks[0], (b, t, n, h))
    k = jax.random.normal(ks[1], (b, s, kh, h))
    v = jax.random.normal(ks[2], (b, s, kh, h))
    d_out = jax.random.normal(ks[3], (b, t, n, h))
    d_lse = jax.random.normal(ks[4], (b, n, t))
    q_pos, kv_pos = jnp.arange(t) + s - t, jnp.arange(s)

    def options(slopes):
        bias = lambda qp, kp: slopes[:, None, None] * (kp[None, :] - qp[:, None])  # noqa: E731
        return dict(is_causal=True, query_positions=q_pos, bias_fn=bias, block_q=4, block_k=4)

    def full(q, k, v, slopes):
        return flash_attention(
            q, k, v, key_value_positions=kv_pos, return_residuals=True, **options(slopes)
        )

    slopes = jnp.array([0.1, 0.2, 0.3, 0.4])

    @jax.jit
    def reference(q, k, v, slopes):
        res, vjp = jax.vjp(full, q, k, v, slopes)
        return res, vjp((d_out, d_lse))

    (out, lse), want = reference(q, k, v, slopes)
    shares = []
    for lo, hi in ((0, 10), (10, s)):

        def part(q, k, v, slopes, lo=lo, hi=hi):
            return flash_attention_backward_at(
                q, k, v, out, lse, key_value_positions=kv_pos[lo:hi], **options(slopes)
            )

        def share(q, k, v, slopes, part=part):
            got, part_vjp = jax.vjp(part, q, k, v, slopes)
            return got, part_vjp((d_out, d_lse))

        got, grads = jax.jit(share)(q, k[:, lo:hi], v[:, lo:hi], slopes)
        chex.assert_trees_all_equal(got, (out, lse))  # nothing is computed forward
        shares.append(grads)
    dq = shares[0][0] + shares[1][0]
    dk = jnp.concatenate([shares[0][1], shares[1][1]], axis=1)
    dv = jnp.concatenate([shares[0][2], shares[1][2]], axis=1)
    d_slopes = shares[0][3] + shares[1][3]
    chex.assert_trees_all_close((dq, dk, dv, d_slopes), want, atol=2e-5, rtol=2e-5)
