"""Checks on token inputs: eager errors, or functional checks under ``checkify``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

__all__ = ["validate_tokens"]


def validate_tokens(tokens, vocab_size: int, *, name: str = "tokens") -> jax.Array:
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

    Returns:
      ``tokens`` as a ``jax.Array``.

    Raises:
      TypeError: non-integer tokens.
      ValueError: an id outside ``[0, vocab_size)`` (concrete tokens).
    """
    tokens = jnp.asarray(tokens)
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise TypeError(f"{name} must be an integer array, got dtype {tokens.dtype}.")
    if tokens.size == 0:
        return tokens
    try:
        values = np.asarray(tokens)
    except jax.errors.TracerArrayConversionError:
        lo, hi = jnp.min(tokens), jnp.max(tokens)
        checkify.check(
            (lo >= 0) & (hi < vocab_size),
            f"{name} must be in [0, {vocab_size}) (vocab_size={vocab_size}), "
            "got min {lo} and max {hi}.",
            lo=lo,
            hi=hi,
        )
        return tokens
    lo, hi = int(values.min()), int(values.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(
            f"{name} must be in [0, {vocab_size}) (vocab_size={vocab_size}), "
            f"got min {lo} and max {hi} (shape {tokens.shape})."
        )
    return tokens
