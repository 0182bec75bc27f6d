"""Differential, forgetting and stick-breaking attention.

Each variant is checked against a float64 NumPy reference written here with loops over the
paper's formula (forward), against numerical derivatives in float64 (``check_grads``, the
materialized path), flash against materialized (forward and gradients), and for the
properties its paper states (causality, limits that reduce to plain attention, rows that sum
to at most 1).
"""

from __future__ import annotations

import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import attention_jax as aj
from attention_jax.variants import (
    differential_attention,
    forgetting_attention,
    stick_breaking_attention,
)

BLOCKS = dict(block_q=4, block_k=4)  # several blocks with ragged edges on the flash path
TOL = dict(atol=2e-5, rtol=2e-5)


def normal(rng, shape, dtype=jnp.float32):
    return jnp.asarray(rng.normal(size=shape), dtype)


def jit_call(fn, *args, **kw):
    """``fn(*args, **kw)`` compiled as a whole (faster on CPU than op-by-op dispatch)."""
    return jax.jit(lambda *a: fn(*a, **kw))(*args)


def sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow for logits of +-1e4


# ----------------------------------------------------------------------------------------
# float64 NumPy references, written as loops over the papers' formulas.
# ----------------------------------------------------------------------------------------


def np_softmax_attention(q, k, v, allowed, scale, extra=None):
    """``q [B, T, N, H]``, ``k [B, S, K, H]``, ``v [B, S, K, Hv]``; ``allowed(b, i, j)``;
    ``extra(b, n, i, j)`` is added to the logit. Rows with no allowed key output 0."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    b_, t, n_, _ = q.shape
    s, kh = k.shape[1], k.shape[2]
    out = np.zeros((b_, t, n_, v.shape[-1]))
    for b in range(b_):
        for n in range(n_):
            kv = n // (n_ // kh)
            for i in range(t):
                js = [j for j in range(s) if allowed(b, i, j)]
                if not js:
                    continue
                logits = np.array(
                    [
                        scale * q[b, i, n] @ k[b, j, kv]
                        + (0.0 if extra is None else extra(b, n, i, j))
                        for j in js
                    ]
                )
                p = np.exp(logits - logits.max())
                p /= p.sum()
                out[b, i, n] = sum(pj * v[b, j, kv] for pj, j in zip(p, js, strict=True))
    return out


def np_differential(q, k, v, lam, allowed):
    """softmax(s q0 k0^T) V - lam * softmax(s q1 k1^T) V, s = 1/sqrt(H)."""
    q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
    scale = 1.0 / math.sqrt(q.shape[-1])
    a0 = np_softmax_attention(q[..., 0, :], k[..., 0, :], v, allowed, scale)
    a1 = np_softmax_attention(q[..., 1, :], k[..., 1, :], v, allowed, scale)
    lam = np.broadcast_to(np.asarray(lam, np.float64), (q.shape[2],))
    return a0 - lam[None, None, :, None] * a1


def np_forgetting(q, k, v, log_forget, allowed=None):
    """Causal softmax with logits s q_i k_j + sum_{l=j+1..i} log f_l."""
    lf = np.asarray(log_forget, np.float64)
    scale = 1.0 / math.sqrt(q.shape[-1])

    def causal(b, i, j):
        return j <= i and (allowed is None or allowed(b, i, j))

    def decay(b, n, i, j):
        return sum(lf[b, l, n] for l in range(j + 1, i + 1))

    return np_softmax_attention(q, k, v, causal, scale, decay)


def np_stick_breaking(q, k, v, attend_current=False, scale=None):
    """A_ij = beta_ij prod_{j<k<i} (1 - beta_ik) (k <= i with attend_current); returns the
    output [B, T, N, H] and the remainder 1 - sum_j A_ij [B, N, T]."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    b_, t, n_, h = q.shape
    kh = k.shape[2]
    scale = 1.0 / math.sqrt(h) if scale is None else scale
    out = np.zeros(q.shape)
    rem = np.ones((b_, n_, t))
    for b in range(b_):
        for n in range(n_):
            kv = n // (n_ // kh)
            for i in range(t):
                last = i if attend_current else i - 1
                beta = {j: sigmoid(scale * q[b, i, n] @ k[b, j, kv]) for j in range(last + 1)}
                for j in range(last + 1):
                    a = beta[j] * np.prod([1.0 - beta[m] for m in range(j + 1, last + 1)])
                    out[b, i, n] += a * v[b, j, kv]
                    rem[b, n, i] -= a
    return out, rem


# ----------------------------------------------------------------------------------------
# Differential attention.
# ----------------------------------------------------------------------------------------


def diff_inputs(b=2, t=5, s=7, n=4, kh=2, h=6, hv=6, seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    q = normal(rng, (b, t, n, 2, h), dtype)
    k = normal(rng, (b, s, kh, 2, h), dtype)
    v = normal(rng, (b, s, kh, hv), dtype)
    lam = jnp.asarray(rng.uniform(0.1, 0.9, size=(n,)), jnp.float32)
    return q, k, v, lam


@pytest.mark.parametrize(
    "impl, hv, causal, lengths",
    [
        ("xla", 6, False, None),
        ("xla", 12, True, None),
        ("xla", 3, True, (7, 4)),
        ("xla", 6, False, (2, 5)),
        ("flash", 3, False, (7, 4)),
    ],
)
def test_differential_matches_reference(impl, hv, causal, lengths):
    q, k, v, lam = diff_inputs(hv=hv)
    kw = {} if lengths is None else dict(key_value_seq_lengths=jnp.asarray(lengths))
    extra = BLOCKS if impl == "flash" else {}
    out = jit_call(
        differential_attention, q, k, v, lam, is_causal=causal, implementation=impl, **kw, **extra
    )

    def allowed(b, i, j):
        return (not causal or j <= i) and (lengths is None or j < lengths[b])

    chex.assert_shape(out, (2, 5, 4, hv))
    np.testing.assert_allclose(out, np_differential(q, k, v, lam, allowed), **TOL)


def test_differential_scalar_lam_unbatched_and_jit():
    q, k, v, _ = diff_inputs(b=1, n=3, kh=1, h=4, hv=4)
    fn = jax.jit(lambda q, k, v, lam: differential_attention(q, k, v, lam, is_causal=True))
    out = fn(q[0], k[0], v[0], 0.25)
    chex.assert_shape(out, (5, 3, 4))
    want = np_differential(q, k, v, 0.25, lambda b, i, j: j <= i)[0]
    np.testing.assert_allclose(out, want, **TOL)


def test_differential_lam_zero_is_softmax_attention_on_first_half():
    q, k, v, _ = diff_inputs()
    out = jit_call(differential_attention, q, k, v, lam=0, is_causal=True)
    plain = jit_call(aj.dot_product_attention, q[..., 0, :], k[..., 0, :], v, is_causal=True)
    np.testing.assert_allclose(out, plain, atol=1e-6, rtol=1e-6)


def test_differential_check_grads_float64():
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        q = jnp.asarray(rng.normal(size=(1, 3, 2, 2, 4)))
        k = jnp.asarray(rng.normal(size=(1, 4, 1, 2, 4)))
        v = jnp.asarray(rng.normal(size=(1, 4, 1, 5)))
        lam = jnp.asarray([0.3, 0.7])

        def fn(q, k, v, lam):
            return differential_attention(q, k, v, lam, is_causal=True, implementation="xla")

        check_grads(jax.jit(fn), (q, k, v, lam), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_differential_flash_matches_xla_forward_and_gradients():
    """Hv = 2 H (the paper's value width), causal; the forward also against the reference."""
    q, k, v, lam = diff_inputs(hv=12, seed=2)
    d_out = normal(np.random.default_rng(3), (2, 5, 4, 12))

    def loss(impl):
        def f(q, k, v, lam):
            extra = BLOCKS if impl == "flash" else {}
            out = differential_attention(q, k, v, lam, is_causal=True, implementation=impl, **extra)
            return jnp.sum(out * d_out), out

        return jax.jit(jax.grad(f, argnums=(0, 1, 2, 3), has_aux=True))(q, k, v, lam)

    (grads_x, out_x), (grads_f, out_f) = loss("xla"), loss("flash")
    np.testing.assert_allclose(out_f, out_x, **TOL)
    np.testing.assert_allclose(out_f, np_differential(q, k, v, lam, lambda b, i, j: j <= i), **TOL)
    for gx, gf in zip(grads_x, grads_f, strict=True):
        np.testing.assert_allclose(gf, gx, atol=1e-4, rtol=1e-4)
    assert float(jnp.abs(grads_x[3]).max()) > 0  # lam gets a gradient


def test_differential_is_causal():
    q, k, v, lam = diff_inputs()
    out = jit_call(differential_attention, q, k, v, lam, is_causal=True)
    p = 3  # keys and values at positions >= p change
    k2 = k.at[:, p:].add(5.0)
    v2 = v.at[:, p:].add(5.0)
    out2 = jit_call(differential_attention, q, k2, v2, lam, is_causal=True)
    np.testing.assert_array_equal(out2[:, :p], out[:, :p])
    assert not np.allclose(out2[:, p:], out[:, p:])


# ----------------------------------------------------------------------------------------
# Forgetting attention.
# ----------------------------------------------------------------------------------------


def fox_inputs(b=2, t=9, n=4, kh=2, h=5, seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    q = normal(rng, (b, t, n, h), dtype)
    k = normal(rng, (b, t, kh, h), dtype)
    v = normal(rng, (b, t, kh, h), dtype)
    log_forget = jnp.asarray(np.log(rng.uniform(0.3, 1.0, size=(b, t, n))), jnp.float32)
    return q, k, v, log_forget


@pytest.mark.parametrize("impl", ["xla", "flash"])
def test_forgetting_matches_reference(impl):
    """Packed segments and key lengths too: the decay between two tokens of a segment only
    sums the gates inside it."""
    q, k, v, lf = fox_inputs(seed=4)
    seg = jnp.asarray([[0, 0, 0, 1, 1, 1, 1, 2, 2], [0, 0, 0, 0, 0, 0, 0, 0, 0]])
    lengths = jnp.asarray([9, 6])
    extra = BLOCKS if impl == "flash" else {}
    out = jit_call(
        forgetting_attention,
        q,
        k,
        v,
        lf,
        segment_ids=seg,
        key_value_seq_lengths=lengths,
        implementation=impl,
        **extra,
    )
    seg_np, len_np = np.asarray(seg), np.asarray(lengths)

    def allowed(b, i, j):
        return seg_np[b, i] == seg_np[b, j] and j < len_np[b]

    chex.assert_shape(out, q.shape)
    np.testing.assert_allclose(out, np_forgetting(q, k, v, lf, allowed), **TOL)


def test_forgetting_unbatched_and_vmap():
    q, k, v, lf = fox_inputs(b=3, n=2, kh=1)
    out = jax.jit(jax.vmap(forgetting_attention))(q, k, v, lf)
    np.testing.assert_allclose(out, np_forgetting(q, k, v, lf), **TOL)


def test_forgetting_with_zero_log_forget_is_causal_attention():
    q, k, v, lf = fox_inputs()
    out = jit_call(forgetting_attention, q, k, v, jnp.zeros_like(lf))
    plain = jit_call(aj.dot_product_attention, q, k, v, is_causal=True)
    np.testing.assert_allclose(out, plain, atol=1e-6, rtol=1e-6)


def test_forgetting_check_grads_float64():
    with jax.enable_x64(True):
        rng = np.random.default_rng(5)
        q = jnp.asarray(rng.normal(size=(1, 4, 2, 3)))
        k = jnp.asarray(rng.normal(size=(1, 4, 1, 3)))
        v = jnp.asarray(rng.normal(size=(1, 4, 1, 3)))
        lf = jnp.asarray(np.log(rng.uniform(0.3, 1.0, size=(1, 4, 2))))

        def fn(q, k, v, lf):
            return forgetting_attention(q, k, v, lf, implementation="xla")

        check_grads(jax.jit(fn), (q, k, v, lf), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_forgetting_flash_matches_xla_forward_and_gradients():
    q, k, v, lf = fox_inputs(seed=6)
    d_out = normal(np.random.default_rng(7), q.shape)

    def loss(impl):
        def f(q, k, v, lf):
            extra = BLOCKS if impl == "flash" else {}
            out = forgetting_attention(q, k, v, lf, implementation=impl, **extra)
            return jnp.sum(out * d_out), out

        return jax.jit(jax.grad(f, argnums=(0, 1, 2, 3), has_aux=True))(q, k, v, lf)

    (grads_x, out_x), (grads_f, out_f) = loss("xla"), loss("flash")
    np.testing.assert_allclose(out_f, out_x, **TOL)
    for gx, gf in zip(grads_x, grads_f, strict=True):
        np.testing.assert_allclose(gf, gx, atol=1e-4, rtol=1e-4)
    # The first token's gate never enters a decay (D_ij sums l = j+1..i): zero gradient.
    np.testing.assert_allclose(grads_x[3][:, 0], 0.0, atol=1e-5)
    assert float(jnp.abs(grads_x[3][:, 1:]).max()) > 0


def test_forgetting_is_causal():
    q, k, v, lf = fox_inputs()
    out = jit_call(forgetting_attention, q, k, v, lf)
    p = 4
    out2 = jit_call(
        forgetting_attention, q, k.at[:, p:].add(5.0), v.at[:, p:].add(5.0), lf.at[:, p:].add(-2.0)
    )
    np.testing.assert_array_equal(out2[:, :p], out[:, :p])
    assert not np.allclose(out2[:, p:], out[:, p:])


# ----------------------------------------------------------------------------------------
# Stick-breaking attention.
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("attend_current", [False, True])
@pytest.mark.parametrize("n, kh", [(4, 2), (3, 3)])
def test_stick_breaking_matches_reference(attend_current, n, kh):
    q, k, v, _ = fox_inputs(n=n, kh=kh, seed=8)
    out, rem = jit_call(
        stick_breaking_attention, q, k, v, attend_current=attend_current, return_remainder=True
    )
    want, want_rem = np_stick_breaking(q, k, v, attend_current)
    chex.assert_shape(rem, (2, n, 9))
    np.testing.assert_allclose(out, want, **TOL)
    np.testing.assert_allclose(rem, want_rem, **TOL)
    if not attend_current:  # the first query sees nothing
        np.testing.assert_array_equal(out[:, 0], 0.0)
        np.testing.assert_array_equal(rem[:, :, 0], 1.0)


@pytest.mark.parametrize("attend_current", [False, True])
def test_stick_breaking_rows_sum_to_at_most_one(attend_current):
    q, k, _, _ = fox_inputs(seed=9)
    q = 3.0 * q  # spread the logits
    ones = jnp.ones(k.shape[:-1] + (q.shape[-1],))
    sums, rem = jit_call(
        stick_breaking_attention, q, k, ones, attend_current=attend_current, return_remainder=True
    )
    sums = sums[..., 0].transpose(0, 2, 1)  # [B, N, T]: sum_j A_ij
    assert float(sums.max()) <= 1.0 + 1e-6 and float(sums.min()) >= 0.0
    np.testing.assert_allclose(sums + rem, 1.0, atol=1e-6)


def test_stick_breaking_extreme_logits_stay_finite():
    q, k, v, _ = fox_inputs(seed=10)
    scale = 1e4  # logits of order +-1e4, both signs
    for attend_current in (False, True):

        def f(q, k, v, attend_current=attend_current):
            out, rem = stick_breaking_attention(
                q, k, v, scale=scale, attend_current=attend_current, return_remainder=True
            )
            return jnp.sum(out**2) + jnp.sum(rem), (out, rem)

        grads, (out, rem) = jax.jit(jax.grad(f, argnums=(0, 1, 2), has_aux=True))(q, k, v)
        for x in (out, rem, *grads):
            assert bool(jnp.all(jnp.isfinite(x)))
        want, want_rem = np_stick_breaking(q, k, v, attend_current, scale=scale)
        np.testing.assert_allclose(out, want, atol=1e-5)
        np.testing.assert_allclose(rem, want_rem, atol=1e-6)


def test_stick_breaking_bfloat16_close_to_float32():
    q, k, v, _ = fox_inputs(seed=11)
    q16, k16, v16 = (x.astype(jnp.bfloat16) for x in (q, k, v))
    out16, rem16 = jit_call(stick_breaking_attention, q16, k16, v16, return_remainder=True)
    out32, _ = jit_call(
        stick_breaking_attention,
        *(x.astype(jnp.float32) for x in (q16, k16, v16)),
        return_remainder=True,
    )
    assert out16.dtype == jnp.bfloat16 and rem16.dtype == jnp.float32
    np.testing.assert_allclose(out16.astype(jnp.float32), out32, atol=2e-2, rtol=2e-2)


def test_stick_breaking_check_grads_float64_and_unbatched():
    with jax.enable_x64(True):
        rng = np.random.default_rng(12)
        q = jnp.asarray(rng.normal(size=(5, 2, 3)))
        k = jnp.asarray(rng.normal(size=(5, 1, 3)))
        v = jnp.asarray(rng.normal(size=(5, 1, 3)))

        def fn(q, k, v):  # both forms in one function: one compilation
            return [
                stick_breaking_attention(q, k, v, attend_current=c, return_remainder=True)
                for c in (False, True)
            ]

        for c, (out, rem) in zip((False, True), jax.jit(fn)(q, k, v), strict=True):
            chex.assert_shape((out, rem), ((5, 2, 3), (2, 5)))
            want, want_rem = np_stick_breaking(q[None], k[None], v[None], c)
            np.testing.assert_allclose(out, want[0], atol=1e-12)
            np.testing.assert_allclose(rem, want_rem[0], atol=1e-12)
        check_grads(jax.jit(fn), (q, k, v), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("attend_current", [False, True])
def test_stick_breaking_is_causal(attend_current):
    q, k, v, _ = fox_inputs(seed=13)
    out = jit_call(stick_breaking_attention, q, k, v, attend_current=attend_current)
    p = 3
    out2 = jit_call(
        stick_breaking_attention,
        q,
        k.at[:, p:].add(5.0),
        v.at[:, p:].add(5.0),
        attend_current=attend_current,
    )
    # Query i sees keys j < i (j <= i with attend_current): rows up to p (before p) stay.
    seen = p + 1 if not attend_current else p
    np.testing.assert_array_equal(out2[:, :seen], out[:, :seen])
    assert not np.allclose(out2[:, seen:], out[:, seen:])


# ----------------------------------------------------------------------------------------
# Errors: one test per message.
# ----------------------------------------------------------------------------------------


def raises(exc, message):
    return pytest.raises(exc, match="^" + re.escape(message) + "$")


def test_differential_error_shapes():
    q, k, v, lam = diff_inputs()
    with raises(
        ValueError,
        "differential_attention: query, key and value must be of shape [B, T, N, 2, H], "
        "[B, S, K, 2, H], [B, S, K, Hv] (or all unbatched), got query (2, 5, 4, 6), "
        "key (2, 7, 2, 2, 6), value (2, 7, 2, 6).",
    ):
        differential_attention(q[..., 0, :], k, v, lam)


def test_differential_error_value_axes():
    q, k, v, lam = diff_inputs()
    with raises(
        ValueError,
        "differential_attention: value must have the [B, S, K] axes of key, got "
        "query (2, 5, 4, 2, 6), key (2, 7, 2, 2, 6), value (2, 6, 2, 6).",
    ):
        differential_attention(q, k, v[:, :6], lam)


def test_differential_error_head_dim():
    q, k, v, lam = diff_inputs()
    with raises(
        ValueError,
        "differential_attention: key must have the head dim H=6 of query, got "
        "query (2, 5, 4, 2, 6), key (2, 7, 2, 2, 5), value (2, 7, 2, 6).",
    ):
        differential_attention(q, k[..., :5], v, lam)


def test_differential_error_batch():
    q, k, v, lam = diff_inputs()
    with raises(
        ValueError,
        "differential_attention: key must have the batch size B=1 of query, got "
        "query (1, 5, 4, 2, 6), key (2, 7, 2, 2, 6), value (2, 7, 2, 6).",
    ):
        differential_attention(q[:1], k, v, lam)


def test_differential_error_heads():
    q, k, v, lam = diff_inputs()
    with raises(
        ValueError,
        "differential_attention: the number of query heads N=3 must be a multiple of the "
        "key/value heads K=2, got query (2, 5, 3, 2, 6), key (2, 7, 2, 2, 6), "
        "value (2, 7, 2, 6).",
    ):
        differential_attention(q[:, :, :3], k, v, lam[:3])


def test_differential_error_lam_shape():
    q, k, v, _ = diff_inputs()
    with raises(
        ValueError,
        "differential_attention: lam must be a scalar or of shape [N]=(4,), got "
        "float32 array of shape (2,).",
    ):
        differential_attention(q, k, v, jnp.ones(2))


def test_differential_error_lam_dtype():
    q, k, v, _ = diff_inputs()
    with raises(
        TypeError,
        "differential_attention: lam must be a floating-point array, got "
        "int32 array of shape (4,).",
    ):
        differential_attention(q, k, v, jnp.ones(4, jnp.int32))


def test_differential_error_query_dtype():
    q, k, v, lam = diff_inputs()
    with raises(
        TypeError,
        "differential_attention: query must be a floating-point array, got "
        "int32 array of shape (2, 5, 4, 2, 6).",
    ):
        differential_attention(q.astype(jnp.int32), k, v, lam)


def test_differential_error_mask_argument_names_the_function():
    q, k, v, lam = diff_inputs()
    with raises(
        ValueError,
        "differential_attention: key_value_seq_lengths must be of shape (2,), got "
        "int32 array of shape (3,).",
    ):
        differential_attention(q, k, v, lam, key_value_seq_lengths=jnp.ones(3, jnp.int32))


def test_forgetting_error_length():
    q, k, v, lf = fox_inputs()
    with raises(
        ValueError,
        "forgetting_attention: key and value must have the length T=9 of query "
        "(self-attention; pass query_positions for queries among more keys), got query (2, 9, 4, 5), key (2, 6, 2, 5), value (2, 6, 2, 5).",
    ):
        forgetting_attention(q, k[:, :6], v[:, :6], lf)


def test_forgetting_error_log_forget_shape():
    q, k, v, lf = fox_inputs()
    with raises(
        ValueError,
        "forgetting_attention: log_forget must be of shape [B, S, N]=(2, 9, 4), got "
        "float32 array of shape (2, 9, 2).",
    ):
        forgetting_attention(q, k, v, lf[..., :2])


def test_forgetting_error_log_forget_shape_unbatched():
    q, k, v, lf = fox_inputs()
    with raises(
        ValueError,
        "forgetting_attention: log_forget must be of shape [S, N]=(9, 4), got "
        "float32 array of shape (2, 9, 4).",
    ):
        forgetting_attention(q[0], k[0], v[0], lf)


def test_forgetting_error_log_forget_dtype():
    q, k, v, lf = fox_inputs()
    with raises(
        TypeError,
        "forgetting_attention: log_forget must be a floating-point array, got "
        "int32 array of shape (2, 9, 4).",
    ):
        forgetting_attention(q, k, v, lf.astype(jnp.int32))


def test_forgetting_error_checks_name_the_function():
    q, k, v, lf = fox_inputs()
    with raises(
        ValueError,
        "forgetting_attention: the number of query heads N=4 must be a multiple of the "
        "key/value heads K=3, got query (2, 9, 4, 5), key (2, 9, 3, 5), value (2, 9, 3, 5).",
    ):
        forgetting_attention(q, k[:, :, [0, 1, 1]], v[:, :, [0, 1, 1]], lf)


def test_stick_breaking_error_length():
    q, k, v, _ = fox_inputs()
    with raises(
        ValueError,
        "stick_breaking_attention: key and value must have the length T=6 of query (causal "
        "self-attention; pass query_positions for queries among more keys), got query (2, 6, 4, 5), key (2, 9, 2, 5), value (2, 9, 2, 5).",
    ):
        stick_breaking_attention(q[:, :6], k, v)


def test_stick_breaking_error_checks_name_the_function():
    q, k, v, _ = fox_inputs()
    with raises(
        TypeError,
        "stick_breaking_attention: query, key and value must share a dtype, got float32, "
        "bfloat16, float32.",
    ):
        stick_breaking_attention(q, k.astype(jnp.bfloat16), v)


@pytest.mark.parametrize("implementation", ["xla", "flash"])
def test_forgetting_query_positions_equal_rows_of_the_full_call(implementation):
    """Queries placed among more keys (cached decoding) give the rows of the full call."""
    q, k, v, lf = fox_inputs()
    full = forgetting_attention(q, k, v, lf, implementation=implementation, **BLOCKS)
    for rows in (slice(6, 9), slice(4, 5)):
        pos = jnp.arange(9)[rows]
        part = forgetting_attention(
            q[:, rows], k, v, lf, query_positions=pos, implementation=implementation, **BLOCKS
        )
        chex.assert_trees_all_close(part, full[:, rows], **TOL)
    # [B, T] positions: a different row per batch element.
    pos = jnp.array([[2], [7]])
    part = forgetting_attention(q[jnp.arange(2), pos[:, 0]][:, None], k, v, lf, query_positions=pos)
    chex.assert_trees_all_close(part[:, 0], full[jnp.arange(2), pos[:, 0]], **TOL)


@pytest.mark.parametrize("attend_current", [False, True])
def test_stick_breaking_query_positions_equal_rows_of_the_full_call(attend_current):
    q, k, v, _ = fox_inputs()
    full, rem = stick_breaking_attention(
        q, k, v, attend_current=attend_current, return_remainder=True
    )
    pos = jnp.arange(5, 9)
    part, part_rem = stick_breaking_attention(
        q[:, 5:], k, v, attend_current=attend_current, return_remainder=True, query_positions=pos
    )
    chex.assert_trees_all_close(part, full[:, 5:], **TOL)
    chex.assert_trees_all_close(part_rem, rem[..., 5:], **TOL)
    pos = jnp.array([[2], [7]])
    part = stick_breaking_attention(
        q[jnp.arange(2), pos[:, 0]][:, None],
        k,
        v,
        attend_current=attend_current,
        query_positions=pos,
    )
    chex.assert_trees_all_close(part[:, 0], full[jnp.arange(2), pos[:, 0]], **TOL)
