"""Multi-head attention as an NNX module: projections and positional wiring around
:func:`attention_jax.dot_product_attention`.

The module owns parameters only; masking, the normalizer, softcapping and dropout of the
weights all happen in the functional core, so there is one attention implementation.

Shape letters: ``B`` batch, ``T`` queries, ``S`` keys, ``D`` features, ``N`` query heads,
``K`` key/value heads, ``H`` head dim.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from attention_jax.attention import dot_product_attention
from attention_jax.normalizers import get_normalizer
from attention_jax.nn.cache import AttentionCache
from attention_jax.nn.positional import T5RelativeBias
from attention_jax.positional import RopeScaling, rotary_dim, alibi_bias, alibi_slopes, apply_rope

__all__ = ["MultiHeadAttention", "POSITIONAL_IN_ATTENTION"]

POSITIONAL_IN_ATTENTION = ("none", "rope", "alibi", "t5")


def _check_int(value, name: str, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"MultiHeadAttention: {name} must be an int >= {minimum}, got {value!r}.")


def per_example_bias_fn(fn: Callable) -> Callable:
    """Lifts a ``bias_fn`` of 1-D positions (``[T]``, ``[S]``) to batched ``[B, T]`` ones.

    :func:`attention_jax.alibi_bias` and :func:`attention_jax.t5_relative_bias` take positions
    shared by the batch; packed sequences carry ``[B, T]`` positions, for which the bias is
    evaluated per example (``[B, N, T, S]``).
    """

    def bias_fn(q_positions, k_positions):
        if q_positions.ndim == 1 and k_positions.ndim == 1:
            return fn(q_positions, k_positions)
        b = q_positions.shape[0] if q_positions.ndim == 2 else k_positions.shape[0]
        q_positions = jnp.broadcast_to(q_positions, (b, q_positions.shape[-1]))
        k_positions = jnp.broadcast_to(k_positions, (b, k_positions.shape[-1]))
        return jax.vmap(fn)(q_positions, k_positions)

    return bias_fn


def _sum_bias_fns(fns: list[Callable]) -> Callable | None:
    if not fns:
        return None
    if len(fns) == 1:
        return fns[0]
    return lambda q, k: sum(fn(q, k) for fn in fns)


class MultiHeadAttention(nnx.Module):
    """Multi-head, grouped-query or multi-query attention (self or cross).

    ``q = x W_q`` is split into ``num_heads`` heads and ``k = c W_k``, ``v = c W_v`` into
    ``num_kv_heads`` heads (``c = x`` for self-attention, the ``context`` for
    cross-attention); groups of ``num_heads // num_kv_heads`` query heads share a key/value
    head. Optional RMSNorm on each q and k head (QK-norm) comes before RoPE.

    Positional options (``positional``):

    * ``"none"``: no position information here (absolute encodings live in the embedding).
    * ``"rope"``: :func:`attention_jax.apply_rope` on q at ``positions`` and k at the key
      positions.
    * ``"alibi"``: ``bias_fn = partial(alibi_bias, alibi_slopes(num_heads))``.
    * ``"t5"``: a learned :class:`attention_jax.nn.T5RelativeBias` table owned by this
      layer, used as ``bias_fn``. (Models that share one table across layers, as T5 does,
      build this module with ``"none"`` and pass the shared table as ``bias_fn`` at call time.)

    Args:
      in_features: ``D`` of the queries' input ``x``.
      num_heads: ``N``.
      num_kv_heads: ``K`` (default ``N``); ``N % K == 0``. ``K == 1`` is multi-query.
      head_dim: ``H`` (default ``in_features // num_heads``, which must divide evenly).
      out_features: output features (default ``in_features``).
      context_features: features of the cross-attention context (default ``in_features``).
      positional: ``"none"``, ``"rope"``, ``"alibi"`` or ``"t5"``.
      rope_base, rope_fraction, rope_scaling: passed to :func:`attention_jax.apply_rope`.
      t5_num_buckets, t5_max_distance, t5_bidirectional: the T5 table's configuration.
      normalizer: ``"softmax"``, ``"softmax_one"``, ``"sparsemax"``, ``"sigmoid"`` or a callable.
      softcap: optional logit softcap.
      qk_norm: RMSNorm over ``H`` on every q and k head.
      use_bias: biases in the four projections.
      dropout_rate: attention-weight dropout (inside the functional core).
      implementation: passed to :func:`attention_jax.dot_product_attention`.
      dtype: computation dtype of the projections (None: from inputs and params). With
        ``bfloat16`` the logits and softmax still run in float32 in the core.
      param_dtype: dtype of the parameters.
      rngs: ``nnx.Rngs`` (``params``; a ``dropout`` stream is kept when ``dropout_rate > 0``).
    """

    def __init__(
        self,
        in_features: int,
        num_heads: int,
        *,
        num_kv_heads: int | None = None,
        head_dim: int | None = None,
        out_features: int | None = None,
        context_features: int | None = None,
        positional: str = "none",
        rope_base: float = 10000.0,
        rope_fraction: float = 1.0,
        rope_scaling: RopeScaling | None = None,
        t5_num_buckets: int = 32,
        t5_max_distance: int = 128,
        t5_bidirectional: bool = True,
        normalizer: str | Callable = "softmax",
        softcap: float | None = None,
        qk_norm: bool = False,
        use_bias: bool = False,
        dropout_rate: float = 0.0,
        implementation: str | None = None,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        _check_int(in_features, "in_features")
        _check_int(num_heads, "num_heads")
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        _check_int(num_kv_heads, "num_kv_heads")
        if num_heads % num_kv_heads:
            raise ValueError(
                f"MultiHeadAttention: num_heads={num_heads} must be a multiple of "
                f"num_kv_heads={num_kv_heads}."
            )
        if head_dim is None:
            if in_features % num_heads:
                raise ValueError(
                    f"MultiHeadAttention: in_features={in_features} is not divisible by "
                    f"num_heads={num_heads}; pass head_dim explicitly."
                )
            head_dim = in_features // num_heads
        _check_int(head_dim, "head_dim")
        out_features = in_features if out_features is None else out_features
        context_features = in_features if context_features is None else context_features
        _check_int(out_features, "out_features")
        _check_int(context_features, "context_features")
        if positional not in POSITIONAL_IN_ATTENTION:
            raise ValueError(
                f"MultiHeadAttention: positional must be one of {POSITIONAL_IN_ATTENTION}, "
                f"got {positional!r}."
            )
        if positional == "rope":
            rotary_dim(head_dim, rope_fraction, "MultiHeadAttention")
        get_normalizer(normalizer, fn="MultiHeadAttention")
        if softcap is not None and not softcap > 0:
            raise ValueError(f"MultiHeadAttention: softcap must be None or > 0, got {softcap}.")
        if not 0.0 <= dropout_rate < 1.0:
            raise ValueError(
                f"MultiHeadAttention: dropout_rate must be in [0, 1), got {dropout_rate}."
            )

        self.in_features = in_features
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.out_features = out_features
        self.positional = positional
        self.rope_base = rope_base
        self.rope_fraction = rope_fraction
        self.rope_scaling = rope_scaling
        self.normalizer = normalizer
        self.softcap = softcap
        self.dropout_rate = dropout_rate
        self.implementation = implementation
        self.dtype = dtype

        def linear(din, dout):
            return nnx.Linear(
                din, dout, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs
            )

        self.query = linear(in_features, num_heads * head_dim)
        self.key = linear(context_features, num_kv_heads * head_dim)
        self.value = linear(context_features, num_kv_heads * head_dim)
        self.out = linear(num_heads * head_dim, out_features)
        if qk_norm:
            norm = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
            self.q_norm = nnx.RMSNorm(head_dim, **norm)
            self.k_norm = nnx.RMSNorm(head_dim, **norm)
        else:
            self.q_norm = self.k_norm = None
        self.relative_bias = (
            T5RelativeBias(
                num_heads,
                t5_num_buckets,
                t5_max_distance,
                t5_bidirectional,
                rngs=rngs,
                param_dtype=param_dtype,
            )
            if positional == "t5"
            else None
        )
        # Attention dropout draws its keys from here unless a call passes `rngs`.
        self.dropout_rngs = rngs["dropout"].fork() if dropout_rate > 0 else None

    # ------------------------------------------------------------------ pieces

    def _heads(self, y: jax.Array, heads: int) -> jax.Array:
        return y.reshape(*y.shape[:-1], heads, self.head_dim)

    def _rope(self, x: jax.Array, positions: jax.Array | None) -> jax.Array:
        if positions is None:
            positions = jnp.arange(x.shape[1], dtype=jnp.int32)
        return apply_rope(
            x,
            positions,
            base=self.rope_base,
            fraction=self.rope_fraction,
            scaling=self.rope_scaling,
        )

    def project_query(self, x: jax.Array, positions: jax.Array | None = None) -> jax.Array:
        """``x [B, T, D]`` -> ``q [B, T, N, H]`` (QK-norm, then RoPE at ``positions``)."""
        q = self._heads(self.query(x), self.num_heads)
        if self.q_norm is not None:
            q = self.q_norm(q)
        if self.positional == "rope":
            q = self._rope(q, positions)
        return q

    def project_key_value(
        self, context: jax.Array, positions: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """``context [B, S, D_c]`` -> ``(k, v)``, each ``[B, S, K, H]``.

        QK-norm and RoPE (at ``positions``, default ``arange(S)``) are applied to ``k``, so
        the result is exactly what attention consumes: cross-attention over a fixed context
        computes it once and passes it as ``context_key_value``.
        """
        k = self._heads(self.key(context), self.num_kv_heads)
        v = self._heads(self.value(context), self.num_kv_heads)
        if self.k_norm is not None:
            k = self.k_norm(k)
        if self.positional == "rope":
            k = self._rope(k, positions)
        return k, v

    def bias_fn(self, extra: Callable | None = None) -> Callable | None:
        """The ``bias_fn`` passed to the core: this layer's ALiBi/T5 bias plus ``extra``."""
        fns = []
        if self.positional == "alibi":
            fns.append(
                per_example_bias_fn(lambda q, k: alibi_bias(alibi_slopes(self.num_heads), q, k))
            )
        elif self.positional == "t5":
            fns.append(per_example_bias_fn(self.relative_bias))
        if extra is not None:
            fns.append(per_example_bias_fn(extra))
        return _sum_bias_fns(fns)

    def init_cache(self, batch_size: int, max_len: int, dtype: Any = None) -> AttentionCache:
        """An empty self-attention cache ``[batch_size, max_len, K, H]`` with length 0.

        ``dtype`` defaults to the module's ``dtype`` (float32 when None); it must equal the
        dtype of the queries the module computes.
        """
        dtype = dtype or self.dtype or jnp.float32
        shape = (batch_size, max_len, self.num_kv_heads, self.head_dim)
        return AttentionCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.int32(0))

    # ------------------------------------------------------------------ call

    def __call__(
        self,
        x: jax.Array,
        context: jax.Array | None = None,
        *,
        context_key_value: tuple[jax.Array, jax.Array] | None = None,
        mask: jax.Array | None = None,
        is_causal: bool = False,
        positions: jax.Array | None = None,
        context_positions: jax.Array | None = None,
        segment_ids: jax.Array | tuple[jax.Array, jax.Array] | None = None,
        query_seq_lengths: jax.Array | None = None,
        key_value_seq_lengths: jax.Array | None = None,
        local_window_size: int | tuple[int, int] | None = None,
        bias_fn: Callable | None = None,
        cache: AttentionCache | None = None,
        deterministic: bool = True,
        rngs: nnx.Rngs | jax.Array | None = None,
        sow_weights: bool = False,
    ):
        """Attends from ``x`` to itself, to ``context``, or to a cache.

        Args:
          x: ``[B, T, D]`` queries' input.
          context: optional ``[B, S, D_c]``: cross-attention to it.
          context_key_value: optional precomputed ``(k, v)`` ``[B, S, K, H]`` of the context
            (:meth:`project_key_value`), e.g. once per generation for encoder-decoder decoding.
          mask: optional boolean mask broadcastable to ``[B, N, T, S]`` (True = attend;
            ``S = S_max`` with a cache).
          is_causal: keys at later positions than the query are masked (positions, not
            indices, are compared, so it also holds for cached decoding).
          positions: ``[T]`` or ``[B, T]`` int positions of ``x`` (default ``arange(T)``, or
            ``cache.length + arange(T)`` with a cache); used by RoPE, ALiBi/T5, causality.
          context_positions: ``[S]`` or ``[B, S]`` positions of the context keys (default
            ``arange(S)``).
          segment_ids: ``[B, T]`` (self-attention) or ``([B, T], [B, S])``: packed sequences.
          query_seq_lengths: ``[B]``; padded query rows output zeros.
          key_value_seq_lengths: ``[B]``; padded keys are masked. Not allowed with a cache
            (the cache supplies its filled length).
          local_window_size: sliding window, as in the core.
          bias_fn: an extra ``(q_positions, k_positions) -> [N, T, S]`` bias added to this
            layer's own (e.g. a T5 table shared by the layers of a stack).
          cache: :class:`AttentionCache` (self-attention only). The new ``k, v`` are written
            at slots ``cache.length ..`` and the queries attend to all filled slots; slot
            ``i`` holds position ``i``, so custom ``positions`` must match the slots.
          deterministic: no attention dropout when True.
          rngs: ``nnx.Rngs``, ``RngStream`` or key for attention dropout (default: the
            module's own stream).
          sow_weights: sow the ``[B, N, T, S]`` float32 weights as
            ``nnx.Intermediate`` ``"attention_weights"`` (forces the materialized ``"xla"``
            path; collect them with ``nnx.capture``).

        Returns:
          ``[B, T, out_features]``; with a cache, the pair ``(output, new_cache)``.
        """
        cross = context is not None or context_key_value is not None
        if context is not None and context_key_value is not None:
            raise ValueError("MultiHeadAttention: pass context or context_key_value, not both.")
        if cross and cache is not None:
            raise ValueError(
                "MultiHeadAttention: cache is for self-attention; cross-attention over a "
                "fixed context reuses context_key_value instead."
            )
        if x.ndim != 3:
            raise ValueError(f"MultiHeadAttention: x must be [B, T, D], got {x.shape}.")
        batch, length = x.shape[:2]
        if cache is not None:
            if key_value_seq_lengths is not None:
                raise ValueError(
                    "MultiHeadAttention: key_value_seq_lengths cannot be combined with a cache "
                    "(the cache's filled length masks the empty slots)."
                )
            if positions is None:
                positions = cache.length + jnp.arange(length, dtype=jnp.int32)

        q = self.project_query(x, positions)
        if cross:
            if context_key_value is None:
                context_key_value = self.project_key_value(context, context_positions)
            k, v = context_key_value
            kv_positions = context_positions
        else:
            k, v = self.project_key_value(x, positions)
            kv_positions = positions
        if cache is not None:
            cache = cache.update(k, v)
            k, v = cache.key, cache.value
            kv_positions = None  # slot index = position
            key_value_seq_lengths = jnp.broadcast_to(cache.length, (batch,))

        dropout_rate, dropout_rng = 0.0, None
        if self.dropout_rate > 0 and not deterministic:
            dropout_rate = self.dropout_rate
            stream = self.dropout_rngs if rngs is None else rngs
            if isinstance(stream, nnx.Rngs):
                stream = stream["dropout"]
            dropout_rng = stream() if isinstance(stream, nnx.RngStream) else stream

        out = dot_product_attention(
            q,
            k,
            v,
            mask=mask,
            is_causal=is_causal,
            query_seq_lengths=query_seq_lengths,
            key_value_seq_lengths=key_value_seq_lengths,
            local_window_size=local_window_size,
            segment_ids=segment_ids,
            query_positions=positions,
            key_value_positions=kv_positions,
            bias_fn=self.bias_fn(bias_fn),
            softcap=self.softcap,
            normalizer=self.normalizer,
            dropout_rate=dropout_rate,
            dropout_rng=dropout_rng,
            return_weights=sow_weights,
            implementation="xla" if sow_weights else self.implementation,
        )
        if sow_weights:
            out, weights = out
            self.sow(nnx.Intermediate, "attention_weights", weights)
        y = self.out(out.reshape(batch, length, self.num_heads * self.head_dim))
        return y if cache is None else (y, cache)
