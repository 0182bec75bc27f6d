"""Transformer models: decoder-only LM, encoder (+ classifier) and the 2017 encoder-decoder.

All models take a :class:`TransformerConfig` and explicit integer ``positions``; decoding
state lives in an explicit cache pytree (:mod:`attention_jax.nn.cache`) that calls take and
return.

Shape letters: ``B`` batch, ``T`` (target) length, ``S`` source length, ``D`` model width,
``V`` vocabulary, ``C`` classes, ``K`` key/value heads, ``H`` head dim.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from attention_jax.attention import attention_pool
from attention_jax.nn.block import TransformerBlock, make_norm
from attention_jax.nn.cache import EncoderDecoderCache, KVCache, init_kv_cache
from attention_jax.nn.config import TransformerConfig
from attention_jax.nn.embedding import Embedder
from attention_jax.nn.positional import T5RelativeBias

__all__ = ["EncoderDecoder", "TransformerClassifier", "TransformerEncoder", "TransformerLM"]


# ----------------------------------------------------------------------------- helpers


def _check_tokens(tokens, name: str) -> jax.Array:
    tokens = jnp.asarray(tokens)
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise TypeError(f"{name} must be an integer array [B, T], got dtype {tokens.dtype}.")
    if tokens.ndim != 2:
        raise ValueError(f"{name} must be [B, T], got shape {tokens.shape}.")
    return tokens


def _check_length(length: int, max_len: int, name: str) -> None:
    if length > max_len:
        raise ValueError(f"{name} has length {length}, longer than max_len={max_len}.")


def _concrete_int(x) -> int | None:
    """``int(x)`` when ``x`` is concrete, None when it is traced."""
    try:
        return int(x)
    except (jax.errors.ConcretizationTypeError, TypeError):
        return None


def _check_cache(cache: KVCache, num_layers: int, batch: int, length: int, owner: str) -> None:
    if not isinstance(cache, KVCache):
        raise TypeError(f"{owner}: cache must be a KVCache, got {type(cache).__name__}.")
    if cache.num_layers != num_layers:
        raise ValueError(f"{owner}: cache has {cache.num_layers} layers, the model {num_layers}.")
    if cache.key[0].shape[0] != batch:
        raise ValueError(
            f"{owner}: cache batch size {cache.key[0].shape[0]} != tokens batch size {batch}."
        )
    filled = _concrete_int(cache.length)
    # Under jit the filled length is traced and cannot be checked here; dynamic_update_slice
    # would then clamp, so jitted callers (generate) check the total length up front.
    if length > cache.capacity or (filled is not None and filled + length > cache.capacity):
        raise ValueError(
            f"{owner}: {length} new tokens do not fit in the cache: filled "
            f"{'?' if filled is None else filled} of {cache.capacity} slots."
        )


def _stack_bias(config: TransformerConfig, *, bidirectional: bool, rngs: nnx.Rngs):
    """One T5 table per stack, shared by its layers (as in T5)."""
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


def _blocks(config, num_layers, *, cross_attention=False, rngs):
    return nnx.List(
        [
            TransformerBlock.from_config(config, cross_attention=cross_attention, rngs=rngs)
            for _ in range(num_layers)
        ]
    )


def _final_norm(config: TransformerConfig, rngs: nnx.Rngs):
    # Post-norm blocks end in a norm already; pre-norm stacks need one at the top.
    if not config.prenorm:
        return None
    return make_norm(
        config.norm,
        config.d_model,
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        rngs=rngs,
    )


def _output_head(config: TransformerConfig, rngs: nnx.Rngs):
    if config.tie_embeddings:
        return None
    return nnx.Linear(
        config.d_model,
        config.vocab_size,
        use_bias=False,
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        rngs=rngs,
    )


def _logits(embedder: Embedder, head, x: jax.Array) -> jax.Array:
    logits = embedder.attend(x) if head is None else head(x)
    # Losses and sampling want float32 logits whatever the compute dtype.
    return logits.astype(jnp.float32)


def _run_decoder_blocks(blocks, x, cache: KVCache | None, *, cross=None, **kwargs):
    """Runs causal blocks, threading one :class:`AttentionCache` per layer when cached.

    ``cross`` is None or a per-layer function ``i -> dict`` of cross-attention arguments.
    """
    new_layers = []
    for i, block in enumerate(blocks):
        extra = {} if cross is None else cross(i)
        layer_cache = None if cache is None else cache.layer(i)
        out = block(x, is_causal=True, cache=layer_cache, **extra, **kwargs)
        if cache is None:
            x = out
        else:
            x, layer_cache = out
            new_layers.append(layer_cache)
    return x, (None if cache is None else KVCache.from_layers(new_layers))


# ------------------------------------------------------------------------ decoder LM


class TransformerLM(nnx.Module):
    """Decoder-only causal language model (GPT-style), logits tied to the token embedding
    by default.

    tokens ``[B, T]`` -> embedding (+ learned/sinusoidal encoding at ``positions``) ->
    ``num_layers`` causal :class:`TransformerBlock` (RoPE/ALiBi inside attention, a T5 table
    shared by the layers) -> final norm (pre-norm) -> logits ``[B, T, V]`` (float32).

    Args:
      config: :class:`TransformerConfig`.
      rngs: ``nnx.Rngs`` (``params``; ``dropout`` when ``config.dropout > 0``).
    """

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.embedder = Embedder(config, rngs=rngs)
        self.relative_bias = _stack_bias(config, bidirectional=False, rngs=rngs)
        self.blocks = _blocks(config, config.num_layers, rngs=rngs)
        self.final_norm = _final_norm(config, rngs)
        self.head = _output_head(config, rngs)

    def init_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty :class:`KVCache`: per layer ``k, v`` zeros ``[batch_size, max_len, K, H]``
        in ``config.dtype`` and ``length = 0`` (int32 scalar).

        Args:
          batch_size: ``B``.
          max_len: cache capacity ``S_max`` (default and upper bound: ``config.max_len``).
        """
        cfg = self.config
        max_len = cfg.max_len if max_len is None else max_len
        _check_length(max_len, cfg.max_len, "init_cache(max_len=...)")
        return init_kv_cache(
            num_layers=cfg.num_layers,
            batch_size=batch_size,
            max_len=max_len,
            num_kv_heads=cfg.kv_heads,
            head_dim=cfg.head_size,
            dtype=cfg.dtype,
        )

    def __call__(
        self,
        tokens: jax.Array,
        *,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        cache: KVCache | None = None,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
        sow_weights: bool = False,
    ):
        """Causal forward pass, full or incremental.

        Args:
          tokens: ``[B, T]`` int token ids (``T <= max_len``; see :func:`validate_tokens` to
            check ids).
          positions: ``[T]`` or ``[B, T]`` int positions (default ``arange(T)``, or
            ``cache.length + arange(T)`` with a cache). Packed sequences restart them per
            segment.
          segment_ids: ``[B, T]`` int: packed sequences attend within their segment only
            (not with a cache).
          cache: optional :class:`KVCache` from :meth:`init_cache`. The ``T`` tokens are
            processed at positions ``cache.length ..`` against everything cached (a prefill
            when ``T > 1``, one decoding step when ``T == 1``).
          deterministic: disable dropout (default). Training passes ``False``.
          rngs: dropout randomness (default: the modules' own ``dropout`` streams).
          sow_weights: sow every layer's attention weights (``nnx.Intermediate``
            ``"attention_weights"``; collect with ``nnx.capture(model, nnx.Intermediate)``).

        Returns:
          Without a cache: float32 logits ``[B, T, V]``. With a cache: ``(logits, new_cache)``,
          ``new_cache.length == cache.length + T``.

        Raises:
          ValueError: ``T > max_len``, tokens that do not fit in the cache (checked when the
            cache length is concrete), segment ids with a cache.
        """
        cfg = self.config
        tokens = _check_tokens(tokens, "tokens")
        batch, length = tokens.shape
        if cache is None:
            _check_length(length, cfg.max_len, "tokens")
            embed_positions = (
                jnp.arange(length, dtype=jnp.int32) if positions is None else positions
            )
        else:
            _check_cache(cache, cfg.num_layers, batch, length, "TransformerLM")
            if segment_ids is not None:
                raise ValueError("TransformerLM: segment_ids are not supported with a cache.")
            if positions is None:
                positions = cache.length + jnp.arange(length, dtype=jnp.int32)
            embed_positions = positions
        x = self.embedder(tokens, embed_positions, deterministic=deterministic, rngs=rngs)
        x, cache = _run_decoder_blocks(
            self.blocks,
            x,
            cache,
            positions=positions,
            segment_ids=segment_ids,
            bias_fn=self.relative_bias,
            deterministic=deterministic,
            rngs=rngs,
            sow_weights=sow_weights,
        )
        if self.final_norm is not None:
            x = self.final_norm(x)
        logits = _logits(self.embedder, self.head, x)
        return logits if cache is None else (logits, cache)


# --------------------------------------------------------------------------- encoder


def _padding_pieces(batch, length, lengths, padding_mask):
    """Key padding as the core's ``key_value_seq_lengths`` and/or a dense ``[B, 1, 1, T]``
    mask, plus the ``[B, T]`` validity of each position (for pooling)."""
    valid = jnp.ones((batch, length), bool)
    mask = None
    if lengths is not None:
        lengths = jnp.asarray(lengths)
        if lengths.shape != (batch,) or not jnp.issubdtype(lengths.dtype, jnp.integer):
            raise ValueError(f"lengths must be an int array [B]=({batch},), got {lengths.shape}.")
        valid = valid & (jnp.arange(length)[None, :] < lengths[:, None])
    if padding_mask is not None:
        padding_mask = jnp.asarray(padding_mask)
        if padding_mask.shape != (batch, length) or padding_mask.dtype != jnp.bool_:
            raise ValueError(
                f"padding_mask must be boolean [B, T]=({batch}, {length}) with True = token, "
                f"got {padding_mask.dtype} {padding_mask.shape}."
            )
        valid = valid & padding_mask
        mask = padding_mask[:, None, None, :]
    return lengths, mask, valid


class TransformerEncoder(nnx.Module):
    """Bidirectional Transformer encoder with padding masks (BERT-style, no output head).

    Args:
      config: :class:`TransformerConfig` (``num_layers`` blocks).
      rngs: ``nnx.Rngs``.
    """

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.embedder = Embedder(config, rngs=rngs)
        self.relative_bias = _stack_bias(config, bidirectional=True, rngs=rngs)
        self.blocks = _blocks(config, config.num_layers, rngs=rngs)
        self.final_norm = _final_norm(config, rngs)

    def encode(
        self,
        x: jax.Array,
        *,
        positions: jax.Array | None = None,
        lengths: jax.Array | None = None,
        padding_mask: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
        sow_weights: bool = False,
    ) -> jax.Array:
        """Runs the blocks on embedded inputs ``x [B, T, D]`` (see :meth:`__call__`)."""
        batch, length = x.shape[:2]
        lengths, mask, _ = _padding_pieces(batch, length, lengths, padding_mask)
        for block in self.blocks:
            x = block(
                x,
                mask=mask,
                positions=positions,
                segment_ids=segment_ids,
                key_value_seq_lengths=lengths,
                bias_fn=self.relative_bias,
                deterministic=deterministic,
                rngs=rngs,
                sow_weights=sow_weights,
            )
        return x if self.final_norm is None else self.final_norm(x)

    def __call__(
        self,
        tokens: jax.Array,
        *,
        lengths: jax.Array | None = None,
        padding_mask: jax.Array | None = None,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
        sow_weights: bool = False,
    ) -> jax.Array:
        """Encodes ``tokens``; padded keys are masked in every layer.

        Args:
          tokens: ``[B, T]`` int.
          lengths: ``[B]`` int unpadded lengths (right padding), or
          padding_mask: ``[B, T]`` bool, True = real token (any padding layout).
          positions: ``[T]`` or ``[B, T]`` (default ``arange(T)``).
          segment_ids: ``[B, T]`` packed sequences.
          deterministic, rngs, sow_weights: as in :meth:`TransformerLM.__call__`.

        Returns:
          ``[B, T, D]`` hidden states (in ``config.dtype``). Rows at padded positions are
          computed but meaningless; unpadded rows do not depend on padded tokens.
        """
        tokens = _check_tokens(tokens, "tokens")
        _check_length(tokens.shape[1], self.config.max_len, "tokens")
        embed_positions = (
            jnp.arange(tokens.shape[1], dtype=jnp.int32) if positions is None else positions
        )
        x = self.embedder(tokens, embed_positions, deterministic=deterministic, rngs=rngs)
        return self.encode(
            x,
            positions=positions,
            lengths=lengths,
            padding_mask=padding_mask,
            segment_ids=segment_ids,
            deterministic=deterministic,
            rngs=rngs,
            sow_weights=sow_weights,
        )


class TransformerClassifier(nnx.Module):
    """Sequence classifier: :class:`TransformerEncoder`, pooling, linear head.

    ``config.pooling``: ``"cls"`` prepends a learned vector at position 0 (tokens move to
    positions ``1..T``, so ``T + 1 <= max_len``) and classifies its output; ``"mean"``
    averages unpadded outputs; ``"attention"`` pools them with
    :func:`attention_jax.attention_pool` and a learned query.

    Args:
      config: :class:`TransformerConfig` with ``num_classes`` set.
      rngs: ``nnx.Rngs``.
    """

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        if config.num_classes is None:
            raise ValueError("TransformerClassifier: config.num_classes must be set.")
        self.config = config
        self.encoder = TransformerEncoder(config, rngs=rngs)
        init = nnx.initializers.normal(stddev=0.02)
        shape, pdt = (config.d_model,), config.param_dtype
        self.cls_token = (
            nnx.Param(init(rngs.params(), shape, pdt)) if config.pooling == "cls" else None
        )
        self.pool_query = (
            nnx.Param(init(rngs.params(), shape, pdt)) if config.pooling == "attention" else None
        )
        self.head = nnx.Linear(
            config.d_model,
            config.num_classes,
            dtype=config.dtype,
            param_dtype=config.param_dtype,
            rngs=rngs,
        )

    def __call__(
        self,
        tokens: jax.Array,
        *,
        lengths: jax.Array | None = None,
        padding_mask: jax.Array | None = None,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
        sow_weights: bool = False,
    ) -> jax.Array:
        """``tokens [B, T]`` (padding given by ``lengths [B]`` or ``padding_mask [B, T]``)
        -> float32 class logits ``[B, C]``."""
        cfg = self.config
        tokens = _check_tokens(tokens, "tokens")
        batch, length = tokens.shape
        embedder = self.encoder.embedder
        if cfg.pooling == "cls":
            _check_length(length + 1, cfg.max_len, "tokens plus the CLS token")
            positions = jnp.arange(1, length + 1, dtype=jnp.int32)
            x = embedder(tokens, positions, deterministic=deterministic, rngs=rngs)
            cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (batch, 1, cfg.d_model))
            cls = embedder.add_positions(cls, jnp.zeros((1,), jnp.int32))
            x = jnp.concatenate([cls, x], axis=1)
            if lengths is not None:
                lengths = jnp.asarray(lengths) + 1
            if padding_mask is not None:
                padding_mask = jnp.concatenate(
                    [jnp.ones((batch, 1), bool), jnp.asarray(padding_mask)], axis=1
                )
            h = self.encoder.encode(
                x,
                positions=jnp.arange(length + 1, dtype=jnp.int32),
                lengths=lengths,
                padding_mask=padding_mask,
                deterministic=deterministic,
                rngs=rngs,
                sow_weights=sow_weights,
            )
            pooled = h[:, 0]
        else:
            _, _, valid = _padding_pieces(batch, length, lengths, padding_mask)
            h = self.encoder(
                tokens,
                lengths=lengths,
                padding_mask=padding_mask,
                deterministic=deterministic,
                rngs=rngs,
                sow_weights=sow_weights,
            )
            if cfg.pooling == "mean":
                w = valid.astype(jnp.float32)[..., None]
                pooled = jnp.sum(h.astype(jnp.float32) * w, 1) / jnp.maximum(jnp.sum(w, 1), 1.0)
                pooled = pooled.astype(h.dtype)
            else:
                pooled = attention_pool(h, self.pool_query[...].astype(h.dtype), mask=valid)
        return self.head(pooled).astype(jnp.float32)


# ------------------------------------------------------------------- encoder-decoder


class EncoderDecoder(nnx.Module):
    """The encoder-decoder Transformer of Vaswani et al. (2017) for seq2seq tasks.

    Source and target share the token embedding (and, tied, the output projection). The
    encoder is a :class:`TransformerEncoder` with ``config.encoder_layers`` blocks; the
    decoder has ``config.decoder_layers`` causal blocks with cross-attention to the encoder
    output (masked by ``src_lengths``; no positional encoding in cross-attention). For the
    2017 architecture use ``positional="sinusoidal", prenorm=False, norm="layernorm",
    mlp="relu", scale_embeddings=True``.

    Args:
      config: :class:`TransformerConfig`.
      rngs: ``nnx.Rngs``.
    """

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.encoder = TransformerEncoder(
            dataclasses.replace(config, num_layers=config.encoder_layers), rngs=rngs
        )
        self.decoder_bias = _stack_bias(config, bidirectional=False, rngs=rngs)
        self.decoder_blocks = _blocks(
            config, config.decoder_layers, cross_attention=True, rngs=rngs
        )
        self.decoder_norm = _final_norm(config, rngs)
        self.head = _output_head(config, rngs)

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
        max_len = cfg.max_len if max_len is None else max_len
        _check_length(max_len, cfg.max_len, "init_cache(max_len=...)")
        src_tokens = _check_tokens(src_tokens, "src_tokens")
        batch, src_len = src_tokens.shape
        memory = self.encode(src_tokens, src_lengths=src_lengths)
        cross = [block.cross_attention.project_key_value(memory) for block in self.decoder_blocks]
        if src_lengths is None:
            src_lengths = jnp.full((batch,), src_len, jnp.int32)
        decoder = init_kv_cache(
            num_layers=cfg.decoder_layers,
            batch_size=batch,
            max_len=max_len,
            num_kv_heads=cfg.kv_heads,
            head_dim=cfg.head_size,
            dtype=cfg.dtype,
        )
        return EncoderDecoderCache(
            decoder,
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
        cfg = self.config
        tgt_tokens = _check_tokens(tgt_tokens, "tgt_tokens")
        batch, length = tgt_tokens.shape
        if cache is None:
            if memory is None:
                raise ValueError("EncoderDecoder.decode: pass memory (encoder output) or a cache.")
            _check_length(length, cfg.max_len, "tgt_tokens")
            embed_positions = (
                jnp.arange(length, dtype=jnp.int32) if positions is None else positions
            )

            def cross(i):
                return dict(context=memory, context_lengths=src_lengths)

            self_cache = None
        else:
            if not isinstance(cache, EncoderDecoderCache):
                raise TypeError(
                    f"EncoderDecoder: cache must be an EncoderDecoderCache, got {type(cache).__name__}."
                )
            _check_cache(cache.decoder, cfg.decoder_layers, batch, length, "EncoderDecoder")
            if positions is None:
                positions = cache.length + jnp.arange(length, dtype=jnp.int32)
            embed_positions = positions

            def cross(i):
                return dict(
                    context_key_value=(cache.cross_key[i], cache.cross_value[i]),
                    context_lengths=cache.src_lengths,
                )

            self_cache = cache.decoder
        x = self.embedder(tgt_tokens, embed_positions, deterministic=deterministic, rngs=rngs)
        x, self_cache = _run_decoder_blocks(
            self.decoder_blocks,
            x,
            self_cache,
            cross=cross,
            positions=positions,
            bias_fn=self.decoder_bias,
            deterministic=deterministic,
            rngs=rngs,
            sow_weights=sow_weights,
        )
        if self.decoder_norm is not None:
            x = self.decoder_norm(x)
        logits = _logits(self.embedder, self.head, x)
        if cache is None:
            return logits
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
