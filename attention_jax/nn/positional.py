"""Parameter holders for learned positional encodings.

The math lives in :mod:`attention_jax.positional`; these modules only own the tables.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import ArrayLike

from attention_jax._checks import check_int, int_array
from attention_jax.positional import check_t5_config, t5_relative_bias

__all__ = ["LearnedPositionalEmbedding", "T5RelativeBias"]

_default_init = nnx.initializers.normal(stddev=0.02)


class LearnedPositionalEmbedding(nnx.Module):
    """A learned table ``[max_len, dim]`` looked up at integer positions (GPT-2 style).

    Positions outside ``[0, max_len)`` cannot raise under ``jit`` (they may be traced), so
    they are clamped into range: a negative position reads row 0 and one at or past
    ``max_len`` reads the last row, both under ``jit`` and eagerly. Keep positions below
    ``max_len`` (e.g. cap generation length) if that matters.

    Args:
      max_len: number of positions in the table (>= 1).
      dim: embedding dimension (>= 1).
      rngs: ``nnx.Rngs`` with a ``params`` stream.
      param_dtype: dtype of the table.
      embedding_init: initializer of the table (normal, stddev 0.02, by default).

    Attributes:
      embedding: ``nnx.Param`` ``[max_len, dim]``.
    """

    def __init__(
        self,
        max_len: int,
        dim: int,
        *,
        rngs: nnx.Rngs,
        param_dtype: jnp.dtype = jnp.float32,
        embedding_init: nnx.Initializer = _default_init,
    ):
        self.max_len = check_int(max_len, "max_len", fn="LearnedPositionalEmbedding")
        self.dim = check_int(dim, "dim", fn="LearnedPositionalEmbedding")
        self.embedding = nnx.Param(embedding_init(rngs.params(), (max_len, dim), param_dtype))

    def __call__(self, positions: ArrayLike) -> jax.Array:
        """Looks up integer ``positions [...]``; returns ``[..., dim]`` in ``param_dtype``."""
        positions = int_array(positions, "positions", fn="LearnedPositionalEmbedding")
        index = jnp.clip(positions, 0, self.max_len - 1)
        return jnp.take(self.embedding[...], index, axis=0)


class T5RelativeBias(nnx.Module):
    """T5's learned relative-position bias ``[num_buckets, num_heads]``.

    Calling it gives the ``[N, T, S]`` bias of :func:`attention_jax.t5_relative_bias`, so
    the bound method works directly as a
    ``bias_fn(query_positions, key_value_positions)``. T5 shares
    one such table across all layers of a stack.

    Args:
      num_heads: number of heads ``N`` (>= 1).
      num_buckets: buckets in the table (see :func:`attention_jax.t5_relative_position_bucket`).
      max_distance: distances at and beyond it share the last bucket of their direction.
      bidirectional: ``True`` for encoders, ``False`` for causal decoders.
      rngs: ``nnx.Rngs`` with a ``params`` stream.
      param_dtype: dtype of the table.
      embedding_init: initializer of the table (normal, stddev 0.02, by default).

    Attributes:
      table: ``nnx.Param`` ``[num_buckets, num_heads]``.
    """

    def __init__(
        self,
        num_heads: int,
        num_buckets: int = 32,
        max_distance: int = 128,
        bidirectional: bool = True,
        *,
        rngs: nnx.Rngs,
        param_dtype: jnp.dtype = jnp.float32,
        embedding_init: nnx.Initializer = _default_init,
    ):
        self.num_heads = check_int(num_heads, "num_heads", fn="T5RelativeBias")
        check_t5_config(num_buckets, max_distance, bidirectional, "T5RelativeBias")
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.bidirectional = bidirectional
        self.table = nnx.Param(embedding_init(rngs.params(), (num_buckets, num_heads), param_dtype))

    def __call__(self, query_positions: ArrayLike, key_value_positions: ArrayLike) -> jax.Array:
        """Integer ``query_positions [T]``, ``key_value_positions [S]`` -> bias ``[N, T, S]``
        (``[B, T]`` / ``[B, S]`` positions give ``[B, N, T, S]``)."""
        return t5_relative_bias(
            self.table[...],
            query_positions,
            key_value_positions,
            bidirectional=self.bidirectional,
            max_distance=self.max_distance,
        )
