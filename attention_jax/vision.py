r"""Images as token sequences: cutting them into patches and putting them back.

A Vision Transformer (Dosovitskiy et al. 2021) reads an image ``[H, W, C]`` as the sequence
of its non-overlapping ``p x p`` patches, each flattened into one vector::

  images  [B, H, W, C]  --patchify-->  patches [B, (H/p) * (W/p), p * p * C]
  patches               --unpatchify-->  images

Patches are numbered in row-major order over the patch grid (token ``t`` is the patch in
grid row ``t // (W/p)`` and grid column ``t % (W/p)``), the order that
:func:`attention_jax.positional.sinusoidal_encoding_2d` and
:func:`attention_jax.positional.grid_positions` use. Within a patch the vector is laid out
as ``(row-in-patch, col-in-patch, channel)``, channel fastest:

.. math::

  \mathrm{patches}[b,\ i\,(W/p) + j,\ (u\,p + v)\,C + c]
    = \mathrm{images}[b,\ i\,p + u,\ j\,p + v,\ c]

which is ``einops.rearrange(x, "b (h p) (w q) c -> b (h w) (p q c)")`` and MAE's
``patchify`` (for channels-last images). Both functions are pure reshapes and transposes:
any dtype, exact, and they compose with ``jit``, ``vmap`` and ``grad``. ``patch_size`` may be
an int ``p`` or a ``(p_h, p_w)`` pair for rectangular patches.

Shape letters::

  B = batch size (any number of leading axes, including none)
  H, W, C = image height, width, channels
  L = number of patches (H/p_h) * (W/p_w)
  D = patch dim p_h * p_w * C
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from attention_jax._checks import describe, is_int

__all__ = ["patchify", "unpatchify"]


def _pair(value, name: str, fn: str) -> tuple[int, int]:
    """An int ``>= 1`` or a pair of them, as a ``(height, width)`` pair."""
    if is_int(value):
        pair = (value, value)
    else:
        try:
            pair = tuple(value)
        except TypeError:
            pair = ()
    if len(pair) != 2 or not all(is_int(v) and v >= 1 for v in pair):
        raise ValueError(
            f"{fn}: {name} must be an int >= 1 or a (height, width) pair of them, got {value!r}."
        )
    return int(pair[0]), int(pair[1])


def patchify(images: ArrayLike, patch_size: int | tuple[int, int]) -> jax.Array:
    r"""Cuts images into non-overlapping patches, one flattened patch per token.

    .. math::

      \mathrm{out}[..., i\,(W/p_w) + j,\ (u\,p_w + v)\,C + c]
        = \mathrm{images}[..., i\,p_h + u,\ j\,p_w + v,\ c]

    Args:
      images: array ``[B, H, W, C]`` (channels last; any number of leading batch axes,
        including none; any dtype).
      patch_size: ``p`` (square patches) or ``(p_h, p_w)``; static. ``H`` must be divisible
        by ``p_h`` and ``W`` by ``p_w``.

    Returns:
      array ``[B, (H/p_h) * (W/p_w), p_h * p_w * C]`` with the dtype of ``images``: patches
      in row-major grid order, each flattened as ``(row-in-patch, col-in-patch, channel)``.

    Raises:
      ValueError: ``images`` has fewer than 3 axes, ``patch_size`` is not a positive int or
        pair, or it does not divide ``H`` and ``W``.
    """
    fn = "patchify"
    images = jnp.asarray(images)
    if images.ndim < 3:
        raise ValueError(f"{fn}: images must be of shape [B, H, W, C], got {describe(images)}.")
    ph, pw = _pair(patch_size, "patch_size", fn)
    height, width = images.shape[-3:-1]
    if height % ph or width % pw:
        raise ValueError(
            f"{fn}: patch_size {(ph, pw)} must divide the image height and width, got images "
            f"of shape {tuple(images.shape)} (H={height}, W={width})."
        )
    return _patchify(images, ph=ph, pw=pw)


@functools.partial(jax.jit, static_argnames=("ph", "pw"))
def _patchify(images: jax.Array, *, ph: int, pw: int) -> jax.Array:
    *lead, height, width, channels = images.shape
    gh, gw = height // ph, width // pw
    n = len(lead)
    x = images.reshape(*lead, gh, ph, gw, pw, channels)
    # [..., gh, ph, gw, pw, C] -> [..., gh, gw, ph, pw, C]
    x = jnp.moveaxis(x, n + 2, n + 1)
    return x.reshape(*lead, gh * gw, ph * pw * channels)


def unpatchify(
    patches: ArrayLike,
    patch_size: int | tuple[int, int],
    *,
    image_size: int | tuple[int, int] | None = None,
) -> jax.Array:
    r"""Inverse of :func:`patchify`: puts flattened patches back into images.

    ``unpatchify(patchify(x, p), p, image_size=x.shape[-3:-1])`` equals ``x`` exactly. The
    number of channels is ``D / (p_h p_w)``.

    Args:
      patches: array ``[B, L, D]`` (any number of leading batch axes, including none; any
        dtype) with ``D = p_h * p_w * C``, laid out as :func:`patchify` returns it.
      patch_size: ``p`` or ``(p_h, p_w)``, as given to :func:`patchify` (static).
      image_size: ``(H, W)`` of the images, or an int for square images (keyword-only,
        static). ``None`` (the default) assumes a square grid of patches,
        ``sqrt(L) x sqrt(L)``, as MAE does; it is required whenever the grid is not square.

    Returns:
      array ``[B, H, W, C]`` with the dtype of ``patches``.

    Raises:
      ValueError: ``patches`` has fewer than 2 axes, ``patch_size`` or ``image_size`` is
        not a positive int or pair, ``D`` is not divisible by ``p_h * p_w``, ``image_size``
        is not divisible by the patch size or does not hold ``L`` patches, or
        ``image_size=None`` and ``L`` is not a perfect square.
    """
    fn = "unpatchify"
    patches = jnp.asarray(patches)
    if patches.ndim < 2:
        raise ValueError(f"{fn}: patches must be of shape [B, L, D], got {describe(patches)}.")
    ph, pw = _pair(patch_size, "patch_size", fn)
    num_patches, dim = patches.shape[-2:]
    if dim % (ph * pw):
        raise ValueError(
            f"{fn}: the patch dim D must be divisible by p_h * p_w = {ph * pw} (patch_size "
            f"{(ph, pw)}), got patches of shape {tuple(patches.shape)} (D={dim})."
        )
    if image_size is None:
        side = math.isqrt(num_patches)
        if side * side != num_patches:
            raise ValueError(
                f"{fn}: image_size must be given when the number of patches is not a perfect "
                f"square, got patches of shape {tuple(patches.shape)} (L={num_patches})."
            )
        gh = gw = side
    else:
        height, width = _pair(image_size, "image_size", fn)
        if height % ph or width % pw:
            raise ValueError(
                f"{fn}: patch_size {(ph, pw)} must divide image_size, got image_size "
                f"{(height, width)}."
            )
        gh, gw = height // ph, width // pw
        if gh * gw != num_patches:
            raise ValueError(
                f"{fn}: patches must hold (H/p_h) * (W/p_w) = {gh} * {gw} = {gh * gw} patches "
                f"for image_size {(height, width)} and patch_size {(ph, pw)}, got "
                f"{describe(patches)}."
            )
    return _unpatchify(patches, ph=ph, pw=pw, gh=gh, gw=gw)


@functools.partial(jax.jit, static_argnames=("ph", "pw", "gh", "gw"))
def _unpatchify(patches: jax.Array, *, ph: int, pw: int, gh: int, gw: int) -> jax.Array:
    *lead, _, dim = patches.shape
    channels = dim // (ph * pw)
    n = len(lead)
    x = patches.reshape(*lead, gh, gw, ph, pw, channels)
    # [..., gh, gw, ph, pw, C] -> [..., gh, ph, gw, pw, C]
    x = jnp.moveaxis(x, n + 2, n + 1)
    return x.reshape(*lead, gh * ph, gw * pw, channels)
