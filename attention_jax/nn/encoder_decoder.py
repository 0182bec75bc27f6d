"""The encoder-decoder Transformer (Vaswani et al. 2017) for sequence-to-sequence tasks.

Shape letters: ``B`` batch, ``S`` source length, ``T`` target length, ``D`` model width,
``V`` vocabulary, ``K`` key/value heads, ``H`` head dim.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from attention_jax._checks import check_int_in, describe, float_array
from attention_jax.nn.cache import EncoderDecoderCache
from attention_jax.nn.checks import check_seq_lengths, check_tokens
from attention_jax.nn.config import TransformerConfig
from attention_jax.nn.embedding import Embedder
from attention_jax.nn.encoder import TransformerEncoder
from attention_jax.nn.stack import DecoderStack

__all__ = ["EncoderDecoder"]


class EncoderDecoder(nnx.Module):
    """The encoder-decoder Transformer of Vaswani et al. (2017) for seq2seq tasks.

    Source and target share the token embedding (and, tied, the output projection). The
    encoder is a :class:`TransformerEncoder` with ``config.encoder_layers`` blocks; the
    decoder is a :class:`DecoderStack` of ``config.decoder_layers`` causal blocks with
    cross-attention to the encoder output (masked by ``src_lengths``; no positional encoding
    in cross-attention), the same code path as :class:`TransformerLM`. For the 2017
    architecture use ``positional="sinusoidal", prenorm=False, norm="layernorm",
    mlp="relu", scale_embeddings=True``.

    Args:
      config: :class:`TransformerConfig`.
      rngs: ``nnx.Rngs``.

    Attributes:
      encoder: :class:`TransformerEncoder` (owns the shared :attr:`embedder`).
      decoder: :class:`DecoderStack` with cross-attention.
    """

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.encoder = TransformerEncoder(
            dataclasses.replace(config, num_layers=config.encoder_layers), rngs=rngs
        )
        self.decoder = DecoderStack(config, config.decoder_layers, cross_attention=True, rngs=rngs)

    @property
    def embedder(self) -> Embedder:
        """The token embedding shared by source, target and (tied) output."""
        return self.encoder.embedder

    def encode(
        self,
        src_tokens: jax.Array,
        *,
        src_lengths: jax.Array | None = None,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
        sow_weights: bool = False,
    ) -> jax.Array:
        """``src_tokens [B, S]`` (``src_lengths [B]``) -> encoder output ``[B, S, D]``."""
        fn = "EncoderDecoder.encode"
        src_tokens = check_tokens(src_tokens, "src_tokens", fn=fn, max_len=self.config.max_len)
        src_lengths = check_seq_lengths(
            src_lengths, "src_lengths", fn=fn, batch=src_tokens.shape[0]
        )
        return self.encoder(
            src_tokens,
            lengths=src_lengths,
            deterministic=deterministic,
            rngs=rngs,
            sow_weights=sow_weights,
        )

    def init_cache(
        self,
        src_tokens: jax.Array,
        max_len: int | None = None,
        *,
        src_lengths: jax.Array | None = None,
    ) -> EncoderDecoderCache:
        """Encodes the source once and returns an empty decoding cache.

        The cross-attention ``k, v`` of every decoder layer are projected from the encoder
        output here and reused at every step.

        Args:
          src_tokens: ``[B, S]`` int.
          max_len: decoder cache capacity (default and upper bound ``config.max_len``).
          src_lengths: ``[B]`` int unpadded source lengths (default: all of ``S``).

        Returns:
          :class:`EncoderDecoderCache` with decoder ``length = 0``.
        """
        cfg = self.config
        fn = "EncoderDecoder.init_cache"
        if max_len is not None:
            check_int_in(
                max_len, "max_len", fn=fn, low=1, high=cfg.max_len, why=" (the model's max_len)"
            )
        src_tokens = check_tokens(src_tokens, "src_tokens", fn=fn, max_len=cfg.max_len)
        batch, src_len = src_tokens.shape
        src_lengths = check_seq_lengths(src_lengths, "src_lengths", fn=fn, batch=batch)
        memory = self.encode(src_tokens, src_lengths=src_lengths)
        cross = [block.cross_attention.project_key_value(memory) for block in self.decoder.blocks]
        if src_lengths is None:
            src_lengths = jnp.full((batch,), src_len, jnp.int32)
        return EncoderDecoderCache(
            self.decoder.init_cache(batch, max_len),
            tuple(k for k, _ in cross),
            tuple(v for _, v in cross),
            jnp.asarray(src_lengths, jnp.int32),
        )

    def decode(
        self,
        tgt_tokens: jax.Array,
        memory: jax.Array | None = None,
        *,
        src_lengths: jax.Array | None = None,
        positions: jax.Array | None = None,
        cache: EncoderDecoderCache | None = None,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
        sow_weights: bool = False,
    ):
        """Decoder pass over ``tgt_tokens [B, T]``.

        Args:
          tgt_tokens: ``[B, T]`` int.
          memory: ``[B, S, D]`` encoder output (without a cache).
          src_lengths: ``[B]`` source lengths (without a cache; the cache stores them).
          positions: ``[T]`` or ``[B, T]`` target positions (default ``arange(T)`` or
            ``cache.length + arange(T)``).
          cache: :class:`EncoderDecoderCache` from :meth:`init_cache`.
          deterministic, rngs, sow_weights: as in :meth:`TransformerLM.__call__`.

        Returns:
          float32 logits ``[B, T, V]``; with a cache, ``(logits, new_cache)``.
        """
        fn = "EncoderDecoder.decode"
        if cache is None:
            if memory is None:
                raise ValueError(f"{fn}: memory (the encoder output) or a cache must be given.")
            memory = float_array(memory, "memory", fn=fn)
            if memory.ndim != 3:
                raise ValueError(
                    f"{fn}: memory must be of shape [B, S, D], got {describe(memory)}."
                )
            cross = dict(context=memory, context_seq_lengths=src_lengths)
            self_cache = None
        else:
            if not isinstance(cache, EncoderDecoderCache):
                raise TypeError(
                    f"{fn}: cache must be an EncoderDecoderCache, got {type(cache).__name__}."
                )
            if memory is not None or src_lengths is not None:
                raise ValueError(
                    f"{fn}: memory and src_lengths must be None with a cache (it holds them)."
                )
            cross = dict(
                context_key_values=tuple(zip(cache.cross_key, cache.cross_value, strict=True)),
                context_seq_lengths=cache.src_lengths,
            )
            self_cache = cache.decoder
        out = self.decoder.forward(
            self.embedder,
            tgt_tokens,
            positions=positions,
            cache=self_cache,
            deterministic=deterministic,
            rngs=rngs,
            sow_weights=sow_weights,
            fn=fn,
            name="tgt_tokens",
            **cross,
        )
        if cache is None:
            return out
        logits, self_cache = out
        return logits, cache._replace(decoder=self_cache)

    def __call__(
        self,
        src_tokens: jax.Array,
        tgt_tokens: jax.Array,
        *,
        src_lengths: jax.Array | None = None,
        positions: jax.Array | None = None,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
        sow_weights: bool = False,
    ) -> jax.Array:
        """Teacher-forced forward pass.

        Args:
          src_tokens: ``[B, S]`` int source.
          tgt_tokens: ``[B, T]`` int decoder input (targets shifted right).
          src_lengths: ``[B]`` unpadded source lengths.
          positions: ``[T]`` or ``[B, T]`` target positions.
          deterministic, rngs, sow_weights: as in :meth:`TransformerLM.__call__`.

        Returns:
          float32 logits ``[B, T, V]``.
        """
        memory = self.encode(
            src_tokens,
            src_lengths=src_lengths,
            deterministic=deterministic,
            rngs=rngs,
            sow_weights=sow_weights,
        )
        return self.decode(
            tgt_tokens,
            memory,
            src_lengths=src_lengths,
            positions=positions,
            deterministic=deterministic,
            rngs=rngs,
            sow_weights=sow_weights,
        )
