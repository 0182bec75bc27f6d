"""``Dense``: ``nnx.Linear`` over the last axis, computed as one 2-D matrix product."""

from __future__ import annotations

import jax
from flax import nnx

__all__ = ["Dense"]


class Dense(nnx.Linear):
    """``nnx.Linear`` (same parameters ``kernel [in, out]``, ``bias [out]``, same result) that
    folds the leading axes of ``inputs [..., in]`` into one before the product:
    ``[prod(...), in] @ [in, out] -> [..., out]``.

    Why: for a 3-D ``[B, T, D] x [D, F]`` product XLA:CPU gives the gradient dots layouts
    that need transposed copies of ``[B*T, F]`` activations (fused into the activation's
    backward as strided writes); the 2-D form needs none. At the char-LM's size this makes
    the MLP's forward+backward about 1.5x faster (``benchmarks/char_lm_profile.py``).
    The reshapes are free (row-major bitcasts) on every backend.

    Args:
      inputs: ``[..., in_features]``.
      out_sharding: as ``nnx.Linear`` (given, the product keeps ``inputs``' rank).

    Returns:
      ``[..., out_features]``.
    """

    def __call__(self, inputs: jax.Array, out_sharding=None) -> jax.Array:
        if inputs.ndim <= 2 or out_sharding is not None:
            return super().__call__(inputs, out_sharding)
        leading = inputs.shape[:-1]
        y = super().__call__(inputs.reshape(-1, inputs.shape[-1]))
        return y.reshape(*leading, y.shape[-1])
