"""Attention sinks (both paths) and talking heads (materialized) against float64 NumPy."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import attention_jax as aj

TOL = dict(atol=2e-5, rtol=2e-5)


def np_attention(q, k, v, *, sinks=None, mask=None, logits_mix=None, weights_mix=None):
    """float64 loops-free reference: ``w_ij = exp(l_ij) / (exp(sink_h) + sum_j exp(l_ij))``
    over allowed keys; talking heads mix logits before and weights after the normalizer."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    b, t, n, h = q.shape
    kh = k.shape[2]
    kr, vr = np.repeat(k, n // kh, axis=2), np.repeat(v, n // kh, axis=2)
    logits = np.einsum("btnh,bsnh->bnts", q, kr) / math.sqrt(h)
    if logits_mix is not None:
        logits = np.einsum("bnts,nm->bmts", logits, np.asarray(logits_mix, np.float64))
    allowed = np.ones(logits.shape, bool) if mask is None else np.broadcast_to(mask, logits.shape)
    e = np.where(allowed, np.exp(logits), 0.0)
    denom = e.sum(-1, keepdims=True)
    if sinks is not None:
        denom = denom + np.exp(np.asarray(sinks, np.float64))[None, :, None, None]
    w = e / np.where(denom > 0, denom, 1.0)
    if weights_mix is not None:
        w = np.einsum("bnts,nm->bmts", w, np.asarray(weights_mix, np.float64))
    return np.einsum("bnts,bsnh->btnh", w, vr)


def inputs(b=2, t=11, s=17, n=6, kh=2, h=8, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.normal(size=(b, t, n, h)) * scale, jnp.float32)
    k = jnp.asarray(rng.normal(size=(b, s, kh, h)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(b, s, kh, h)), jnp.float32)
    sinks = jnp.asarray(rng.normal(size=(n,)), jnp.float32)
    return q, k, v, sinks


def attend(impl, *args, **kw):
    extra = dict(block_q=4, block_k=8) if impl == "flash" else {}
    return aj.dot_product_attention(*args, implementation=impl, **extra, **kw)


@pytest.mark.parametrize("impl", ["xla", "flash"])
def test_sinks_match_reference_with_gqa_causal_and_lengths(impl):
    q, k, v, sinks = inputs()
    kv_len = jnp.array([17, 9], jnp.int32)
    out = attend(impl, q, k, v, sinks=sinks, is_causal=True, key_value_seq_lengths=kv_len)
    i, j = np.arange(11)[:, None], np.arange(17)[None, :]
    mask = ((j <= i) & (j < np.asarray(kv_len)[:, None, None]))[:, None]
    chex.assert_trees_all_close(out, np_attention(q, k, v, sinks=sinks, mask=mask), **TOL)


def test_sink_gradients_agree_between_paths_and_check_grads():
    q, k, v, sinks = inputs(seed=1)
    d_out = jnp.asarray(np.random.default_rng(2).normal(size=q.shape), jnp.float32)

    def loss(impl):
        def f(q, k, v, sinks):
            return jnp.sum(attend(impl, q, k, v, sinks=sinks, is_causal=True) * d_out)

        return jax.jit(jax.grad(f, argnums=(0, 1, 2, 3)))(q, k, v, sinks)

    chex.assert_trees_all_close(loss("flash"), loss("xla"), **TOL)
    with jax.enable_x64(True):
        args = [jnp.asarray(x, jnp.float64) for x in inputs(b=1, t=5, s=9, n=2, kh=1, h=4)]

        def fn(q, k, v, sinks):
            return aj.flash_attention(q, k, v, sinks=sinks, block_q=2, block_k=4)

        check_grads(jax.jit(fn), args, order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("impl", ["xla", "flash"])
def test_zero_sinks_equal_softmax_one(impl):
    q, k, v, _ = inputs(seed=3)
    zero = jnp.zeros(q.shape[2])
    expected = aj.dot_product_attention(q, k, v, normalizer="softmax_one", implementation="xla")
    chex.assert_trees_all_close(attend(impl, q, k, v, sinks=zero), expected, **TOL)


@pytest.mark.parametrize("impl", ["xla", "flash"])
def test_sinks_with_fully_masked_rows_and_huge_logits_stay_finite(impl):
    q, k, v, sinks = inputs(seed=4, scale=1e4)  # logits of order 1e4

    def loss(q, k, v, sinks):
        out = attend(impl, q, k, v, sinks=sinks, query_positions=jnp.arange(11) - 3, is_causal=True)
        return jnp.sum(out**2), out

    (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True)(q, k, v, sinks)
    chex.assert_trees_all_close(out[:, :3], jnp.zeros_like(out[:, :3]))  # rows before key 0
    for x in (out, *grads):
        assert bool(jnp.all(jnp.isfinite(x)))


def test_flash_residuals_include_the_sink():
    q, k, v, sinks = inputs(seed=5)
    _, lse = aj.flash_attention(q, k, v, sinks=sinks, return_residuals=True)
    qf, kf = np.asarray(q, np.float64), np.repeat(np.asarray(k, np.float64), 3, axis=2)
    logits = np.einsum("btnh,bsnh->bnts", qf, kf) / math.sqrt(8)
    total = np.exp(logits).sum(-1) + np.exp(np.asarray(sinks, np.float64))[None, :, None]
    chex.assert_trees_all_close(lse, np.log(total), **TOL)


def test_talking_heads_match_reference_and_stay_materialized():
    q, k, v, _ = inputs(seed=6)
    rng = np.random.default_rng(7)
    p_l, p_w = (jnp.asarray(rng.normal(size=(6, 6)) / 3, jnp.float32) for _ in range(2))
    out = aj.dot_product_attention(
        q, k, v, logits_head_mix=p_l, weights_head_mix=p_w, is_causal=True
    )
    i, j = np.arange(11)[:, None], np.arange(17)[None, :]
    ref = np_attention(q, k, v, mask=(j <= i)[None, None], logits_mix=p_l, weights_mix=p_w)
    chex.assert_trees_all_close(out, ref, **TOL)
    grads = jax.grad(
        lambda a, b: jnp.sum(
            aj.dot_product_attention(q, k, v, logits_head_mix=a, weights_head_mix=b)
        ),
        argnums=(0, 1),
    )(p_l, p_w)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)
    inputs_ = aj.canonicalize_attention_inputs(q, k, v, logits_head_mix=p_l)
    big = aj.canonicalize_attention_inputs(
        jnp.zeros((1, 2048, 6, 8)),
        jnp.zeros((1, 2048, 2, 8)),
        jnp.zeros((1, 2048, 2, 8)),
        weights_head_mix=p_w,
    )
    assert aj.select_implementation(inputs_).name == "xla"
    assert aj.select_implementation(big).name == "xla"  # even above the flash threshold
    with pytest.raises(ValueError, match=r"implementation='flash' cannot serve this call: "):
        aj.dot_product_attention(q, k, v, logits_head_mix=p_l, implementation="flash")


@pytest.mark.parametrize(
    "kw, message",
    [
        (
            dict(sinks=jnp.zeros(4)),
            r"dot_product_attention: sinks must be of shape \[N\]=\(6,\) \(one logit per query "
            r"head\), got float32 array of shape \(4,\)\.",
        ),
        (
            dict(sinks=jnp.zeros(6), normalizer="sparsemax"),
            r"dot_product_attention: normalizer must be 'softmax' when sinks are given \(the sink "
            r"joins the softmax denominator\), got 'sparsemax'\.",
        ),
        (
            dict(logits_head_mix=jnp.zeros((6, 5))),
            r"dot_product_attention: logits_head_mix must be of shape \[N, N\]=\(6, 6\), got "
            r"float32 array of shape \(6, 5\)\.",
        ),
        (
            dict(weights_head_mix=jnp.zeros((6, 6), jnp.int32)),
            r"dot_product_attention: weights_head_mix must be a floating-point array, got int32 "
            r"array of shape \(6, 6\)\.",
        ),
    ],
)
def test_bad_sinks_and_mixes_raise(kw, message):
    q, k, v, _ = inputs()
    with pytest.raises((TypeError, ValueError), match=message):
        jax.jit(lambda q: aj.dot_product_attention(q, k, v, **kw))(q)
