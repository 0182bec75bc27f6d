"""Multi-head attention as an NNX module: projections and positional wiring around
:func:`attention_jax.dot_product_attention`.

The module owns parameters only; masking, the normalizer, softcapping and dropout of the
weights all happen in the functional core, so there is one attention implementation. Its
options are one :class:`attention_jax.nn.AttentionConfig`, whose ``attention`` field picks
the variant (softmax, differential, forgetting, stick-breaking, multi-head latent) and whose
other fields add sinks, output gates, value residuals and talking heads around it.

Shape letters: ``B`` batch, ``T`` queries, ``S`` keys, ``D`` features, ``N`` query heads,
``K`` key/value heads, ``H`` head dim.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from attention_jax._checks import check_int, describe, float_array
from attention_jax.attention import dot_product_attention
from attention_jax.nn.cache import AttentionCache, LatentCache, LayerCache
from attention_jax.nn.checks import check_grid_positions
from attention_jax.nn.config import CAUSAL_ONLY_ATTENTION, AttentionConfig
from attention_jax.nn.dense import Dense
from attention_jax.nn.positional import T5RelativeBias
from attention_jax.parallel import DATA_AXIS, SEQUENCE_AXIS, context_parallel_attention
from attention_jax.positional import alibi_bias, alibi_slopes, apply_rope, apply_rope_2d
from attention_jax.variants import (
    differential_attention,
    forgetting_attention,
    stick_breaking_attention,
)

__all__ = ["MultiHeadAttention"]


def differential_lambda_init(layer_index: int) -> float:
    """``lambda_init = 0.8 - 0.6 exp(-0.3 layer_index)`` of Ye et al. 2024 (layers from 0)."""
    return 0.8 - 0.6 * math.exp(-0.3 * layer_index)


def _pad_last(x: jax.Array, size: int) -> jax.Array:
    """Zero-pads the last axis to ``size``: values narrower than the keys (MLA) ride along
    in the core call, which takes one head dim for both, and are sliced back afterwards."""
    return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, size - x.shape[-1])])


def _map_out(out, f: Callable):
    """``f`` on the output of a core call that may also carry weights ``(out, weights)``."""
    return (f(out[0]), out[1]) if isinstance(out, tuple) else f(out)


def _sequence_mesh(context_parallel: str | None, cached: bool):
    """The ambient mesh (``jax.set_mesh``) when this call should run context-parallel: a
    strategy is configured, no cache, and the mesh splits ``"sequence"`` over > 1 devices."""
    if context_parallel is None or cached:
        return None
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.shape.get(SEQUENCE_AXIS, 1) <= 1:
        return None
    return mesh


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
    * ``"rope_2d"`` (Heo et al. 2024, axial): :func:`attention_jax.apply_rope_2d` on q and k
      at 2-D positions: ``query_positions`` (and ``key_value_positions`` of a context) are
      then ``[T, 2]`` or ``[B, T, 2]`` ``(row, col)`` pairs, required, and the core sees the
      token indices as positions (masks, lengths and segment ids work as usual; a ``bias_fn``
      gets ``arange``). A grid has no causal order and no append-only decoding: ``is_causal``
      and caches raise.

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
        layer_index: int = 0,
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
        self.layer_index = check_int(layer_index, "layer_index", fn=fn, minimum=0)
        out_features = in_features if out_features is None else out_features
        context_features = in_features if context_features is None else context_features
        self.config = config
        self.in_features = in_features
        self.out_features = check_int(out_features, "out_features", fn=fn)
        context_features = check_int(context_features, "context_features", fn=fn)

        n, k, h = config.num_heads, config.num_kv_heads, config.head_dim
        kind = config.attention
        kw = dict(
            use_bias=config.use_bias,
            dtype=config.dtype,
            param_dtype=config.param_dtype,
            rngs=rngs,
        )
        norm = dict(dtype=config.dtype, param_dtype=config.param_dtype, rngs=rngs)
        if kind == "mla":
            r, c = config.rope_head_dim or 0, config.kv_latent_dim
            self.query = Dense(in_features, n * (h + r), **kw)  # [q_content, q_rope]
            self.key = self.value = None
            self.kv_down = Dense(context_features, c + r, **kw)  # [c_kv, k_rope]
            self.kv_norm = nnx.RMSNorm(c, **norm)
            # No bias: the absorbed decoding path multiplies the latent by these weights.
            self.kv_up = Dense(c, n * 2 * h, **{**kw, "use_bias": False})  # [k, v]
        else:
            qkv = {**kw, "use_bias": config.use_bias or config.qkv_bias}
            self.query = Dense(in_features, n * h, **qkv)
            self.key = Dense(context_features, k * h, **qkv)
            self.value = Dense(context_features, k * h, **qkv)
            self.kv_down = self.kv_norm = self.kv_up = None
        self.out = Dense(n * h, out_features, **kw)
        if config.qk_norm:
            self.q_norm = nnx.RMSNorm(self._qk_dim, **norm)
            self.k_norm = nnx.RMSNorm(self._qk_dim, **norm)
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
        # Differential attention: lambda from four learned vectors (normal(0, 0.1) as in the
        # paper's code), a per-head RMSNorm of the output, and the (1 - lambda_init) factor.
        if kind == "differential":
            init = nnx.initializers.normal(0.1)
            self.lambda_query = nnx.Param(init(rngs.params(), (2, h // 2), config.param_dtype))
            self.lambda_key = nnx.Param(init(rngs.params(), (2, h // 2), config.param_dtype))
            self.head_norm = nnx.RMSNorm(h, **norm)
            self.lambda_init = differential_lambda_init(self.layer_index)
        else:
            self.lambda_query = self.lambda_key = self.head_norm = None
            self.lambda_init = None
        # Forgetting attention: one forget gate per token and head from the layer input.
        self.forget_gate = (
            Dense(in_features, n, **{**kw, "use_bias": True}) if kind == "forgetting" else None
        )
        zeros = nnx.initializers.zeros
        self.sinks = (
            nnx.Param(zeros(rngs.params(), (n,), config.param_dtype)) if config.sinks else None
        )
        gate_features = {"headwise": n, "elementwise": n * h, None: 0}[config.attention_gate]
        self.gate = Dense(in_features, gate_features, **kw) if gate_features else None
        # Value residual: the first layer has nothing to mix; the others learn (lambda_1,
        # lambda_2) for lambda_1 v + lambda_2 v_first, initialized to 0.5 each.
        self.value_residual_lambdas = (
            nnx.Param(jnp.full((2,), 0.5, config.param_dtype))
            if config.value_residual and self.layer_index > 0
            else None
        )
        if config.talking_heads:
            # Two arrays, not one shared: training steps donate every parameter buffer.
            self.logits_head_mix = nnx.Param(jnp.eye(n, dtype=config.param_dtype))
            self.weights_head_mix = nnx.Param(jnp.eye(n, dtype=config.param_dtype))
        else:
            self.logits_head_mix = self.weights_head_mix = None
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

    @property
    def _qk_dim(self) -> int:
        """Width of one q/k head as RoPE and QK-norm see it (``H / 2`` for differential
        attention, whose heads are two halves; MLA's content part otherwise ``H``)."""
        h = self.config.head_dim
        return h // 2 if self.config.attention == "differential" else h

    def _qk_heads(self, y: jax.Array, heads: int) -> jax.Array:
        """``[B, T, heads * H]`` -> ``[B, T, heads', H']``: ``heads`` heads of ``H``, or
        ``2 * heads`` halves of ``H / 2`` for differential attention."""
        factor = self.config.head_dim // self._qk_dim
        return y.reshape(*y.shape[:-1], heads * factor, self._qk_dim)

    def _rope(self, x: jax.Array, positions: jax.Array | None, name: str, fn: str) -> jax.Array:
        """RoPE of ``x [B, T, heads, H']`` at ``positions`` (the argument ``name`` of ``fn``):
        1-D at ``[T]`` / ``[B, T]`` (default ``arange(T)``), or, with ``"rope_2d"``, axial
        2-D at the ``(row, col)`` pairs ``[T, 2]`` / ``[B, T, 2]``."""
        cfg = self.config
        if cfg.positional == "rope_2d":
            b, t = x.shape[:2]
            positions = check_grid_positions(positions, name, fn=fn, batch=b, length=t)
            return apply_rope_2d(x, positions[..., 0], positions[..., 1], base=cfg.rope_base)
        if positions is None:
            positions = jnp.arange(x.shape[1], dtype=jnp.int32)
        return apply_rope(
            x,
            positions,
            base=cfg.rope_base,
            fraction=cfg.rope_fraction,
            scaling=cfg.rope_scaling,
        )

    def project_query(self, x: jax.Array, query_positions: jax.Array | None = None) -> jax.Array:
        """``x [B, T, D]`` -> ``q [B, T, N, H]`` (QK-norm, then RoPE at ``query_positions``
        ``[T]`` or ``[B, T]``, default ``arange(T)``; ``"rope_2d"``: ``(row, col)`` pairs
        ``[T, 2]`` or ``[B, T, 2]``, required).

        Differential attention: ``[B, T, 2N, H / 2]``, the two halves of each head (head
        ``i``'s halves at ``2i, 2i + 1``), normed and rotated as heads of their own. MLA:
        ``[B, T, N, H + rope_head_dim]``, the content part and the rotated RoPE part.
        """
        fn = "MultiHeadAttention.project_query"
        cfg = self.config
        if cfg.attention == "mla":
            q = self.query(x).reshape(*x.shape[:2], cfg.num_heads, -1)
            if self.positional != "rope":
                return q
            h = cfg.head_dim
            rope = self._rope(q[..., h:], query_positions, "query_positions", fn)
            return jnp.concatenate([q[..., :h], rope], -1)
        q = self._qk_heads(self.query(x), self.num_heads)
        if self.q_norm is not None:
            q = self.q_norm(q)
        if self.positional in ("rope", "rope_2d"):
            q = self._rope(q, query_positions, "query_positions", fn)
        return q

    def project_key_value(
        self, context: jax.Array, key_value_positions: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """``context [B, S, D_c]`` -> ``(k, v)``, each ``[B, S, K, H]`` (``k`` is
        ``[B, S, 2K, H / 2]`` for differential attention).

        QK-norm and RoPE (at ``key_value_positions`` ``[S]`` or ``[B, S]``, default
        ``arange(S)``; ``"rope_2d"``: ``[S, 2]`` or ``[B, S, 2]``, required) are applied to
        ``k``, so the result is exactly what attention
        consumes: cross-attention over a fixed context computes it once and passes it as
        ``context_key_value``. (MLA layers project a latent instead: :meth:`project_latent`.)
        """
        if self.config.attention == "mla":
            raise ValueError(
                "MultiHeadAttention.project_key_value: an attention='mla' layer projects a "
                "latent (project_latent), not keys and values."
            )
        k = self._qk_heads(self.key(context), self.num_kv_heads)
        v = self.value(context).reshape(*context.shape[:2], self.num_kv_heads, self.head_dim)
        if self.k_norm is not None:
            k = self.k_norm(k)
        if self.positional in ("rope", "rope_2d"):
            fn = "MultiHeadAttention.project_key_value"
            k = self._rope(k, key_value_positions, "key_value_positions", fn)
        return k, v

    def project_latent(
        self, context: jax.Array, key_value_positions: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """MLA: ``context [B, S, D_c]`` -> ``(latent [B, S, kv_latent_dim], rope_key [B, S,
        rope_head_dim])``: the RMS-normed ``c_kv = x W_dkv`` and the RoPE key shared by the
        heads (rotated at ``key_value_positions``): what the :class:`LatentCache` stores."""
        cfg = self.config
        down = self.kv_down(context)
        latent = self.kv_norm(down[..., : cfg.kv_latent_dim])
        rope_key = down[..., cfg.kv_latent_dim :]
        if self.positional == "rope":
            fn, name = "MultiHeadAttention.project_latent", "key_value_positions"
            rope_key = self._rope(rope_key[:, :, None, :], key_value_positions, name, fn)[:, :, 0]
        return latent, rope_key

    def _mla_up(self, dtype) -> tuple[jax.Array, jax.Array]:
        """MLA's up-projections ``W_uk, W_uv``, each ``[kv_latent_dim, N, H]``."""
        cfg = self.config
        w = self.kv_up.kernel[...].astype(dtype)
        w = w.reshape(cfg.kv_latent_dim, cfg.num_heads, 2 * cfg.head_dim)
        return w[..., : cfg.head_dim], w[..., cfg.head_dim :]

    def _mla_key_value(self, latent: jax.Array, rope_key: jax.Array):
        """MLA's full keys ``[B, S, N, H + rope_head_dim]`` (content part up-projected from
        the latent, RoPE part shared by the heads) and values ``[B, S, N, H]``."""
        cfg = self.config
        b, s = latent.shape[:2]
        kv = self.kv_up(latent).reshape(b, s, cfg.num_heads, 2 * cfg.head_dim)
        k, v = kv[..., : cfg.head_dim], kv[..., cfg.head_dim :]
        shared = jnp.broadcast_to(
            rope_key[:, :, None, :], (b, s, cfg.num_heads, rope_key.shape[-1])
        )
        return jnp.concatenate([k, shared.astype(k.dtype)], -1), v

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

    def differential_lambda(self) -> jax.Array:
        """Differential attention's ``lambda = exp(lq_1 . lk_1) - exp(lq_2 . lk_2) +
        lambda_init`` (float32 scalar)."""
        lq = self.lambda_query[...].astype(jnp.float32)
        lk = self.lambda_key[...].astype(jnp.float32)
        dots = jnp.sum(lq * lk, axis=-1)
        return jnp.exp(dots[0]) - jnp.exp(dots[1]) + self.lambda_init

    def init_cache(self, batch_size: int, max_len: int, dtype: Any = None) -> LayerCache:
        """An empty self-attention cache with length 0: an :class:`AttentionCache` (keys and
        values ``[batch_size, max_len, K, H]``; differential keys ``[.., 2K, H / 2]``;
        forgetting adds float32 ``log_forget [batch_size, max_len, N]``) or, for MLA, a
        :class:`LatentCache` (``[batch_size, max_len, kv_latent_dim]`` and
        ``[batch_size, max_len, rope_head_dim]``).

        ``dtype`` defaults to ``config.dtype`` (float32 when None); the arrays are cast to it
        when written (the forget gates stay float32).
        """
        fn = "MultiHeadAttention.init_cache"
        batch_size = check_int(batch_size, "batch_size", fn=fn)
        max_len = check_int(max_len, "max_len", fn=fn)
        cfg = self.config
        if cfg.positional == "rope_2d":
            raise ValueError(
                f"{fn}: a positional='rope_2d' layer has no cache (cached decoding appends "
                "tokens at 1-D positions; a patch grid is attended to whole)."
            )
        if dtype is None:
            dtype = jnp.float32 if cfg.dtype is None else cfg.dtype
        length = jnp.int32(0)
        if cfg.attention == "mla":
            return LatentCache(
                jnp.zeros((batch_size, max_len, cfg.kv_latent_dim), dtype),
                jnp.zeros((batch_size, max_len, cfg.rope_head_dim or 0), dtype),
                length,
            )
        factor = cfg.head_dim // self._qk_dim
        key = jnp.zeros((batch_size, max_len, self.num_kv_heads * factor, self._qk_dim), dtype)
        value = jnp.zeros((batch_size, max_len, self.num_kv_heads, self.head_dim), dtype)
        forget = None
        if cfg.attention == "forgetting":
            forget = jnp.zeros((batch_size, max_len, self.num_heads), jnp.float32)
        return AttentionCache(key, value, length, forget)

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
        cache: LayerCache | None = None,
        first_values: jax.Array | None = None,
        return_values: bool = False,
        deterministic: bool = True,
        rngs: nnx.Rngs | jax.Array | None = None,
        sow_weights: bool = False,
    ):
        """Attends from ``x`` to itself, to ``context``, or to a cache.

        The sliding window is ``config.local_window_size``; ``config.attention`` picks the
        variant (the forgetting and stick-breaking variants need ``is_causal=True`` and are
        self-attention only; the variants other than softmax and MLA take no ``mask``,
        ``bias_fn`` or ``sow_weights``, and stick-breaking no segment ids or lengths).

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
            With ``positional="rope_2d"``: the required ``[T, 2]`` or ``[B, T, 2]`` int
            ``(row, col)`` of each token, used by the rotation only.
          key_value_positions: ``[S]`` or ``[B, S]`` positions of the context keys
            (cross-attention only; default ``arange(S)``; ``"rope_2d"``: ``[S, 2]`` or
            ``[B, S, 2]``, required with ``context``).
          segment_ids: ``[B, T]`` (self-attention) or ``([B, T], [B, S])``: packed sequences.
          query_seq_lengths: ``[B]``; padded query rows output zeros.
          key_value_seq_lengths: ``[B]``; padded keys are masked. Not allowed with a cache
            (the cache supplies its filled length).
          bias_fn: an extra ``(query_positions, key_value_positions) -> [N, T, S]`` (or
            ``[B, N, T, S]``) bias added to this layer's own (e.g. a T5 table shared by the
            layers of a stack).
          cache: the layer's cache from :meth:`init_cache` (self-attention only). The new
            keys and values (or MLA latents) are written at slots ``cache.length ..`` and the
            queries attend to all filled slots; slot ``i`` holds position ``i``, so custom
            ``query_positions`` must match the slots.
          first_values: ``config.value_residual``: the first layer's values ``[B, T, K, H]``
            (required by every layer but the first, ``layer_index > 0``).
          return_values: also return this layer's values ``[B, T, K, H]`` (before any
            cache), which the first layer of a value-residual stack hands to the others.
          deterministic: no attention dropout when True.
          rngs: ``nnx.Rngs``, ``RngStream`` or key for attention dropout (default: the
            module's own stream).
          sow_weights: sow the ``[B, N, T, S]`` float32 weights as
            ``nnx.Intermediate`` ``"attention_weights"`` (forces the materialized ``"xla"``
            path; collect them with ``nnx.capture``).

        Returns:
          ``[B, T, out_features]``; with a cache, the pair ``(output, new_cache)``; with
          ``return_values``, the values appended (``(output, values)`` or
          ``(output, new_cache, values)``).
        """
        fn = "MultiHeadAttention"
        cfg = self.config
        kind = cfg.attention
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
        self._check_variant_call(
            fn,
            cross=cross,
            is_causal=is_causal,
            mask=mask,
            bias_fn=bias_fn,
            segment_ids=segment_ids,
            query_seq_lengths=query_seq_lengths,
            key_value_seq_lengths=key_value_seq_lengths,
            sow_weights=sow_weights,
            first_values=first_values,
        )
        x = float_array(x, "x", fn=fn)
        if x.ndim != 3:
            raise ValueError(f"{fn}: x must be of shape [B, T, D], got {describe(x)}.")
        batch, length = x.shape[:2]
        positions_given = query_positions is not None
        grid = cfg.positional == "rope_2d"
        if grid:
            self._check_grid_call(
                fn,
                x=x,
                context=context,
                is_causal=is_causal,
                cache=cache,
                query_positions=query_positions,
                key_value_positions=key_value_positions,
            )
        if cache is not None:
            want = LatentCache if kind == "mla" else AttentionCache
            if not isinstance(cache, want):
                article = "a" if kind == "mla" else "an"
                raise TypeError(
                    f"{fn}: cache must be {article} {want.__name__} for attention={kind!r}, got "
                    f"{type(cache).__name__} (use init_cache)."
                )
            if key_value_seq_lengths is not None:
                raise ValueError(
                    f"{fn}: key_value_seq_lengths cannot be combined with a cache (the "
                    "cache's filled length masks the empty slots)."
                )
            if query_positions is None:
                query_positions = cache.length + jnp.arange(length, dtype=jnp.int32)

        attention_dropout, dropout_rng = 0.0, None
        if cfg.attention_dropout > 0 and not deterministic:
            attention_dropout = cfg.attention_dropout
            stream = self.dropout_rngs if rngs is None else rngs
            if isinstance(stream, nnx.Rngs):
                stream = stream["dropout"]
            dropout_rng = stream() if isinstance(stream, nnx.RngStream) else stream
        softmax_options = dict(
            mask=mask,
            is_causal=is_causal,
            query_seq_lengths=query_seq_lengths,
            local_window_size=cfg.local_window_size,
            segment_ids=segment_ids,
            # 2-D positions rotate q and k only; the core orders tokens by their index.
            query_positions=None if grid else query_positions,
            bias_fn=self.bias_fn(bias_fn),
            softcap=cfg.softcap,
            normalizer=cfg.normalizer,
            sinks=None if self.sinks is None else self.sinks[...],
            logits_head_mix=None if self.logits_head_mix is None else self.logits_head_mix[...],
            weights_head_mix=(
                None if self.weights_head_mix is None else self.weights_head_mix[...]
            ),
            attention_dropout=attention_dropout,
            dropout_rng=dropout_rng,
            return_weights=sow_weights,
            implementation="xla" if sow_weights else cfg.implementation,
        )

        q = self.project_query(x, query_positions)
        values = None
        if kind == "mla":
            out, cache = self._mla(
                q, x, query_positions, key_value_seq_lengths, cache, softmax_options
            )
        else:
            if cross:
                if context_key_value is None:
                    context_key_value = self.project_key_value(context, key_value_positions)
                k, v = context_key_value
            else:
                k, v = self.project_key_value(x, query_positions)
                key_value_positions = query_positions
            if self.value_residual_lambdas is not None:
                lam = self.value_residual_lambdas[...]
                v = lam[0] * v + lam[1] * first_values.astype(v.dtype)
            values = v
            log_forget = None
            if kind == "forgetting":
                log_forget = jax.nn.log_sigmoid(self.forget_gate(x).astype(jnp.float32))
            if cache is not None:
                cache = cache.update(k, v, log_forget)
                k, v, log_forget = cache.key, cache.value, cache.log_forget
                key_value_positions = None  # slot index = position
                key_value_seq_lengths = jnp.broadcast_to(cache.length, (batch,))
            out = self._attend(
                q,
                k,
                v,
                log_forget=log_forget,
                key_value_positions=None if grid else key_value_positions,
                key_value_seq_lengths=key_value_seq_lengths,
                positions_given=positions_given,
                cached=cache is not None,
                options=softmax_options,
            )
        if sow_weights:
            out, weights = out
            self.sow(nnx.Intermediate, "attention_weights", weights)
        if self.gate is not None:
            gate = jax.nn.sigmoid(self.gate(x)).reshape(batch, length, self.num_heads, -1)
            out = out * gate.astype(out.dtype)
        y = self.out(out.reshape(batch, length, self.num_heads * self.head_dim))
        result = (y,) if cache is None else (y, cache)
        if return_values:
            if values is None:
                raise ValueError(f"{fn}: return_values needs a layer with values (not mla).")
            result = (*result, values)
        return result[0] if len(result) == 1 else result

    def _check_grid_call(
        self, fn: str, *, x, context, is_causal, cache, query_positions, key_value_positions
    ) -> None:
        """``positional="rope_2d"``: a bidirectional, uncached call with ``(row, col)``
        positions for the queries (and for the keys of a ``context``)."""
        if is_causal:
            raise ValueError(
                f"{fn}: is_causal must be False with positional='rope_2d' (tokens on a 2-D "
                "grid have no causal order), got True."
            )
        if cache is not None:
            raise ValueError(
                f"{fn}: cache must be None with positional='rope_2d' (cached decoding appends "
                f"tokens at 1-D positions), got {type(cache).__name__}."
            )
        batch, length = x.shape[:2]
        check_grid_positions(query_positions, "query_positions", fn=fn, batch=batch, length=length)
        if context is not None:
            b, s = jnp.shape(context)[:2]
            check_grid_positions(
                key_value_positions, "key_value_positions", fn=fn, batch=b, length=s
            )

    def _check_variant_call(self, fn: str, *, cross: bool, is_causal: bool, **args) -> None:
        """Call arguments that the layer's variant cannot honour raise here, by name."""
        cfg = self.config
        kind = cfg.attention
        if cfg.value_residual and self.layer_index > 0 and args["first_values"] is None:
            raise ValueError(
                f"{fn}: first_values (the first layer's values) is required with "
                f"value_residual=True in layer_index={self.layer_index} > 0."
            )
        if kind == "softmax":
            return
        if cross:
            raise ValueError(
                f"{fn}: attention={kind!r} is self-attention only (cross-attention layers use "
                "'softmax')."
            )
        if kind in CAUSAL_ONLY_ATTENTION and not is_causal:
            raise ValueError(f"{fn}: is_causal must be True with attention={kind!r}, got False.")
        if kind == "mla":
            return
        unsupported = ["mask", "bias_fn", "sow_weights"]
        if kind == "stick_breaking":
            unsupported += ["segment_ids", "query_seq_lengths", "key_value_seq_lengths"]
        for name in unsupported:
            if args[name] is not None and args[name] is not False:
                raise ValueError(
                    f"{fn}: {name} is not supported with attention={kind!r} (its core "
                    f"function has no such argument), got {describe(args[name])}."
                )

    def _attend(
        self,
        q,
        k,
        v,
        *,
        log_forget,
        key_value_positions,
        key_value_seq_lengths,
        positions_given,
        cached,
        options,
    ):
        """The core call of the layer's variant; ``[B, T, N, H]`` (and weights when sown)."""
        cfg = self.config
        kind = cfg.attention
        mesh = _sequence_mesh(cfg.context_parallel, cached)
        if mesh is not None:
            return self._context_parallel(
                q, k, v, mesh, key_value_seq_lengths, positions_given, options
            )
        if kind == "softmax":
            return dot_product_attention(
                q,
                k,
                v,
                key_value_seq_lengths=key_value_seq_lengths,
                key_value_positions=key_value_positions,
                **options,
            )
        query_positions = options["query_positions"]
        if kind == "differential":
            b, t = q.shape[:2]
            out = differential_attention(
                q.reshape(b, t, self.num_heads, 2, -1),
                k.reshape(*k.shape[:2], self.num_kv_heads, 2, -1),
                v,
                self.differential_lambda(),
                is_causal=options["is_causal"],
                query_seq_lengths=options["query_seq_lengths"],
                key_value_seq_lengths=key_value_seq_lengths,
                local_window_size=cfg.local_window_size,
                segment_ids=options["segment_ids"],
                query_positions=query_positions,
                key_value_positions=key_value_positions,
                implementation=cfg.implementation,
            )
            return self.head_norm(out) * (1.0 - self.lambda_init)
        if kind == "forgetting":
            # The forget-gate sums run over key slots: queries are placed among them by
            # position only when they are fewer (a cache); otherwise query i is key i.
            return forgetting_attention(
                q,
                k,
                v,
                log_forget,
                query_positions=query_positions if cached else None,
                query_seq_lengths=options["query_seq_lengths"],
                key_value_seq_lengths=key_value_seq_lengths,
                segment_ids=options["segment_ids"],
                implementation=cfg.implementation,
            )
        # stick_breaking: causal by position (empty cache slots lie in the future).
        return stick_breaking_attention(
            q,
            k,
            v,
            query_positions=query_positions if (cached or positions_given) else None,
            key_value_positions=key_value_positions if positions_given and not cached else None,
        )

    def _context_parallel(self, q, k, v, mesh, key_value_seq_lengths, positions_given, options):
        """Self-attention with the sequence split over the mesh axis ``"sequence"``."""
        fn = f"{type(self).__name__}(context_parallel={self.config.context_parallel!r})"
        unsupported = {
            "mask": options["mask"],
            "query_seq_lengths": options["query_seq_lengths"],
            "key_value_seq_lengths": key_value_seq_lengths,
            "query_positions": options["query_positions"] if positions_given else None,
        }
        for name, value in unsupported.items():
            if value is not None:
                raise ValueError(
                    f"{fn}: {name} cannot be sharded over the sequence axis (tokens are "
                    f"placed by index; use segment_ids for packing), got {describe(value)}."
                )
        if options["return_weights"]:
            raise ValueError(f"{fn}: sow_weights=True needs the materialized weights.")
        if q.shape[1] != k.shape[1]:
            raise ValueError(
                f"{fn}: self-attention only (T == S), got query {describe(q)}, key {describe(k)}."
            )
        names = mesh.axis_names
        batch_axis = DATA_AXIS if DATA_AXIS in names and mesh.shape[DATA_AXIS] > 1 else None
        return context_parallel_attention(
            q,
            k,
            v,
            mesh=mesh,
            axis=SEQUENCE_AXIS,
            batch_axis=batch_axis,
            strategy=self.config.context_parallel,
            is_causal=options["is_causal"],
            segment_ids=options["segment_ids"],
            local_window_size=options["local_window_size"],
            bias_fn=options["bias_fn"],
            softcap=options["softcap"],
            sinks=options["sinks"],
        )

    def _mla(self, q, x, query_positions, key_value_seq_lengths, cache, options):
        """Multi-head latent attention: the full pass (keys and values up-projected from the
        latent) without a cache; with one, the absorbed form: queries mapped into the latent
        space (``q W_uk^T``), multi-query attention over the cached latents and RoPE keys,
        outputs mapped back by ``W_uv``. Both give the same function of the latents."""
        cfg = self.config
        h = cfg.head_dim
        scale = 1.0 / math.sqrt(h + (cfg.rope_head_dim or 0))
        latent, rope_key = self.project_latent(x, query_positions)
        if cache is None:
            k, v = self._mla_key_value(latent, rope_key)
            out = dot_product_attention(
                q,
                k,
                _pad_last(v, k.shape[-1]),
                scale=scale,
                key_value_seq_lengths=key_value_seq_lengths,
                key_value_positions=query_positions,
                **options,
            )
            return _map_out(out, lambda o: o[..., :h]), None
        cache = cache.update(latent, rope_key)
        w_uk, w_uv = self._mla_up(q.dtype)
        q_latent = jnp.einsum("btnh,cnh->btnc", q[..., :h], w_uk)
        q_absorbed = jnp.concatenate([q_latent, q[..., h:]], -1)  # [B, T, N, c + r]
        key = jnp.concatenate([cache.latent, cache.rope_key], -1)[:, :, None, :]
        value = cache.latent[:, :, None, :]  # [B, S_max, 1, c]
        lengths = jnp.broadcast_to(cache.length, (q.shape[0],))
        out = dot_product_attention(
            q_absorbed,
            key.astype(q.dtype),
            _pad_last(value, key.shape[-1]).astype(q.dtype),
            scale=scale,
            key_value_seq_lengths=lengths,
            **options,
        )
        c = cfg.kv_latent_dim
        return _map_out(out, lambda o: jnp.einsum("btnc,cnh->btnh", o[..., :c], w_uv)), cache
