"""Linear attention as an NNX module: the projections and gates of each linear mixer's paper
around the functions of :mod:`attention_jax.linear`.

The math (chunked and recurrent forms, states, decays, the delta rule) lives in the core;
this module owns the parameters, the short convolution and the per-head output norm and gate.
Its cache is a :class:`attention_jax.nn.RecurrentCache`: the recurrent state and the
convolution's tail, a fixed size whatever the context, so decoding costs O(1) per token.

Shape letters: ``B`` batch, ``T`` length, ``D`` features, ``N`` query heads, ``K`` key/value
heads, ``H`` head dim.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from attention_jax._checks import check_int, describe, float_array
from attention_jax.linear import (
    delta_rule_attention,
    gated_linear_attention,
    linear_attention,
    short_convolution,
)
from attention_jax.nn.cache import RecurrentCache
from attention_jax.nn.config import LINEAR_ATTENTION, LINEAR_GATED, AttentionConfig
from attention_jax.nn.dense import Dense

__all__ = ["LinearAttention"]

# GLA's gate: rank of the low-rank decay projection and the temperature (Yang et al. 2024).
GLA_GATE_RANK = 16
GLA_GATE_TEMPERATURE = 16.0


def _l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Unit vectors over the last axis (DeltaNet's q/k normalization), in float32."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


class LinearAttention(nnx.Module):
    """A causal linear-attention layer (``config.attention`` in
    :data:`attention_jax.nn.config.LINEAR_ATTENTION`), a drop-in for
    :class:`MultiHeadAttention` in a decoder block.

    * ``"linear"``: ``q, k, v = x W``; :func:`attention_jax.linear_attention` with elu+1
      features, normalized (Katharopoulos et al. 2020).
    * ``"based"``: the same with the 2nd-order Taylor features (Arora et al. 2024).
    * ``"gla"``: :func:`attention_jax.gated_linear_attention` with the per-key-dimension decay
      ``log_sigmoid(x W_1 W_2) / 16`` (rank-16 projection), then per-head RMSNorm and the
      output gate ``silu(x W_g)`` (Yang et al. 2024; ``config.linear_gate_activation``
      picks ``sigmoid`` instead).
    * ``"deltanet"``: :func:`attention_jax.delta_rule_attention` with SiLU and L2-normalized
      q and k, ``beta = sigmoid(x W_b)`` per head, per-head RMSNorm (Yang et al. 2024).
    * ``"gated_deltanet"``: DeltaNet plus the decay ``-exp(A) softplus(x W_a + dt_bias)``
      per head (Mamba-2's parameterization, ``A`` initialized in ``log [1, 16]``) and the
      output gate ``silu(x W_g)`` (or ``sigmoid``) (Yang, Kautz & Hatamizadeh 2024).

    ``config.conv_size`` adds a short causal depthwise convolution (then SiLU) on the q, k and
    v projections (DeltaNet, Gated DeltaNet); ``config.linear_chunk_size`` is the chunk of the
    chunkwise-parallel form.

    Args:
      in_features: ``D``.
      config: :class:`AttentionConfig` with a linear ``attention`` kind.
      layer_index: depth in the stack (unused; the same signature as
        :class:`MultiHeadAttention`).
      rngs: ``nnx.Rngs``.
    """

    def __init__(
        self,
        in_features: int,
        config: AttentionConfig,
        *,
        layer_index: int = 0,
        rngs: nnx.Rngs,
    ):
        fn = "LinearAttention"
        in_features = check_int(in_features, "in_features", fn=fn)
        if not isinstance(config, AttentionConfig) or config.attention not in LINEAR_ATTENTION:
            raise ValueError(
                f"{fn}: config must be an AttentionConfig with attention in "
                f"{LINEAR_ATTENTION}, got {describe(config)}."
            )
        self.config = config
        self.layer_index = layer_index
        self.in_features = in_features
        n, k, h, kind = config.num_heads, config.num_kv_heads, config.head_dim, config.attention
        kw = dict(
            use_bias=config.use_bias,
            dtype=config.dtype,
            param_dtype=config.param_dtype,
            rngs=rngs,
        )
        self.query = Dense(in_features, n * h, **kw)
        self.key = Dense(in_features, k * h, **kw)
        self.value = Dense(in_features, k * h, **kw)
        self.out = Dense(n * h, in_features, **kw)
        channels = (n + 2 * k) * h
        self.conv = (
            nnx.Conv(
                channels,
                channels,
                kernel_size=(config.conv_size,),
                feature_group_count=channels,
                padding="VALID",
                use_bias=False,
                dtype=config.dtype,
                param_dtype=config.param_dtype,
                rngs=rngs,
            )
            if config.conv_size
            else None
        )
        norm = dict(dtype=config.dtype, param_dtype=config.param_dtype, rngs=rngs)
        self.head_norm = (
            nnx.RMSNorm(h, **norm) if kind in ("gla", "deltanet", "gated_deltanet") else None
        )
        self.output_gate = Dense(in_features, n * h, **kw) if kind in LINEAR_GATED else None
        if kind == "gla":
            self.decay_down = Dense(in_features, GLA_GATE_RANK, **{**kw, "use_bias": False})
            self.decay_up = Dense(GLA_GATE_RANK, n * h, **{**kw, "use_bias": True})
        else:
            self.decay_down = self.decay_up = None
        self.beta = (
            Dense(in_features, n, **{**kw, "use_bias": True})
            if kind in ("deltanet", "gated_deltanet")
            else None
        )
        if kind == "gated_deltanet":
            self.decay = Dense(in_features, n, **{**kw, "use_bias": False})
            a = jax.random.uniform(rngs.params(), (n,), jnp.float32, 1.0, 16.0)
            self.a_log = nnx.Param(jnp.log(a).astype(config.param_dtype))
            # dt in [1e-3, 1e-1] log-uniformly, stored through the inverse of softplus.
            dt = jnp.exp(
                jax.random.uniform(rngs.params(), (n,), jnp.float32, math.log(1e-3), math.log(0.1))
            )
            self.dt_bias = nnx.Param((dt + jnp.log(-jnp.expm1(-dt))).astype(config.param_dtype))
        else:
            self.decay = self.a_log = self.dt_bias = None

    @property
    def num_heads(self) -> int:
        return self.config.num_heads

    @property
    def num_kv_heads(self) -> int:
        return self.config.num_kv_heads

    @property
    def head_dim(self) -> int:
        return self.config.head_dim

    def _state_shapes(self, batch: int):
        cfg = self.config
        h = cfg.head_dim
        features = 1 + h + h * (h + 1) // 2 if cfg.attention == "based" else h
        s = jnp.zeros((batch, cfg.num_heads, features, h), jnp.float32)
        if cfg.attention in ("linear", "based"):
            return (s, jnp.zeros((batch, cfg.num_heads, features), jnp.float32))
        return s

    def init_cache(self, batch_size: int, max_len: int, dtype: Any = None) -> RecurrentCache:
        """An empty :class:`RecurrentCache`: a zero state (float32), a zero convolution tail
        ``[batch_size, conv_size - 1, (N + 2K) H]`` (in ``dtype``, default ``config.dtype``
        or float32) and room for ``max_len`` positions."""
        fn = "LinearAttention.init_cache"
        batch_size = check_int(batch_size, "batch_size", fn=fn)
        max_len = check_int(max_len, "max_len", fn=fn)
        cfg = self.config
        if dtype is None:
            dtype = jnp.float32 if cfg.dtype is None else cfg.dtype
        conv = None
        if self.conv is not None:
            channels = (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim
            conv = jnp.zeros((batch_size, cfg.conv_size - 1, channels), dtype)
        room = jnp.zeros((batch_size, max_len, 0), jnp.float32)
        return RecurrentCache(self._state_shapes(batch_size), conv, room, jnp.int32(0))

    def _short_conv(self, qkv: jax.Array, tail: jax.Array | None):
        """Causal depthwise convolution over time (then SiLU) of ``qkv [B, T, C]``, continuing
        from ``tail`` (the previous ``conv_size - 1`` inputs; zeros at the start); returns the
        outputs and the new tail."""
        width = self.config.conv_size - 1
        if tail is None:
            tail = jnp.zeros((qkv.shape[0], width, qkv.shape[2]), qkv.dtype)
        padded = jnp.concatenate([tail.astype(qkv.dtype), qkv], axis=1)
        # In the compute dtype, as nnx.Conv(dtype=config.dtype) would (it holds the kernel).
        out = short_convolution(padded, self.conv.kernel[...].astype(qkv.dtype))
        return jax.nn.silu(out), padded[:, padded.shape[1] - width :]

    def __call__(
        self,
        x: jax.Array,
        *,
        is_causal: bool = True,
        cache: RecurrentCache | None = None,
        first_values: jax.Array | None = None,
        return_values: bool = False,
        **unsupported,
    ):
        """``x [B, T, D]`` -> ``[B, T, D]``; with a cache, ``(output, new_cache)``: the
        ``T`` tokens continue from the cached state.

        The keyword arguments of :meth:`MultiHeadAttention.__call__` that a recurrence cannot
        honour (``mask``, ``segment_ids``, sequence lengths, ``bias_fn``, ``sow_weights``, ...)
        raise when given a value; ``query_positions`` and ``deterministic``/``rngs`` are
        accepted and unused (order lives in the recurrence; no dropout here).
        """
        fn = "LinearAttention"
        cfg = self.config
        kind = cfg.attention
        if not is_causal:
            raise ValueError(f"{fn}: is_causal must be True with attention={kind!r}, got False.")
        for name, value in unsupported.items():
            if name in ("query_positions", "deterministic", "rngs") or value is None:
                continue
            if value is False:
                continue
            raise ValueError(
                f"{fn}: {name} is not supported with attention={kind!r} (a causal recurrence "
                f"over the whole sequence), got {describe(value)}."
            )
        if return_values or first_values is not None:
            raise ValueError(f"{fn}: value_residual is not supported with attention={kind!r}.")
        x = float_array(x, "x", fn=fn)
        if x.ndim != 3:
            raise ValueError(f"{fn}: x must be of shape [B, T, D], got {describe(x)}.")
        b, t = x.shape[:2]
        n, k, h = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        qkv = jnp.concatenate([self.query(x), self.key(x), self.value(x)], axis=-1)
        tail = None
        if self.conv is not None:
            qkv, tail = self._short_conv(qkv, None if cache is None else cache.conv)
        q = qkv[..., : n * h].reshape(b, t, n, h)
        k_ = qkv[..., n * h : (n + k) * h].reshape(b, t, k, h)
        v = qkv[..., (n + k) * h :].reshape(b, t, k, h)
        state0 = None if cache is None else cache.state
        chunk = dict(chunk_size=cfg.linear_chunk_size, initial_state=state0, return_state=True)
        if kind in ("linear", "based"):
            feature_map = "elu1" if kind == "linear" else "taylor"
            out, state = linear_attention(q, k_, v, feature_map=feature_map, **chunk)
        elif kind == "gla":
            gate = self.decay_up(self.decay_down(x)).astype(jnp.float32)
            log_decay = jax.nn.log_sigmoid(gate).reshape(b, t, n, h) / GLA_GATE_TEMPERATURE
            out, state = gated_linear_attention(q, k_, v, log_decay, **chunk)
        else:
            if self.conv is None:  # the convolution's SiLU otherwise
                q, k_ = jax.nn.silu(q), jax.nn.silu(k_)
            q, k_ = _l2_normalize(q).astype(v.dtype), _l2_normalize(k_).astype(v.dtype)
            beta = jax.nn.sigmoid(self.beta(x).astype(jnp.float32))
            log_decay = None
            if kind == "gated_deltanet":
                dt = jax.nn.softplus(self.decay(x).astype(jnp.float32) + self.dt_bias[...])
                log_decay = -jnp.exp(self.a_log[...].astype(jnp.float32)) * dt
            out, state = delta_rule_attention(q, k_, v, beta, log_decay=log_decay, **chunk)
        if self.head_norm is not None:
            out = self.head_norm(out)
        if self.output_gate is not None:
            gate = getattr(jax.nn, cfg.linear_gate_activation)(self.output_gate(x))
            out = out * gate.reshape(b, t, n, h).astype(out.dtype)
        y = self.out(out.reshape(b, t, n * h))
        if cache is None:
            return y
        return y, RecurrentCache(state, tail, cache.room, cache.length + t)
