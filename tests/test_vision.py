"""attention_jax.vision: patchify / unpatchify against float64 NumPy loops over the formula

patches[b, i * (W / p_w) + j, (u * p_w + v) * C + c] = images[b, i * p_h + u, j * p_w + v, c]
"""

from __future__ import annotations

import functools
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from attention_jax.vision import patchify, unpatchify

variants = chex.variants(with_jit=True, without_jit=True)


def ref_patchify(images, ph, pw):
    """``[B, H, W, C]`` -> ``[B, L, D]`` by an explicit loop over every pixel."""
    images = np.asarray(images, np.float64)
    b_, h, w, c_ = images.shape
    gw = w // pw
    out = np.zeros((b_, (h // ph) * gw, ph * pw * c_))
    for b, y, x, c in np.ndindex(*images.shape):
        i, u = divmod(y, ph)
        j, v = divmod(x, pw)
        out[b, i * gw + j, (u * pw + v) * c_ + c] = images[b, y, x, c]
    return out


def ref_unpatchify(patches, ph, pw, h, w):
    patches = np.asarray(patches, np.float64)
    b_, _, d = patches.shape
    c_ = d // (ph * pw)
    gw = w // pw
    out = np.zeros((b_, h, w, c_))
    for b, y, x, c in np.ndindex(*out.shape):
        i, u = divmod(y, ph)
        j, v = divmod(x, pw)
        out[b, y, x, c] = patches[b, i * gw + j, (u * pw + v) * c_ + c]
    return out


CASES = [
    # (image shape [B, H, W, C], patch_size, (p_h, p_w))
    ((2, 4, 6, 3), 2, (2, 2)),
    ((1, 6, 4, 2), (3, 2), (3, 2)),
    ((2, 3, 3, 1), 3, (3, 3)),
]


class PatchifyTest(chex.TestCase):
    @variants
    @parameterized.parameters(*CASES)
    def test_matches_reference(self, shape, patch_size, pair):
        images = np.random.default_rng(0).normal(size=shape).astype(np.float32)
        out = self.variant(functools.partial(patchify, patch_size=patch_size))(images)
        b, h, w, c = shape
        chex.assert_shape(out, (b, (h // pair[0]) * (w // pair[1]), pair[0] * pair[1] * c))
        self.assertEqual(out.dtype, jnp.float32)
        chex.assert_trees_all_close(out, ref_patchify(images, *pair), atol=0)

    @variants
    @parameterized.parameters(*CASES)
    def test_unpatchify_matches_reference_and_round_trips(self, shape, patch_size, pair):
        b, h, w, c = shape
        rng = np.random.default_rng(1)
        patches = rng.normal(size=(b, (h // pair[0]) * (w // pair[1]), pair[0] * pair[1] * c))
        patches = patches.astype(np.float32)
        fn = functools.partial(unpatchify, patch_size=patch_size, image_size=(h, w))
        images = self.variant(fn)(patches)
        chex.assert_shape(images, shape)
        chex.assert_trees_all_close(images, ref_unpatchify(patches, *pair, h, w), atol=0)
        np.testing.assert_array_equal(patchify(images, patch_size), patches)

    def test_round_trip_is_exact_for_any_dtype(self):
        images = np.random.default_rng(2).integers(0, 256, size=(2, 4, 4, 3)).astype(np.uint8)
        patches = patchify(images, 2)
        self.assertEqual(patches.dtype, jnp.uint8)
        np.testing.assert_array_equal(unpatchify(patches, 2), images)  # square grid inferred
        np.testing.assert_array_equal(unpatchify(patches, 2, image_size=4), images)

    def test_first_patch_is_top_left_then_row_major(self):
        # A 4x4 one-channel image of its pixel indices, 2x2 patches.
        image = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
        out = np.asarray(patchify(image, 2))[0]
        np.testing.assert_array_equal(
            out, [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]
        )

    def test_leading_axes(self):
        images = np.random.default_rng(3).normal(size=(2, 3, 4, 2, 1)).astype(np.float32)
        out = patchify(images, 2)
        chex.assert_shape(out, (2, 3, 2, 4))
        chex.assert_trees_all_close(out[1], patchify(images[1], 2))
        chex.assert_trees_all_close(patchify(images[0, 0], 2), out[0, 0])  # unbatched
        np.testing.assert_array_equal(unpatchify(out, 2, image_size=(4, 2)), images)

    def test_vmap_and_grad(self):
        rng = np.random.default_rng(4)
        images = jnp.asarray(rng.normal(size=(3, 2, 4, 6, 1)), jnp.float32)
        chex.assert_trees_all_close(
            jax.vmap(lambda x: patchify(x, 2))(images), patchify(images, 2), atol=0
        )
        # A permutation: the gradient of <patchify(x), g> is g put back into image layout.
        g = jnp.asarray(rng.normal(size=(2, 6, 4)), jnp.float32)
        grad = jax.jit(jax.grad(lambda x: jnp.sum(patchify(x, 2) * g)))(images[0])
        chex.assert_trees_all_close(grad, unpatchify(g, 2, image_size=(4, 6)), atol=0)


class BadInputTest(chex.TestCase):
    def test_height_not_divisible(self):
        with pytest.raises(
            ValueError,
            match=r"patchify: patch_size \(2, 2\) must divide the image height and width, got "
            r"images of shape \(1, 5, 4, 3\) \(H=5, W=4\)\.",
        ):
            patchify(jnp.zeros((1, 5, 4, 3)), 2)

    def test_width_not_divisible(self):
        with pytest.raises(ValueError, match=r"patch_size \(2, 3\) .*\(H=4, W=4\)"):
            patchify(jnp.zeros((1, 4, 4, 3)), (2, 3))

    def test_rank(self):
        with pytest.raises(
            ValueError,
            match=r"patchify: images must be of shape \[B, H, W, C\], got float32 array of "
            r"shape \(4, 4\)\.",
        ):
            patchify(jnp.zeros((4, 4)), 2)

    def test_bad_patch_size(self):
        for patch_size in (0, (2,), 2.0, (2, 0), True, None):
            with pytest.raises(
                ValueError,
                match=r"patchify: patch_size must be an int >= 1 or a \(height, width\) pair "
                rf"of them, got {re.escape(repr(patch_size))}\.",
            ):
                patchify(jnp.zeros((1, 4, 4, 3)), patch_size)

    def test_unpatchify_needs_image_size_for_non_square_grid(self):
        with pytest.raises(
            ValueError,
            match=r"unpatchify: image_size must be given .* \(2, 6, 12\) \(L=6\)\.",
        ):
            unpatchify(jnp.zeros((2, 6, 12)), 2)

    def test_unpatchify_wrong_number_of_patches(self):
        with pytest.raises(
            ValueError,
            match=r"unpatchify: patches must hold \(H/p_h\) \* \(W/p_w\) = 2 \* 2 = 4 patches "
            r"for image_size \(4, 4\).*got float32 array of shape \(2, 6, 12\)\.",
        ):
            unpatchify(jnp.zeros((2, 6, 12)), 2, image_size=4)

    def test_unpatchify_patch_dim(self):
        with pytest.raises(
            ValueError, match=r"unpatchify: the patch dim D must be divisible by p_h \* p_w = 4"
        ):
            unpatchify(jnp.zeros((2, 4, 6)), 2)

    def test_unpatchify_image_size_not_divisible(self):
        with pytest.raises(
            ValueError,
            match=r"unpatchify: patch_size \(2, 2\) must divide image_size, got image_size "
            r"\(4, 5\)\.",
        ):
            unpatchify(jnp.zeros((2, 4, 4)), 2, image_size=(4, 5))
