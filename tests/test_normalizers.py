"""Tests of the softmax family against independent float64 NumPy references."""

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

from attention_jax import log_softmax, softcap, softmax, softmax_one, sparsemax

# A few fixed shapes keep the number of compilations (which dominates the runtime) small.
SHAPES = [(7,), (3, 5), (2, 3, 4), (2, 1, 6)]

F32 = dict(atol=1e-5, rtol=1e-5)
LOW = dict(atol=2e-2, rtol=2e-2)


# ---------------------------------------------------------------------------------------------
# float64 NumPy references, one row at a time
# ---------------------------------------------------------------------------------------------


def _apply_rows(row_fn, x, axis=-1, where=None):
    """Applies ``row_fn(z, w)`` to every 1-D slice of ``x`` over ``axis`` (int or tuple)."""
    x = np.asarray(x, np.float64)
    w = np.ones(x.shape, bool) if where is None else np.broadcast_to(np.asarray(where), x.shape)
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    axes = tuple(a % x.ndim for a in axes)
    dest = tuple(range(x.ndim - len(axes), x.ndim))
    xm, wm = np.moveaxis(x, axes, dest), np.moveaxis(w, axes, dest)
    lead = xm.shape[: x.ndim - len(axes)]
    xr, wr = xm.reshape(lead + (-1,)), wm.reshape(lead + (-1,))
    out = np.zeros_like(xr)
    for idx in np.ndindex(*lead):
        out[idx] = row_fn(xr[idx], wr[idx])
    return np.moveaxis(out.reshape(xm.shape), dest, axes)


def _row_softmax(z, w):
    out = np.zeros_like(z)
    if w.any():
        e = np.exp(z[w] - z[w].max())
        out[w] = e / e.sum()
    return out


def _row_log_softmax(z, w):
    out = np.full_like(z, -np.inf)
    if w.any():
        out[w] = z[w] - np.logaddexp.reduce(z[w])
    return out


def _row_softmax_one(z, w):
    out = np.zeros_like(z)
    # log(1 + sum exp z) as a log-sum-exp over the allowed logits and an extra logit 0.
    log_den = np.logaddexp.reduce(np.concatenate([[0.0], z[w]]))
    out[w] = np.exp(z[w] - log_den)
    return out


def sparsemax_tau(z):
    """The threshold of sparsemax, by bisection on sum(max(z - tau, 0)) = 1, then made exact."""
    lo, hi = z.max() - 1.0, z.max()
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if np.maximum(z - mid, 0.0).sum() > 1.0:
            lo = mid
        else:
            hi = mid
    support = z > 0.5 * (lo + hi)
    return (z[support].sum() - 1.0) / support.sum()


def _row_sparsemax(z, w):
    out = np.zeros_like(z)
    if w.any():
        out[w] = np.maximum(z[w] - sparsemax_tau(z[w]), 0.0)
    return out


def np_softmax(x, axis=-1, where=None, temperature=1.0):
    return _apply_rows(_row_softmax, np.asarray(x, np.float64) / temperature, axis, where)


def np_log_softmax(x, axis=-1, where=None):
    return _apply_rows(_row_log_softmax, x, axis, where)


def np_softmax_one(x, axis=-1, where=None):
    return _apply_rows(_row_softmax_one, x, axis, where)


def np_sparsemax(x, axis=-1, where=None):
    return _apply_rows(_row_sparsemax, x, axis, where)


def np_softcap(x, cap):
    return cap * np.tanh(np.asarray(x, np.float64) / cap)


# ---------------------------------------------------------------------------------------------
# hypothesis strategies
# ---------------------------------------------------------------------------------------------


@st.composite
def logits_cases(draw, with_where=True):
    """(x float32, axis, where or None) with values on a drawn scale."""
    shape = draw(st.sampled_from(SHAPES))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    scale = draw(st.sampled_from([0.1, 1.0, 5.0, 30.0]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = (scale * rng.standard_normal(shape)).astype(np.float32)
    where = None
    if with_where and draw(st.booleans()):
        where = rng.random(shape) < draw(st.sampled_from([0.3, 0.7]))
        if draw(st.booleans()):
            # One fully masked row.
            row = [0] * len(shape)
            row[axis] = slice(None)
            where[tuple(row)] = False
    return x, axis, where


_jit_softmax = jax.jit(softmax, static_argnames=("axis", "temperature"))
_jit_log_softmax = jax.jit(log_softmax, static_argnames="axis")
_jit_softmax_one = jax.jit(softmax_one, static_argnames="axis")
_jit_sparsemax = jax.jit(sparsemax, static_argnames="axis")
_jit_softcap = jax.jit(softcap, static_argnames="cap")


# ---------------------------------------------------------------------------------------------
# values against the references
# ---------------------------------------------------------------------------------------------


@given(logits_cases(), st.sampled_from([1.0, 0.5, 3.0]))
def test_softmax_matches_reference(case, temperature):
    x, axis, where = case
    out = _jit_softmax(x, axis, where=where, temperature=temperature)
    chex.assert_shape(out, x.shape)
    assert out.dtype == jnp.float32
    expected = np_softmax(x, axis, where, temperature)
    chex.assert_trees_all_close(np.asarray(out, np.float64), expected, **F32)
    if where is not None:
        assert np.all(np.asarray(out)[~np.broadcast_to(where, x.shape)] == 0.0)


@given(st.sampled_from(SHAPES), st.integers(0, 2**32 - 1))
@settings(max_examples=6)
def test_softmax_over_several_axes(shape, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    axes = tuple(range(len(shape)))[-2:]
    where = rng.random(shape) < 0.6
    out = _jit_softmax(x, axes, where=where)
    expected = np_softmax(x, axes, where)
    chex.assert_trees_all_close(np.asarray(out, np.float64), expected, **F32)


@given(logits_cases())
def test_log_softmax_matches_reference(case):
    x, axis, where = case
    out = np.asarray(_jit_log_softmax(x, axis, where=where), np.float64)
    expected = np_log_softmax(x, axis, where)
    finite = np.isfinite(expected)
    # Masked entries and fully masked rows are exactly -inf.
    np.testing.assert_array_equal(np.isfinite(out), finite)
    assert np.all(out[~finite] == -np.inf)
    chex.assert_trees_all_close(out[finite], expected[finite], **F32)


@given(logits_cases())
def test_softmax_one_matches_reference(case):
    x, axis, where = case
    out = _jit_softmax_one(x, axis, where=where)
    chex.assert_trees_all_close(np.asarray(out, np.float64), np_softmax_one(x, axis, where), **F32)
    assert np.all(np.sum(np.asarray(out, np.float64), axis=axis) <= 1.0 + 1e-6)


@given(logits_cases())
def test_sparsemax_matches_reference(case):
    x, axis, where = case
    out = np.asarray(_jit_sparsemax(x, axis, where=where), np.float64)
    expected = np_sparsemax(x, axis, where)
    chex.assert_trees_all_close(out, expected, **F32)
    assert np.all(out >= 0.0)
    # Exactly zero outside the support (including masked entries), sums to 1 or 0.
    np.testing.assert_array_equal(out == 0.0, expected == 0.0)
    sums = out.sum(axis=axis)
    assert np.all((np.abs(sums - 1.0) < 1e-5) | (sums == 0.0))


@given(st.sampled_from(SHAPES), st.integers(0, 2**32 - 1), st.sampled_from([0.5, 2.0, 30.0]))
@settings(max_examples=8)
def test_softcap_matches_reference(shape, seed, cap):
    x = (10 * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)
    out = _jit_softcap(x, cap)
    chex.assert_trees_all_close(np.asarray(out, np.float64), np_softcap(x, cap), **F32)
    assert np.all(np.abs(np.asarray(out)) <= cap)


@jax.jit
def _sparsemax_vjp(x, where, g):
    _, vjp = jax.vjp(lambda z: sparsemax(z, where=where), x)
    return vjp(g)[0]


@given(st.sampled_from(SHAPES), st.integers(0, 2**32 - 1))
@settings(max_examples=6)
def test_sparsemax_gradient_matches_reference_jacobian(shape, seed):
    rng = np.random.default_rng(seed)
    x = (2 * rng.standard_normal(shape)).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    where = rng.random(shape) < 0.8
    got = _sparsemax_vjp(x, where, g)
    p = np_sparsemax(x, -1, where)
    s = (p > 0).astype(np.float64)
    size = np.maximum(s.sum(-1, keepdims=True), 1.0)
    # J = diag(s) - s s^T / |S| (symmetric), so J^T g = s * (g - <s, g> / |S|).
    expected = s * (g - (s * g).sum(-1, keepdims=True) / size)
    chex.assert_trees_all_close(np.asarray(got, np.float64), expected, **F32)


LOW_PRECISION_FNS = {
    "softmax": (jax.jit(softmax), np_softmax),
    "log_softmax": (jax.jit(log_softmax), np_log_softmax),
    "softmax_one": (jax.jit(softmax_one), np_softmax_one),
    "sparsemax": (jax.jit(sparsemax), np_sparsemax),
    "softcap": (jax.jit(lambda x, where: softcap(x, 3.0)), lambda x, where: np_softcap(x, 3.0)),
}


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", list(LOW_PRECISION_FNS))
@given(seed=st.integers(0, 2**32 - 1), scale=st.sampled_from([1.0, 8.0]))
@settings(max_examples=4)
def test_low_precision_matches_reference(name, dtype, seed, scale):
    fn, ref = LOW_PRECISION_FNS[name]
    rng = np.random.default_rng(seed)
    x = jnp.asarray(scale * rng.standard_normal((3, 5)), dtype)
    where = rng.random((3, 5)) < 0.7
    where[0] = False
    out = fn(x, where=where)
    assert out.dtype == dtype
    chex.assert_shape(out, x.shape)
    # The reference sees exactly the low-precision inputs; the error is the output rounding.
    expected = ref(np.asarray(x.astype(jnp.float32), np.float64), where=where)
    finite = np.isfinite(expected)
    out = np.asarray(out.astype(jnp.float32), np.float64)
    np.testing.assert_array_equal(np.isfinite(out), finite)
    chex.assert_trees_all_close(out[finite], expected[finite], **LOW)


# ---------------------------------------------------------------------------------------------
# gradients: finite differences in float64
# ---------------------------------------------------------------------------------------------

_GRAD_POINT = np.array(
    [
        [0.9, 0.6, 0.1, -1.0, -0.3],
        [-0.2, 1.3, 0.4, 0.0, -0.7],
        [0.25, -0.5, 0.3, 0.5, 0.05],
    ]
)
_GRAD_WHERE = np.array(
    [
        [True, True, False, True, True],
        [True, False, True, True, False],
        [True, True, True, True, True],
    ]
)


# One function stacking the normalizers keeps the number of (costly) second-order compilations
# down; a failure message points at [function, row, column] of the stack.
_GRAD_FNS = (softmax, log_softmax, softmax_one, sparsemax)
_GRAD_FNS_MASKED = (
    lambda x: softmax(x, where=_GRAD_WHERE, temperature=0.7),
    lambda x: softmax_one(x, where=_GRAD_WHERE),
    lambda x: sparsemax(x, where=_GRAD_WHERE),
    lambda x: softcap(x, 0.8),
)


@pytest.mark.parametrize(
    "fns, order", [(_GRAD_FNS, 2), (_GRAD_FNS_MASKED, 1)], ids=["order2", "masked_order1"]
)
def test_check_grads(fns, order):
    with jax.enable_x64(True):
        x = jnp.asarray(_GRAD_POINT, jnp.float64)
        stacked = jax.jit(lambda z: jnp.stack([fn(z) for fn in fns]))
        assert stacked(x).dtype == jnp.float64
        # order=2 checks the first derivatives, then the second, in both modes.
        check_grads(stacked, (x,), order=order, modes=("fwd", "rev"), eps=1e-5)


def test_sparsemax_grad_point_is_away_from_kinks():
    # The finite differences of test_check_grads only see the exact gradient if no entry sits
    # within eps of the threshold.
    for z in _GRAD_POINT:
        assert np.min(np.abs(z - sparsemax_tau(z))) > 1e-2


# ---------------------------------------------------------------------------------------------
# traced and eager: edge cases and errors
# ---------------------------------------------------------------------------------------------

NORMALIZERS = {"softmax": softmax, "softmax_one": softmax_one, "sparsemax": sparsemax}


class EdgeCaseTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*[(k, k) for k in NORMALIZERS])
    def test_fully_masked_row_is_zero_with_finite_grads(self, name):
        fn = NORMALIZERS[name]
        x = jnp.asarray(_GRAD_POINT, jnp.float32)
        where = _GRAD_WHERE.copy()
        where[1] = False
        out = self.variant(lambda z: fn(z, where=where))(x)
        np.testing.assert_array_equal(np.asarray(out)[1], 0.0)
        assert np.all(np.isfinite(np.asarray(out)))
        chex.assert_trees_all_close(
            np.asarray(out, np.float64),
            {"softmax": np_softmax, "softmax_one": np_softmax_one, "sparsemax": np_sparsemax}[name](
                x, -1, where
            ),
            **F32,
        )
        weights = jnp.arange(15.0).reshape(3, 5)
        g = self.variant(jax.grad(lambda z: jnp.sum(fn(z, where=where) * weights)))(x)
        assert np.all(np.isfinite(np.asarray(g)))
        # No gradient reaches masked entries (so none reaches a fully masked row).
        np.testing.assert_array_equal(np.asarray(g)[~where], 0.0)

    @chex.variants(with_jit=True, without_jit=True)
    def test_log_softmax_fully_masked_row(self):
        x = jnp.asarray(_GRAD_POINT, jnp.float32)
        where = _GRAD_WHERE.copy()
        where[0] = False
        out = np.asarray(self.variant(lambda z: log_softmax(z, where=where))(x))
        assert np.all(out[0] == -np.inf)
        assert np.all(out[~where] == -np.inf)
        chex.assert_trees_all_close(out[where], np_log_softmax(x, -1, where)[where], **F32)

        def loss(z):
            y = log_softmax(z, where=where)
            return jnp.sum(jnp.where(jnp.isfinite(y), y, 0.0) ** 2)

        g = np.asarray(self.variant(jax.grad(loss))(x))
        assert np.all(np.isfinite(g))
        np.testing.assert_array_equal(g[0], 0.0)
        np.testing.assert_array_equal(g[~where], 0.0)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        ("softmax", softmax, np_softmax),
        ("log_softmax", log_softmax, np_log_softmax),
        ("softmax_one", softmax_one, np_softmax_one),
        ("sparsemax", sparsemax, np_sparsemax),
    )
    def test_logits_of_1e4(self, fn, ref):
        rng = np.random.default_rng(0)
        x = (1e4 * np.sign(rng.standard_normal((3, 5)))).astype(np.float32)
        x[0] = 1e4
        x[1] = -1e4
        x[2, :2] += np.array([0.5, -0.25], np.float32)  # exact in float32 at 1e4
        out = np.asarray(self.variant(fn)(x), np.float64)
        assert np.all(np.isfinite(out))
        chex.assert_trees_all_close(out, ref(x), **F32)
        g = self.variant(jax.grad(lambda z: jnp.sum(fn(z) * jnp.arange(5.0))))(x)
        assert np.all(np.isfinite(np.asarray(g)))

    @chex.variants(with_jit=True, without_jit=True)
    def test_softmax_one_large_logits(self):
        x = np.array([[1e4, 1e4 - 1.0, -3.0], [80.0, 0.0, -80.0], [-1e4, -1e4, -1e4]], np.float32)
        out = np.asarray(self.variant(softmax_one)(x), np.float64)
        assert np.all(np.isfinite(out))
        chex.assert_trees_all_close(out, np_softmax_one(x), **F32)
        # With every logit very negative, attending to nothing wins.
        np.testing.assert_array_equal(out[2], 0.0)

    @chex.variants(with_jit=True, without_jit=True)
    def test_temperature_array(self):
        x = jnp.asarray(_GRAD_POINT, jnp.float32)
        out = self.variant(lambda z, t: softmax(z, temperature=t))(x, jnp.float32(0.25))
        chex.assert_trees_all_close(
            np.asarray(out, np.float64), np_softmax(x, -1, None, 0.25), **F32
        )

    @chex.variants(with_jit=True, without_jit=True)
    def test_where_broadcasts(self):
        x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 3, 5)), jnp.float32)
        where = np.array([True, False, True, True, False])
        out = self.variant(lambda z: softmax(z, axis=-1, where=where))(x)
        chex.assert_shape(out, (2, 3, 5))
        chex.assert_trees_all_close(np.asarray(out, np.float64), np_softmax(x, -1, where), **F32)
        column = np.array([True, False, True])[:, None]
        out = self.variant(lambda z: sparsemax(z, axis=1, where=column))(x)
        chex.assert_trees_all_close(np.asarray(out, np.float64), np_sparsemax(x, 1, column), **F32)

    # --- errors, raised at trace time ---

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        ("softmax", softmax),
        ("log_softmax", log_softmax),
        ("softmax_one", softmax_one),
        ("sparsemax", sparsemax),
        ("softcap", lambda x: softcap(x, 1.0)),
    )
    def test_integer_input_raises(self, fn):
        with pytest.raises(TypeError, match=r"floating-point.*int32.*\(3, 4\)"):
            self.variant(fn)(jnp.ones((3, 4), jnp.int32))

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*[(k, k) for k in NORMALIZERS])
    def test_non_boolean_where_raises(self, name):
        with pytest.raises(TypeError, match=r"where must be a boolean array.*float32"):
            self.variant(lambda z: NORMALIZERS[name](z, where=jnp.ones(4)))(jnp.ones((3, 4)))

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*[(k, k) for k in NORMALIZERS])
    def test_where_that_does_not_broadcast_raises(self, name):
        with pytest.raises(
            ValueError,
            match=r"where must be broadcastable to x=\(3, 4\), got bool array of shape \(2, 4\)",
        ):
            self.variant(lambda z: NORMALIZERS[name](z, where=jnp.ones((2, 4), bool)))(
                jnp.ones((3, 4))
            )

    @chex.variants(with_jit=True, without_jit=True)
    def test_where_larger_than_x_raises(self):
        with pytest.raises(
            ValueError,
            match=r"where must be broadcastable to x=\(4,\), got bool array of shape \(2, 4\)",
        ):
            self.variant(lambda z: softmax(z, where=jnp.ones((2, 4), bool)))(jnp.ones(4))

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(0.0, -1.0, math.nan)
    def test_bad_temperature_raises(self, temperature):
        with pytest.raises(
            ValueError, match=r"softmax: temperature must be a finite number > 0, got"
        ):
            self.variant(lambda z: softmax(z, temperature=temperature))(jnp.ones(4))

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(0.0, -2.0)
    def test_bad_softcap_raises(self, cap):
        with pytest.raises(ValueError, match=r"softcap: cap must be a finite number > 0, got"):
            self.variant(lambda z: softcap(z, cap))(jnp.ones(4))

    @chex.variants(with_jit=True, without_jit=True)
    def test_sparsemax_several_axes_raises(self):
        with pytest.raises(TypeError, match=r"sparsemax normalizes over one axis"):
            self.variant(lambda z: sparsemax(z, axis=(0, 1)))(jnp.ones((3, 4)))
