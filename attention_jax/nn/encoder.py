"""The bidirectional Transformer encoder and the sequence classifier built on it.

Shape letters: ``B`` batch, ``T`` length, ``D`` model width, ``C`` classes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from attention_jax._checks import bool_array, describe
from attention_jax._checks import positions as checked_positions
from attention_jax.attention import attention_pool
from attention_jax.nn.checks import check_seq_lengths, check_tokens
from attention_jax.nn.config import CAUSAL_ONLY_ATTENTION, TransformerConfig
from attention_jax.nn.dense import Dense
from attention_jax.nn.embedding import Embedder
from attention_jax.nn.stack import make_blocks, make_final_norm, stack_relative_bias

__all__ = ["TransformerClassifier", "TransformerEncoder"]


def padding_pieces(batch: int, length: int, lengths, padding_mask, *, fn: str):
    """Key padding as the core's ``key_value_seq_lengths`` (from ``lengths [B]``) and/or a
    dense ``[B, 1, 1, T]`` mask (from ``padding_mask [B, T]``, True = token), plus the
    ``[B, T]`` validity of each position (for pooling)."""
    valid = jnp.ones((batch, length), bool)
    mask = None
    lengths = check_seq_lengths(lengths, "lengths", fn=fn, batch=batch)
    if lengths is not None:
        valid = valid & (jnp.arange(length)[None, :] < lengths[:, None])
    if padding_mask is not None:
        padding_mask = bool_array(padding_mask, "padding_mask", fn=fn, hint=" (True = token)")
        if padding_mask.shape != (batch, length):
            raise ValueError(
                f"{fn}: padding_mask must be of shape [B, T]=({batch}, {length}), got "
                f"{describe(padding_mask)}."
            )
        valid = valid & padding_mask
        mask = padding_mask[:, None, None, :]
    return lengths, mask, valid


class TransformerEncoder(nnx.Module):
    """Bidirectional Transformer encoder with padding masks (BERT-style, no output head).

    tokens ``[B, T]`` -> embedding -> ``num_layers`` :class:`TransformerBlock` (a
    bidirectional T5 table shared by the layers; ``config.local_window_size`` as a window)
    -> final norm (pre-norm) -> ``[B, T, D]``.

    Args:
      config: :class:`TransformerConfig` (``num_layers`` blocks).
      rngs: ``nnx.Rngs``.
    """

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        for kind in (config.attention, *(config.layer_attention or ())):
            if kind in CAUSAL_ONLY_ATTENTION:
                raise ValueError(
                    f"{type(self).__name__}: attention must not be {kind!r} in a "
                    f"bidirectional encoder (it is defined causally), got {kind!r}."
                )
        self.config = config
        self.embedder = Embedder(config, rngs=rngs)
        self.relative_bias = stack_relative_bias(config, bidirectional=True, rngs=rngs)
        self.blocks = make_blocks(config, config.num_layers, rngs=rngs)
        self.final_norm = make_final_norm(config, rngs)

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
        fn = "TransformerEncoder.encode"
        batch, length = x.shape[:2]
        positions = checked_positions(positions, "positions", fn=fn, batch=batch, length=length)
        lengths, mask, _ = padding_pieces(batch, length, lengths, padding_mask, fn=fn)
        first_values = None
        value_residual = self.config.value_residual
        for i, block in enumerate(self.blocks):
            x = block(
                x,
                mask=mask,
                positions=positions,
                segment_ids=segment_ids,
                key_value_seq_lengths=lengths,
                bias_fn=self.relative_bias,
                first_values=first_values,
                return_values=value_residual and i == 0,
                deterministic=deterministic,
                rngs=rngs,
                sow_weights=sow_weights,
            )
            if value_residual and i == 0:
                x, first_values = x
        return x if self.final_norm is None else self.final_norm(x)

    def __call__(
        self,
        tokens: jax.Array,
        *,
        lengths: jax.Array | None = None,
        padding_mask: jax.Array | None = None,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        token_types: jax.Array | None = None,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
        sow_weights: bool = False,
    ) -> jax.Array:
        """Encodes ``tokens``; padded keys are masked in every layer.

        Args:
          tokens: ``[B, T]`` int.
          lengths: ``[B]`` int unpadded lengths (right padding; the attention's
            ``key_value_seq_lengths``), or
          padding_mask: ``[B, T]`` bool, True = real token (any padding layout).
          positions: ``[T]`` or ``[B, T]`` (default ``arange(T)``).
          segment_ids: ``[B, T]`` packed sequences.
          token_types: ``[B, T]`` int in ``[0, type_vocab_size)`` (BERT's sentence A/B), with
            ``config.type_vocab_size > 0``.
          deterministic, rngs, sow_weights: as in :meth:`TransformerLM.__call__`.

        Returns:
          ``[B, T, D]`` hidden states (in ``config.dtype``). Rows at padded positions are
          computed but meaningless; unpadded rows do not depend on padded tokens.
        """
        fn = "TransformerEncoder"
        tokens = check_tokens(tokens, "tokens", fn=fn, max_len=self.config.max_len)
        lengths = check_seq_lengths(lengths, "lengths", fn=fn, batch=tokens.shape[0])
        length = tokens.shape[1]
        positions = checked_positions(
            positions, "positions", fn=fn, batch=tokens.shape[0], length=length
        )
        embed_positions = jnp.arange(length, dtype=jnp.int32) if positions is None else positions
        if token_types is not None:
            if not self.config.type_vocab_size:
                raise ValueError(
                    f"{fn}: token_types needs config.type_vocab_size > 0, got token_types "
                    f"{describe(token_types)}."
                )
            token_types = check_tokens(
                token_types, "token_types", fn=fn, max_len=self.config.max_len
            )
            if token_types.shape != tokens.shape:
                raise ValueError(
                    f"{fn}: token_types must have the shape of tokens {tuple(tokens.shape)}, "
                    f"got {describe(token_types)}."
                )
        x = self.embedder(
            tokens,
            embed_positions,
            token_types=token_types,
            deterministic=deterministic,
            rngs=rngs,
        )
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
            raise ValueError(
                "TransformerClassifier: config.num_classes must be an int >= 1, got None."
            )
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
        self.head = Dense(
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
        fn = "TransformerClassifier"
        cfg = self.config
        if cfg.pooling == "cls":
            why = " (max_len - 1: pooling='cls' prepends a token)"
            tokens = check_tokens(tokens, "tokens", fn=fn, max_len=cfg.max_len - 1, why=why)
        else:
            tokens = check_tokens(tokens, "tokens", fn=fn, max_len=cfg.max_len)
        batch, length = tokens.shape
        lengths, _, valid = padding_pieces(batch, length, lengths, padding_mask, fn=fn)
        embedder = self.encoder.embedder
        positions = jnp.arange(length, dtype=jnp.int32)
        if cfg.pooling == "cls":
            positions = positions + 1  # the CLS token sits at position 0
        x = embedder(tokens, positions, deterministic=deterministic, rngs=rngs)
        if cfg.pooling == "cls":
            cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (batch, 1, cfg.d_model))
            cls = embedder.add_positions(cls, jnp.zeros((1,), jnp.int32))
            x = jnp.concatenate([cls, x], axis=1)
            positions = jnp.arange(length + 1, dtype=jnp.int32)
            if lengths is not None:
                lengths = lengths + 1
            if padding_mask is not None:
                padding_mask = jnp.concatenate(
                    [jnp.ones((batch, 1), bool), jnp.asarray(padding_mask)], axis=1
                )
        h = self.encoder.encode(
            x,
            positions=positions if cfg.pooling == "cls" else None,
            lengths=lengths,
            padding_mask=padding_mask,
            deterministic=deterministic,
            rngs=rngs,
            sow_weights=sow_weights,
        )
        if cfg.pooling == "cls":
            pooled = h[:, 0]
        elif cfg.pooling == "mean":
            w = valid.astype(jnp.float32)[..., None]
            pooled = jnp.sum(h.astype(jnp.float32) * w, 1) / jnp.maximum(jnp.sum(w, 1), 1.0)
            pooled = pooled.astype(h.dtype)
        else:
            pooled = attention_pool(h, self.pool_query[...].astype(h.dtype), mask=valid)
        return self.head(pooled).astype(jnp.float32)
