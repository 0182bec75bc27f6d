"""Token embedding with absolute positions, and the (tied) output projection."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from attention_jax.nn.block import make_norm
from attention_jax.nn.config import TransformerConfig
from attention_jax.nn.positional import LearnedPositionalEmbedding
from attention_jax.positional import sinusoidal_encoding

__all__ = ["Embedder"]


class Embedder(nnx.Module):
    """Token embedding ``E [V, D]`` plus the absolute position encoding of ``config``.

    ``"learned"`` adds a :class:`attention_jax.nn.LearnedPositionalEmbedding` row and
    ``"sinusoidal"`` :func:`attention_jax.sinusoidal_encoding` at ``positions``; the other
    kinds act inside attention and add nothing here. :meth:`attend` gives logits ``x E^T``
    (tied output embedding).

    Args:
      config: :class:`TransformerConfig`.
      rngs: ``nnx.Rngs``.
    """

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.token = nnx.Embed(
            config.vocab_size,
            config.d_model,
            dtype=config.dtype,
            param_dtype=config.param_dtype,
            rngs=rngs,
        )
        self.position = (
            LearnedPositionalEmbedding(
                config.max_len, config.d_model, rngs=rngs, param_dtype=config.param_dtype
            )
            if config.positional == "learned"
            else None
        )
        self.token_type = (
            nnx.Embed(
                config.type_vocab_size,
                config.d_model,
                dtype=config.dtype,
                param_dtype=config.param_dtype,
                rngs=rngs,
            )
            if config.type_vocab_size
            else None
        )
        self.norm = (
            make_norm(
                config.norm,
                config.d_model,
                dtype=config.dtype,
                param_dtype=config.param_dtype,
                rngs=rngs,
                eps=config.norm_eps,
                fn="Embedder",
            )
            if config.embedding_norm
            else None
        )
        self.dropout = nnx.Dropout(config.dropout, rngs=rngs)

    def __call__(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        *,
        token_types: jax.Array | None = None,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:
        """``tokens [B, T]``, ``positions [T]`` or ``[B, T]`` (and ``token_types [B, T]``
        with ``config.type_vocab_size``; default all 0) -> ``[B, T, D]`` in ``dtype``."""
        x = self.token(tokens)
        if self.config.scale_embeddings:
            x = x * jnp.asarray(math.sqrt(self.config.d_model), x.dtype)
        x = self.add_positions(x, positions)
        if self.token_type is not None:
            types = jnp.zeros(tokens.shape, jnp.int32) if token_types is None else token_types
            x = x + self.token_type(types).astype(x.dtype)
        if self.norm is not None:
            x = self.norm(x)
        return self.dropout(x, deterministic=deterministic, rngs=rngs)

    def add_positions(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        """Adds the absolute encoding at ``positions`` to ``x [B, T, D]`` (identity for the
        kinds that act inside attention)."""
        cfg = self.config
        if cfg.positional == "learned":
            x = x + self.position(positions).astype(x.dtype)
        elif cfg.positional == "sinusoidal":
            x = x + sinusoidal_encoding(positions, cfg.d_model).astype(x.dtype)
        return x

    def attend(self, x: jax.Array) -> jax.Array:
        """``x [B, T, D]`` -> logits ``[B, T, V]`` against the token embedding."""
        return self.token.attend(x)
