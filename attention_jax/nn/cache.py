"""Key/value caches for incremental decoding: plain pytrees, passed in and returned.

No module holds hidden decoding state: a model call with ``cache=`` returns the updated
cache next to its output, so decoding is a pure function that ``jit``, ``lax.while_loop``
and ``lax.scan`` can carry.

Shape letters: ``B`` batch, ``S_max`` cache capacity, ``K`` key/value heads (the cache of a
grouped-query layer stores ``K``, not ``N``, heads), ``H`` head dim, ``S_src`` encoder length.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from attention_jax._checks import check_int

__all__ = ["AttentionCache", "EncoderDecoderCache", "KVCache", "init_kv_cache"]


class AttentionCache(NamedTuple):
    """The cache of one self-attention layer, as :class:`MultiHeadAttention` takes it.

    Attributes:
      key: ``[B, S_max, K, H]``; slots ``>= length`` hold garbage that is masked out.
      value: ``[B, S_max, K, H]``.
      length: int32 scalar, the number of filled slots. Slot ``i`` holds position ``i``.
    """

    key: jax.Array
    value: jax.Array
    length: jax.Array

    @property
    def capacity(self) -> int:
        """``S_max``, a static int."""
        return self.key.shape[1]

    def update(self, key: jax.Array, value: jax.Array) -> AttentionCache:
        """Writes ``key``, ``value`` ``[B, T, K, H]`` at slots ``length .. length + T - 1``.

        ``lax.dynamic_update_slice`` clamps the start index, so writing past ``S_max``
        overwrites the last slots instead of failing; callers check the capacity
        (see :meth:`attention_jax.nn.TransformerLM.__call__` and :func:`attention_jax.generate`).
        """
        start = (0, self.length, 0, 0)
        return AttentionCache(
            lax.dynamic_update_slice(self.key, key.astype(self.key.dtype), start),
            lax.dynamic_update_slice(self.value, value.astype(self.value.dtype), start),
            self.length + key.shape[1],
        )


class KVCache(NamedTuple):
    """The cache of a decoder stack: one key/value pair per layer and one filled length.

    Attributes:
      key: tuple over layers of ``[B, S_max, K, H]``.
      value: tuple over layers of ``[B, S_max, K, H]``.
      length: int32 scalar, the number of positions already processed (shared by all rows
        and layers: the rows of a batch decode in lockstep).
    """

    key: tuple[jax.Array, ...]
    value: tuple[jax.Array, ...]
    length: jax.Array

    @property
    def capacity(self) -> int:
        """``S_max``, a static int."""
        return self.key[0].shape[1]

    @property
    def num_layers(self) -> int:
        return len(self.key)

    def layer(self, i: int) -> AttentionCache:
        """The :class:`AttentionCache` view of layer ``i``."""
        return AttentionCache(self.key[i], self.value[i], self.length)

    @staticmethod
    def from_layers(layers: list[AttentionCache] | tuple[AttentionCache, ...]) -> KVCache:
        """Reassembles updated layer caches (all advanced by the same number of slots)."""
        return KVCache(
            tuple(c.key for c in layers), tuple(c.value for c in layers), layers[0].length
        )


class EncoderDecoderCache(NamedTuple):
    """The cache of :class:`attention_jax.nn.EncoderDecoder` decoding.

    Attributes:
      decoder: :class:`KVCache` of the decoder's causal self-attention.
      cross_key: tuple over decoder layers of ``[B, S_src, K, H]``: the cross-attention keys,
        projected once from the encoder output.
      cross_value: tuple over decoder layers of ``[B, S_src, K, H]``.
      src_lengths: ``[B]`` int32 unpadded source lengths (cross-attention masks the rest).
    """

    decoder: KVCache
    cross_key: tuple[jax.Array, ...]
    cross_value: tuple[jax.Array, ...]
    src_lengths: jax.Array

    @property
    def length(self) -> jax.Array:
        """Filled length of the decoder self-attention cache."""
        return self.decoder.length

    @property
    def capacity(self) -> int:
        return self.decoder.capacity


def init_kv_cache(
    *, num_layers: int, batch_size: int, max_len: int, num_kv_heads: int, head_dim: int, dtype
) -> KVCache:
    """An empty :class:`KVCache`: zeros ``[batch_size, max_len, num_kv_heads, head_dim]`` per
    layer and ``length = 0``."""
    for name, value in (
        ("num_layers", num_layers),
        ("batch_size", batch_size),
        ("max_len", max_len),
        ("num_kv_heads", num_kv_heads),
        ("head_dim", head_dim),
    ):
        check_int(value, name, fn="init_kv_cache")
    shape = (batch_size, max_len, num_kv_heads, head_dim)
    key = tuple(jnp.zeros(shape, dtype) for _ in range(num_layers))
    value = tuple(jnp.zeros(shape, dtype) for _ in range(num_layers))
    return KVCache(key, value, jnp.int32(0))
