"""A Transformer block: attention, optional cross-attention and an MLP, with residuals."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

from attention_jax._checks import check_choice, check_int, check_rate, describe
from attention_jax.nn.attention import MultiHeadAttention
from attention_jax.nn.cache import LayerCache
from attention_jax.nn.config import LINEAR_ATTENTION, NORMS, AttentionConfig, TransformerConfig
from attention_jax.nn.linear_attention import LinearAttention
from attention_jax.nn.mlp import MLP

__all__ = ["TransformerBlock", "cross_attention_config", "make_norm"]

# The attention variants' fields; a cross-attention layer resets them to these defaults.
_VARIANT_DEFAULTS = dict(
    attention="softmax",
    kv_latent_dim=None,
    rope_head_dim=None,
    sinks=False,
    attention_gate=None,
    value_residual=False,
    talking_heads=False,
    conv_size=None,
    linear_gate_activation="silu",
)


def cross_attention_config(config: AttentionConfig) -> AttentionConfig:
    """The cross-attention of a block whose self-attention is ``config``: softmax attention
    with the same heads and numerics, without positional encoding, window or variant (the
    variants are defined for self-attention over one sequence)."""
    return dataclasses.replace(
        config, positional="none", local_window_size=None, **_VARIANT_DEFAULTS
    )


def make_norm(
    kind: str,
    features: int,
    *,
    dtype: Any,
    param_dtype: Any,
    rngs: nnx.Rngs,
    eps: float = 1e-6,
    fn: str = "make_norm",
):
    """``nnx.LayerNorm`` (``"layernorm"``) or ``nnx.RMSNorm`` (``"rmsnorm"``) over the last
    axis of ``[..., features]``, with ``eps`` added to the variance."""
    check_choice(kind, "norm", NORMS, fn=fn)
    cls = nnx.LayerNorm if kind == "layernorm" else nnx.RMSNorm
    return cls(features, epsilon=eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


class TransformerBlock(nnx.Module):
    """Self-attention, optional cross-attention (decoder of an encoder-decoder) and an MLP.

    Pre-norm (default): ``x + drop(f(norm(x)))`` per sub-layer (the model adds a final norm).
    Post-norm (Vaswani et al. 2017): ``norm(x + drop(f(x)))``.

    Args:
      d_model: ``D``.
      attention_config: :class:`AttentionConfig` of the self-attention. The cross-attention
        (when present) is softmax attention with the same options but no positional
        encoding, window or variant (:func:`cross_attention_config`), and the norms and MLP
        take its ``dtype``, ``param_dtype`` and ``use_bias``.
      layer_index: the block's depth in its stack, from 0 (differential attention's
        ``lambda_init`` and the value residual depend on it).
      mlp_hidden: MLP hidden width (default ``4 * D``).
      mlp: ``"gelu"``, ``"swiglu"``, ``"relu"`` or ``"none"`` (no MLP sub-layer).
      norm: ``"layernorm"`` or ``"rmsnorm"``.
      norm_eps: the norms' epsilon.
      prenorm: pre-norm (True) or post-norm (False).
      cross_attention: add a cross-attention sub-layer.
      dropout: residual dropout rate (attention-weight dropout is
        ``attention_config.attention_dropout``).
      rngs: ``nnx.Rngs``.
    """

    def __init__(
        self,
        d_model: int,
        attention_config: AttentionConfig,
        *,
        mlp_hidden: int | None = None,
        mlp: str = "gelu",
        norm: str = "layernorm",
        norm_eps: float = 1e-6,
        prenorm: bool = True,
        cross_attention: bool = False,
        dropout: float = 0.0,
        layer_index: int = 0,
        rngs: nnx.Rngs,
    ):
        fn = "TransformerBlock"
        d_model = check_int(d_model, "d_model", fn=fn)
        if not isinstance(attention_config, AttentionConfig):
            raise TypeError(
                f"{fn}: attention_config must be an AttentionConfig, got "
                f"{describe(attention_config)}."
            )
        mlp_hidden = 4 * d_model if mlp_hidden is None else mlp_hidden
        mlp_hidden = check_int(mlp_hidden, "mlp_hidden", fn=fn)
        dropout = check_rate(dropout, "dropout", fn=fn)
        cfg = attention_config
        self.prenorm = prenorm
        norm_kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs, eps=norm_eps, fn=fn)
        self.attention_norm = make_norm(norm, d_model, **norm_kw)
        layer = LinearAttention if cfg.attention in LINEAR_ATTENTION else MultiHeadAttention
        self.attention = layer(d_model, cfg, layer_index=layer_index, rngs=rngs)
        if cross_attention:
            self.cross_attention_norm = make_norm(norm, d_model, **norm_kw)
            self.cross_attention = MultiHeadAttention(
                d_model, cross_attention_config(cfg), rngs=rngs
            )
        else:
            self.cross_attention_norm = self.cross_attention = None
        if mlp == "none":  # attention-only blocks (Zoology's MQAR models)
            self.mlp_norm = self.mlp = None
        else:
            self.mlp_norm = make_norm(norm, d_model, **norm_kw)
            self.mlp = MLP(
                d_model,
                mlp_hidden,
                kind=mlp,
                use_bias=cfg.use_bias,
                dtype=cfg.dtype,
                param_dtype=cfg.param_dtype,
                rngs=rngs,
            )
        self.dropout = nnx.Dropout(dropout, rngs=rngs)

    @classmethod
    def from_config(
        cls,
        config: TransformerConfig,
        *,
        cross_attention: bool = False,
        layer_index: int = 0,
        rngs: nnx.Rngs,
    ) -> TransformerBlock:
        """A block of a model built from ``config`` (attention: ``config.attention_config``).

        RoPE and ALiBi live in each block's self-attention; a T5 table is shared by the
        stack (the model passes it as ``bias_fn``), so the block's attention gets ``"none"``.
        """
        attention = config.layer_attention_config(layer_index)
        if attention.positional == "t5":
            attention = dataclasses.replace(attention, positional="none")
        return cls(
            config.d_model,
            attention,
            mlp_hidden=config.mlp_hidden,
            mlp=config.mlp,
            norm=config.norm,
            norm_eps=config.norm_eps,
            prenorm=config.prenorm,
            cross_attention=cross_attention,
            dropout=config.dropout,
            layer_index=layer_index,
            rngs=rngs,
        )

    def _residual(self, x, norm, f, deterministic, rngs):
        """One sub-layer with its residual; ``f`` may return ``(y, *aux)`` (aux: a tuple)."""
        y = f(norm(x) if self.prenorm else x)
        y, aux = (y[0], y[1:]) if isinstance(y, tuple) else (y, None)
        x = x + self.dropout(y, deterministic=deterministic, rngs=rngs)
        return (x if self.prenorm else norm(x)), aux

    def __call__(
        self,
        x: jax.Array,
        *,
        context: jax.Array | None = None,
        context_key_value: tuple[jax.Array, jax.Array] | None = None,
        context_seq_lengths: jax.Array | None = None,
        mask: jax.Array | None = None,
        is_causal: bool = False,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        query_seq_lengths: jax.Array | None = None,
        key_value_seq_lengths: jax.Array | None = None,
        bias_fn: Callable | None = None,
        cache: LayerCache | None = None,
        first_values: jax.Array | None = None,
        return_values: bool = False,
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
          context_seq_lengths: ``[B]`` unpadded context lengths (the cross-attention's
            ``key_value_seq_lengths``).
          mask: self-attention mask broadcastable to ``[B, N, T, S]``.
          is_causal: causal self-attention.
          positions: ``[T]`` or ``[B, T]`` int positions of ``x`` (the self-attention's
            ``query_positions``; its keys sit at the same positions); with
            ``positional="rope_2d"`` the ``(row, col)`` pairs ``[T, 2]`` or ``[B, T, 2]``.
          segment_ids: ``[B, T]`` packed sequences (self-attention).
          query_seq_lengths: ``[B]``: padded query rows of both attentions output zeros.
          key_value_seq_lengths: ``[B]``: padded self-attention keys are masked.
          bias_fn, cache, first_values, return_values: self-attention options (see
            :meth:`MultiHeadAttention.__call__`; ``return_values`` appends the
            self-attention's values to the result).
          deterministic: no dropout when True.
          rngs: dropout randomness (default: the modules' own streams).
          sow_weights: sow attention weights (self-attention as ``attention.attention_weights``,
            cross-attention as ``cross_attention.attention_weights``).

        Returns:
          ``[B, T, D]``; with a cache, ``(output, new_cache)``; with ``return_values`` the
          values appended.
        """

        def self_attention(h):
            return self.attention(
                h,
                mask=mask,
                is_causal=is_causal,
                query_positions=positions,
                segment_ids=segment_ids,
                query_seq_lengths=query_seq_lengths,
                key_value_seq_lengths=key_value_seq_lengths,
                bias_fn=bias_fn,
                cache=cache,
                first_values=first_values,
                return_values=return_values,
                deterministic=deterministic,
                rngs=rngs,
                sow_weights=sow_weights,
            )

        x, extra = self._residual(x, self.attention_norm, self_attention, deterministic, rngs)
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
                    query_seq_lengths=query_seq_lengths,
                    key_value_seq_lengths=context_seq_lengths,
                    deterministic=deterministic,
                    rngs=rngs,
                    sow_weights=sow_weights,
                )

            x, _ = self._residual(
                x, self.cross_attention_norm, cross_attention, deterministic, rngs
            )
        if self.mlp is not None:
            x, _ = self._residual(x, self.mlp_norm, self.mlp, deterministic, rngs)
        return x if extra is None else (x, *extra)
