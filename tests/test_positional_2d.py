"""2-D positions for image patches: grid_positions, sinusoidal_encoding_2d, apply_rope_2d.

References are float64 NumPy written from the formulas: the 2-D sin-cos table entry by
entry, and axial RoPE as an explicit ``[H, H]`` rotation matrix per token (half of the
pairs turned by the row angle, half by the column angle).
"""

from __future__ import annotations

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from attention_jax.positional import (
    apply_rope_2d,
    grid_positions,
    sinusoidal_encoding,
    sinusoidal_encoding_2d,
)

ATOL = 1e-5
variants = chex.variants(with_jit=True, without_jit=True)


# ------------------------------------------------------------------ NumPy references


def ref_sinusoidal_2d(height, width, dim, base):
    out = np.zeros((height * width, dim))
    for r in range(height):
        for c in range(width):
            t = r * width + c
            for i in range(dim // 4):
                freq = base ** (-4.0 * i / dim)
                out[t, 2 * i] = math.sin(r * freq)
                out[t, 2 * i + 1] = math.cos(r * freq)
                out[t, dim // 2 + 2 * i] = math.sin(c * freq)
                out[t, dim // 2 + 2 * i + 1] = math.cos(c * freq)
    return out


def ref_rotation_2d(row, col, head_dim, base, interleaved):
    """Explicit ``[H, H]`` matrix: pair i of the first half by row * theta_i, of the second
    half by col * theta_i, theta_i = base ** (-4 i / H)."""
    m = np.eye(head_dim)
    quarter, half = head_dim // 4, head_dim // 2
    for offset, position in ((0, row), (half, col)):
        for i in range(quarter):
            a, b = (2 * i, 2 * i + 1) if interleaved else (i, i + quarter)
            a, b = a + offset, b + offset
            angle = position * base ** (-4.0 * i / head_dim)
            cos, sin = math.cos(angle), math.sin(angle)
            m[a, a], m[a, b], m[b, a], m[b, b] = cos, -sin, sin, cos
    return m


def ref_rope_2d(x, rows, cols, *, base=100.0, interleaved=False):
    x = np.asarray(x, np.float64)
    lead = x.shape[:-2]
    rows, cols = np.broadcast_to(rows, lead), np.broadcast_to(cols, lead)
    out = np.zeros_like(x)
    for idx in np.ndindex(*lead):
        m = ref_rotation_2d(int(rows[idx]), int(cols[idx]), x.shape[-1], base, interleaved)
        out[idx] = x[idx] @ m.T
    return out


def rope_vit_axial(x, t_x, t_y, base=100.0):
    """Transcription of naver-ai/rope-vit ``compute_axial_cis`` + ``apply_rotary_emb``:
    adjacent dims as complex numbers, the first H/4 turned by x (column), the rest by y."""
    x = np.asarray(x, np.float64)
    dim = x.shape[-1]
    freqs = 1.0 / base ** (np.arange(0, dim, 4)[: dim // 4] / dim)
    angles = np.concatenate([np.outer(t_x, freqs), np.outer(t_y, freqs)], axis=-1)  # [T, H/2]
    xc = x[..., 0::2] + 1j * x[..., 1::2]  # [T, N, H/2]
    yc = xc * np.exp(1j * angles)[:, None, :]
    return np.stack([yc.real, yc.imag], axis=-1).reshape(x.shape)


# ------------------------------------------------------------------- grid positions


def test_grid_positions_row_major():
    rows, cols = grid_positions(2, 3)
    np.testing.assert_array_equal(rows, [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(cols, [0, 1, 2, 0, 1, 2])
    assert rows.dtype == cols.dtype == jnp.int32


# ------------------------------------------------------------------------ sinusoidal


class Sinusoidal2dTest(chex.TestCase):
    @variants
    @parameterized.parameters((3, 4, 8, 10000.0), (2, 5, 12, 100.0), (1, 1, 4, 10000.0))
    def test_matches_reference(self, height, width, dim, base):
        fn = functools.partial(sinusoidal_encoding_2d, height, width, dim, base=base)
        out = self.variant(fn)()
        chex.assert_shape(out, (height * width, dim))
        self.assertEqual(out.dtype, jnp.float32)
        chex.assert_trees_all_close(out, ref_sinusoidal_2d(height, width, dim, base), atol=ATOL)

    def test_halves_are_the_1d_table_of_row_and_column(self):
        out = sinusoidal_encoding_2d(3, 5, 16)
        rows, cols = grid_positions(3, 5)
        chex.assert_trees_all_close(out[:, :8], sinusoidal_encoding(rows, 8), atol=0)
        chex.assert_trees_all_close(out[:, 8:], sinusoidal_encoding(cols, 8), atol=0)

    def test_bad_dim(self):
        for dim in (6, 2, 0, 8.0):
            with pytest.raises(
                ValueError,
                match=r"sinusoidal_encoding_2d: dim must be a positive multiple of 4 \(sin/cos "
                rf"pairs for rows and columns\), got {dim!r}\.",
            ):
                sinusoidal_encoding_2d(2, 2, dim)

    def test_bad_grid(self):
        with pytest.raises(
            ValueError, match=r"sinusoidal_encoding_2d: width must be an int >= 1, got 0\."
        ):
            sinusoidal_encoding_2d(2, 0, 8)
        with pytest.raises(ValueError, match=r"sinusoidal_encoding_2d: base must be a finite"):
            sinusoidal_encoding_2d(2, 2, 8, base=1.0)


# ------------------------------------------------------------------------- 2-D RoPE


class Rope2dTest(chex.TestCase):
    @variants
    @parameterized.parameters(
        ((5, 2, 8), False, 100.0), ((5, 2, 12), True, 100.0), ((2, 5, 1, 8), False, 10.0)
    )
    def test_matches_reference(self, shape, interleaved, base):
        rng = np.random.default_rng(0)
        x = rng.normal(size=shape).astype(np.float32)
        rows = rng.integers(-3, 9, size=shape[:-2]).astype(np.int32)
        cols = rng.integers(-3, 9, size=shape[-3:-2]).astype(np.int32)  # [T]: shared
        fn = functools.partial(apply_rope_2d, base=base, interleaved=interleaved)
        out = self.variant(fn)(x, rows, cols)
        chex.assert_shape(out, shape)
        self.assertEqual(out.dtype, jnp.float32)
        expected = ref_rope_2d(x, rows, cols, base=base, interleaved=interleaved)
        chex.assert_trees_all_close(out, expected, atol=ATOL, rtol=ATOL)

    @variants
    def test_scores_depend_only_on_row_and_column_offsets(self):
        rng = np.random.default_rng(1)
        q, k = rng.normal(size=(2, 1, 1, 8)).astype(np.float32)
        rope = self.variant(apply_rope_2d)

        def score(r1, c1, r2, c2):
            qr = rope(q, jnp.array([r1]), jnp.array([c1]))
            kr = rope(k, jnp.array([r2]), jnp.array([c2]))
            return float(jnp.sum(qr * kr))

        pairs = [((0, 0), (0, 0)), ((1, 2), (3, 0)), ((4, 1), (0, 5)), ((2, 7), (2, 3))]
        shifts = [(0, 0), (3, -2), (-5, 4), (7, 7)]
        for (r1, c1), (r2, c2) in pairs:
            base_score = score(r1, c1, r2, c2)
            for dr, dc in shifts:
                self.assertAlmostEqual(
                    score(r1 + dr, c1 + dc, r2 + dr, c2 + dc), base_score, delta=ATOL
                )
        # Same positions: the plain dot product. And both axes matter.
        self.assertAlmostEqual(score(3, 5, 3, 5), float(np.sum(q * k)), delta=ATOL)
        self.assertNotAlmostEqual(score(1, 0, 0, 0), score(0, 1, 0, 0), delta=1e-3)
        self.assertNotAlmostEqual(score(1, 0, 0, 0), score(0, 0, 0, 0), delta=1e-3)
        self.assertNotAlmostEqual(score(0, 1, 0, 0), score(0, 0, 0, 0), delta=1e-3)

    def test_rows_turn_first_half_columns_second_half(self):
        x = np.random.default_rng(2).normal(size=(3, 2, 8)).astype(np.float32)
        zeros = np.zeros(3, np.int32)
        out_rows = np.asarray(apply_rope_2d(x, np.arange(3), zeros))
        out_cols = np.asarray(apply_rope_2d(x, zeros, np.arange(3)))
        np.testing.assert_array_equal(out_rows[..., 4:], x[..., 4:])
        np.testing.assert_array_equal(out_cols[..., :4], x[..., :4])
        self.assertFalse(np.allclose(out_rows[1:, :, :4], x[1:, :, :4]))
        self.assertFalse(np.allclose(out_cols[1:, :, 4:], x[1:, :, 4:]))

    @variants
    def test_norm_preserved(self):
        rng = np.random.default_rng(3)
        x = rng.normal(size=(2, 6, 3, 16)).astype(np.float32)
        rows, cols = rng.integers(0, 40, size=(2, 2, 6)).astype(np.int32)
        out = self.variant(apply_rope_2d)(x, rows, cols)
        np.testing.assert_allclose(
            np.linalg.norm(np.asarray(out), axis=-1), np.linalg.norm(x, axis=-1), rtol=ATOL
        )

    @variants
    def test_batched_positions_equal_per_example(self):
        rng = np.random.default_rng(4)
        x = rng.normal(size=(2, 4, 2, 8)).astype(np.float32)
        rows, cols = rng.integers(0, 6, size=(2, 2, 4)).astype(np.int32)
        out = self.variant(apply_rope_2d)(x, rows, cols)
        for b in range(2):
            chex.assert_trees_all_close(out[b], apply_rope_2d(x[b], rows[b], cols[b]), atol=1e-6)
        chex.assert_trees_all_close(out, ref_rope_2d(x, rows, cols), atol=ATOL, rtol=ATOL)

    def test_reference_code_layout(self):
        # The paper's code: adjacent pairs, first half by the column (x) index.
        x = np.random.default_rng(5).normal(size=(6, 2, 8)).astype(np.float32)
        rows, cols = grid_positions(2, 3)
        out = apply_rope_2d(x, cols, rows, interleaved=True)
        expected = rope_vit_axial(x, np.asarray(cols), np.asarray(rows))
        chex.assert_trees_all_close(out, expected, atol=ATOL, rtol=ATOL)

    def test_grad_is_inverse_rotation_and_vmap(self):
        rng = np.random.default_rng(6)
        x = jnp.asarray(rng.normal(size=(4, 2, 8)), jnp.float32)
        g = jnp.asarray(rng.normal(size=(4, 2, 8)), jnp.float32)
        rows, cols = jnp.array([0, 1, 2, 3]), jnp.array([3, 0, 2, 1])
        grad = jax.jit(jax.grad(lambda x: jnp.sum(apply_rope_2d(x, rows, cols) * g)))(x)
        chex.assert_trees_all_close(grad, apply_rope_2d(g, -rows, -cols), atol=ATOL)
        xs = jnp.stack([x, g])
        batched = jax.vmap(lambda v: apply_rope_2d(v, rows, cols))(xs)
        chex.assert_trees_all_close(batched, apply_rope_2d(xs, rows, cols), atol=1e-6)

    def test_bf16_in_bf16_out(self):
        x = jnp.asarray(np.random.default_rng(7).normal(size=(3, 1, 8)), jnp.bfloat16)
        rows, cols = np.array([0, 1, 2]), np.array([2, 0, 1])
        out = apply_rope_2d(x, rows, cols)
        self.assertEqual(out.dtype, jnp.bfloat16)
        expected = ref_rope_2d(np.asarray(x.astype(jnp.float32)), rows, cols)
        chex.assert_trees_all_close(out.astype(jnp.float32), expected, atol=2e-2, rtol=1e-2)


class Rope2dBadInputTest(chex.TestCase):
    def test_head_dim_not_multiple_of_four(self):
        with pytest.raises(
            ValueError,
            match=r"apply_rope_2d: head dim H must be a multiple of 4 \(half of the pairs for "
            r"rows, half for columns\), got H=6\.",
        ):
            apply_rope_2d(jnp.zeros((3, 2, 6)), jnp.arange(3), jnp.arange(3))

    def test_rank(self):
        with pytest.raises(
            ValueError,
            match=r"apply_rope_2d: x must be of shape \[B, T, N, H\] or \[T, N, H\], got "
            r"float32 array of shape \(3, 8\)\.",
        ):
            apply_rope_2d(jnp.zeros((3, 8)), jnp.arange(3), jnp.arange(3))

    def test_positions_shape(self):
        with pytest.raises(
            ValueError,
            match=r"apply_rope_2d: cols must be of shape \[B, T\] or \[T\] matching x "
            r"\(2, 3, 1, 8\), got int32 array of shape \(2, 4\)\.",
        ):
            apply_rope_2d(jnp.zeros((2, 3, 1, 8)), jnp.arange(3), jnp.zeros((2, 4), jnp.int32))

    def test_float_positions(self):
        with pytest.raises(
            TypeError, match=r"apply_rope_2d: rows must be an integer array, got float32"
        ):
            apply_rope_2d(jnp.zeros((3, 1, 8)), jnp.arange(3.0), jnp.arange(3))

    def test_integer_x(self):
        with pytest.raises(TypeError, match=r"apply_rope_2d: x must be a floating-point array"):
            apply_rope_2d(jnp.zeros((3, 1, 8), jnp.int32), jnp.arange(3), jnp.arange(3))

    def test_base(self):
        with pytest.raises(
            ValueError, match=r"apply_rope_2d: base must be a finite number > 1, got 0\.5\."
        ):
            apply_rope_2d(jnp.zeros((3, 1, 8)), jnp.arange(3), jnp.arange(3), base=0.5)
