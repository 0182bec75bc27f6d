"""Checks shared by the models: token ids, sequence lengths, caches.

The rules and the message style are those of :mod:`attention_jax._checks`
(``"<function>: <argument> must be <rule>, got <value and shape>."``); this module holds the
ones about the models' inputs, used by every model.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from attention_jax._checks import describe, int_array
from attention_jax.nn.cache import KVCache

__all__ = [
    "check_cache",
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
