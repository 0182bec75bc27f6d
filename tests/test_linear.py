"""Linear, gated linear and delta-rule attention.

Each function is checked against a float64 NumPy recurrence written here (a loop over the
tokens of the paper's update), for chunk sizes 1 (the recurrence), ones that do not divide
``T`` and ones above it, under grouped-query attention; two calls that carry the state equal
one call; gradients of the chunked form (also under ``jit(vmap(grad))``) equal central
differences of the float64 references and (marked slow) those of the recurrence
(``chunk_size=1``); bfloat16 inputs accumulate in float32; the jaxpr of a chunked
forward+backward has no ``[T, T]`` intermediate; every error message, raised at trace time.

The fast subset compiles about 25 programs (most of its run time); the other chunk sizes,
functions and ``check_grads`` are marked slow.
"""

from __future__ import annotations

import math
import re

import chex
import jax
import jax.extend as jex
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from attention_jax.linear import (
    FEATURE_MAPS,
    delta_rule_attention,
    favor_projection,
    gated_linear_attention,
    linear_attention,
    short_convolution,
)

TOL = dict(atol=2e-5, rtol=2e-5)


def raises(exc, message):
    return pytest.raises(exc, match="^" + re.escape(message) + "$")


def inputs(b=2, t=11, n=4, kh=2, h=6, hv=5, seed=0, dtype=jnp.float32):
    """query, key, value, scalar log decay [B, T, N], per-dim log decay, beta."""
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.normal(size=(b, t, n, h)), dtype)
    k = jnp.asarray(rng.normal(size=(b, t, kh, h)) / math.sqrt(h), dtype)
    v = jnp.asarray(rng.normal(size=(b, t, kh, hv)), dtype)
    log_decay = jnp.asarray(-rng.uniform(0.0, 1.0, size=(b, t, n)), jnp.float32)
    log_decay_dim = jnp.asarray(-rng.uniform(0.0, 2.0, size=(b, t, n, h)), jnp.float32)
    beta = jnp.asarray(rng.uniform(0.0, 1.0, size=(b, t, n)), jnp.float32)
    return q, k, v, log_decay, log_decay_dim, beta


def jit_call(fn, *args, **kw):
    """``fn(*args, **kw)`` compiled as a whole (faster on CPU than op-by-op dispatch)."""
    return jax.jit(lambda *a: fn(*a, **kw))(*args)


# ----------------------------------------------------------------------------------------
# float64 NumPy references: loops over tokens.
# ----------------------------------------------------------------------------------------


def np_elu1(x):
    return np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0.0)))


def np_favor(projection):
    w = np.asarray(projection, np.float64)
    m, d = w.shape

    def phi(x):
        x = x / d**0.25
        return np.exp(w @ x - 0.5 * x @ x) / math.sqrt(m)

    return phi


def np_taylor(x):
    """Based's features in the documented layout: 1, x / d^(1/4), x_i^2 / sqrt(2 d), then
    x_i x_j / sqrt(d) for i < j in row-major order."""
    d = len(x)
    pairs = [x[i] * x[j] / math.sqrt(d) for i in range(d) for j in range(i + 1, d)]
    return np.concatenate([[1.0], x / d**0.25, x * x / math.sqrt(2 * d), pairs])


NP_MAPS = {
    "elu1": np_elu1,
    "relu": lambda x: np.maximum(x, 0.0),
    "identity": lambda x: x,
    "taylor": np_taylor,
}


def np_linear(q, k, v, phi, normalize, state=None, eps=1e-6):
    """S_t = S_{t-1} + phi(k_t) v_t^T, z_t = z_{t-1} + phi(k_t),
    o_t = S_t^T phi(q_t) [/ (phi(q_t) . z_t + eps)]. Returns out and (S, z)."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    b_, t_, n_, _ = q.shape
    kh, hv = k.shape[2], v.shape[3]
    f = len(phi(q[0, 0, 0]))
    s_all = np.zeros((b_, n_, f, hv)) if state is None else np.array(state[0], np.float64)
    z_all = np.zeros((b_, n_, f)) if state is None else np.array(state[1], np.float64)
    out = np.zeros((b_, t_, n_, hv))
    for b in range(b_):
        for n in range(n_):
            kv = n // (n_ // kh)
            s, z = s_all[b, n], z_all[b, n]
            for t in range(t_):
                fk, fq = phi(k[b, t, kv]), phi(q[b, t, n])
                s = s + np.outer(fk, v[b, t, kv])
                z = z + fk
                out[b, t, n] = fq @ s
                if normalize:
                    out[b, t, n] /= fq @ z + eps
            s_all[b, n], z_all[b, n] = s, z
    return out, (s_all, z_all)


def np_gated(q, k, v, log_decay, scale=None, state=None):
    """S_t = exp(g_t) * S_{t-1} + k_t v_t^T (g scalar or per key dim), o_t = S_t^T (s q_t)."""
    q, k, v, g = (np.asarray(x, np.float64) for x in (q, k, v, log_decay))
    b_, t_, n_, h = q.shape
    kh, hv = k.shape[2], v.shape[3]
    scale = 1.0 / math.sqrt(h) if scale is None else scale
    s_all = np.zeros((b_, n_, h, hv)) if state is None else np.array(state, np.float64)
    out = np.zeros((b_, t_, n_, hv))
    for b in range(b_):
        for n in range(n_):
            kv = n // (n_ // kh)
            s = s_all[b, n]
            for t in range(t_):
                a = np.exp(g[b, t, n])
                s = (a[:, None] if g.ndim == 4 else a) * s + np.outer(k[b, t, kv], v[b, t, kv])
                out[b, t, n] = (scale * q[b, t, n]) @ s
            s_all[b, n] = s
    return out, s_all


def np_delta(q, k, v, beta, log_decay=None, scale=None, state=None):
    """S_t = a_t S_{t-1} + beta_t k_t (v_t - a_t S_{t-1}^T k_t)^T, o_t = S_t^T (s q_t)."""
    q, k, v, beta = (np.asarray(x, np.float64) for x in (q, k, v, beta))
    b_, t_, n_, h = q.shape
    kh, hv = k.shape[2], v.shape[3]
    scale = 1.0 / math.sqrt(h) if scale is None else scale
    g = np.zeros((b_, t_, n_)) if log_decay is None else np.asarray(log_decay, np.float64)
    s_all = np.zeros((b_, n_, h, hv)) if state is None else np.array(state, np.float64)
    out = np.zeros((b_, t_, n_, hv))
    for b in range(b_):
        for n in range(n_):
            kv = n // (n_ // kh)
            s = s_all[b, n]
            for t in range(t_):
                kt, vt = k[b, t, kv], v[b, t, kv]
                s = np.exp(g[b, t, n]) * s
                s = s + beta[b, t, n] * np.outer(kt, vt - s.T @ kt)
                out[b, t, n] = s.T @ (scale * q[b, t, n])
            s_all[b, n] = s
    return out, s_all


# ----------------------------------------------------------------------------------------
# Against the references; states carried across calls.
# ----------------------------------------------------------------------------------------


def check_reference(fn, args, want, *, split=None, state0=None, **kw):
    """``fn(*args, return_state=True, **kw)`` against ``want = (out, final_state)``.

    With ``split``, two calls that carry the state instead of one: the first ``split`` tokens
    from ``state0``, the rest from the state the first call returned (one compiled function
    serves both when the halves have one length)."""
    if split is None:
        got = jit_call(fn, *args, return_state=True, **kw)
    else:
        run = jax.jit(lambda *a, state: fn(*a, initial_state=state, return_state=True, **kw))
        out1, state = run(*(x[:, :split] for x in args), state=state0)
        out2, final = run(*(x[:, split:] for x in args), state=state)
        got = (jnp.concatenate([out1, out2], axis=1), final)
    chex.assert_trees_all_close(got, want, **TOL)


def zero_state(b=2, n=4, h=6, hv=5, normalize=None):
    s = jnp.zeros((b, n, h, hv))
    return s if normalize is None else (s, jnp.zeros((b, n, h)))


@pytest.mark.parametrize(
    "feature_map, normalize, chunk, split",
    [
        ("elu1", True, 4, 6),
        ("relu", False, 1, None),
        ("taylor", True, 4, 6),
        ("elu1", True, 8, 6),
        pytest.param("identity", False, 32, None, marks=pytest.mark.slow),
    ],
)
def test_linear_matches_reference(feature_map, normalize, chunk, split):
    """GQA (N=4, K=2): chunk 4 at T=12 in two calls of 6 (ragged chunks, state carried; the
    Taylor map's chunks score by its kernel, its states by its features), chunk 8 above the
    halves' 6 (one chunk per call, from a zero and from a carried state), chunk 1 (the
    recurrence), 32 (above T=11)."""
    q, k, v, *_ = inputs(t=11 if split is None else 12)
    want, (s, z) = np_linear(q, k, v, NP_MAPS[feature_map], normalize)
    f = s.shape[2]
    state0 = zero_state(h=f, normalize=True) if normalize else zero_state(h=f)
    check_reference(
        linear_attention,
        (q, k, v),
        (want, (s, z) if normalize else s),
        split=split,
        state0=state0,
        feature_map=feature_map,
        normalize=normalize,
        chunk_size=chunk,
    )


def test_linear_taylor_is_the_based_kernel():
    """phi(q) . phi(k) = 1 + s + s^2/2 with s = q . k / sqrt(H): attention with that kernel;
    feature dim 1 + H + H (H + 1) / 2."""
    q, k, v, *_ = inputs(t=7, h=4)
    out, (s, z) = jit_call(
        linear_attention, q, k, v, feature_map="taylor", chunk_size=3, return_state=True
    )
    chex.assert_shape(s, (2, 4, 1 + 4 + 10, 5))
    chex.assert_shape(z, (2, 4, 15))
    qn, kn, vn = (np.asarray(x, np.float64) for x in (q, k, v))
    want = np.zeros(out.shape)
    for b in range(2):
        for n in range(4):
            for t in range(7):
                sc = np.array([qn[b, t, n] @ kn[b, j, n // 2] / 2.0 for j in range(t + 1)])
                w = 1.0 + sc + sc**2 / 2
                want[b, t, n] = w @ vn[b, : t + 1, n // 2] / (w.sum() + 1e-6)
    chex.assert_trees_all_close(out, want, **TOL)


def test_linear_favor_projection():
    q, k, v, *_ = inputs()
    proj = jnp.asarray(np.random.default_rng(1).normal(size=(12, 6)), jnp.float32)
    out = jit_call(linear_attention, q, k, v, feature_map="favor", projection=proj, chunk_size=4)
    want, _ = np_linear(q, k, v, np_favor(proj), True)
    chex.assert_trees_all_close(out, want, **TOL)


@pytest.mark.slow  # the QR of the orthogonal features takes 2 s to compile on CPU
def test_linear_favor_rng_draws_orthogonal_features():
    q, k, v, *_ = inputs()

    @jax.jit
    def both(q, k, v, rng):
        proj = favor_projection(rng, 12, 6)
        given = linear_attention(q, k, v, feature_map="favor", projection=proj, chunk_size=4)
        drawn = linear_attention(
            q, k, v, feature_map="favor", rng=rng, num_features=12, chunk_size=4
        )
        return proj, given, drawn

    proj, given, drawn = both(q, k, v, jax.random.key(0))
    chex.assert_shape(proj, (12, 6))
    # A key draws the projection favor_projection draws with that key.
    chex.assert_trees_all_close(drawn, given, atol=1e-6, rtol=1e-6)
    # Orthogonal random features: the rows of each block of H are orthogonal.
    g = np.asarray(proj[:6] @ proj[:6].T)
    np.testing.assert_allclose(g - np.diag(np.diag(g)), 0.0, atol=1e-4)


def test_linear_callable_feature_map():
    q, k, v, *_ = inputs(t=6)

    def phi(x):
        return jnp.concatenate([jax.nn.relu(x), jax.nn.relu(-x)], axis=-1)  # F = 2 H

    out, (s, _) = jit_call(
        linear_attention, q, k, v, feature_map=phi, chunk_size=4, return_state=True
    )
    chex.assert_shape(s, (2, 4, 12, 5))
    want, _ = np_linear(
        q, k, v, lambda x: np.concatenate([np.maximum(x, 0), np.maximum(-x, 0)]), True
    )
    chex.assert_trees_all_close(out, want, **TOL)


def test_linear_callable_feature_map_sees_query_then_key_heads():
    """Under GQA (N=4, K=2) the map runs on the queries' N heads, then on the keys' K heads
    (once each, before the key heads are repeated), as documented."""
    q, k, v, *_ = inputs(t=6)
    heads = []

    def phi(x):
        heads.append(x.shape[2])
        return jax.nn.elu(x) + 1.0

    linear_attention(q, k, v, feature_map=phi, chunk_size=4)
    assert heads[-2:] == [4, 2], heads


@pytest.mark.parametrize(
    "per_dim, chunk, t, split, strength, scale",
    [
        (False, 4, 12, 6, 1.0, None),
        (True, 4, 12, 6, 1.0, None),
        (True, 20, 23, None, 15.0, 0.5),
        pytest.param(False, 1, 11, None, 1.0, None, marks=pytest.mark.slow),
        pytest.param(False, 8, 23, None, 30.0, None, marks=pytest.mark.slow),
        pytest.param(True, 32, 11, None, 1.0, 2.0, marks=pytest.mark.slow),
    ],
)
def test_gated_matches_reference(per_dim, chunk, t, split, strength, scale):
    """Scalar ([B, T, N]) and per-dim ([B, T, N, H_k]) decays, GQA. Per-dim, chunk 20 at
    T=23: two chunks of two 10-token sub-chunks (the factorized blocks below the diagonal),
    with log decays down to -30 per token: the cumulative decay over a chunk underflows, and
    the chunked form must neither overflow nor lose the recent tokens. ``scale`` None is
    1/sqrt(H_k)."""
    q, k, v, g, gd, _ = inputs(t=t)
    decay = strength * (gd if per_dim else g)
    want = np_gated(q, k, v, decay, scale=scale)
    check_reference(
        gated_linear_attention,
        (q, k, v, decay),
        want,
        split=split,
        state0=zero_state(),
        chunk_size=chunk,
        scale=scale,
    )


def gated_delta(q, k, v, beta, g, **kw):
    return delta_rule_attention(q, k, v, beta, log_decay=g, **kw)


@pytest.mark.parametrize(
    "gated, chunk, t, split, repeated, scale",
    [
        (True, 4, 12, 6, False, None),
        (False, 16, 11, None, True, 2.0),
        pytest.param(False, 4, 12, 6, False, None, marks=pytest.mark.slow),
        pytest.param(True, 3, 11, None, False, 0.5, marks=pytest.mark.slow),
        pytest.param(False, 1, 11, None, False, None, marks=pytest.mark.slow),
    ],
)
def test_delta_matches_reference(gated, chunk, t, split, repeated, scale):
    """DeltaNet and Gated DeltaNet, GQA (N=4, K=2). ``repeated``: one unit key for every
    token and beta = 1 (the inverse of the chunk's I + A has entries +-1 while the powers of
    A grow like binomials: a Neumann series would cancel catastrophically); chunk 16 at
    T = 11 (one chunk of 11, padded to 16 inside the inverse)."""
    q, k, v, g, _, beta = inputs(t=t)
    if repeated:
        k = jnp.broadcast_to(k[:, :1] / jnp.linalg.norm(k[:, :1], axis=-1, keepdims=True), k.shape)
        beta = jnp.ones_like(beta)
    if gated:
        fn, args = gated_delta, (q, k, v, beta, g)
    else:
        fn, args = delta_rule_attention, (q, k, v, beta)
    want = np_delta(q, k, v, beta, g if gated else None, scale=scale)
    check_reference(fn, args, want, split=split, state0=zero_state(), chunk_size=chunk, scale=scale)


# ----------------------------------------------------------------------------------------
# Gradients, transformations, dtypes.
# ----------------------------------------------------------------------------------------


CALLS = {
    "linear": lambda q, k, v, g, gd, beta, **kw: linear_attention(q, k, v, **kw),
    "gated": lambda q, k, v, g, gd, beta, **kw: gated_linear_attention(q, k, v, g, **kw),
    "gla": lambda q, k, v, g, gd, beta, **kw: gated_linear_attention(q, k, v, gd, **kw),
    "delta": lambda q, k, v, g, gd, beta, **kw: delta_rule_attention(q, k, v, beta, **kw),
    "gated_delta": lambda q, k, v, g, gd, beta, **kw: delta_rule_attention(
        q, k, v, beta, log_decay=g, **kw
    ),
}


def loss_terms(out, final, cot):
    """The scalar every gradient test differentiates: sum(out * cot) + sum(final state)."""
    leaves = final if isinstance(final, tuple) else (final,)
    return (out * cot).sum() + sum(x.sum() for x in leaves)


def check_directional_derivatives(grads, args, np_loss, *, seed=0, eps=1e-6, directions=2):
    """<grad, u> against the float64 central difference of ``np_loss`` (the NumPy reference)
    along random directions ``u`` of each argument."""
    rng = np.random.default_rng(seed)
    args = [np.asarray(x, np.float64) for x in args]
    for i, (grad, x) in enumerate(zip(grads, args, strict=True)):
        for _ in range(directions):
            u = rng.normal(size=x.shape)
            plus, minus = list(args), list(args)
            plus[i], minus[i] = x + eps * u, x - eps * u
            fd = (np_loss(*plus) - np_loss(*minus)) / (2 * eps)
            got = float(np.sum(np.asarray(grad, np.float64) * u))
            np.testing.assert_allclose(got, fd, rtol=1e-4, atol=1e-4, err_msg=f"argument {i}")


def test_gradients_match_float64_finite_differences():
    """Reverse-mode gradients of the chunked forms (chunk 4, T = 11: a ragged last chunk;
    initial state given, final state returned) against central differences of the float64
    NumPy recurrences: GLA (per-dim decay), Gated DeltaNet, and linear attention (elu+1,
    normalized) as jit(vmap(grad)) over two stacked problems."""
    q, k, v, g, gd, beta = inputs(seed=3)
    rng = np.random.default_rng(4)
    s0 = jnp.asarray(rng.normal(size=(2, 4, 6, 5)), jnp.float32)
    z0 = jnp.asarray(rng.uniform(0.5, 1.0, size=(2, 4, 6)), jnp.float32)
    cot = jnp.asarray(rng.normal(size=(2, 11, 4, 5)), jnp.float32)
    kw = dict(chunk_size=4, return_state=True)
    second = [x[::-1] for x in (q, k, v, s0, z0)]  # another problem for the vmapped case
    cases = {
        "gla": (
            lambda q, k, v, gd, s0: gated_linear_attention(q, k, v, gd, initial_state=s0, **kw),
            lambda q, k, v, gd, s0: np_gated(q, k, v, gd, state=s0),
            [(q, k, v, gd, s0)],
        ),
        "gated_delta": (
            lambda q, k, v, beta, g, s0: gated_delta(q, k, v, beta, g, initial_state=s0, **kw),
            lambda q, k, v, beta, g, s0: np_delta(q, k, v, beta, g, state=s0),
            [(q, k, v, beta, g, s0)],
        ),
        "linear": (
            lambda q, k, v, s0, z0: linear_attention(q, k, v, initial_state=(s0, z0), **kw),
            lambda q, k, v, s0, z0: np_linear(q, k, v, np_elu1, True, state=(s0, z0)),
            [(q, k, v, s0, z0), second],
        ),
    }

    def grad(f, n):
        return jax.grad(lambda *a: loss_terms(*f(*a), cot), argnums=tuple(range(n)))

    @jax.jit
    def all_grads(args):
        (f_gla, _, _), (f_delta, _, _), (f_lin, _, _) = cases.values()
        stacked = [jnp.stack(xs) for xs in zip(*args["linear"], strict=True)]
        return {
            "gla": [grad(f_gla, 5)(*args["gla"][0])],
            "gated_delta": [grad(f_delta, 6)(*args["gated_delta"][0])],
            "linear": list(zip(*jax.vmap(grad(f_lin, 5))(*stacked), strict=True)),
        }

    grads = all_grads({name: c[2] for name, c in cases.items()})
    cot64 = np.asarray(cot, np.float64)
    for name, (_, np_fn, problems) in cases.items():
        for got, args in zip(grads[name], problems, strict=True):
            check_directional_derivatives(
                got, args, lambda *a, np_fn=np_fn: loss_terms(*np_fn(*a), cot64)
            )


@pytest.mark.slow
@pytest.mark.parametrize("name", ["linear", "gated", "gla", "delta", "gated_delta"])
def test_chunked_gradients_equal_recurrence_under_vmap(name):
    """d/d(q, k, v, log decays, beta, initial state) of sum(out * cot) + sum(final state):
    jit(vmap(grad)) of chunk 4 (T = 11) over two stacked problems, against jit(grad) of
    chunk 1 (the recurrence) on each."""
    rng = np.random.default_rng(4)
    problems = []
    for seed in (3, 4):
        s0 = jnp.asarray(rng.normal(size=(2, 4, 6, 5)), jnp.float32)
        z0 = jnp.asarray(rng.uniform(0.5, 1.0, size=(2, 4, 6)), jnp.float32)
        problems.append((*inputs(seed=seed), s0, z0))
    cot = jnp.asarray(rng.normal(size=(2, 11, 4, 5)), jnp.float32)

    def grad(chunk):
        def loss(q, k, v, g, gd, beta, s0, z0):
            out, final = CALLS[name](
                q,
                k,
                v,
                g,
                gd,
                beta,
                chunk_size=chunk,
                initial_state=(s0, z0) if name == "linear" else s0,
                return_state=True,
            )
            return loss_terms(out, final, cot)

        return jax.grad(loss, argnums=tuple(range(8)))

    stacked = [jnp.stack(xs) for xs in zip(*problems, strict=True)]
    batched = jax.jit(jax.vmap(grad(4)))(*stacked)
    recurrence = jax.jit(grad(1))
    for i, problem in enumerate(problems):
        got = jax.tree.map(lambda x, i=i: x[i], batched)
        chex.assert_trees_all_close(got, recurrence(*problem), atol=1e-4, rtol=1e-4)


@pytest.mark.slow  # 5 s of float64 compiles; the chunked gradients are checked above
def test_check_grads_float64():
    """Reverse-mode derivatives of the chunked Gated DeltaNet against finite differences."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(5)
        q = jnp.asarray(rng.normal(size=(1, 5, 2, 3)))
        k = jnp.asarray(rng.normal(size=(1, 5, 1, 3)) / 2)
        v = jnp.asarray(rng.normal(size=(1, 5, 1, 2)))
        g = jnp.asarray(-rng.uniform(0.1, 1.0, size=(1, 5, 2)))
        beta = jnp.asarray(rng.uniform(0.2, 0.8, size=(1, 5, 2)))
        fn = jax.jit(lambda *a: gated_delta(*a, chunk_size=2))
        check_grads(fn, (q, k, v, beta, g), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_bfloat16_accumulates_in_float32():
    q, k, v, g, *_ = inputs(t=16, dtype=jnp.bfloat16)
    out, state = jit_call(gated_linear_attention, q, k, v, g, chunk_size=8, return_state=True)
    assert out.dtype == jnp.bfloat16 and state.dtype == jnp.float32
    want, s = np_gated(q, k, v, g)
    chex.assert_trees_all_close((out.astype(jnp.float32), state), (want, s), atol=2e-2, rtol=2e-2)


# ----------------------------------------------------------------------------------------
# Memory: no [T, T] intermediate.
# ----------------------------------------------------------------------------------------


def _subjaxprs(params):
    """Sub-jaxprs of an equation: scan/while bodies, cond branches, checkpointed calls."""
    for value in params.values():
        for item in value if isinstance(value, tuple | list) else (value,):
            if isinstance(item, jex.core.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, jex.core.Jaxpr):
                yield item


def _all_shapes(jaxpr):
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            yield tuple(getattr(var.aval, "shape", ()))
        for sub in _subjaxprs(eqn.params):
            yield from _all_shapes(sub)


@pytest.mark.parametrize("name", ["linear", "gla", "gated_delta"])
def test_no_quadratic_intermediate(name):
    """T = 256, chunk 16: no array of the forward+backward has two axes of size 256."""
    t = 256
    q, k, v, g, gd, beta = inputs(b=1, t=t, n=2, kh=1, h=8, hv=8)
    fn = CALLS[name]

    def loss(q, k, v, g, gd, beta):
        return jnp.sum(fn(q, k, v, g, gd, beta, chunk_size=16) ** 2)

    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2, 3, 4, 5)))(q, k, v, g, gd, beta)
    shapes = list(_all_shapes(jaxpr.jaxpr))
    assert any(t in s for s in shapes)  # the walk sees the inputs' length
    assert any(16 in s and len(s) >= 5 for s in shapes)  # and the chunks inside the scan
    quadratic = [s for s in shapes if s.count(t) >= 2]
    assert not quadratic, quadratic
    # The walk does find a [T, T] array where there is one (the masked quadratic form).
    dense = jax.make_jaxpr(lambda q, k: jnp.tril(q[0, :, 0] @ k[0, :, 0].T))(q, k)
    assert any(s.count(t) >= 2 for s in _all_shapes(dense.jaxpr))


# ----------------------------------------------------------------------------------------
# Errors.
# ----------------------------------------------------------------------------------------


class ErrorsAtTraceTime(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_error_ranks(self):
        """Checks look at shapes only: the same message eagerly and under jit (where JAX
        appends a note on filtered traceback frames)."""
        q, k, v, *_ = inputs(t=3)
        message = (
            "linear_attention: query, key and value must be of shape [B, T, N, H_k], "
            "[B, T, K, H_k], [B, T, K, H_v], got query (3, 4, 6), key (2, 3, 2, 6), "
            "value (2, 3, 2, 5)."
        )
        with pytest.raises(ValueError, match="^" + re.escape(message)):
            self.variant(linear_attention)(q[0], k, v)


def test_error_batch_and_length():
    q, k, v, g, _, beta = inputs(t=3)
    with raises(
        ValueError,
        "gated_linear_attention: key must have the batch size B=2 and length T=3 of query, "
        "got query (2, 3, 4, 6), key (2, 2, 2, 6), value (2, 2, 2, 5).",
    ):
        gated_linear_attention(q, k[:, :2], v[:, :2], g)
    with raises(
        ValueError,
        "delta_rule_attention: key must have the batch size B=1 and length T=3 of query, "
        "got query (1, 3, 4, 6), key (2, 3, 2, 6), value (2, 3, 2, 5).",
    ):
        delta_rule_attention(q[:1], k, v, beta[:1])


def test_error_head_dims_and_value_axes():
    q, k, v, g, *_ = inputs(t=3)
    with raises(
        ValueError,
        "gated_linear_attention: key must have the head dim H_k=6 of query, got "
        "query (2, 3, 4, 6), key (2, 3, 2, 5), value (2, 3, 2, 5).",
    ):
        gated_linear_attention(q, k[..., :5], v, g)
    with raises(
        ValueError,
        "linear_attention: value must have the [B, T, K] axes of key, got "
        "query (2, 3, 4, 6), key (2, 3, 2, 6), value (2, 3, 1, 5).",
    ):
        linear_attention(q, k, v[:, :, :1])


def test_error_heads():
    q, k, v, _, _, beta = inputs(t=3)
    with raises(
        ValueError,
        "delta_rule_attention: the number of query heads N=3 must be a multiple of the "
        "key/value heads K=2, got query (2, 3, 3, 6), key (2, 3, 2, 6), value (2, 3, 2, 5).",
    ):
        delta_rule_attention(q[:, :, :3], k, v, beta[..., :3])


def test_error_dtypes():
    q, k, v, g, _, beta = inputs(t=3)
    with raises(
        TypeError,
        "linear_attention: query must be a floating-point array, got int32 array of "
        "shape (2, 3, 4, 6).",
    ):
        linear_attention(q.astype(jnp.int32), k, v)
    with raises(
        TypeError,
        "gated_linear_attention: query, key and value must share a dtype, got float32, "
        "bfloat16, float32.",
    ):
        gated_linear_attention(q, k.astype(jnp.bfloat16), v, g)
    with raises(
        TypeError,
        "delta_rule_attention: beta must be a floating-point array, got int32 array of "
        "shape (2, 3, 4).",
    ):
        delta_rule_attention(q, k, v, beta.astype(jnp.int32))


def test_error_log_decay_and_beta_shapes():
    q, k, v, g, gd, beta = inputs(t=3)
    with raises(
        ValueError,
        "gated_linear_attention: log_decay must be of shape [B, T, N]=(2, 3, 4) or "
        "[B, T, N, H_k]=(2, 3, 4, 6), got float32 array of shape (2, 3, 2).",
    ):
        gated_linear_attention(q, k, v, g[..., :2])
    with raises(
        ValueError,
        "delta_rule_attention: log_decay must be of shape [B, T, N]=(2, 3, 4), got "
        "float32 array of shape (2, 3, 4, 6).",
    ):
        delta_rule_attention(q, k, v, beta, log_decay=gd)
    with raises(
        ValueError,
        "delta_rule_attention: beta must be of shape [B, T, N]=(2, 3, 4), got float32 array "
        "of shape (2, 3, 2).",
    ):
        delta_rule_attention(q, k, v, beta[..., :2])


def test_error_initial_state():
    q, k, v, g, _, beta = inputs(t=3)
    with raises(
        ValueError,
        "delta_rule_attention: initial_state must be of shape [B, N, H_k, H_v]=(2, 4, 6, 5), "
        "got float32 array of shape (2, 2, 6, 5).",
    ):
        delta_rule_attention(q, k, v, beta, initial_state=jnp.zeros((2, 2, 6, 5)))
    with raises(
        ValueError,
        "gated_linear_attention: initial_state must be of shape [B, N, H_k, H_v]=(2, 4, 6, 5), "
        "got float32 array of shape (2, 4, 5, 6).",
    ):
        gated_linear_attention(q, k, v, g, initial_state=jnp.zeros((2, 4, 5, 6)))
    with raises(
        ValueError,
        "linear_attention: initial_state must be a pair (S [B, N, F, H_v], z [B, N, F]) with "
        "normalize=True, got float32 array of shape (2, 4, 6, 5).",
    ):
        linear_attention(q, k, v, initial_state=jnp.zeros((2, 4, 6, 5)))
    with raises(
        ValueError,
        "linear_attention: initial_state must be of shape [B, N, F]=(2, 4, 15), got float32 "
        "array of shape (2, 4, 6).",
    ):
        linear_attention(
            q[..., :4],
            k[..., :4],
            v,
            feature_map="taylor",
            initial_state=(jnp.zeros((2, 4, 15, 5)), jnp.zeros((2, 4, 6))),
        )
    with raises(
        ValueError,
        "linear_attention: initial_state must be of shape [B, N, F, H_v]=(2, 4, 6, 5), got "
        "float32 array of shape (2, 4, 6).",
    ):
        linear_attention(q, k, v, normalize=False, initial_state=jnp.zeros((2, 4, 6)))


def test_error_chunk_size_and_flags():
    q, k, v, g, *_ = inputs(t=3)
    with raises(ValueError, "gated_linear_attention: chunk_size must be an int >= 1, got 0."):
        gated_linear_attention(q, k, v, g, chunk_size=0)
    with raises(ValueError, "linear_attention: chunk_size must be an int >= 1, got 2.5."):
        linear_attention(q, k, v, chunk_size=2.5)
    with raises(TypeError, "linear_attention: return_state must be a bool, got 1."):
        linear_attention(q, k, v, return_state=1)
    with raises(
        ValueError, "gated_linear_attention: scale must be None or a finite number > 0, got -1.0."
    ):
        gated_linear_attention(q, k, v, g, scale=-1.0)


def test_error_feature_maps():
    q, k, v, *_ = inputs(t=3)
    with raises(
        ValueError,
        f"linear_attention: feature_map must be one of {FEATURE_MAPS} or a callable, got 'exp'.",
    ):
        linear_attention(q, k, v, feature_map="exp")
    with raises(
        ValueError,
        "linear_attention: exactly one of projection (an [M, H_k] array) and rng (a PRNG key) "
        "must be given for feature_map='favor', got projection None, rng None.",
    ):
        linear_attention(q, k, v, feature_map="favor")
    with raises(
        ValueError,
        "linear_attention: projection must be of shape [M, H_k] with H_k=6, got float32 "
        "array of shape (8, 5).",
    ):
        linear_attention(q, k, v, feature_map="favor", projection=jnp.ones((8, 5)))
    with raises(
        ValueError,
        "linear_attention: projection must be None unless feature_map='favor', got float32 "
        "array of shape (8, 6).",
    ):
        linear_attention(q, k, v, projection=jnp.ones((8, 6)))
    with raises(
        ValueError,
        "linear_attention: feature_map must map [B, T, heads, H_k] to floating "
        "[B, T, heads, F], got query (2, 3, 4, 6), key (2, 3, 2, 6) -> phi_query (2, 3, 4), "
        "phi_key (2, 3, 2).",
    ):
        linear_attention(q, k, v, feature_map=lambda x: x.sum(-1))


# ------------------------------------------------------------------ short convolution


def test_short_convolution_equals_a_loop_and_a_depthwise_conv():
    from flax import nnx

    rng = np.random.default_rng(0)
    b, t, w, c = 2, 9, 4, 5
    x = rng.standard_normal((b, t + w - 1, c))
    kernel = rng.standard_normal((w, 1, c))
    want = np.zeros((b, t, c))
    for i in range(t):
        for j in range(w):
            want[:, i] += kernel[j, 0] * x[:, i + j]
    got = short_convolution(jnp.asarray(x, jnp.float32), jnp.asarray(kernel, jnp.float32))
    chex.assert_shape(got, (b, t, c))
    chex.assert_trees_all_close(got, want, atol=1e-5)
    conv = nnx.Conv(c, c, kernel_size=(w,), feature_group_count=c, padding="VALID",
                    use_bias=False, rngs=nnx.Rngs(0))  # fmt: skip
    conv.kernel[...] = jnp.asarray(kernel, jnp.float32)
    chex.assert_trees_all_close(
        short_convolution(jnp.asarray(x, jnp.float32), conv.kernel[...]),
        conv(jnp.asarray(x, jnp.float32)),
        atol=1e-5,
    )
    # d/dw_j sum_t y_t^2 = sum_t 2 y_t x_{t+j}
    g = jax.grad(lambda k: jnp.sum(short_convolution(jnp.asarray(x, jnp.float32), k) ** 2))
    want_g = np.stack([np.sum(2 * want * x[:, j : j + t], axis=(0, 1)) for j in range(w)])
    chex.assert_trees_all_close(g(jnp.asarray(kernel[:, 0], jnp.float32)), want_g, atol=1e-4)
    with raises(
        ValueError,
        "short_convolution: x must be [B, T + W - 1, C] and kernel [W, C] (or [W, 1, C]) "
        "with W <= T + W - 1, got x (2, 3, 5), kernel (4, 5).",
    ):
        short_convolution(jnp.zeros((2, 3, 5)), jnp.zeros((4, 5)))
