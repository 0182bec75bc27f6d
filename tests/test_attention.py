"""Tests of dot_product_attention, additive_attention and attention_pool.

Every result is compared with an independent float64 NumPy reference written below with plain
loops; where the options overlap, dot_product_attention is also compared with
``jax.nn.dot_product_attention(..., implementation="xla")``.
"""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from attention_jax import additive_attention, attention_pool, dot_product_attention, softmax

# (B, T, S, N, K, H): GQA with T < S and odd H; MHA with T == S; MQA with T > S and odd H.
# A small fixed pool keeps compilations (which dominate the runtime) few.
SHAPES = [(2, 3, 5, 4, 2, 3), (1, 4, 4, 2, 2, 4), (2, 5, 3, 3, 1, 5)]
SEEDS = st.integers(0, 2**32 - 1)

F32 = dict(atol=1e-5, rtol=1e-5)
LOW = dict(atol=2e-2, rtol=2e-2)


# ---------------------------------------------------------------------------------------------
# float64 NumPy references
# ---------------------------------------------------------------------------------------------


def _row_softmax(z, allowed):
    out = np.zeros_like(z)
    if allowed.any():
        e = np.exp(z[allowed] - z[allowed].max())
        out[allowed] = e / e.sum()
    return out


def _row_softmax_one(z, allowed):
    out = np.zeros_like(z)
    log_den = np.logaddexp.reduce(np.concatenate([[0.0], z[allowed]]))
    out[allowed] = np.exp(z[allowed] - log_den)
    return out


def _row_sparsemax(z, allowed):
    out = np.zeros_like(z)
    if allowed.any():
        za = z[allowed]
        lo, hi = za.max() - 1.0, za.max()
        for _ in range(200):  # bisection on sum(max(z - tau, 0)) = 1
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if np.maximum(za - mid, 0.0).sum() > 1.0 else (lo, mid)
        support = za > 0.5 * (lo + hi)
        tau = (za[support].sum() - 1.0) / support.sum()
        out[allowed] = np.maximum(za - tau, 0.0)
    return out


def _row_sigmoid(z, allowed):
    return np.where(allowed, 1.0 / (1.0 + np.exp(-z)), 0.0)


ROW_NORMALIZERS = {
    "softmax": _row_softmax,
    "softmax_one": _row_softmax_one,
    "sparsemax": _row_sparsemax,
    "sigmoid": _row_sigmoid,
}


def relu_normalizer(logits, where):
    """A custom normalizer: squared ReLU weights over (1 + their sum)."""
    w = jnp.maximum(logits, 0.0) ** 2
    if where is not None:
        w = jnp.where(where, w, 0.0)
    return w / (1.0 + jnp.sum(w, axis=-1, keepdims=True))


def exp_ignoring_where(logits, where):
    """A custom normalizer that ignores ``where``: masking must still apply."""
    del where
    return jnp.exp(logits - 3.0)


def _row_relu(z, allowed):
    w = np.where(allowed, np.maximum(z, 0.0) ** 2, 0.0)
    return w / (1.0 + w.sum())


ROW_NORMALIZERS[relu_normalizer] = _row_relu
ROW_NORMALIZERS[exp_ignoring_where] = lambda z, allowed: np.where(allowed, np.exp(z - 3.0), 0.0)


@functools.cache
def alibi(n_heads):
    """An ALiBi-style ``bias_fn`` for ``n_heads`` heads, for [T] or [B, T] positions."""

    def bias_fn(q_pos, kv_pos):
        slopes = 2.0 ** -jnp.arange(1, n_heads + 1, dtype=jnp.float32)
        dist = jnp.abs(q_pos[..., None, :, None] - kv_pos[..., None, None, :])
        return -slopes[:, None, None] * dist.astype(jnp.float32)

    return bias_fn


def np_alibi(n_heads, q_pos, kv_pos):
    """Reference of :func:`alibi` for one example: ``[N, T, S]``."""
    slopes = 2.0 ** -np.arange(1, n_heads + 1, dtype=np.float64)
    return -slopes[:, None, None] * np.abs(q_pos[None, :, None] - kv_pos[None, None, :])


def _to4(x, b, n, t, s):
    x = np.asarray(x)
    return np.broadcast_to(x.reshape((1,) * (4 - x.ndim) + x.shape), (b, n, t, s))


def np_attention(
    query,
    key,
    value,
    bias=None,
    mask=None,
    *,
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
    normalizer="softmax",
    dropout_keep=None,
    attention_dropout=0.0,
):
    """Loop reference of dot_product_attention: returns (out [B,T,N,H], weights [B,N,T,S])."""
    q, k, v = (np.asarray(a, np.float64) for a in (query, key, value))
    b, t, n, h = q.shape
    s, kh = k.shape[1], k.shape[2]
    group = n // kh
    scale = 1.0 / math.sqrt(h) if scale is None else scale
    q_pos = np.broadcast_to(np.arange(t) if query_positions is None else query_positions, (b, t))
    kv_pos = np.broadcast_to(
        np.arange(s) if key_value_positions is None else key_value_positions, (b, s)
    )
    if segment_ids is not None:
        q_seg, kv_seg = segment_ids if isinstance(segment_ids, tuple) else (segment_ids,) * 2
    left, right = (
        (local_window_size,) * 2 if isinstance(local_window_size, int) else local_window_size
    ) or (None, None)
    row_fn = ROW_NORMALIZERS[normalizer]
    out = np.zeros((b, t, n, h))
    weights = np.zeros((b, n, t, s))
    for bi in range(b):
        for ni in range(n):
            kv_head = ni // group
            logits = scale * q[bi, :, ni] @ k[bi, :, kv_head].T
            if softcap is not None:
                logits = softcap * np.tanh(logits / softcap)
            if bias is not None:
                logits = logits + _to4(bias, b, n, t, s)[bi, ni]
            if bias_fn is not None:
                logits = logits + np_alibi(n, q_pos[bi], kv_pos[bi])[ni]
            for i in range(t):
                allowed = np.ones(s, bool)
                for j in range(s):
                    if is_causal:
                        allowed[j] &= kv_pos[bi, j] <= q_pos[bi, i]
                    if local_window_size is not None:
                        allowed[j] &= q_pos[bi, i] - left <= kv_pos[bi, j] <= q_pos[bi, i] + right
                    if query_seq_lengths is not None:
                        allowed[j] &= i < query_seq_lengths[bi]
                    if key_value_seq_lengths is not None:
                        allowed[j] &= j < key_value_seq_lengths[bi]
                    if segment_ids is not None:
                        allowed[j] &= q_seg[bi, i] == kv_seg[bi, j]
                    if mask is not None:
                        allowed[j] &= _to4(mask, b, n, t, s)[bi, ni, i, j]
                w = row_fn(logits[i], allowed)
                if dropout_keep is not None:
                    w = np.where(dropout_keep[bi, ni, i], w / (1.0 - attention_dropout), 0.0)
                weights[bi, ni, i] = w
                out[bi, i, ni] = w @ v[bi, :, kv_head]
                if query_seq_lengths is not None and i >= query_seq_lengths[bi]:
                    out[bi, i, ni] = 0.0
    return out, weights


def make_qkv(shape, rng, dtype=np.float32, scale=1.0):
    b, t, s, n, k, h = shape
    q = scale * rng.standard_normal((b, t, n, h))
    key = scale * rng.standard_normal((b, s, k, h))
    value = scale * rng.standard_normal((b, s, k, h))
    return q.astype(dtype), key.astype(dtype), value.astype(dtype)


def assert_close(got, expected, **tol):
    got = np.asarray(jnp.asarray(got).astype(jnp.float32), np.float64)
    chex.assert_shape(got, expected.shape)
    chex.assert_trees_all_close(got, expected, **tol)


# ---------------------------------------------------------------------------------------------
# every option against the reference
# ---------------------------------------------------------------------------------------------

MASK_SHAPES = ["BNTS", "B1TS", "NTS", "TS", "1N1S"]


def _broadcast_shape(code, b, t, s, n):
    sizes = {"B": b, "N": n, "T": t, "S": s, "1": 1}
    return tuple(sizes[c] for c in code)


def _dense_mask(rng, b, t, s, n, code):
    m = rng.random(_broadcast_shape(code, b, t, s, n)) < 0.6
    m[(0,) * (m.ndim - 1)] = False  # a fully masked row
    return m


def _lengths(rng, b, hi, lo=0):
    return rng.integers(lo, hi + 1, b).astype(np.int32)


def _scenario(name, rng, shape):
    """dot_product_attention keyword arguments of a named option (NumPy arrays)."""
    b, t, s, n, _, _ = shape
    code = MASK_SHAPES[rng.integers(len(MASK_SHAPES))]
    if name == "plain":
        return {}
    if name == "scale":
        return {"scale": 0.3}
    if name == "causal":
        return {"is_causal": True}
    if name == "causal_offset":
        # Queries at the end of the keys, [T] positions.
        return {"is_causal": True, "query_positions": np.arange(t, dtype=np.int32) + (s - t)}
    if name == "cached_decoding":
        # Per example, the cache holds `filled` keys and the T queries are its last entries.
        filled = _lengths(rng, b, s, lo=min(t, s))
        positions = (filled[:, None] - t + np.arange(t)).astype(np.int32)
        return {"is_causal": True, "query_positions": positions, "key_value_seq_lengths": filled}
    if name == "window":
        window = [(1, 1), (0, 2), 2, (3, 0)][rng.integers(4)]
        return {"local_window_size": window}
    if name == "window_causal_positions":
        kv_pos = np.broadcast_to(np.arange(s, dtype=np.int32) + 1, (b, s)).copy()
        return {"local_window_size": (2, 0), "is_causal": True, "key_value_positions": kv_pos}
    if name == "lengths":
        return {
            "query_seq_lengths": _lengths(rng, b, t),
            "key_value_seq_lengths": _lengths(rng, b, s),
        }
    if name == "segment_ids":
        q_seg = np.sort(rng.integers(0, 3, (b, t)), axis=-1).astype(np.int32)
        if t == s and rng.random() < 0.5:
            return {"segment_ids": q_seg}
        return {
            "segment_ids": (q_seg, np.sort(rng.integers(0, 3, (b, s)), axis=-1).astype(np.int32))
        }
    if name == "mask":
        return {"mask": _dense_mask(rng, b, t, s, n, code)}
    if name == "bias":
        return {"bias": rng.standard_normal(_broadcast_shape(code, b, t, s, n)).astype(np.float32)}
    if name == "bias_fn":
        return {"bias_fn": alibi(n)}
    if name == "bias_fn_positions":
        positions = (rng.integers(0, 4, (b, 1)) + np.arange(t)).astype(np.int32)
        return {"bias_fn": alibi(n), "query_positions": positions, "is_causal": True}
    if name == "softcap":
        return {"softcap": 0.7, "bias": rng.standard_normal((t, s)).astype(np.float32)}
    if name in ("softmax_one", "sparsemax", "sigmoid"):
        return {"normalizer": name, "is_causal": True, "key_value_seq_lengths": _lengths(rng, b, s)}
    if name == "callable":
        return {"normalizer": relu_normalizer, "mask": _dense_mask(rng, b, t, s, n, code)}
    if name == "callable_ignoring_where":
        return {"normalizer": exp_ignoring_where, "is_causal": True}
    if name == "everything":
        return {
            "is_causal": True,
            "local_window_size": (3, 1),
            "query_seq_lengths": _lengths(rng, b, t),
            "key_value_seq_lengths": _lengths(rng, b, s, lo=1),
            "segment_ids": (
                np.zeros((b, t), np.int32),
                (rng.random((b, s)) < 0.2).astype(np.int32),
            ),
            "mask": _dense_mask(rng, b, t, s, n, code),
            "bias": rng.standard_normal((b, 1, t, s)).astype(np.float32),
            "bias_fn": alibi(n),
            "softcap": 3.0,
            "scale": 0.8,
        }
    raise AssertionError(name)


SCENARIOS = [
    "plain",
    "scale",
    "causal",
    "causal_offset",
    "cached_decoding",
    "window",
    "window_causal_positions",
    "lengths",
    "segment_ids",
    "mask",
    "bias",
    "bias_fn",
    "bias_fn_positions",
    "softcap",
    "softmax_one",
    "sparsemax",
    "sigmoid",
    "callable",
    "callable_ignoring_where",
    "everything",
]


@pytest.mark.parametrize("scenario", SCENARIOS)
@given(shape=st.sampled_from(SHAPES), seed=SEEDS)
@settings(max_examples=2)
def test_matches_reference(scenario, shape, seed):
    # Eager on purpose: op-by-op compilations are shared across scenarios (a jitted call would
    # compile once per scenario and shape). The traced path is checked by
    # test_everything_traced_matches_reference and the chex variants below.
    rng = np.random.default_rng(seed)
    q, k, v = make_qkv(shape, rng)
    kw = _scenario(scenario, rng, shape)
    out, weights = dot_product_attention(q, k, v, return_weights=True, **kw)
    expected_out, expected_weights = np_attention(q, k, v, **kw)
    assert out.dtype == jnp.float32 and weights.dtype == jnp.float32
    assert_close(out, expected_out, **F32)
    assert_close(weights, expected_weights, **F32)


_STATIC = ("is_causal", "local_window_size", "bias_fn", "softcap", "normalizer")


@functools.cache
def _jitted_attention(**static):
    return jax.jit(functools.partial(dot_product_attention, return_weights=True, **static))


@given(shape=st.sampled_from(SHAPES), seed=SEEDS)
@settings(max_examples=3)
def test_everything_traced_matches_reference(shape, seed):
    rng = np.random.default_rng(seed)
    q, k, v = make_qkv(shape, rng)
    kw = _scenario("everything", rng, shape)
    static = {name: kw[name] for name in _STATIC if name in kw}
    arrays = {name: value for name, value in kw.items() if name not in static}
    out, weights = _jitted_attention(**static)(q, k, v, **arrays)
    expected_out, expected_weights = np_attention(q, k, v, **kw)
    assert_close(out, expected_out, **F32)
    assert_close(weights, expected_weights, **F32)


@pytest.mark.parametrize("scenario", ["plain", "everything", "sparsemax"])
@given(shape=st.sampled_from(SHAPES), seed=SEEDS)
@settings(max_examples=2)
def test_bfloat16_matches_reference(scenario, shape, seed):
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(a, jnp.bfloat16) for a in make_qkv(shape, rng))
    kw = _scenario(scenario, rng, shape)
    if "bias" in kw:
        kw["bias"] = jnp.asarray(kw["bias"], jnp.bfloat16)
    out, weights = dot_product_attention(q, k, v, return_weights=True, **kw)
    assert out.dtype == jnp.bfloat16
    assert weights.dtype == jnp.float32  # normalized in float32
    as64 = {
        name: np.asarray(jnp.asarray(a, jnp.float32), np.float64)
        for name, a in (("q", q), ("k", k), ("v", v))
    }
    if "bias" in kw:
        kw["bias"] = np.asarray(kw["bias"].astype(jnp.float32), np.float64)
    expected_out, expected_weights = np_attention(as64["q"], as64["k"], as64["v"], **kw)
    assert_close(out, expected_out, **LOW)
    assert_close(weights, expected_weights, **LOW)


@given(shape=st.sampled_from(SHAPES), seed=SEEDS, causal=st.booleans())
@settings(max_examples=4)
def test_unbatched_matches_reference(shape, seed, causal):
    rng = np.random.default_rng(seed)
    q, k, v = make_qkv(shape, rng)
    _, t, s, n, _, _ = shape
    mask = rng.random((n, t, s)) < 0.7
    kv_len = np.int32(rng.integers(1, s + 1))
    out, weights = dot_product_attention(
        q[0],
        k[0],
        v[0],
        mask=mask,
        is_causal=causal,
        key_value_seq_lengths=kv_len,
        return_weights=True,
    )
    chex.assert_shape(out, q.shape[1:])
    chex.assert_shape(weights, (n, t, s))
    expected_out, expected_weights = np_attention(
        q[:1], k[:1], v[:1], mask=mask, is_causal=causal, key_value_seq_lengths=[kv_len]
    )
    assert_close(out, expected_out[0], **F32)
    assert_close(weights, expected_weights[0], **F32)


# ---------------------------------------------------------------------------------------------
# parity with jax.nn.dot_product_attention where the options overlap
# ---------------------------------------------------------------------------------------------

PARITY = ["plain", "bias", "mask", "causal", "lengths", "window", "all"]


def _parity_kwargs(name, rng, shape):
    b, t, s, n, _, _ = shape
    kw = {}
    if name in ("bias", "all"):
        kw["bias"] = rng.standard_normal((1, n, t, s) if name == "all" else (b, n, t, s))
        kw["bias"] = kw["bias"].astype(np.float32)
    if name in ("mask", "all"):
        kw["mask"] = rng.random((b, 1, t, s) if name == "all" else (b, n, t, s)) < 0.6
    if name in ("causal", "all"):
        kw["is_causal"] = True
    if name in ("lengths", "all"):
        kw["query_seq_lengths"] = _lengths(rng, b, t)
        kw["key_value_seq_lengths"] = _lengths(rng, b, s, lo=1)
    if name in ("window", "all"):
        kw["local_window_size"] = (1, 2) if name == "all" else 1
    return kw


def _assert_parity(out, theirs, weights):
    """Equal to jax on rows with an allowed key; zeros (not jax's uniform mean) elsewhere."""
    out, theirs = np.asarray(out, np.float64), np.asarray(theirs, np.float64)
    empty = np.asarray(weights).sum(-1) == 0  # [..., N, T]
    empty = np.swapaxes(empty, -1, -2)[..., None]  # [..., T, N, 1]
    empty = np.broadcast_to(empty, out.shape)
    np.testing.assert_array_equal(out[empty], 0.0)
    chex.assert_trees_all_close(out[~empty], theirs[~empty], **F32)


@given(name=st.sampled_from(PARITY), shape=st.sampled_from(SHAPES), seed=SEEDS)
@settings(max_examples=8)
def test_parity_with_jax(name, shape, seed):
    rng = np.random.default_rng(seed)
    q, k, v = make_qkv(shape, rng)
    kw = _parity_kwargs(name, rng, shape)
    out, weights = dot_product_attention(q, k, v, return_weights=True, **kw)
    theirs = jax.nn.dot_product_attention(q, k, v, implementation="xla", **kw)
    _assert_parity(out, theirs, weights)


@pytest.mark.parametrize("name", ["plain", "causal", "all"])
def test_parity_with_jax_unbatched(name):
    rng = np.random.default_rng(3)
    shape = SHAPES[0]
    q, k, v = (a[0] for a in make_qkv(shape, rng))
    kw = _parity_kwargs(name, rng, (1,) + shape[1:])
    if "mask" in kw:
        kw["mask"], kw["bias"] = kw["mask"][0], kw["bias"][0]
    out, weights = dot_product_attention(q, k, v, return_weights=True, **kw)
    theirs = jax.nn.dot_product_attention(q, k, v, implementation="xla", **kw)
    chex.assert_shape(out, q.shape)
    _assert_parity(out, theirs, weights)


# ---------------------------------------------------------------------------------------------
# traced and eager: fully masked rows, extreme values, dropout, options
# ---------------------------------------------------------------------------------------------

SHAPE = SHAPES[0]  # (2, 3, 5, 4, 2, 3)


def _inputs(seed=0, scale=1.0, shape=SHAPE):
    return make_qkv(shape, np.random.default_rng(seed), scale=scale)


class AttentionVariantsTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        ("softmax", "softmax"),
        ("softmax_one", "softmax_one"),
        ("sparsemax", "sparsemax"),
        ("sigmoid", "sigmoid"),
        ("callable", relu_normalizer),
    )
    def test_fully_masked_rows_are_zero_with_finite_grads(self, normalizer):
        q, k, v = _inputs()
        b, t, s, n, _, _ = SHAPE
        mask = np.random.default_rng(1).random((b, n, t, s)) < 0.7
        mask[0, :, 1] = False  # query 1 of example 0: no key in any head
        kv_lengths = np.array([s, 0], np.int32)  # example 1: no key at all

        def attend(q, k, v, mask, kv_lengths):
            return dot_product_attention(
                q,
                k,
                v,
                mask=mask,
                key_value_seq_lengths=kv_lengths,
                normalizer=normalizer,
                return_weights=True,
            )

        out, weights = self.variant(attend)(q, k, v, mask, kv_lengths)
        np.testing.assert_array_equal(np.asarray(out)[0, 1], 0.0)
        np.testing.assert_array_equal(np.asarray(out)[1], 0.0)
        np.testing.assert_array_equal(np.asarray(weights)[0, :, 1], 0.0)
        np.testing.assert_array_equal(np.asarray(weights)[1], 0.0)
        expected_out, expected_weights = np_attention(
            q, k, v, mask=mask, key_value_seq_lengths=kv_lengths, normalizer=normalizer
        )
        assert_close(out, expected_out, **F32)
        assert_close(weights, expected_weights, **F32)

        def loss(q, k, v):
            out = attend(q, k, v, mask, kv_lengths)[0]
            return jnp.sum(out * jnp.arange(out.shape[-1], dtype=out.dtype))

        grads = self.variant(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
        for g in grads:
            assert np.all(np.isfinite(np.asarray(g)))
        # Fully masked query rows get no gradient; nor do the keys of the empty example.
        np.testing.assert_array_equal(np.asarray(grads[0])[0, 1], 0.0)
        np.testing.assert_array_equal(np.asarray(grads[0])[1], 0.0)
        np.testing.assert_array_equal(np.asarray(grads[2])[1], 0.0)

    @chex.variants(with_jit=True, without_jit=True)
    def test_padded_query_rows_are_zero(self):
        q, k, v = _inputs()
        q_lengths = np.array([1, 3], np.int32)
        out, weights = self.variant(
            lambda q, k, v, n: dot_product_attention(
                q, k, v, query_seq_lengths=n, return_weights=True
            )
        )(q, k, v, q_lengths)
        np.testing.assert_array_equal(np.asarray(out)[0, 1:], 0.0)
        np.testing.assert_array_equal(np.asarray(weights)[0, :, 1:], 0.0)
        assert np.all(np.asarray(out)[1] != 0.0)

    @chex.variants(with_jit=True, without_jit=True)
    def test_logits_of_1e4(self):
        q, k, v = _inputs()
        b, t, s, n, _, _ = SHAPE
        sign = np.where(np.random.default_rng(2).random((b, n, t, s)) < 0.4, 1.0, -1.0)
        bias = (1e4 * sign).astype(np.float32)
        bias[0, 0, 0] = -1e4  # every key at -1e4
        out, weights = self.variant(
            lambda q, k, v, bias: dot_product_attention(q, k, v, bias, return_weights=True)
        )(q, k, v, bias)
        assert np.all(np.isfinite(np.asarray(out)))
        expected_out, expected_weights = np_attention(q, k, v, bias)
        # float32 logits near 1e4 carry a rounding error of ~5e-4 (half an ulp), that much
        # relative error in the weights.
        assert_close(out, expected_out, atol=3e-3, rtol=3e-3)
        assert_close(weights, expected_weights, atol=3e-3, rtol=3e-3)
        grads = self.variant(
            jax.grad(lambda q, k, v: jnp.sum(dot_product_attention(q, k, v, bias) ** 2), (0, 1, 2))
        )(q, k, v)
        for g in grads:
            assert np.all(np.isfinite(np.asarray(g)))

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(("softmax", "softmax"), ("sparsemax", "sparsemax"))
    def test_inputs_scaled_by_1e3(self, normalizer):
        q, k, v = _inputs(scale=1e3)
        out, weights = self.variant(
            lambda q, k, v: dot_product_attention(
                q, k, v, is_causal=True, normalizer=normalizer, return_weights=True
            )
        )(q, k, v)
        assert np.all(np.isfinite(np.asarray(out)))
        expected_out, expected_weights = np_attention(
            q, k, v, is_causal=True, normalizer=normalizer
        )
        assert_close(out, expected_out, atol=1e-5 * 1e3, rtol=1e-5)
        assert_close(weights, expected_weights, **F32)
        grads = self.variant(
            jax.grad(
                lambda q, k, v: jnp.sum(
                    dot_product_attention(q, k, v, is_causal=True, normalizer=normalizer)
                ),
                (0, 1, 2),
            )
        )(q, k, v)
        for g in grads:
            assert np.all(np.isfinite(np.asarray(g)))

    @chex.variants(with_jit=True, without_jit=True)
    def test_return_weights_and_implementation(self):
        q, k, v = _inputs()
        fn = self.variant(
            lambda q, k, v: (
                dot_product_attention(q, k, v, is_causal=True),
                dot_product_attention(q, k, v, is_causal=True, implementation="xla"),
                dot_product_attention(q, k, v, is_causal=True, return_weights=True),
            )
        )
        plain, xla, (with_weights, weights) = fn(q, k, v)
        b, t, s, n, _, h = SHAPE
        chex.assert_shape([plain, xla, with_weights], (b, t, n, h))
        chex.assert_shape(weights, (b, n, t, s))
        chex.assert_trees_all_close(plain, xla, with_weights, atol=0, rtol=0)
        np.testing.assert_allclose(np.asarray(weights).sum(-1), 1.0, atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_dropout(self):
        # One query row over many keys gives enough draws for the statistics.
        shape = (1, 2, 512, 2, 1, 4)
        q, k, v = _inputs(shape=shape)
        rate = 0.25

        @self.variant
        def attend(q, k, v, rng):
            return dot_product_attention(
                q, k, v, attention_dropout=rate, dropout_rng=rng, return_weights=True
            )

        key0, key1 = jax.random.key(0), jax.random.key(1)
        out0, w0 = attend(q, k, v, key0)
        out0_again, w0_again = attend(q, k, v, key0)
        out1, _ = attend(q, k, v, key1)
        # Deterministic for a key, different for another.
        chex.assert_trees_all_equal((out0, w0), (out0_again, w0_again))
        assert not np.allclose(np.asarray(out0), np.asarray(out1))
        # About `rate` of the weights dropped; the rest scaled by 1 / (1 - rate).
        w0 = np.asarray(w0, np.float64)
        keep = w0 != 0.0
        n_draws = keep.size
        assert abs((1.0 - keep.mean()) - rate) < 5 * math.sqrt(rate * (1 - rate) / n_draws)
        expected_out, expected_weights = np_attention(
            q, k, v, dropout_keep=keep, attention_dropout=rate
        )
        assert_close(w0, expected_weights, **F32)
        assert_close(out0, expected_out, **F32)
        # The dropped weights are unbiased: they sum to 1 in expectation.
        row_sums = w0.sum(-1)
        assert np.all(np.abs(row_sums - 1.0) < 0.15)

    @chex.variants(with_jit=True, without_jit=True)
    def test_zero_attention_dropout_ignores_rng(self):
        q, k, v = _inputs()
        fn = self.variant(
            lambda q, k, v, rng: dot_product_attention(
                q, k, v, attention_dropout=0.0, dropout_rng=rng
            )
        )
        chex.assert_trees_all_close(
            fn(q, k, v, jax.random.key(0)), dot_product_attention(q, k, v), **F32
        )

    # --- bad input: one test per message, raised at trace time ---

    def _raises(self, exc, match, fn, *args):
        with pytest.raises(exc, match=match):
            self.variant(fn)(*args)

    @chex.variants(with_jit=True, without_jit=True)
    def test_ranks_that_differ(self):
        q, k, v = _inputs()
        self._raises(
            ValueError,
            r"query, key and value must be of shape \[B, T, N, H\], \[B, S, K, H\], \[B, S, K, H\] \(or all unbatched\), got query \(2, 3, 4, 3\), key \(5, 2, 3\), value \(2, 5, 2, 3\)",
            dot_product_attention,
            q,
            k[0],
            v,
        )

    @chex.variants(with_jit=True, without_jit=True)
    def test_rank_not_3_or_4(self):
        q = np.zeros((1, 2, 3, 4, 5), np.float32)
        self._raises(
            ValueError,
            r"query, key and value must be of shape \[B, T, N, H\], \[B, S, K, H\], \[B, S, K, H\] \(or all unbatched\), got query \(1, 2, 3, 4, 5\)",
            dot_product_attention,
            q,
            q,
            q,
        )

    @chex.variants(with_jit=True, without_jit=True)
    def test_head_dim_mismatch(self):
        q, k, v = _inputs()
        self._raises(
            ValueError,
            r"dot_product_attention: key must have the head dim H=3 of query, got query \(2, 3, 4, 3\), key \(2, 5, 2, 2\)",
            dot_product_attention,
            q,
            k[..., :2],
            v[..., :2],
        )

    @chex.variants(with_jit=True, without_jit=True)
    def test_heads_not_a_multiple(self):
        q, k, v = _inputs()
        self._raises(
            ValueError,
            r"dot_product_attention: the number of query heads N=3 must be a multiple of the key/value heads K=2, got query \(2, 3, 3, 3\)",
            dot_product_attention,
            q[:, :, :3],
            k,
            v,
        )

    @chex.variants(with_jit=True, without_jit=True)
    def test_key_value_lengths_differ(self):
        q, k, v = _inputs()
        self._raises(
            ValueError,
            r"dot_product_attention: value must have the shape of key, got query \(2, 3, 4, 3\), key \(2, 5, 2, 3\), value \(2, 4, 2, 3\)",
            dot_product_attention,
            q,
            k,
            v[:, :4],
        )

    @chex.variants(with_jit=True, without_jit=True)
    def test_value_heads_differ(self):
        q, k, v = _inputs()
        self._raises(
            ValueError,
            r"value must have the shape of key",
            dot_product_attention,
            q,
            k,
            v[:, :, :1],
        )

    @chex.variants(with_jit=True, without_jit=True)
    def test_batch_sizes_differ(self):
        q, k, v = _inputs()
        self._raises(
            ValueError,
            r"dot_product_attention: key must have the batch size B=1 of query, got query \(1, 3, 4, 3\), key \(2, 5, 2, 3\)",
            dot_product_attention,
            q[:1],
            k,
            v,
        )

    @chex.variants(with_jit=True, without_jit=True)
    def test_mask_that_does_not_broadcast(self):
        q, k, v = _inputs()
        self._raises(
            ValueError,
            r"dot_product_attention: mask must be broadcastable to \[B, N, T, S\]=\(2, 4, 3, 5\), got bool array of shape \(3, 3\)",
            lambda q, k, v, m: dot_product_attention(q, k, v, mask=m),
            q,
            k,
            v,
            np.ones((3, 3), bool),
        )

    @chex.variants(with_jit=True, without_jit=True)
    def test_unbatched_mask_that_does_not_broadcast(self):
        q, k, v = _inputs()
        self._raises(
            ValueError,
            r"dot_product_attention: mask must be broadcastable to \[N, T, S\]=\(4, 3, 5\), got bool array of shape \(4, 3, 4\)",
            lambda q, k, v, m: dot_product_attention(q, k, v, mask=m),
            q[0],
            k[0],
            v[0],
            np.ones((4, 3, 4), bool),
        )

    @chex.variants(with_jit=True, without_jit=True)
    def test_bias_that_does_not_broadcast(self):
        q, k, v = _inputs()
        self._raises(
            ValueError,
            r"dot_product_attention: bias must be broadcastable to \[B, N, T, S\]=\(2, 4, 3, 5\), got float32 array of shape \(2, 2, 3, 5\)",
            lambda q, k, v, bias: dot_product_attention(q, k, v, bias),
            q,
            k,
            v,
            np.zeros((2, 2, 3, 5), np.float32),
        )

    @chex.variants(with_jit=True, without_jit=True)
    def test_bias_of_rank_5(self):
        q, k, v = _inputs()
        self._raises(
            ValueError,
            r"dot_product_attention: bias must be broadcastable to \[B, N, T, S\]=\(2, 4, 3, 5\), got float32 array of shape \(1, 2, 4, 3, 5\)",
            lambda q, k, v, bias: dot_product_attention(q, k, v, bias),
            q,
            k,
            v,
            np.zeros((1, 2, 4, 3, 5), np.float32),
        )

    @chex.variants(with_jit=True, without_jit=True)
    def test_non_boolean_mask(self):
        q, k, v = _inputs()
        self._raises(
            TypeError,
            r"dot_product_attention: mask must be a boolean array \(True = attend; pass additive masks as bias\), got float32 array of shape \(3, 5\)",
            lambda q, k, v, m: dot_product_attention(q, k, v, mask=m),
            q,
            k,
            v,
            np.ones((3, 5), np.float32),
        )

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters("query", "key", "value", "bias")
    def test_integer_inputs(self, name):
        args = dict(zip(("query", "key", "value"), _inputs(), strict=True))
        args["bias"] = np.zeros((3, 5), np.float32)
        args[name] = args[name].astype(np.int32)
        self._raises(
            TypeError,
            rf"dot_product_attention: {name} must be a floating-point array, got int32 array of shape",
            lambda a: dot_product_attention(**a),
            args,
        )

    @chex.variants(with_jit=True, without_jit=True)
    def test_mixed_dtypes(self):
        q, k, v = _inputs()
        self._raises(
            TypeError,
            r"share a dtype, got bfloat16, float32, float32",
            dot_product_attention,
            q.astype(jnp.bfloat16),
            k,
            v,
        )

    @chex.variants(with_jit=True, without_jit=True)
    def test_unknown_normalizer(self):
        self._raises(
            ValueError,
            r"normalizer must be one of .*'softmax'.* got 'softermax'",
            lambda q, k, v: dot_product_attention(q, k, v, normalizer="softermax"),
            *_inputs(),
        )

    @chex.variants(with_jit=True, without_jit=True)
    def test_unknown_implementation(self):
        self._raises(
            ValueError,
            r"implementation must be None or one of \('xla',.*got 'cudnn2'",
            lambda q, k, v: dot_product_attention(q, k, v, implementation="cudnn2"),
            *_inputs(),
        )

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(((-1, 2),), ((1, 2, 3),), ("wide",), (1.5,))
    def test_bad_local_window_size(self, window):
        self._raises(
            ValueError,
            r"dot_product_attention: local_window_size must be an int >= 0 or a \(left, right\) pair of them, got",
            lambda q, k, v: dot_product_attention(q, k, v, local_window_size=window),
            *_inputs(),
        )

    @chex.variants(with_jit=True, without_jit=True)
    def test_lengths_of_wrong_shape(self):
        self._raises(
            ValueError,
            r"dot_product_attention: query_seq_lengths must be of shape \(2,\), got int32 array of shape \(2, 1\)",
            lambda q, k, v, n: dot_product_attention(q, k, v, query_seq_lengths=n),
            *_inputs(),
            np.ones((2, 1), np.int32),
        )

    @chex.variants(with_jit=True, without_jit=True)
    def test_lengths_of_wrong_dtype(self):
        self._raises(
            TypeError,
            r"dot_product_attention: key_value_seq_lengths must be an integer array, got float32 array of shape \(2,\)",
            lambda q, k, v, n: dot_product_attention(q, k, v, key_value_seq_lengths=n),
            *_inputs(),
            np.ones(2, np.float32),
        )

    @chex.variants(with_jit=True, without_jit=True)
    def test_segment_ids_of_wrong_shape(self):
        self._raises(
            ValueError,
            r"dot_product_attention: segment_ids \(key/value\) must be of shape \(2, 5\), got int32 array of shape \(2, 3\)",
            lambda q, k, v, ids: dot_product_attention(q, k, v, segment_ids=ids),
            *_inputs(),
            np.zeros((2, 3), np.int32),
        )

    @chex.variants(with_jit=True, without_jit=True)
    def test_positions_of_wrong_shape(self):
        self._raises(
            ValueError,
            r"dot_product_attention: query_positions must be of shape \[3\] or \[2, 3\], got int32 array of shape \(5,\)",
            lambda q, k, v, pos: dot_product_attention(q, k, v, query_positions=pos),
            *_inputs(),
            np.arange(5, dtype=np.int32),
        )

    @chex.variants(with_jit=True, without_jit=True)
    def test_dropout_without_rng(self):
        self._raises(
            ValueError,
            r"dot_product_attention: dropout_rng must be a jax.random key when attention_dropout > 0, got None",
            lambda q, k, v: dot_product_attention(q, k, v, attention_dropout=0.1),
            *_inputs(),
        )

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(-0.1, 1.0)
    def test_bad_attention_dropout(self, rate):
        self._raises(
            ValueError,
            r"dot_product_attention: attention_dropout must be a number in \[0, 1\), got",
            lambda q, k, v, rng: dot_product_attention(
                q, k, v, attention_dropout=rate, dropout_rng=rng
            ),
            *_inputs(),
            jax.random.key(0),
        )

    @chex.variants(with_jit=True, without_jit=True)
    def test_bad_softcap(self):
        self._raises(
            ValueError,
            r"dot_product_attention: softcap must be None or a finite number > 0, got 0\.0\.",
            lambda q, k, v: dot_product_attention(q, k, v, softcap=0.0),
            *_inputs(),
        )

    @chex.variants(with_jit=True, without_jit=True)
    def test_non_finite_scale(self):
        self._raises(
            ValueError,
            r"scale must be finite, got inf",
            lambda q, k, v: dot_product_attention(q, k, v, scale=math.inf),
            *_inputs(),
        )


# ---------------------------------------------------------------------------------------------
# gradients and composition
# ---------------------------------------------------------------------------------------------


def test_check_grads():
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        shape = (1, 3, 4, 2, 1, 3)  # MQA, T != S, odd H
        q, k, v = (jnp.asarray(a, jnp.float64) for a in make_qkv(shape, rng, dtype=np.float64))
        bias = jnp.asarray(rng.standard_normal((1, 2, 3, 4)))
        mask = rng.random((1, 2, 3, 4)) < 0.8

        @jax.jit
        def attend(q, k, v, bias):
            return dot_product_attention(q, k, v, bias, mask, is_causal=True)

        assert attend(q, k, v, bias).dtype == jnp.float64
        expected, _ = np_attention(q, k, v, bias, mask, is_causal=True)
        chex.assert_trees_all_close(np.asarray(attend(q, k, v, bias)), expected, atol=1e-12)
        # order=2 checks the first derivatives, then the second, in both modes.
        check_grads(attend, (q, k, v, bias), order=2, modes=("fwd", "rev"), eps=1e-5)


def test_jit_vmap_grad_matches_loop():
    b, t, s, n, _, h = SHAPE
    q, k, v = _inputs(seed=4)
    kv_lengths = np.array([5, 2], np.int32)
    mask = np.random.default_rng(5).random((b, n, t, s)) < 0.8

    def loss(q, k, v, mask, kv_len):  # one example, unbatched [T, N, H]
        out = dot_product_attention(
            q, k, v, mask=mask, is_causal=True, key_value_seq_lengths=kv_len
        )
        return jnp.sum(jnp.sin(out))

    grad_fn = jax.grad(loss, argnums=(0, 1, 2))
    batched = jax.jit(jax.vmap(grad_fn))(q, k, v, mask, kv_lengths)
    single_fn = jax.jit(grad_fn)
    for i in range(b):
        single = single_fn(q[i], k[i], v[i], mask[i], kv_lengths[i])
        for got, expected in zip(batched, single, strict=True):
            chex.assert_trees_all_close(got[i], expected, **F32)


# ---------------------------------------------------------------------------------------------
# additive attention and attention pooling
# ---------------------------------------------------------------------------------------------


def np_additive(query, keys, values, params, mask=None):
    q = np.asarray(query, np.float64)
    single = q.ndim == 2
    q = q[:, None] if single else q
    keys, values = np.asarray(keys, np.float64), np.asarray(values, np.float64)
    w_q, w_k, v = (np.asarray(params[n], np.float64) for n in ("w_query", "w_key", "v"))
    b, t, s = q.shape[0], q.shape[1], keys.shape[1]
    if mask is None:
        allowed = np.ones((b, t, s), bool)
    elif single:
        allowed = np.broadcast_to(np.broadcast_to(mask, (b, s))[:, None], (b, t, s))
    else:
        allowed = np.broadcast_to(mask, (b, t, s))
    out = np.zeros((b, t, values.shape[-1]))
    weights = np.zeros((b, t, s))
    for bi in range(b):
        for ti in range(t):
            scores = np.array([v @ np.tanh(q[bi, ti] @ w_q + keys[bi, j] @ w_k) for j in range(s)])
            weights[bi, ti] = _row_softmax(scores, allowed[bi, ti])
            out[bi, ti] = weights[bi, ti] @ values[bi]
    return (out[:, 0], weights[:, 0]) if single else (out, weights)


def _additive_inputs(rng, b, t, s, dq, dk, dv, a, dtype=np.float32):
    query = rng.standard_normal((b, dq) if t is None else (b, t, dq))
    keys, values = rng.standard_normal((b, s, dk)), rng.standard_normal((b, s, dv))
    params = {
        "w_query": rng.standard_normal((dq, a)) / math.sqrt(dq),
        "w_key": rng.standard_normal((dk, a)) / math.sqrt(dk),
        "v": rng.standard_normal(a),
    }
    cast = lambda x: jnp.asarray(x, dtype)  # noqa: E731
    return cast(query), cast(keys), cast(values), {n: cast(p) for n, p in params.items()}


@given(
    seed=SEEDS,
    t=st.sampled_from([None, 3]),
    dims=st.sampled_from([(2, 5, 3, 4, 2, 6), (1, 4, 4, 4, 3, 5)]),
    masked=st.booleans(),
)
@settings(max_examples=6)
def test_additive_attention_matches_reference(seed, t, dims, masked):
    b, s, dq, dk, dv, a = dims
    rng = np.random.default_rng(seed)
    query, keys, values, params = _additive_inputs(rng, b, t, s, dq, dk, dv, a)
    mask = None
    if masked:
        mask = rng.random((b, s) if t is None else (b, t, s)) < 0.6
        mask[0] = False  # a fully masked row
    out, weights = additive_attention(query, keys, values, params, mask=mask, return_weights=True)
    expected_out, expected_weights = np_additive(query, keys, values, params, mask)
    assert_close(out, expected_out, **F32)
    assert_close(weights, expected_weights, **F32)
    if masked:
        np.testing.assert_array_equal(np.asarray(out)[0], 0.0)


def test_additive_attention_2d_mask_is_key_padding_for_3d_queries():
    # B == T: a [B, S] mask must pad keys per example, not be broadcast against [T, S].
    rng = np.random.default_rng(2)
    query, keys, values, params = _additive_inputs(rng, 3, 3, 5, 3, 4, 2, 6)
    mask = rng.random((3, 5)) < 0.6
    out = additive_attention(query, keys, values, params, mask=mask)
    expected, _ = np_additive(
        query, keys, values, params, np.broadcast_to(mask[:, None], (3, 3, 5))
    )
    assert_close(out, expected, **F32)


def test_numpy_int_window_matches_python_int():
    q, k, v = _inputs()
    out_np = dot_product_attention(q, k, v, local_window_size=(np.int64(1), np.int32(2)))
    chex.assert_trees_all_close(out_np, dot_product_attention(q, k, v, local_window_size=(1, 2)))


def test_additive_attention_gradients_are_finite():
    rng = np.random.default_rng(1)
    query, keys, values, params = _additive_inputs(rng, 2, 3, 5, 3, 4, 2, 6)
    mask = rng.random((2, 3, 5)) < 0.5
    mask[0, 0] = False

    @jax.jit
    def loss(query, keys, values, params):
        return jnp.sum(additive_attention(query, keys, values, params, mask=mask) ** 2)

    grads = jax.grad(loss, argnums=(0, 1, 2, 3))(query, keys, values, params)
    chex.assert_tree_all_finite(grads)
    np.testing.assert_array_equal(np.asarray(grads[0])[0, 0], 0.0)


def test_additive_attention_bfloat16():
    rng = np.random.default_rng(0)
    query, keys, values, params = _additive_inputs(rng, 2, 3, 5, 3, 4, 2, 6, dtype=jnp.bfloat16)
    out = additive_attention(query, keys, values, params)
    assert out.dtype == jnp.bfloat16
    as64 = lambda x: np.asarray(x.astype(jnp.float32), np.float64)  # noqa: E731
    expected, _ = np_additive(
        as64(query), as64(keys), as64(values), {n: as64(p) for n, p in params.items()}
    )
    assert_close(out, expected, **LOW)


def np_pool(values, query, mask=None):
    values = np.asarray(values, np.float64)
    b, s, d = values.shape
    q = np.broadcast_to(np.asarray(query, np.float64), (b, d))
    allowed = np.ones((b, s), bool) if mask is None else np.broadcast_to(mask, (b, s))
    out, weights = np.zeros((b, d)), np.zeros((b, s))
    for bi in range(b):
        weights[bi] = _row_softmax(np.array([values[bi, j] @ q[bi] for j in range(s)]), allowed[bi])
        out[bi] = weights[bi] @ values[bi]
    return out, weights


@given(seed=SEEDS, shared_query=st.booleans(), masked=st.booleans())
@settings(max_examples=8)
def test_attention_pool_matches_reference(seed, shared_query, masked):
    b, s, d = 3, 5, 4
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((b, s, d)).astype(np.float32)
    query = rng.standard_normal((d,) if shared_query else (b, d)).astype(np.float32)
    mask = None
    if masked:
        mask = rng.random((b, s)) < 0.6
        mask[1] = False
    out, weights = attention_pool(values, query, mask=mask, return_weights=True)
    chex.assert_shape(out, (b, d))
    chex.assert_shape(weights, (b, s))
    expected_out, expected_weights = np_pool(values, query, mask)
    assert_close(out, expected_out, **F32)
    assert_close(weights, expected_weights, **F32)
    if masked:
        np.testing.assert_array_equal(np.asarray(out)[1], 0.0)


def test_attention_pool_bfloat16():
    rng = np.random.default_rng(0)
    values = jnp.asarray(rng.standard_normal((2, 5, 4)), jnp.bfloat16)
    query = jnp.asarray(rng.standard_normal((2, 4)), jnp.bfloat16)
    out = attention_pool(values, query)
    assert out.dtype == jnp.bfloat16
    as64 = lambda x: np.asarray(x.astype(jnp.float32), np.float64)  # noqa: E731
    assert_close(out, np_pool(as64(values), as64(query))[0], **LOW)


class PoolingVariantsTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_additive_attention_traced(self):
        rng = np.random.default_rng(1)
        query, keys, values, params = _additive_inputs(rng, 2, None, 5, 3, 4, 2, 6)
        mask = rng.random((2, 5)) < 0.5
        out = self.variant(lambda q, k, v, p, m: additive_attention(q, k, v, p, mask=m))(
            query, keys, values, params, mask
        )
        assert_close(out, np_additive(query, keys, values, params, mask)[0], **F32)

    @chex.variants(with_jit=True, without_jit=True)
    def test_attention_pool_traced(self):
        rng = np.random.default_rng(1)
        values = rng.standard_normal((3, 5, 4)).astype(np.float32)
        query = rng.standard_normal((3, 4)).astype(np.float32)
        out = self.variant(attention_pool)(values, query)
        assert_close(out, np_pool(values, query)[0], **F32)

    @chex.variants(with_jit=True, without_jit=True)
    def test_additive_attention_missing_params(self):
        rng = np.random.default_rng(1)
        query, keys, values, params = _additive_inputs(rng, 2, None, 5, 3, 4, 2, 6)
        del params["v"]
        with pytest.raises(ValueError, match=r"params is missing \['v'\]"):
            self.variant(additive_attention)(query, keys, values, params)

    @chex.variants(with_jit=True, without_jit=True)
    def test_additive_attention_bad_shapes(self):
        rng = np.random.default_rng(1)
        query, keys, values, params = _additive_inputs(rng, 2, None, 5, 3, 4, 2, 6)
        with pytest.raises(
            ValueError, match=r"must agree on B and S, got \(2, 5, 4\), \(2, 4, 2\)"
        ):
            self.variant(additive_attention)(query, keys, values[:, :4], params)
        with pytest.raises(ValueError, match=r"query must be \[B, Dq\] or \[B, T, Dq\] with B=2"):
            self.variant(additive_attention)(query[:1], keys, values, params)
        with pytest.raises(ValueError, match=r"params shapes w_query \(3, 6\)"):
            self.variant(additive_attention)(query[:, :2], keys, values, params)

    @chex.variants(with_jit=True, without_jit=True)
    def test_additive_attention_bad_mask(self):
        rng = np.random.default_rng(1)
        query, keys, values, params = _additive_inputs(rng, 2, None, 5, 3, 4, 2, 6)
        with pytest.raises(
            TypeError,
            match=r"additive_attention: mask must be a boolean array, got int32 array of shape \(2, 5\)",
        ):
            self.variant(lambda m: additive_attention(query, keys, values, params, mask=m))(
                np.ones((2, 5), np.int32)
            )
        with pytest.raises(
            ValueError,
            match=r"additive_attention: mask must be broadcastable to \(2, 5\), got bool array of shape \(2, 4\)",
        ):
            self.variant(lambda m: additive_attention(query, keys, values, params, mask=m))(
                np.ones((2, 4), bool)
            )

    @chex.variants(with_jit=True, without_jit=True)
    def test_attention_pool_bad_input(self):
        values = np.zeros((3, 5, 4), np.float32)
        with pytest.raises(ValueError, match=r"values must be \[B, S, D\], got \(5, 4\)"):
            self.variant(attention_pool)(values[0], np.zeros(4, np.float32))
        with pytest.raises(ValueError, match=r"query must be \[D\]=\(4,\) or \[B, D\]=\(3, 4\)"):
            self.variant(attention_pool)(values, np.zeros((2, 4), np.float32))
        with pytest.raises(TypeError, match=r"values must be a floating-point array"):
            self.variant(attention_pool)(values.astype(np.int32), np.zeros(4, np.int32))
        with pytest.raises(
            ValueError,
            match=r"attention_pool: mask must be broadcastable to \(3, 5\), got bool array of shape \(3, 4\)",
        ):
            self.variant(lambda m: attention_pool(values, np.zeros(4, np.float32), mask=m))(
                np.ones((3, 4), bool)
            )


def test_softmax_is_the_default_normalizer():
    # A sanity link between the two modules: the default equals the explicit softmax callable.
    q, k, v = _inputs()
    explicit = dot_product_attention(q, k, v, normalizer=lambda x, where: softmax(x, where=where))
    chex.assert_trees_all_close(dot_product_attention(q, k, v), explicit, **F32)
