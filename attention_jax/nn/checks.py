"""Checks shared by the models: token ids, sequence lengths, caches, images and grid positions.

The rules and the message style are those of :mod:`attention_jax._checks`
(``"<function>: <argument> must be <rule>, got <value and shape>."``); this module holds the
ones about the models' inputs, used by every model.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from attention_jax._checks import bool_array, describe, float_array, int_array
from attention_jax.nn.cache import KVCache

__all__ = [
    "check_cache",
    "check_grid_positions",
    "check_images",
    "check_seq_lengths",
    "check_tokens",
    "validate_tokens",
]


def check_tokens(
    tokens, name: str, *, fn: str, max_len: int | None = None, why: str = " (max_len)"
) -> jax.Array:
    """``tokens`` as an integer ``[B, T]`` array with ``T <= max_len`` when given (``why``
    names the bound in the message)."""
    tokens = int_array(tokens, name, fn=fn)
    if tokens.ndim != 2:
        raise ValueError(f"{fn}: {name} must be of shape [B, T], got {describe(tokens)}.")
    if max_len is not None and tokens.shape[1] > max_len:
        raise ValueError(
            f"{fn}: {name} must have length T <= {max_len}{why}, got {describe(tokens)}."
        )
    return tokens


def check_seq_lengths(lengths, name: str, *, fn: str, batch: int) -> jax.Array | None:
    """Integer sequence lengths of shape ``[batch]`` (None passes through)."""
    if lengths is None:
        return None
    return int_array(lengths, name, fn=fn, shape=(batch,))


def _concrete_int(x) -> int | None:
    """``int(x)`` when ``x`` is concrete, None when it is traced."""
    try:
        return int(x)
    except (jax.errors.ConcretizationTypeError, TypeError):
        return None


def check_cache(cache, *, fn: str, num_layers: int, batch: int, length: int) -> KVCache:
    """A :class:`KVCache` of ``num_layers`` layers and batch ``batch`` with room for
    ``length`` more tokens (checked when its filled length is concrete)."""
    if not isinstance(cache, KVCache):
        raise TypeError(f"{fn}: cache must be a KVCache, got {type(cache).__name__}.")
    if cache.num_layers != num_layers:
        raise ValueError(
            f"{fn}: cache must have num_layers={num_layers} layers, got {cache.num_layers}."
        )
    if cache.batch_size != batch:
        raise ValueError(
            f"{fn}: cache must have the tokens' batch size {batch}, got batch size "
            f"{cache.batch_size}."
        )
    filled = _concrete_int(cache.length)
    # Under jit the filled length is traced and cannot be checked here; dynamic_update_slice
    # would then clamp, so jitted callers (generate) check the total length up front.
    if length > cache.capacity or (filled is not None and filled + length > cache.capacity):
        raise ValueError(
            f"{fn}: cache must have room for {length} new tokens, got "
            f"{'?' if filled is None else filled} of {cache.capacity} slots filled."
        )
    return cache


def validate_tokens(
    tokens, vocab_size: int, *, name: str = "tokens", fn: str = "validate_tokens"
) -> jax.Array:
    """Checks that ``tokens`` are integer ids in ``[0, vocab_size)``.

    An embedding lookup does not fail on an out-of-range id (``jnp.take`` clamps or fills it),
    so a bad id silently becomes another token's embedding; this is the checked mode.

    * Concrete ``tokens`` (eager): raises ``ValueError`` naming the smallest and largest id.
    * Traced ``tokens`` (under ``jit``): emits a ``jax.experimental.checkify`` check, so wrap
      the function with ``checkify.checkify`` and call ``err.throw()`` on the result::

        err, logits = jax.jit(checkify.checkify(checked_forward))(tokens)
        err.throw()  # JaxRuntimeError: tokens must be in [0, V) ...

      (Under plain ``jit`` without ``checkify`` JAX refuses to stage the check.)

    Args:
      tokens: integer array of any shape.
      vocab_size: ``V``.
      name: argument name used in messages.
      fn: function name used in messages (the caller's).

    Returns:
      ``tokens`` as a ``jax.Array``.

    Raises:
      TypeError: non-integer tokens.
      ValueError: an id outside ``[0, vocab_size)`` (concrete tokens).
    """
    tokens = int_array(tokens, name, fn=fn)
    if tokens.size == 0:
        return tokens
    rule = f"{fn}: {name} must be in [0, {vocab_size}) (vocab_size={vocab_size})"
    try:
        values = np.asarray(tokens)
    except jax.errors.TracerArrayConversionError:
        lo, hi = jnp.min(tokens), jnp.max(tokens)
        checkify.check(
            (lo >= 0) & (hi < vocab_size), rule + ", got min {lo} and max {hi}.", lo=lo, hi=hi
        )
        return tokens
    lo, hi = int(values.min()), int(values.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"{rule}, got min {lo} and max {hi} in {describe(tokens)}.")
    return tokens


def check_features(
    x,
    name: str,
    *,
    fn: str,
    shape: str,
    ndims: tuple[int, ...] = (3,),
    features: int | None = None,
    letter: str = "D",
    why: str = "",
) -> jax.Array:
    """``x`` as a floating-point array (TypeError otherwise) with ``x.ndim`` in ``ndims`` and,
    when ``features`` is given, ``x.shape[-1] == features`` (ValueError otherwise).

    ``shape`` spells the accepted shapes in the message (``"[B, Dq] or [B, T, Dq]"``),
    ``letter`` names the feature axis and ``why`` the argument that fixed its width
    (``" (query_features)"``).
    """
    x = float_array(x, name, fn=fn)
    if x.ndim not in ndims or (features is not None and x.shape[-1] != features):
        width = "" if features is None else f" with {letter}={features}{why}"
        raise ValueError(f"{fn}: {name} must be of shape {shape}{width}, got {describe(x)}.")
    return x


def check_leading(x: jax.Array, name: str, leading: tuple[int, ...], *, fn: str, what: str):
    """Checks that ``x.shape`` starts with ``leading``; ``what`` names those axes and where
    they come from in the message (``"[B, S] of keys"``)."""
    if tuple(x.shape[: len(leading)]) != tuple(leading):
        raise ValueError(
            f"{fn}: {name} must have leading axes {what}={tuple(leading)}, got {describe(x)}."
        )
    return x


def padding_lengths(
    mask,
    lengths,
    *,
    fn: str,
    batch: int,
    length: int,
    mask_name: str = "mask",
    lengths_name: str = "lengths",
) -> tuple[jax.Array | None, jax.Array | None]:
    """Right padding given either as ``mask [B, T]`` (bool, True = token, a prefix of each row)
    or as ``lengths [B]`` (int), for models that run a recurrence over the valid prefix.

    Returns ``(lengths [B] int32, valid [B, T] bool)`` with ``valid = arange(T) < lengths``
    (a mask is reduced to its count of True entries), or ``(None, None)`` when neither is
    given. Passing both is refused: they would have to agree.
    """
    lengths = check_seq_lengths(lengths, lengths_name, fn=fn, batch=batch)
    if mask is not None:
        if lengths is not None:
            raise ValueError(
                f"{fn}: {lengths_name} must be None when {mask_name} is given (pass one of "
                f"them), got {describe(lengths)}."
            )
        mask = bool_array(mask, mask_name, fn=fn, hint=" (True = token)")
        if mask.shape != (batch, length):
            raise ValueError(
                f"{fn}: {mask_name} must be of shape [B, T]=({batch}, {length}), got "
                f"{describe(mask)}."
            )
        lengths = jnp.sum(mask, axis=-1, dtype=jnp.int32)
    if lengths is None:
        return None, None
    lengths = lengths.astype(jnp.int32)
    return lengths, jnp.arange(length)[None, :] < lengths[:, None]


def check_images(images, name: str, *, fn: str, height: int, width: int, channels: int):
    """``images`` as a floating ``[B, height, width, channels]`` array (channels last)."""
    images = float_array(images, name, fn=fn)
    if images.ndim != 4 or tuple(images.shape[1:]) != (height, width, channels):
        raise ValueError(
            f"{fn}: {name} must be of shape [B, H, W, C]=(B, {height}, {width}, {channels}), "
            f"got {describe(images)}."
        )
    return images


def check_grid_positions(positions, name: str, *, fn: str, batch: int, length: int):
    """The ``(row, col)`` of each of ``length`` tokens on a 2-D grid: an integer array
    ``[length, 2]`` or ``[batch, length, 2]`` (required: a grid has no default order)."""
    rule = f"an integer array of shape [{length}, 2] or [{batch}, {length}, 2] (row, col)"
    if positions is None:
        raise ValueError(f"{fn}: {name} must be {rule}, got None.")
    positions = int_array(positions, name, fn=fn)
    if tuple(positions.shape) not in ((length, 2), (batch, length, 2)):
        raise ValueError(f"{fn}: {name} must be {rule}, got {describe(positions)}.")
    return positions
