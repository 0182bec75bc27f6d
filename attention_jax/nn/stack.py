"""The pieces every Transformer model is made of, written once.

* :func:`make_blocks`, :func:`stack_relative_bias`, :func:`make_final_norm`,
  :func:`make_output_head`: a stack's blocks, its T5 table (one per stack, shared by its
  layers, as in T5), its final norm (pre-norm stacks) and its untied output projection.
* :class:`DecoderStack`: tokens -> embedding -> causal blocks (optionally with
  cross-attention) -> final norm -> float32 logits, with or without a :class:`KVCache`.
  :class:`attention_jax.nn.TransformerLM` is a decoder stack with its own embedding;
  :class:`attention_jax.nn.EncoderDecoder` runs one after its encoder.

Shape letters: ``B`` batch, ``T`` length, ``S`` context length, ``D`` model width,
``V`` vocabulary, ``K`` key/value heads, ``H`` head dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from attention_jax._checks import check_int, check_int_in, describe, int_array
from attention_jax._checks import positions as checked_positions
from attention_jax.nn.block import TransformerBlock, make_norm
from attention_jax.nn.cache import KVCache
from attention_jax.nn.checks import check_cache, check_seq_lengths, check_tokens
from attention_jax.nn.config import TransformerConfig
from attention_jax.nn.dense import Dense
from attention_jax.nn.embedding import Embedder
from attention_jax.nn.positional import T5RelativeBias

__all__ = [
    "DecoderStack",
    "make_blocks",
    "make_final_norm",
    "make_output_head",
    "stack_relative_bias",
]


def stack_relative_bias(
    config: TransformerConfig, *, bidirectional: bool, rngs: nnx.Rngs
) -> T5RelativeBias | None:
    """The T5 table ``[t5_num_buckets, N]`` of a stack (None unless ``positional="t5"``);
    the stack passes it to every block as ``bias_fn``."""
    if config.positional != "t5":
        return None
    return T5RelativeBias(
        config.num_heads,
        config.t5_num_buckets,
        config.t5_max_distance,
        bidirectional,
        rngs=rngs,
        param_dtype=config.param_dtype,
    )


def make_blocks(
    config: TransformerConfig, num_layers: int, *, cross_attention: bool = False, rngs: nnx.Rngs
) -> nnx.List:
    """``num_layers`` blocks built by :meth:`TransformerBlock.from_config`."""
    return nnx.List(
        [
            TransformerBlock.from_config(
                config, cross_attention=cross_attention, layer_index=i, rngs=rngs
            )
            for i in range(num_layers)
        ]
    )


def make_final_norm(config: TransformerConfig, rngs: nnx.Rngs):
    """The norm on top of a pre-norm stack (None for post-norm blocks, which end in one)."""
    if not config.prenorm:
        return None
    return make_norm(
        config.norm,
        config.d_model,
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        rngs=rngs,
        eps=config.norm_eps,
    )


def make_output_head(config: TransformerConfig, rngs: nnx.Rngs) -> Dense | None:
    """``[D, V]`` logits projection, or None when the logits use the token embedding."""
    if config.tie_embeddings:
        return None
    return Dense(
        config.d_model,
        config.vocab_size,
        use_bias=False,
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        rngs=rngs,
    )


class DecoderStack(nnx.Module):
    """Causal blocks between a token embedding and the logits.

    :meth:`forward`: tokens ``[B, T]`` -> ``embedder`` (+ learned/sinusoidal encoding at
    ``positions``) -> ``num_layers`` causal :class:`TransformerBlock` (RoPE/ALiBi inside
    attention, the stack's T5 table as ``bias_fn``, cross-attention to a context when built
    with ``cross_attention=True``) -> final norm (pre-norm) -> float32 logits ``[B, T, V]``
    (``x E^T`` when tied, else :attr:`head`).

    The embedder is an argument, not a part: the LM owns its own and the encoder-decoder
    shares one between encoder and decoder.

    Args:
      config: :class:`TransformerConfig`.
      num_layers: number of blocks.
      cross_attention: blocks with a cross-attention sub-layer (decoder of a seq2seq model).
      rngs: ``nnx.Rngs``.

    Attributes:
      relative_bias: the stack's causal :class:`T5RelativeBias` (``positional="t5"``) or None.
      blocks: ``nnx.List`` of :class:`TransformerBlock`.
      final_norm: the norm of a pre-norm stack, or None.
      head: untied ``[D, V]`` projection, or None.
    """

    def __init__(
        self,
        config: TransformerConfig,
        num_layers: int,
        *,
        cross_attention: bool = False,
        rngs: nnx.Rngs,
    ):
        self.config = config
        self.relative_bias = stack_relative_bias(config, bidirectional=False, rngs=rngs)
        self.blocks = make_blocks(config, num_layers, cross_attention=cross_attention, rngs=rngs)
        self.final_norm = make_final_norm(config, rngs)
        self.head = make_output_head(config, rngs)

    def init_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty :class:`KVCache`: per layer the cache of its attention
        (:meth:`MultiHeadAttention.init_cache`: ``k, v`` zeros ``[batch_size, max_len, K, H]``
        in ``config.dtype``, or MLA's latent cache) and ``length = 0`` (int32 scalar).

        Args:
          batch_size: ``B``.
          max_len: cache capacity ``S_max`` (default and upper bound: ``config.max_len``).
        """
        cfg = self.config
        fn = f"{type(self).__name__}.init_cache"
        batch_size = check_int(batch_size, "batch_size", fn=fn)
        if max_len is None:
            max_len = cfg.max_len
        max_len = check_int_in(
            max_len, "max_len", fn=fn, low=1, high=cfg.max_len, why=" (the model's max_len)"
        )
        return KVCache(
            tuple(
                block.attention.init_cache(batch_size, max_len, cfg.dtype) for block in self.blocks
            )
        )

    def logits(self, embedder: Embedder, x: jax.Array) -> jax.Array:
        """``x [B, T, D]`` -> float32 logits ``[B, T, V]`` (tied: ``x E^T``)."""
        logits = embedder.attend(x) if self.head is None else self.head(x)
        # Losses and sampling want float32 logits whatever the compute dtype.
        return logits.astype(jnp.float32)

    def forward(
        self,
        embedder: Embedder,
        tokens: jax.Array,
        *,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        query_seq_lengths: jax.Array | None = None,
        key_value_seq_lengths: jax.Array | None = None,
        context: jax.Array | None = None,
        context_key_values: tuple[tuple[jax.Array, jax.Array], ...] | None = None,
        context_seq_lengths: jax.Array | None = None,
        cache: KVCache | None = None,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
        sow_weights: bool = False,
        logits_to_keep: jax.Array | None = None,
        fn: str = "DecoderStack.forward",
        name: str = "tokens",
    ):
        """Causal forward pass, full or incremental; the arguments are checked here, with
        messages naming ``fn`` (the model method the user called) and ``name`` (its tokens).

        Args:
          embedder: the token :class:`Embedder` (also the tied output projection).
          tokens: ``[B, T]`` int ids (``T <= max_len``).
          positions: ``[T]`` or ``[B, T]`` int positions (default ``arange(T)``, or
            ``cache.length + arange(T)`` with a cache).
          segment_ids: ``[B, T]`` packed sequences (not with a cache).
          query_seq_lengths: ``[B]``: padded query rows of every attention output zeros.
          key_value_seq_lengths: ``[B]``: padded self-attention keys are masked (not with a
            cache, whose filled length masks its empty slots).
          context: ``[B, S, D]`` cross-attention context (encoder output), or
          context_key_values: per layer the precomputed cross-attention ``(k, v)``
            ``[B, S, K, H]``.
          context_seq_lengths: ``[B]`` unpadded context lengths.
          cache: optional :class:`KVCache` (:meth:`init_cache`): the ``T`` tokens are
            processed at positions ``cache.length ..`` against everything cached.
          deterministic, rngs, sow_weights, logits_to_keep: see
            :meth:`attention_jax.nn.TransformerLM.__call__`.
          fn, name: the caller's and its tokens' names, for error messages.

        Returns:
          float32 logits ``[B, T, V]`` (``[B, P, V]`` with ``logits_to_keep``); with a cache,
          ``(logits, new_cache)``.
        """
        cfg = self.config
        tokens = check_tokens(
            tokens, name, fn=fn, max_len=None if cache is not None else cfg.max_len
        )
        batch, length = tokens.shape
        if cache is not None:
            check_cache(cache, fn=fn, num_layers=len(self.blocks), batch=batch, length=length)
            for arg, value in (
                ("segment_ids", segment_ids),
                ("key_value_seq_lengths", key_value_seq_lengths),
            ):
                if value is not None:
                    raise ValueError(f"{fn}: {arg} must be None with a cache, got {value!r}.")
            if positions is None:
                positions = cache.length + jnp.arange(length, dtype=jnp.int32)
        positions = checked_positions(positions, "positions", fn=fn, batch=batch, length=length)
        query_seq_lengths = check_seq_lengths(
            query_seq_lengths, "query_seq_lengths", fn=fn, batch=batch
        )
        key_value_seq_lengths = check_seq_lengths(
            key_value_seq_lengths, "key_value_seq_lengths", fn=fn, batch=batch
        )
        context_seq_lengths = check_seq_lengths(
            context_seq_lengths, "context_seq_lengths", fn=fn, batch=batch
        )
        if logits_to_keep is not None:
            logits_to_keep = int_array(logits_to_keep, "logits_to_keep", fn=fn)
            if logits_to_keep.ndim != 2 or logits_to_keep.shape[0] != batch:
                raise ValueError(
                    f"{fn}: logits_to_keep must be of shape [B, P] with B={batch}, got "
                    f"{describe(logits_to_keep)}."
                )
        embed_positions = jnp.arange(length, dtype=jnp.int32) if positions is None else positions
        x = embedder(tokens, embed_positions, deterministic=deterministic, rngs=rngs)
        new_layers = []
        first_values = None
        for i, block in enumerate(self.blocks):
            out = block(
                x,
                context=context,
                context_key_value=None if context_key_values is None else context_key_values[i],
                context_seq_lengths=context_seq_lengths,
                is_causal=True,
                positions=positions,
                segment_ids=segment_ids,
                query_seq_lengths=query_seq_lengths,
                key_value_seq_lengths=key_value_seq_lengths,
                bias_fn=self.relative_bias,
                cache=None if cache is None else cache.layer(i),
                first_values=first_values,
                return_values=cfg.value_residual and i == 0,
                deterministic=deterministic,
                rngs=rngs,
                sow_weights=sow_weights,
            )
            out = out if isinstance(out, tuple) else (out,)
            x = out[0]
            if cache is not None:
                new_layers.append(out[1])
            if cfg.value_residual and i == 0:
                first_values = out[-1]
        if self.final_norm is not None:
            x = self.final_norm(x)
        if logits_to_keep is not None:  # the head's cost then scales with P, not T
            x = jnp.take_along_axis(x, logits_to_keep[..., None], axis=1, mode="clip")
        logits = self.logits(embedder, x)
        return logits if cache is None else (logits, KVCache.from_layers(new_layers))
