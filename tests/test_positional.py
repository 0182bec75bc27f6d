"""attention_jax.positional against independent float64 NumPy references.

Every function is checked traced and eager (``chex.variants``), on hypothesis-drawn shapes
and values. Positions stay small (|p| < 64) so that float32 angles are accurate to 1e-5.
"""

import functools
import math

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from hypothesis import assume, given

import attention_jax as aj

ATOL = 1e-5
RTOL = 1e-5
variants = chex.variants(with_jit=True, without_jit=True)
seeds = st.integers(0, 2**32 - 1)


# ------------------------------------------------------------------ NumPy references


def ref_sinusoidal(positions, dim, base):
    positions = np.asarray(positions, np.float64)
    out = np.zeros(positions.shape + (dim,))
    for i in range(dim // 2):
        angle = positions / base ** (2 * i / dim)
        out[..., 2 * i] = np.sin(angle)
        out[..., 2 * i + 1] = np.cos(angle)
    return out


def ref_inv_freq(rot, base, scaling=None):
    """RoPE inverse frequencies; YaRN transcribed from HF `_compute_yarn_parameters`."""
    kind = None if scaling is None else scaling.kind
    factor = None if scaling is None else float(scaling.factor)
    if kind == "ntk":
        base = base * factor ** (rot / (rot - 2))
    theta = np.array([base ** (-2.0 * i / rot) for i in range(rot // 2)])
    if kind == "linear":
        theta = theta / factor
    elif kind == "yarn":
        length = scaling.original_max_len

        def corr(num_rot):
            return rot * math.log(length / (num_rot * 2 * math.pi)) / (2 * math.log(base))

        low, high = max(math.floor(corr(32)), 0), min(math.ceil(corr(1)), rot - 1)
        if low == high:
            high += 0.001
        for i in range(rot // 2):
            ramp = min(max((i - low) / (high - low), 0.0), 1.0)
            theta[i] = theta[i] / factor * ramp + theta[i] * (1 - ramp)
    return theta


def ref_mscale(scaling):
    if scaling is not None and scaling.kind == "yarn":
        return 0.1 * math.log(scaling.factor) + 1
    return 1.0


def ref_rotation(position, head_dim, rot, theta, interleaved, mscale=1.0):
    """Explicit ``[H, H]`` rotation matrix of one position."""
    r = np.eye(head_dim)
    for i in range(rot // 2):
        a, b = (2 * i, 2 * i + 1) if interleaved else (i, i + rot // 2)
        c, s = math.cos(position * theta[i]) * mscale, math.sin(position * theta[i]) * mscale
        r[a, a], r[a, b], r[b, a], r[b, b] = c, -s, s, c
    return r


def ref_rope_matrices(x_shape, positions, *, base, fraction, interleaved, scaling=None):
    """Rotation matrices ``[..., T, H, H]`` broadcast to ``x.shape[:-2]``."""
    head_dim = x_shape[-1]
    rot = int(round(fraction * head_dim))
    theta = ref_inv_freq(rot, base, scaling)
    positions = np.broadcast_to(np.asarray(positions), x_shape[:-2])
    mats = np.zeros(x_shape[:-2] + (head_dim, head_dim))
    for idx in np.ndindex(*x_shape[:-2]):
        mats[idx] = ref_rotation(
            int(positions[idx]), head_dim, rot, theta, interleaved, ref_mscale(scaling)
        )
    return mats


def ref_rope(x, positions, **kw):
    x = np.asarray(x, np.float64)
    mats = ref_rope_matrices(x.shape, positions, **kw)
    return np.einsum("...gh,...nh->...ng", mats, x)


def paper_alibi_slopes(n):
    """Press et al. 2022, verbatim recipe."""

    def get_slopes_power_of_2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        ratio = start
        return [start * ratio**i for i in range(n)]

    if math.log2(n).is_integer():
        return get_slopes_power_of_2(n)
    closest_power_of_2 = 2 ** math.floor(math.log2(n))
    return (
        get_slopes_power_of_2(closest_power_of_2)
        + paper_alibi_slopes(2 * closest_power_of_2)[0::2][: n - closest_power_of_2]
    )


def ref_alibi_bias(slopes, q, k):
    out = np.zeros((len(slopes), len(q), len(k)))
    for h in range(len(slopes)):
        for i in range(len(q)):
            for j in range(len(k)):
                out[h, i, j] = -slopes[h] * abs(int(q[i]) - int(k[j]))
    return out


def ref_t5_bucket(rel, bidirectional, num_buckets, max_distance):
    """Scalar transcription of Mesh TF `_relative_position_bucket` (n = -relative)."""
    ret = 0
    n = -int(rel)
    if bidirectional:
        num_buckets //= 2
        ret += (n < 0) * num_buckets
        n = abs(n)
    else:
        n = max(n, 0)
    max_exact = num_buckets // 2
    if n < max_exact:
        return ret + n
    large = max_exact + int(
        math.log(n / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    )
    return ret + min(large, num_buckets - 1)


# ------------------------------------------------------------------------ sinusoidal


class SinusoidalTest(chex.TestCase):
    @variants
    @given(
        shape=st.lists(st.integers(1, 5), min_size=0, max_size=2),
        half=st.integers(1, 16),
        base=st.sampled_from([100.0, 10000.0]),
        seed=seeds,
    )
    def test_matches_reference(self, shape, half, base, seed):
        positions = np.random.default_rng(seed).integers(-40, 64, size=shape)
        fn = self.variant(functools.partial(aj.sinusoidal_encoding, dim=2 * half, base=base))
        out = fn(jnp.asarray(positions, jnp.int32))
        chex.assert_shape(out, tuple(shape) + (2 * half,))
        self.assertEqual(out.dtype, jnp.float32)
        chex.assert_trees_all_close(out, ref_sinusoidal(positions, 2 * half, base), atol=ATOL)

    def test_int_length_means_arange(self):
        out = aj.sinusoidal_encoding(10, 8)
        chex.assert_shape(out, (10, 8))
        chex.assert_trees_all_close(out, ref_sinusoidal(np.arange(10), 8, 10000.0), atol=ATOL)

    def test_paper_entries(self):
        # PE[p, 0] = sin(p), PE[p, 1] = cos(p): the first pair has wavelength 2 pi.
        out = np.asarray(aj.sinusoidal_encoding(jnp.array([3]), 4))
        np.testing.assert_allclose(
            out[0], [math.sin(3), math.cos(3), math.sin(0.03), math.cos(0.03)], 1e-5
        )

    def test_vmap_and_grad_free(self):
        positions = jnp.arange(12).reshape(3, 4)
        batched = jax.vmap(lambda p: aj.sinusoidal_encoding(p, 6))(positions)
        chex.assert_trees_all_close(batched, aj.sinusoidal_encoding(positions, 6))


# ------------------------------------------------------------------------------ RoPE

SCALINGS = [
    None,
    aj.RopeScaling("linear", 2.0),
    aj.RopeScaling("ntk", 4.0),
    aj.RopeScaling("yarn", 4.0, original_max_len=64),
    aj.RopeScaling("yarn", 8.0, original_max_len=2048),
]


@st.composite
def rope_cases(draw):
    batched = draw(st.booleans())
    b, t, n = draw(st.integers(1, 2)), draw(st.integers(1, 6)), draw(st.integers(1, 3))
    half = draw(st.integers(1, 8))
    rot_half = draw(st.integers(1, half))
    scaling = draw(st.sampled_from(SCALINGS))
    if scaling is not None and scaling.kind == "ntk" and rot_half < 2:
        rot_half, half = 2, max(half, 2)
    x_shape = (b, t, n, 2 * half) if batched else (t, n, 2 * half)
    pos_shape = (b, t) if batched and draw(st.booleans()) else (t,)
    return dict(
        x_shape=x_shape,
        pos_shape=pos_shape,
        fraction=rot_half / half,
        interleaved=draw(st.booleans()),
        base=draw(st.sampled_from([10000.0, 500.0])),
        scaling=scaling,
        seed=draw(seeds),
    )


def _rope_inputs(case):
    rng = np.random.default_rng(case["seed"])
    x = rng.uniform(-1, 1, case["x_shape"]).astype(np.float32)
    positions = rng.integers(-20, 44, case["pos_shape"]).astype(np.int32)
    return x, positions


def _rope_kwargs(case):
    return {k: case[k] for k in ("base", "fraction", "interleaved", "scaling")}


class RopeTest(chex.TestCase):
    @variants
    @given(case=rope_cases())
    def test_matches_reference(self, case):
        x, positions = _rope_inputs(case)
        kw = _rope_kwargs(case)
        out = self.variant(functools.partial(aj.apply_rope, **kw))(x, positions)
        chex.assert_shape(out, x.shape)
        self.assertEqual(out.dtype, jnp.float32)
        chex.assert_trees_all_close(out, ref_rope(x, positions, **kw), atol=ATOL, rtol=RTOL)

    @variants
    @parameterized.parameters(False, True)
    def test_conventions_pair_different_dims(self, interleaved):
        # One unit vector per pair position: each convention moves it into its own partner.
        x = np.zeros((1, 1, 8), np.float32)
        x[..., 1] = 1.0
        out = self.variant(functools.partial(aj.apply_rope, interleaved=interleaved))(
            x, np.array([1])
        )
        partner, theta = (0, 1.0) if interleaved else (5, 10000.0 ** (-2 / 8))
        expected = np.zeros((1, 1, 8))
        expected[..., 1] = math.cos(theta)
        expected[..., partner] = -math.sin(theta) if interleaved else math.sin(theta)
        chex.assert_trees_all_close(out, expected, atol=ATOL)

    @variants
    @given(case=rope_cases(), shift=st.integers(-16, 16))
    def test_scores_depend_only_on_offset(self, case, shift):
        if case["scaling"] is not None and case["scaling"].kind == "yarn":
            case = dict(case, scaling=None)  # the temperature scales scores; checked separately
        kw = _rope_kwargs(case)
        rng = np.random.default_rng(case["seed"])
        h = case["x_shape"][-1]
        q, k = rng.normal(size=(2, 1, 1, h))
        q, k = (v / np.linalg.norm(v) for v in (q, k))
        m, n = rng.integers(0, 16, size=2)
        rope = self.variant(functools.partial(aj.apply_rope, **kw))

        def score(m, n):
            qr = rope(q.astype(np.float32), jnp.array([m]))
            kr = rope(k.astype(np.float32), jnp.array([n]))
            return jnp.sum(qr * kr)

        chex.assert_trees_all_close(score(m, n), score(m + shift, n + shift), atol=ATOL)
        chex.assert_trees_all_close(score(m, m), jnp.asarray(np.sum(q * k)), atol=ATOL)

    @variants
    @given(case=rope_cases())
    def test_norm_preserved(self, case):
        case = dict(case, scaling=None)  # YaRN's temperature changes the norm on purpose
        x, positions = _rope_inputs(case)
        out = self.variant(functools.partial(aj.apply_rope, **_rope_kwargs(case)))(x, positions)
        chex.assert_trees_all_close(
            jnp.linalg.norm(out, axis=-1), np.linalg.norm(x, axis=-1), atol=ATOL, rtol=RTOL
        )

    @variants
    @parameterized.parameters((0.25, False), (0.5, True), (0.75, False))
    def test_fraction_passes_rest_through(self, fraction, interleaved):
        x, positions = np.random.default_rng(0).normal(size=(2, 3, 2, 16)), np.arange(3) + 5
        x = x.astype(np.float32)
        fn = functools.partial(aj.apply_rope, fraction=fraction, interleaved=interleaved)
        out = np.asarray(self.variant(fn)(x, positions))
        rot = int(16 * fraction)
        np.testing.assert_array_equal(out[..., rot:], x[..., rot:])
        self.assertFalse(np.allclose(out[..., :rot], x[..., :rot]))
        kw = dict(base=10000.0, fraction=fraction, interleaved=interleaved)
        chex.assert_trees_all_close(out, ref_rope(x, positions, **kw), atol=ATOL)

    @variants
    @parameterized.parameters("linear", "ntk", "yarn")
    def test_scaling_factor_one_is_plain_rope(self, kind):
        x = np.random.default_rng(1).normal(size=(2, 5, 2, 12)).astype(np.float32)
        positions = np.arange(10).reshape(2, 5) * 7
        scaling = aj.RopeScaling(kind, 1.0, original_max_len=16)
        out = self.variant(functools.partial(aj.apply_rope, scaling=scaling))(x, positions)
        chex.assert_trees_all_close(out, aj.apply_rope(x, positions), atol=1e-6)
        chex.assert_trees_all_close(
            aj.rope_frequencies(12, scaling=scaling), aj.rope_frequencies(12), rtol=1e-7
        )

    def test_linear_scaling_interpolates_positions(self):
        x = np.random.default_rng(2).normal(size=(4, 1, 8)).astype(np.float32)
        scaled = aj.apply_rope(x, np.array([0, 4, 8, 12]), scaling=aj.RopeScaling("linear", 4))
        chex.assert_trees_all_close(scaled, aj.apply_rope(x, np.array([0, 1, 2, 3])), atol=ATOL)

    def test_ntk_scaling_base(self):
        freqs = aj.rope_frequencies(16, base=10000.0, scaling=aj.RopeScaling("ntk", 4.0))
        base = 10000.0 * 4.0 ** (16 / 14)
        expected = np.array([base ** (-2 * i / 16) for i in range(8)])
        chex.assert_trees_all_close(freqs, expected, rtol=1e-6)
        # Highest frequency unchanged, lowest interpolated by exactly the factor.
        self.assertEqual(float(freqs[0]), 1.0)
        np.testing.assert_allclose(freqs[-1], 10000.0 ** (-14 / 16) / 4.0, rtol=1e-6)

    def test_yarn_keeps_fast_and_interpolates_slow_pairs(self):
        # Paper's criterion: r = L / wavelength; r > beta_fast kept, r < beta_slow divided.
        rot, base, length, factor = 64, 10000.0, 2048, 8.0
        scaling = aj.RopeScaling("yarn", factor, original_max_len=length)
        freqs = np.asarray(aj.rope_frequencies(rot, base=base, scaling=scaling), np.float64)
        plain = np.array([base ** (-2 * i / rot) for i in range(rot // 2)])
        r = length * plain / (2 * math.pi)
        np.testing.assert_allclose(freqs[r > 32], plain[r > 32], rtol=1e-6)
        np.testing.assert_allclose(freqs[r < 1], plain[r < 1] / factor, rtol=1e-6)
        between = (r >= 1) & (r <= 32)
        self.assertTrue(between.any())
        self.assertTrue(np.all(freqs[between] <= plain[between] * (1 + 1e-6)))
        self.assertTrue(np.all(freqs[between] >= plain[between] / factor * (1 - 1e-6)))
        chex.assert_trees_all_close(freqs, ref_inv_freq(rot, base, scaling), rtol=1e-6)

    def test_yarn_temperature_on_rotated_dims(self):
        scaling = aj.RopeScaling("yarn", 16.0, original_max_len=32)
        mscale = 0.1 * math.log(16.0) + 1
        self.assertAlmostEqual(scaling.attention_factor, mscale)
        x = np.random.default_rng(3).normal(size=(3, 2, 8)).astype(np.float32)
        out = np.asarray(aj.apply_rope(x, np.arange(3), fraction=0.5, scaling=scaling))
        np.testing.assert_allclose(
            np.linalg.norm(out[..., :4], axis=-1),
            mscale * np.linalg.norm(x[..., :4], axis=-1),
            1e-5,
        )
        np.testing.assert_array_equal(out[..., 4:], x[..., 4:])

    @variants
    def test_bf16_in_bf16_out(self):
        x = np.random.default_rng(4).normal(size=(2, 4, 2, 8))
        x16 = jnp.asarray(x, jnp.bfloat16)
        out = self.variant(aj.apply_rope)(x16, jnp.arange(4))
        self.assertEqual(out.dtype, jnp.bfloat16)
        x_rounded = np.asarray(x16.astype(jnp.float32))
        kw = dict(base=10000.0, fraction=1.0, interleaved=False)
        expected = ref_rope(x_rounded, np.arange(4), **kw)
        chex.assert_trees_all_close(out.astype(jnp.float32), expected, atol=2e-2, rtol=1e-2)

    @variants
    @given(case=rope_cases())
    def test_grad_is_transposed_rotation(self, case):
        x, positions = _rope_inputs(case)
        kw = _rope_kwargs(case)
        g = np.random.default_rng(case["seed"] + 1).normal(size=x.shape).astype(np.float32)

        def loss(x):
            return jnp.sum(aj.apply_rope(x, positions, **kw) * g)

        grad = self.variant(jax.grad(loss))(x)
        mats = ref_rope_matrices(x.shape, positions, **kw)
        expected = np.einsum("...gh,...ng->...nh", mats, g.astype(np.float64))
        chex.assert_trees_all_close(grad, expected, atol=1e-4, rtol=RTOL)

    @variants
    def test_vmap_over_leading_axis(self):
        rng = np.random.default_rng(5)
        x = rng.normal(size=(3, 4, 2, 6)).astype(np.float32)
        positions = rng.integers(0, 30, size=(3, 4)).astype(np.int32)
        out = self.variant(jax.vmap(functools.partial(aj.apply_rope, interleaved=True)))(
            x, positions
        )
        kw = dict(base=10000.0, fraction=1.0, interleaved=True)
        chex.assert_trees_all_close(out, ref_rope(x, positions, **kw), atol=ATOL)

    def test_traced_offsets_compile_once(self):
        traces = []

        @jax.jit
        def rotate_at(x, offset):
            traces.append(None)  # runs only while tracing
            return aj.apply_rope(x, jnp.arange(x.shape[1]) + offset)

        x = np.random.default_rng(6).normal(size=(1, 3, 2, 8)).astype(np.float32)
        kw = dict(base=10000.0, fraction=1.0, interleaved=False)
        for offset in (0, 5, 17):
            out = rotate_at(x, jnp.int32(offset))
            chex.assert_trees_all_close(out, ref_rope(x, np.arange(3) + offset, **kw), atol=ATOL)
        self.assertLen(traces, 1)
        self.assertEqual(rotate_at._cache_size(), 1)


# ----------------------------------------------------------------------------- ALiBi


class AlibiTest(chex.TestCase):
    def test_slopes_eight_heads(self):
        expected = [1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64, 1 / 128, 1 / 256]
        slopes = aj.alibi_slopes(8)
        self.assertEqual(slopes.dtype, jnp.float32)
        np.testing.assert_array_equal(slopes, np.array(expected, np.float32))

    def test_slopes_non_power_of_two_literal(self):
        # 6 = 4 + 2: slopes of 4 heads, then 1st and 3rd slope of 8 heads.
        np.testing.assert_array_equal(
            aj.alibi_slopes(6), np.array([1 / 4, 1 / 16, 1 / 64, 1 / 256, 1 / 2, 1 / 8], np.float32)
        )
        # 12 = 8 + 4: slopes of 8 heads, then 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5 from 16 heads.
        expected = [2.0**-k for k in range(1, 9)] + [2.0 ** -(k + 0.5) for k in range(4)]
        np.testing.assert_allclose(aj.alibi_slopes(12), expected, rtol=1e-7)

    @given(num_heads=st.integers(1, 80))
    def test_slopes_match_paper_recipe(self, num_heads):
        slopes = aj.alibi_slopes(num_heads)
        chex.assert_shape(slopes, (num_heads,))
        np.testing.assert_allclose(slopes, paper_alibi_slopes(num_heads), rtol=1e-7)

    @variants
    @given(
        num_heads=st.integers(1, 6),
        t=st.integers(1, 7),
        s=st.integers(1, 9),
        offset=st.integers(-5, 40),
        seed=seeds,
    )
    def test_bias_matches_reference(self, num_heads, t, s, offset, seed):
        rng = np.random.default_rng(seed)
        q = (np.arange(t) + offset).astype(np.int32)
        k = rng.integers(-5, 50, size=s).astype(np.int32)
        slopes = aj.alibi_slopes(num_heads)
        out = self.variant(aj.alibi_bias)(slopes, q, k)
        chex.assert_shape(out, (num_heads, t, s))
        self.assertEqual(out.dtype, jnp.float32)
        expected = ref_alibi_bias(np.asarray(slopes, np.float64), q, k)
        chex.assert_trees_all_close(out, expected, atol=ATOL, rtol=RTOL)

    @variants
    def test_bias_fn_per_block_equals_full_grid(self):
        bias_fn = self.variant(functools.partial(aj.alibi_bias, aj.alibi_slopes(4)))
        positions = jnp.arange(12)
        full = bias_fn(positions, positions)
        for qs, ks in ((slice(0, 4), slice(4, 8)), (slice(8, 12), slice(0, 4))):
            chex.assert_trees_all_close(bias_fn(positions[qs], positions[ks]), full[:, qs, ks])

    @variants
    def test_batched_positions_match_reference(self):
        rng = np.random.default_rng(3)
        slopes = aj.alibi_slopes(3)
        q = rng.integers(0, 20, size=(2, 4)).astype(np.int32)
        k = rng.integers(0, 20, size=(2, 6)).astype(np.int32)
        shared_k = np.arange(6, dtype=np.int32)
        fn = self.variant(aj.alibi_bias)
        s64 = np.asarray(slopes, np.float64)
        out = fn(slopes, q, k)
        chex.assert_shape(out, (2, 3, 4, 6))
        expected = np.stack([ref_alibi_bias(s64, q[b], k[b]) for b in range(2)])
        chex.assert_trees_all_close(out, expected, atol=ATOL, rtol=RTOL)
        out = fn(slopes, q, shared_k)  # [B, T] queries against keys shared by the batch
        expected = np.stack([ref_alibi_bias(s64, q[b], shared_k) for b in range(2)])
        chex.assert_trees_all_close(out, expected, atol=ATOL, rtol=RTOL)

    @variants
    def test_grad_wrt_slopes(self):
        q, k = np.arange(3) + 2, np.arange(5)
        g = np.random.default_rng(7).normal(size=(2, 3, 5))
        grad = self.variant(jax.grad(lambda m: jnp.sum(aj.alibi_bias(m, q, k) * g)))(
            jnp.array([0.5, 0.25])
        )
        distance = np.abs(q[:, None] - k[None, :])
        chex.assert_trees_all_close(grad, -np.einsum("hts,ts->h", g, distance), atol=1e-5)


# ------------------------------------------------------- relative positions and T5


class RelativePositionsTest(chex.TestCase):
    @variants
    @given(t=st.integers(0, 6), s=st.integers(0, 8), offset=st.integers(-10, 10))
    def test_matches_reference(self, t, s, offset):
        out = self.variant(
            lambda offset: aj.relative_positions(t, s, offset=offset),
        )(jnp.int32(offset))
        chex.assert_shape(out, (t, s))
        self.assertEqual(out.dtype, jnp.int32)
        expected = np.array([[j - (i + offset) for j in range(s)] for i in range(t)]).reshape(t, s)
        np.testing.assert_array_equal(out, expected)

    def test_traced_offset_compiles_once(self):
        fn = jax.jit(lambda offset: aj.relative_positions(2, 6, offset=offset))
        for offset in (0, 3, 4):
            np.testing.assert_array_equal(fn(offset)[1], np.arange(6) - 1 - offset)
        self.assertEqual(fn._cache_size(), 1)


DISTANCES = np.array([0, 1, 7, 8, 15, 16, 64, 127, 128, 1000])
# Hand-computed from the T5 formula with num_buckets=32, max_distance=128.
# Bidirectional: 16 buckets per direction, 8 exact; n >= 8 -> 8 + floor(2 log2(n / 8)),
# capped at 15; keys after the query (positive) add 16.
T5_BIDIRECTIONAL_POSITIVE = [0, 17, 23, 24, 25, 26, 30, 31, 31, 31]
T5_BIDIRECTIONAL_NEGATIVE = [0, 1, 7, 8, 9, 10, 14, 15, 15, 15]
# Unidirectional: 32 buckets, 16 exact; n >= 16 -> 16 + floor(16 log8(n / 16)), capped at
# 31 (64 -> 16 + floor(10.67) = 26); keys after the query all land in bucket 0.
T5_UNIDIRECTIONAL_POSITIVE = [0] * 10
T5_UNIDIRECTIONAL_NEGATIVE = [0, 1, 7, 8, 15, 16, 26, 31, 31, 31]


class T5Test(chex.TestCase):
    @variants
    @parameterized.parameters(
        (True, 1, T5_BIDIRECTIONAL_POSITIVE),
        (True, -1, T5_BIDIRECTIONAL_NEGATIVE),
        (False, 1, T5_UNIDIRECTIONAL_POSITIVE),
        (False, -1, T5_UNIDIRECTIONAL_NEGATIVE),
    )
    def test_buckets_hand_computed(self, bidirectional, sign, expected):
        fn = functools.partial(aj.t5_relative_position_bucket, bidirectional=bidirectional)
        out = self.variant(fn)(jnp.asarray(sign * DISTANCES, jnp.int32))
        self.assertEqual(out.dtype, jnp.int32)
        np.testing.assert_array_equal(out, expected)

    @variants
    @given(
        bidirectional=st.booleans(),
        num_buckets=st.sampled_from([4, 8, 16, 32, 33, 64]),
        max_distance=st.sampled_from([20, 64, 128, 300]),
        seed=seeds,
    )
    def test_buckets_match_reference(self, bidirectional, num_buckets, max_distance, seed):
        assume(max_distance > (num_buckets // 2 if bidirectional else num_buckets) // 2)
        rel = np.random.default_rng(seed).integers(-400, 400, size=(5, 7))
        rel[0, :5] = [0, 1, -1, max_distance, -max_distance]
        fn = functools.partial(
            aj.t5_relative_position_bucket,
            bidirectional=bidirectional,
            num_buckets=num_buckets,
            max_distance=max_distance,
        )
        out = np.asarray(self.variant(fn)(jnp.asarray(rel, jnp.int32)))
        expected = np.vectorize(ref_t5_bucket)(rel, bidirectional, num_buckets, max_distance)
        np.testing.assert_array_equal(out, expected)
        self.assertTrue(np.all((out >= 0) & (out < num_buckets)))

    @variants
    @given(
        bidirectional=st.booleans(),
        num_heads=st.integers(1, 3),
        t=st.integers(1, 6),
        s=st.integers(1, 8),
        offset=st.integers(0, 200),
        seed=seeds,
    )
    def test_bias_matches_reference(self, bidirectional, num_heads, t, s, offset, seed):
        rng = np.random.default_rng(seed)
        table = rng.normal(size=(16, num_heads)).astype(np.float32)
        q = (np.arange(t) + offset).astype(np.int32)
        k = np.sort(rng.integers(0, offset + t + 40, size=s)).astype(np.int32)
        fn = functools.partial(aj.t5_relative_bias, bidirectional=bidirectional, max_distance=64)
        out = self.variant(fn)(table, q, k)
        chex.assert_shape(out, (num_heads, t, s))
        expected = np.zeros((num_heads, t, s))
        for h in range(num_heads):
            for i in range(t):
                for j in range(s):
                    bucket = ref_t5_bucket(k[j] - q[i], bidirectional, 16, 64)
                    expected[h, i, j] = table[bucket, h]
        chex.assert_trees_all_close(out, expected, atol=0)

    @variants
    def test_bias_fn_per_block_equals_full_grid(self):
        table = np.random.default_rng(8).normal(size=(32, 2)).astype(np.float32)
        bias_fn = self.variant(functools.partial(aj.t5_relative_bias, table, bidirectional=False))
        positions = jnp.arange(0, 300, 25)
        full = bias_fn(positions, positions)
        for qs, ks in ((slice(0, 4), slice(4, 8)), (slice(8, 12), slice(0, 6))):
            chex.assert_trees_all_close(bias_fn(positions[qs], positions[ks]), full[:, qs, ks])

    @variants
    def test_batched_positions_match_reference(self):
        rng = np.random.default_rng(4)
        table = rng.normal(size=(16, 2)).astype(np.float32)
        q = rng.integers(0, 100, size=(3, 5)).astype(np.int32)
        k = rng.integers(0, 100, size=(3, 7)).astype(np.int32)
        fn = functools.partial(aj.t5_relative_bias, bidirectional=True, max_distance=64)
        for kk in (k, k[0]):  # per-example keys, and keys shared by the batch
            out = self.variant(fn)(table, q, kk)
            chex.assert_shape(out, (3, 2, 5, 7))
            kb = np.broadcast_to(kk, (3, 7))
            expected = np.zeros((3, 2, 5, 7))
            for b, h, i, j in np.ndindex(*expected.shape):
                expected[b, h, i, j] = table[ref_t5_bucket(kb[b, j] - q[b, i], True, 16, 64), h]
            chex.assert_trees_all_close(out, expected, atol=0)

    @variants
    def test_grad_wrt_table_accumulates_per_bucket(self):
        table = jnp.zeros((8, 2))
        q, k = np.arange(4), np.arange(6)
        g = np.random.default_rng(9).normal(size=(2, 4, 6))

        def loss(table):
            return jnp.sum(aj.t5_relative_bias(table, q, k, max_distance=16) * g)

        grad = self.variant(jax.grad(loss))(table)
        expected = np.zeros((8, 2))
        for i in range(4):
            for j in range(6):
                expected[ref_t5_bucket(j - i, True, 8, 16)] += g[:, i, j]
        chex.assert_trees_all_close(grad, expected, atol=1e-6)


# ------------------------------------------------------------------------ bad input


class BadInputTest(chex.TestCase):
    def test_rope_odd_head_dim(self):
        with pytest.raises(ValueError, match=r"head dim H must be even .* H=5"):
            aj.apply_rope(jnp.zeros((2, 3, 5)), jnp.arange(2))

    def test_rope_fraction_odd_rotated_dims(self):
        with pytest.raises(ValueError, match=r"fraction \* H must be a positive even integer"):
            aj.apply_rope(jnp.zeros((2, 3, 6)), jnp.arange(2), fraction=0.5)

    def test_rope_fraction_out_of_range(self):
        with pytest.raises(
            ValueError, match=r"apply_rope: fraction must be a number in \(0, 1\], got 1\.5\."
        ):
            aj.apply_rope(jnp.zeros((2, 3, 6)), jnp.arange(2), fraction=1.5)

    def test_rope_mismatched_positions(self):
        with pytest.raises(
            ValueError,
            match=r"apply_rope: positions must be of shape \[B, T\] or \[T\].*got int32 array of shape \(2, 6\)",
        ):
            aj.apply_rope(jnp.zeros((2, 5, 3, 8)), jnp.zeros((2, 6), jnp.int32))

    def test_rope_integer_x(self):
        with pytest.raises(
            TypeError,
            match=r"apply_rope: x must be a floating-point array, got int32 array of shape \(2, 3, 4\)",
        ):
            aj.apply_rope(jnp.zeros((2, 3, 4), jnp.int32), jnp.arange(2))

    def test_rope_float_positions(self):
        with pytest.raises(TypeError, match="positions must be an integer array"):
            aj.apply_rope(jnp.zeros((2, 3, 4)), jnp.arange(2.0))

    def test_rope_rank(self):
        with pytest.raises(
            ValueError,
            match=r"apply_rope: x must be of shape \[B, T, N, H\] or \[T, N, H\], got float32 array of shape \(2, 4\)",
        ):
            aj.apply_rope(jnp.zeros((2, 4)), jnp.arange(2))

    def test_unknown_scaling_kind(self):
        with pytest.raises(
            ValueError,
            match=r"RopeScaling: kind must be one of \('linear', 'ntk', 'yarn'\), got 'dynamic'\.",
        ):
            aj.RopeScaling("dynamic", 2.0)

    def test_scaling_factor_below_one(self):
        with pytest.raises(
            ValueError, match=r"RopeScaling: factor must be a finite number >= 1, got 0\.5\."
        ):
            aj.RopeScaling("linear", 0.5)

    def test_yarn_needs_original_max_len(self):
        with pytest.raises(
            ValueError,
            match=r"RopeScaling: original_max_len must be an int >= 1 for kind='yarn', got None\.",
        ):
            aj.RopeScaling("yarn", 2.0)

    def test_scaling_wrong_type(self):
        with pytest.raises(TypeError, match="scaling must be a RopeScaling"):
            aj.apply_rope(jnp.zeros((2, 3, 4)), jnp.arange(2), scaling={"kind": "linear"})

    def test_sinusoidal_odd_dim(self):
        with pytest.raises(ValueError, match="dim must be a positive even int"):
            aj.sinusoidal_encoding(4, 7)

    def test_alibi_num_heads_below_one(self):
        with pytest.raises(
            ValueError, match=r"alibi_slopes: num_heads must be an int >= 1, got 0\."
        ):
            aj.alibi_slopes(0)

    def test_alibi_positions_rank(self):
        with pytest.raises(
            ValueError,
            match=r"alibi_bias: query_positions must be of shape \[T\] or \[B, T\], got int32 "
            r"array of shape \(2, 3, 1\)",
        ):
            aj.alibi_bias(aj.alibi_slopes(2), jnp.zeros((2, 3, 1), jnp.int32), jnp.arange(3))

    def test_positions_batch_mismatch(self):
        for fn, first in (
            (aj.alibi_bias, aj.alibi_slopes(2)),
            (aj.t5_relative_bias, jnp.zeros((32, 2))),
        ):
            with pytest.raises(
                ValueError,
                match=rf"{fn.__name__}: query_positions and key_value_positions must share the "
                r"batch size, got \(2, 3\) and \(3, 4\)",
            ):
                fn(first, jnp.zeros((2, 3), jnp.int32), jnp.zeros((3, 4), jnp.int32))

    def test_t5_negative_max_distance(self):
        with pytest.raises(
            ValueError,
            match=r"t5_relative_position_bucket: max_distance must be an int > 8.*got -1\.",
        ):
            aj.t5_relative_position_bucket(jnp.arange(3), max_distance=-1)

    def test_t5_too_few_buckets(self):
        with pytest.raises(ValueError, match="num_buckets must be an int >= 2"):
            aj.t5_relative_position_bucket(jnp.arange(3), bidirectional=False, num_buckets=1)

    def test_t5_table_rank(self):
        with pytest.raises(
            ValueError,
            match=r"t5_relative_bias: table must be of shape \[num_buckets, N\], got float32 array of shape \(32,\)",
        ):
            aj.t5_relative_bias(jnp.zeros(32), jnp.arange(2), jnp.arange(2))
