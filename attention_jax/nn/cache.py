"""Key/value caches for incremental decoding: plain pytrees, passed in and returned.

No module holds hidden decoding state: a model call with ``cache=`` returns the updated
cache next to its output, so decoding is a pure function that ``jit``, ``lax.while_loop``
and ``lax.scan`` can carry.

Shape letters: ``B`` batch, ``S_max`` cache capacity, ``K`` key/value heads (the cache of a
grouped-query layer stores ``K``, not ``N``, heads), ``H`` head dim, ``S_src`` encoder length.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from attention_jax._checks import check_int

__all__ = [
    "AttentionCache",
    "EncoderDecoderCache",
    "KVCache",
    "LatentCache",
    "LayerCache",
    "RecurrentCache",
    "init_kv_cache",
]


def _write(buffer: jax.Array, new: jax.Array, start: jax.Array) -> jax.Array:
    """``new [B, T, ...]`` written into ``buffer [B, S_max, ...]`` at slot ``start``."""
    index = (0, start) + (0,) * (buffer.ndim - 2)
    return lax.dynamic_update_slice(buffer, new.astype(buffer.dtype), index)


class AttentionCache(NamedTuple):
    """The cache of one self-attention layer, as :class:`MultiHeadAttention` takes it.

    Attributes:
      key: ``[B, S_max, K, H]``; slots ``>= length`` hold garbage that is masked out.
      value: ``[B, S_max, K, H]``.
      length: int32 scalar, the number of filled slots. Slot ``i`` holds position ``i``.
      log_forget: ``[B, S_max, N]`` float32 log forget gates of the cached tokens
        (``attention="forgetting"``), else None.
    """

    key: jax.Array
    value: jax.Array
    length: jax.Array
    log_forget: jax.Array | None = None

    @property
    def capacity(self) -> int:
        """``S_max``, a static int."""
        return self.key.shape[1]

    @property
    def floats_per_token(self) -> int:
        """Floats stored per token (keys, values and forget gates)."""
        return sum(
            math.prod(x.shape[2:]) for x in (self.key, self.value, self.log_forget) if x is not None
        )

    def update(
        self, key: jax.Array, value: jax.Array, log_forget: jax.Array | None = None
    ) -> AttentionCache:
        """Writes ``key``, ``value`` ``[B, T, K, H]`` (and ``log_forget`` ``[B, T, N]`` when
        the cache has them) at slots ``length .. length + T - 1``.

        ``lax.dynamic_update_slice`` clamps the start index, so writing past ``S_max``
        overwrites the last slots instead of failing; callers check the capacity
        (see :meth:`attention_jax.nn.TransformerLM.__call__` and :func:`attention_jax.generate`).
        """
        forget = self.log_forget
        if forget is not None:
            forget = _write(forget, log_forget, self.length)
        return AttentionCache(
            _write(self.key, key, self.length),
            _write(self.value, value, self.length),
            self.length + key.shape[1],
            forget,
        )


class LatentCache(NamedTuple):
    """The cache of one multi-head latent attention layer (``attention="mla"``): the shared
    latent and RoPE key of every token, ``kv_latent_dim + rope_head_dim`` floats per token
    whatever the number of heads.

    Attributes:
      latent: ``[B, S_max, kv_latent_dim]``, the RMS-normed ``c_kv``.
      rope_key: ``[B, S_max, rope_head_dim]`` (RoPE applied), ``[B, S_max, 0]`` without RoPE.
      length: int32 scalar, the number of filled slots. Slot ``i`` holds position ``i``.
    """

    latent: jax.Array
    rope_key: jax.Array
    length: jax.Array

    @property
    def capacity(self) -> int:
        """``S_max``, a static int."""
        return self.latent.shape[1]

    @property
    def floats_per_token(self) -> int:
        """Floats stored per token (latent and RoPE key)."""
        return self.latent.shape[2] + self.rope_key.shape[2]

    def update(self, latent: jax.Array, rope_key: jax.Array) -> LatentCache:
        """Writes ``latent [B, T, kv_latent_dim]`` and ``rope_key [B, T, rope_head_dim]`` at
        slots ``length ..`` (clamped like :meth:`AttentionCache.update`)."""
        return LatentCache(
            _write(self.latent, latent, self.length),
            _write(self.rope_key, rope_key, self.length),
            self.length + latent.shape[1],
        )


class RecurrentCache(NamedTuple):
    """The cache of one linear-attention layer (:class:`attention_jax.nn.LinearAttention`):
    its recurrent state, which does not grow with the context, and the tail of its short
    convolution.

    Attributes:
      state: the state of :mod:`attention_jax.linear` after the filled tokens: ``S`` float32
        ``[B, N, F, H]`` (``F`` the feature dim), or ``(S, z)`` with the normalizer
        ``z [B, N, F]`` for the normalized mixers (``"linear"``, ``"based"``).
      conv: ``[B, conv_size - 1, C]``, the last inputs of the short causal convolution over
        the ``C`` q/k/v channels (zeros before the first token), or None without one.
      room: a zero-width ``[B, S_max, 0]`` array: its length axis is the capacity ``S_max``
        (the model's position limit; nothing is stored per token).
      length: int32 scalar, the number of processed tokens.
    """

    state: jax.Array | tuple[jax.Array, jax.Array]
    conv: jax.Array | None
    room: jax.Array
    length: jax.Array

    @property
    def capacity(self) -> int:
        """``S_max``, a static int."""
        return self.room.shape[1]

    @property
    def floats_per_token(self) -> int:
        return 0


LayerCache = AttentionCache | LatentCache | RecurrentCache


class KVCache(NamedTuple):
    """The cache of a decoder stack: one layer cache per layer (:class:`AttentionCache`, or
    :class:`LatentCache` for MLA), all with the same filled length (the rows of a batch
    decode in lockstep).

    Attributes:
      layers: tuple over layers of :data:`LayerCache`.
    """

    layers: tuple[LayerCache, ...]

    @property
    def length(self) -> jax.Array:
        """int32 scalar, the number of positions already processed."""
        return self.layers[0].length

    @property
    def capacity(self) -> int:
        """``S_max``, a static int."""
        return self.layers[0].capacity

    @property
    def batch_size(self) -> int:
        """``B``, a static int."""
        return jax.tree.leaves(self.layers[0])[0].shape[0]

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def layer(self, i: int) -> LayerCache:
        """The cache of layer ``i``."""
        return self.layers[i]

    @staticmethod
    def from_layers(layers: list[LayerCache] | tuple[LayerCache, ...]) -> KVCache:
        """Reassembles updated layer caches (all advanced by the same number of slots)."""
        return KVCache(tuple(layers))

    def with_length(self, length) -> KVCache:
        """The same buffers with every layer's filled length set to ``length`` (e.g. to
        rewind decoding to a shorter prefix: slots ``>= length`` are then ignored)."""
        length = jnp.asarray(length, jnp.int32)
        return KVCache(tuple(layer._replace(length=length) for layer in self.layers))

    def num_floats_per_token(self) -> int:
        """Floats cached per token over all layers (the memory that grows with the context;
        a linear-attention layer adds none)."""
        return sum(layer.floats_per_token for layer in self.layers)

    def num_state_floats(self) -> int:
        """Floats of the fixed-size recurrent states (per sequence, over all layers)."""
        return sum(
            math.prod(x.shape[1:])
            for layer in self.layers
            if isinstance(layer, RecurrentCache)
            for x in jax.tree.leaves((layer.state, layer.conv))
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
    """An empty :class:`KVCache` of softmax layers: :class:`AttentionCache` zeros
    ``[batch_size, max_len, num_kv_heads, head_dim]`` per layer and ``length = 0`` (models
    build theirs with ``init_cache``, which knows each layer's kind)."""
    for name, value in (
        ("num_layers", num_layers),
        ("batch_size", batch_size),
        ("max_len", max_len),
        ("num_kv_heads", num_kv_heads),
        ("head_dim", head_dim),
    ):
        check_int(value, name, fn="init_kv_cache")
    shape = (batch_size, max_len, num_kv_heads, head_dim)
    # Separate buffers per layer and for keys and values, so that a step may donate them.
    return KVCache(
        tuple(
            AttentionCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.int32(0))
            for _ in range(num_layers)
        )
    )
