"""A Transformer block: attention, optional cross-attention and an MLP, with residuals."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from attention_jax.nn.attention import MultiHeadAttention
from attention_jax.nn.cache import AttentionCache
from attention_jax.nn.config import TransformerConfig
from attention_jax.nn.mlp import MLP
from attention_jax.positional import RopeScaling

__all__ = ["TransformerBlock", "make_norm"]


def make_norm(kind: str, features: int, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
    """``nnx.LayerNorm`` or ``nnx.RMSNorm`` over the last axis."""
    if kind == "layernorm":
        return nnx.LayerNorm(features, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    if kind == "rmsnorm":
        return nnx.RMSNorm(features, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    raise ValueError(f"norm must be 'layernorm' or 'rmsnorm', got {kind!r}.")


class TransformerBlock(nnx.Module):
    """Self-attention, optional cross-attention (decoder of an encoder-decoder) and an MLP.

    Pre-norm (default): ``x + drop(f(norm(x)))`` per sub-layer (the model adds a final norm).
    Post-norm (Vaswani et al. 2017): ``norm(x + drop(f(x)))``.

    Args:
      d_model: ``D``.
      num_heads, num_kv_heads, head_dim: attention heads (see :class:`MultiHeadAttention`).
      mlp_hidden: MLP hidden width (default ``4 * D``).
      mlp: ``"gelu"``, ``"swiglu"`` or ``"relu"``.
      norm: ``"layernorm"`` or ``"rmsnorm"``.
      prenorm: pre-norm (True) or post-norm (False).
      cross_attention: add a cross-attention sub-layer (no positional encoding of its own).
      positional: positional option of the self-attention (``"none"``, ``"rope"``,
        ``"alibi"``, ``"t5"``).
      rope_base, rope_fraction, rope_scaling, t5_bidirectional, t5_num_buckets,
        t5_max_distance, normalizer, softcap, qk_norm, use_bias, implementation: passed to
        both attentions.
      dropout_rate: residual dropout.
      attention_dropout_rate: attention-weight dropout.
      dtype, param_dtype: computation and parameter dtypes.
      rngs: ``nnx.Rngs``.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        *,
        num_kv_heads: int | None = None,
        head_dim: int | None = None,
        mlp_hidden: int | None = None,
        mlp: str = "gelu",
        norm: str = "layernorm",
        prenorm: bool = True,
        cross_attention: bool = False,
        positional: str = "none",
        rope_base: float = 10000.0,
        rope_fraction: float = 1.0,
        rope_scaling: RopeScaling | None = None,
        t5_bidirectional: bool = True,
        t5_num_buckets: int = 32,
        t5_max_distance: int = 128,
        normalizer: str | Callable = "softmax",
        softcap: float | None = None,
        qk_norm: bool = False,
        use_bias: bool = False,
        dropout_rate: float = 0.0,
        attention_dropout_rate: float = 0.0,
        implementation: str | None = None,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.prenorm = prenorm
        attention = dict(
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            normalizer=normalizer,
            softcap=softcap,
            qk_norm=qk_norm,
            use_bias=use_bias,
            dropout_rate=attention_dropout_rate,
            implementation=implementation,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        norm_kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.attention_norm = make_norm(norm, d_model, **norm_kw)
        self.attention = MultiHeadAttention(
            d_model,
            num_heads,
            positional=positional,
            rope_base=rope_base,
            rope_fraction=rope_fraction,
            rope_scaling=rope_scaling,
            t5_bidirectional=t5_bidirectional,
            t5_num_buckets=t5_num_buckets,
            t5_max_distance=t5_max_distance,
            **attention,
        )
        if cross_attention:
            self.cross_attention_norm = make_norm(norm, d_model, **norm_kw)
            self.cross_attention = MultiHeadAttention(d_model, num_heads, **attention)
        else:
            self.cross_attention_norm = self.cross_attention = None
        self.mlp_norm = make_norm(norm, d_model, **norm_kw)
        self.mlp = MLP(
            d_model,
            4 * d_model if mlp_hidden is None else mlp_hidden,
            kind=mlp,
            use_bias=use_bias,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)

    @classmethod
    def from_config(
        cls,
        config: TransformerConfig,
        *,
        cross_attention: bool = False,
        rngs: nnx.Rngs,
    ) -> TransformerBlock:
        """A block of a model built from ``config``.

        RoPE and ALiBi live in each block's self-attention; a T5 table is shared by the
        stack (the model passes it as ``bias_fn``), so the block's attention gets ``"none"``.
        """
        positional = config.positional if config.positional in ("rope", "alibi") else "none"
        return cls(
            config.d_model,
            config.num_heads,
            num_kv_heads=config.num_kv_heads,
            head_dim=config.head_dim,
            mlp_hidden=config.mlp_hidden,
            mlp=config.mlp,
            norm=config.norm,
            prenorm=config.prenorm,
            cross_attention=cross_attention,
            positional=positional,
            rope_base=config.rope_base,
            rope_fraction=config.rope_fraction,
            rope_scaling=config.rope_scaling,
            normalizer=config.normalizer,
            softcap=config.softcap,
            qk_norm=config.qk_norm,
            use_bias=config.use_bias,
            dropout_rate=config.dropout,
            attention_dropout_rate=config.attention_dropout,
            implementation=config.implementation,
            dtype=config.dtype,
            param_dtype=config.param_dtype,
            rngs=rngs,
        )

    def _residual(self, x, norm, f, deterministic, rngs):
        """One sub-layer with its residual; ``f`` may return ``(y, aux)``."""
        y = f(norm(x) if self.prenorm else x)
        y, aux = y if isinstance(y, tuple) else (y, None)
        x = x + self.dropout(y, deterministic=deterministic, rngs=rngs)
        return (x if self.prenorm else norm(x)), aux

    def __call__(
        self,
        x: jax.Array,
        *,
        context: jax.Array | None = None,
        context_key_value: tuple[jax.Array, jax.Array] | None = None,
        context_lengths: jax.Array | None = None,
        mask: jax.Array | None = None,
        is_causal: bool = False,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        key_value_seq_lengths: jax.Array | None = None,
        bias_fn: Callable | None = None,
        cache: AttentionCache | None = None,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
        sow_weights: bool = False,
    ):
        """Applies the block.

        Args:
          x: ``[B, T, D]``.
          context: ``[B, S, D]`` encoder output for cross-attention (cross-attention blocks).
          context_key_value: precomputed cross-attention ``(k, v)`` ``[B, S, K, H]`` instead
            of ``context``.
          context_lengths: ``[B]`` unpadded context lengths (cross-attention padding).
          mask, is_causal, positions, segment_ids, key_value_seq_lengths, bias_fn, cache:
            self-attention options (see :meth:`MultiHeadAttention.__call__`).
          deterministic: no dropout when True.
          rngs: dropout randomness (default: the modules' own streams).
          sow_weights: sow attention weights (self-attention as ``attention.attention_weights``,
            cross-attention as ``cross_attention.attention_weights``).

        Returns:
          ``[B, T, D]``; with a cache, ``(output, new_cache)``.
        """

        def self_attention(h):
            return self.attention(
                h,
                mask=mask,
                is_causal=is_causal,
                positions=positions,
                segment_ids=segment_ids,
                key_value_seq_lengths=key_value_seq_lengths,
                bias_fn=bias_fn,
                cache=cache,
                deterministic=deterministic,
                rngs=rngs,
                sow_weights=sow_weights,
            )

        x, new_cache = self._residual(x, self.attention_norm, self_attention, deterministic, rngs)
        if self.cross_attention is not None:
            if context is None and context_key_value is None:
                raise ValueError(
                    "TransformerBlock: a cross-attention block needs context or context_key_value."
                )

            def cross_attention(h):
                return self.cross_attention(
                    h,
                    context,
                    context_key_value=context_key_value,
                    key_value_seq_lengths=context_lengths,
                    deterministic=deterministic,
                    rngs=rngs,
                    sow_weights=sow_weights,
                )

            x, _ = self._residual(
                x, self.cross_attention_norm, cross_attention, deterministic, rngs
            )
        x, _ = self._residual(x, self.mlp_norm, self.mlp, deterministic, rngs)
        return x if cache is None else (x, new_cache)
