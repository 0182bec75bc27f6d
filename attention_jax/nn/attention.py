"""Multi-head attention as an NNX module: projections and positional wiring around
:func:`attention_jax.dot_product_attention`.

The module owns parameters only; masking, the normalizer, softcapping and dropout of the
weights all happen in the functional core, so there is one attention implementation. Its
options are one :class:`attention_jax.nn.AttentionConfig`.

Shape letters: ``B`` batch, ``T`` queries, ``S`` keys, ``D`` features, ``N`` query heads,
``K`` key/value heads, ``H`` head dim.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from attention_jax._checks import check_int, describe, float_array
from attention_jax.attention import dot_product_attention
from attention_jax.nn.cache import AttentionCache
from attention_jax.nn.config import AttentionConfig
from attention_jax.nn.positional import T5RelativeBias
from attention_jax.positional import alibi_bias, alibi_slopes, apply_rope

__all__ = ["MultiHeadAttention"]


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

    Positional options (``config.positional``):

    * ``"none"``: no position information here (absolute encodings live in the embedding).
    * ``"rope"``: :func:`attention_jax.apply_rope` on q at ``query_positions`` and on k at
      the key positions.
    * ``"alibi"``: ``bias_fn = partial(alibi_bias, alibi_slopes(num_heads))``.
    * ``"t5"``: a learned :class:`attention_jax.nn.T5RelativeBias` table owned by this
      layer, used as ``bias_fn``. (Models that share one table across layers, as T5 does,
      build this module with ``"none"`` and pass the shared table as ``bias_fn`` at call time.)

    Two ways to build one::

        config = AttentionConfig(num_heads=4, head_dim=16, num_kv_heads=2, positional="rope")
        mha = MultiHeadAttention(64, config, rngs=nnx.Rngs(0))
        # or, with head_dim defaulting to in_features // num_heads:
        mha = MultiHeadAttention.create(64, 4, num_kv_heads=2, positional="rope", rngs=...)

    Args:
      in_features: ``D`` of the queries' input ``x``.
      config: :class:`attention_jax.nn.AttentionConfig`, every attention option.
      out_features: output features (default ``in_features``).
      context_features: features of the cross-attention context (default ``in_features``).
      rngs: ``nnx.Rngs`` (``params``; a ``dropout`` stream is kept when
        ``config.attention_dropout > 0``).
    """

    def __init__(
        self,
        in_features: int,
        config: AttentionConfig,
        *,
        out_features: int | None = None,
        context_features: int | None = None,
        rngs: nnx.Rngs,
    ):
        fn = "MultiHeadAttention"
        in_features = check_int(in_features, "in_features", fn=fn)
        if not isinstance(config, AttentionConfig):
            raise TypeError(
                f"{fn}: config must be an AttentionConfig, got {describe(config)} (keyword "
                "options go to MultiHeadAttention.create(in_features, num_heads, ...))."
            )
        out_features = in_features if out_features is None else out_features
        context_features = in_features if context_features is None else context_features
        self.config = config
        self.in_features = in_features
        self.out_features = check_int(out_features, "out_features", fn=fn)
        context_features = check_int(context_features, "context_features", fn=fn)

        n, k, h = config.num_heads, config.num_kv_heads, config.head_dim
        kw = dict(
            use_bias=config.use_bias,
            dtype=config.dtype,
            param_dtype=config.param_dtype,
            rngs=rngs,
        )
        self.query = nnx.Linear(in_features, n * h, **kw)
        self.key = nnx.Linear(context_features, k * h, **kw)
        self.value = nnx.Linear(context_features, k * h, **kw)
        self.out = nnx.Linear(n * h, out_features, **kw)
        if config.qk_norm:
            norm = dict(dtype=config.dtype, param_dtype=config.param_dtype, rngs=rngs)
            self.q_norm = nnx.RMSNorm(h, **norm)
            self.k_norm = nnx.RMSNorm(h, **norm)
        else:
            self.q_norm = self.k_norm = None
        self.relative_bias = (
            T5RelativeBias(
                n,
                config.t5_num_buckets,
                config.t5_max_distance,
                config.t5_bidirectional,
                rngs=rngs,
                param_dtype=config.param_dtype,
            )
            if config.positional == "t5"
            else None
        )
        # Attention dropout draws its keys from here unless a call passes `rngs`.
        self.dropout_rngs = rngs["dropout"].fork() if config.attention_dropout > 0 else None

    @classmethod
    def create(
        cls,
        in_features: int,
        num_heads: int,
        *,
        head_dim: int | None = None,
        out_features: int | None = None,
        context_features: int | None = None,
        rngs: nnx.Rngs,
        **options,
    ) -> MultiHeadAttention:
        """A layer from keyword options: ``options`` are the other
        :class:`AttentionConfig` fields (``num_kv_heads``, ``positional``, ``qk_norm``,
        ``attention_dropout``, ...); ``head_dim`` defaults to ``in_features // num_heads``,
        which must divide evenly.

        Raises:
          ValueError: an unknown option or a broken rule, naming ``MultiHeadAttention.create``.
        """
        fn = "MultiHeadAttention.create"
        in_features = check_int(in_features, "in_features", fn=fn)
        num_heads = check_int(num_heads, "num_heads", fn=fn)
        if head_dim is None:
            if in_features % num_heads:
                raise ValueError(
                    f"{fn}: in_features must be divisible by num_heads={num_heads} when "
                    f"head_dim is None, got {in_features}."
                )
            head_dim = in_features // num_heads
        config = AttentionConfig.checked(fn, num_heads=num_heads, head_dim=head_dim, **options)
        return cls(
            in_features,
            config,
            out_features=out_features,
            context_features=context_features,
            rngs=rngs,
        )

    @property
    def num_heads(self) -> int:
        """``N``."""
        return self.config.num_heads

    @property
    def num_kv_heads(self) -> int:
        """``K``."""
        return self.config.num_kv_heads

    @property
    def head_dim(self) -> int:
        """``H``."""
        return self.config.head_dim

    @property
    def positional(self) -> str:
        """``config.positional``."""
        return self.config.positional

    # ------------------------------------------------------------------ pieces

    def _heads(self, y: jax.Array, heads: int) -> jax.Array:
        return y.reshape(*y.shape[:-1], heads, self.head_dim)

    def _rope(self, x: jax.Array, positions: jax.Array | None) -> jax.Array:
        if positions is None:
            positions = jnp.arange(x.shape[1], dtype=jnp.int32)
        cfg = self.config
        return apply_rope(
            x,
            positions,
            base=cfg.rope_base,
            fraction=cfg.rope_fraction,
            scaling=cfg.rope_scaling,
        )

    def project_query(self, x: jax.Array, query_positions: jax.Array | None = None) -> jax.Array:
        """``x [B, T, D]`` -> ``q [B, T, N, H]`` (QK-norm, then RoPE at ``query_positions``
        ``[T]`` or ``[B, T]``, default ``arange(T)``)."""
        q = self._heads(self.query(x), self.num_heads)
        if self.q_norm is not None:
            q = self.q_norm(q)
        if self.positional == "rope":
            q = self._rope(q, query_positions)
        return q

    def project_key_value(
        self, context: jax.Array, key_value_positions: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """``context [B, S, D_c]`` -> ``(k, v)``, each ``[B, S, K, H]``.

        QK-norm and RoPE (at ``key_value_positions`` ``[S]`` or ``[B, S]``, default
        ``arange(S)``) are applied to ``k``, so the result is exactly what attention
        consumes: cross-attention over a fixed context computes it once and passes it as
        ``context_key_value``.
        """
        k = self._heads(self.key(context), self.num_kv_heads)
        v = self._heads(self.value(context), self.num_kv_heads)
        if self.k_norm is not None:
            k = self.k_norm(k)
        if self.positional == "rope":
            k = self._rope(k, key_value_positions)
        return k, v

    def bias_fn(self, extra: Callable | None = None) -> Callable | None:
        """The ``bias_fn(query_positions, key_value_positions)`` passed to the core: this
        layer's ALiBi/T5 bias plus ``extra`` (``[N, T, S]`` or, for ``[B, T]`` positions,
        ``[B, N, T, S]``)."""
        fns = []
        if self.positional == "alibi":
            slopes = alibi_slopes(self.num_heads)
            fns.append(lambda q, k: alibi_bias(slopes, q, k))
        elif self.positional == "t5":
            fns.append(self.relative_bias)
        if extra is not None:
            fns.append(extra)
        return _sum_bias_fns(fns)

    def init_cache(self, batch_size: int, max_len: int, dtype: Any = None) -> AttentionCache:
        """An empty self-attention cache ``[batch_size, max_len, K, H]`` with length 0.

        ``dtype`` defaults to ``config.dtype`` (float32 when None); keys and values are cast
        to it when written.
        """
        fn = "MultiHeadAttention.init_cache"
        batch_size = check_int(batch_size, "batch_size", fn=fn)
        max_len = check_int(max_len, "max_len", fn=fn)
        if dtype is None:
            dtype = jnp.float32 if self.config.dtype is None else self.config.dtype
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
        query_positions: jax.Array | None = None,
        key_value_positions: jax.Array | None = None,
        segment_ids: jax.Array | tuple[jax.Array, jax.Array] | None = None,
        query_seq_lengths: jax.Array | None = None,
        key_value_seq_lengths: jax.Array | None = None,
        bias_fn: Callable | None = None,
        cache: AttentionCache | None = None,
        deterministic: bool = True,
        rngs: nnx.Rngs | jax.Array | None = None,
        sow_weights: bool = False,
    ):
        """Attends from ``x`` to itself, to ``context``, or to a cache.

        The sliding window is ``config.local_window_size``.

        Args:
          x: ``[B, T, D]`` queries' input.
          context: optional ``[B, S, D_c]``: cross-attention to it.
          context_key_value: optional precomputed ``(k, v)`` ``[B, S, K, H]`` of the context
            (:meth:`project_key_value`), e.g. once per generation for encoder-decoder decoding.
          mask: optional boolean mask broadcastable to ``[B, N, T, S]`` (True = attend;
            ``S = S_max`` with a cache).
          is_causal: keys at later positions than the query are masked (positions, not
            indices, are compared, so it also holds for cached decoding).
          query_positions: ``[T]`` or ``[B, T]`` int positions of ``x`` (default
            ``arange(T)``, or ``cache.length + arange(T)`` with a cache); used by RoPE,
            ALiBi/T5, causality and the window. Self-attention keys sit at the same positions.
          key_value_positions: ``[S]`` or ``[B, S]`` positions of the context keys
            (cross-attention only; default ``arange(S)``).
          segment_ids: ``[B, T]`` (self-attention) or ``([B, T], [B, S])``: packed sequences.
          query_seq_lengths: ``[B]``; padded query rows output zeros.
          key_value_seq_lengths: ``[B]``; padded keys are masked. Not allowed with a cache
            (the cache supplies its filled length).
          bias_fn: an extra ``(query_positions, key_value_positions) -> [N, T, S]`` (or
            ``[B, N, T, S]``) bias added to this layer's own (e.g. a T5 table shared by the
            layers of a stack).
          cache: :class:`AttentionCache` (self-attention only). The new ``k, v`` are written
            at slots ``cache.length ..`` and the queries attend to all filled slots; slot
            ``i`` holds position ``i``, so custom ``query_positions`` must match the slots.
          deterministic: no attention dropout when True.
          rngs: ``nnx.Rngs``, ``RngStream`` or key for attention dropout (default: the
            module's own stream).
          sow_weights: sow the ``[B, N, T, S]`` float32 weights as
            ``nnx.Intermediate`` ``"attention_weights"`` (forces the materialized ``"xla"``
            path; collect them with ``nnx.capture``).

        Returns:
          ``[B, T, out_features]``; with a cache, the pair ``(output, new_cache)``.
        """
        fn = "MultiHeadAttention"
        cross = context is not None or context_key_value is not None
        if context is not None and context_key_value is not None:
            raise ValueError(f"{fn}: pass context or context_key_value, not both.")
        if cross and cache is not None:
            raise ValueError(
                f"{fn}: cache is for self-attention; cross-attention over a fixed context "
                "reuses context_key_value instead."
            )
        if not cross and key_value_positions is not None:
            raise ValueError(
                f"{fn}: key_value_positions is for cross-attention; self-attention keys sit "
                "at query_positions."
            )
        x = float_array(x, "x", fn=fn)
        if x.ndim != 3:
            raise ValueError(f"{fn}: x must be of shape [B, T, D], got {describe(x)}.")
        batch, length = x.shape[:2]
        if cache is not None:
            if key_value_seq_lengths is not None:
                raise ValueError(
                    f"{fn}: key_value_seq_lengths cannot be combined with a cache (the "
                    "cache's filled length masks the empty slots)."
                )
            if query_positions is None:
                query_positions = cache.length + jnp.arange(length, dtype=jnp.int32)

        q = self.project_query(x, query_positions)
        if cross:
            if context_key_value is None:
                context_key_value = self.project_key_value(context, key_value_positions)
            k, v = context_key_value
        else:
            k, v = self.project_key_value(x, query_positions)
            key_value_positions = query_positions
        if cache is not None:
            cache = cache.update(k, v)
            k, v = cache.key, cache.value
            key_value_positions = None  # slot index = position
            key_value_seq_lengths = jnp.broadcast_to(cache.length, (batch,))

        cfg = self.config
        attention_dropout, dropout_rng = 0.0, None
        if cfg.attention_dropout > 0 and not deterministic:
            attention_dropout = cfg.attention_dropout
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
            local_window_size=cfg.local_window_size,
            segment_ids=segment_ids,
            query_positions=query_positions,
            key_value_positions=key_value_positions,
            bias_fn=self.bias_fn(bias_fn),
            softcap=cfg.softcap,
            normalizer=cfg.normalizer,
            attention_dropout=attention_dropout,
            dropout_rng=dropout_rng,
            return_weights=sow_weights,
            implementation="xla" if sow_weights else cfg.implementation,
        )
        if sow_weights:
            out, weights = out
            self.sow(nnx.Intermediate, "attention_weights", weights)
        y = self.out(out.reshape(batch, length, self.num_heads * self.head_dim))
        return y if cache is None else (y, cache)
