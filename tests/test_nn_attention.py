"""MultiHeadAttention: the same numbers as the functional core called with the module's own
parameters, GQA/MQA shapes, cross-attention, caches, sown weights, mixed precision, errors."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from nnx_helpers import fast_jit

import attention_jax as aj
from attention_jax import nn as ajnn

B, T, D, N, K = 2, 5, 16, 4, 2
H = D // N


@pytest.fixture(scope="module")
def x():
    return jax.random.normal(jax.random.key(0), (B, T, D), jnp.float32)


def linear(layer, x):
    y = x @ layer.kernel[...]
    return y if layer.bias is None else y + layer.bias[...]


def rms_norm(norm, x):
    # nnx.RMSNorm: x / sqrt(mean(x^2) + eps) * scale
    return x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + norm.epsilon) * norm.scale[...]


def reference(m, x, positions, *, is_causal=True):
    """The module's computation spelled out with the functional core."""
    q = linear(m.query, x).reshape(B, T, m.num_heads, H)
    k = linear(m.key, x).reshape(B, T, m.num_kv_heads, H)
    v = linear(m.value, x).reshape(B, T, m.num_kv_heads, H)
    if m.q_norm is not None:
        q, k = rms_norm(m.q_norm, q), rms_norm(m.k_norm, k)
    bias_fn = None
    if m.positional == "rope":
        q, k = aj.apply_rope(q, positions), aj.apply_rope(k, positions)
    elif m.positional == "alibi":
        bias_fn = functools.partial(aj.alibi_bias, aj.alibi_slopes(m.num_heads))
    elif m.positional == "t5":
        bias_fn = functools.partial(aj.t5_relative_bias, m.relative_bias.table[...])
    out = aj.dot_product_attention(
        q,
        k,
        v,
        is_causal=is_causal,
        query_positions=positions,
        key_value_positions=positions,
        bias_fn=bias_fn,
    )
    return linear(m.out, out.reshape(B, T, m.num_heads * H))


@pytest.mark.parametrize(
    "positional, kw",
    [
        ("none", dict(use_bias=True)),
        ("rope", dict(qk_norm=True)),
        ("alibi", dict(num_kv_heads=1)),  # multi-query
        ("t5", {}),
    ],
)
@pytest.mark.parametrize("batched", [False, True])
def test_module_equals_functional_core(positional, kw, batched, x):
    kw = dict(num_kv_heads=K) | kw
    m = ajnn.MultiHeadAttention.create(D, N, positional=positional, rngs=nnx.Rngs(1), **kw)
    positions = 7 + jnp.arange(T)  # offset positions: RoPE and biases must use them
    if batched:  # per-example positions [B, T] (packed sequences, shards)
        positions = positions + jnp.array([[0], [5]])

    def both(m, x):
        return m(x, is_causal=True, query_positions=positions), reference(m, x, positions)

    got, want = fast_jit(both)(m, x)
    chex.assert_shape(got, (B, T, D))
    chex.assert_trees_all_close(got, want, atol=1e-6, rtol=1e-6)


def test_gqa_parameter_shapes_and_count():
    m = ajnn.MultiHeadAttention.create(
        D, N, num_kv_heads=K, qk_norm=True, use_bias=True, rngs=nnx.Rngs(0)
    )
    assert m.query.kernel.shape == (D, N * H)
    assert m.key.kernel.shape == m.value.kernel.shape == (D, K * H)
    count = sum(p.size for p in jax.tree.leaves(nnx.state(m, nnx.Param)))
    # q, k, v, out kernels and biases, plus the q/k RMSNorm scales.
    assert count == (D * N * H + N * H) + 2 * (D * K * H + K * H) + (N * H * D + D) + 2 * H


def test_cross_attention_equals_core_and_precomputed_key_value(x):
    s, dc = 6, 12
    m = ajnn.MultiHeadAttention.create(D, N, num_kv_heads=K, context_features=dc, rngs=nnx.Rngs(2))
    context = jax.random.normal(jax.random.key(3), (B, s, dc))
    lengths = jnp.array([6, 3], jnp.int32)

    def run(m, x, context):
        direct = m(x, context, key_value_seq_lengths=lengths)
        kv = m.project_key_value(context)
        precomputed = m(x, context_key_value=kv, key_value_seq_lengths=lengths)
        q = linear(m.query, x).reshape(B, T, N, H)
        k = linear(m.key, context).reshape(B, s, K, H)
        v = linear(m.value, context).reshape(B, s, K, H)
        out = aj.dot_product_attention(q, k, v, key_value_seq_lengths=lengths)
        return direct, precomputed, linear(m.out, out.reshape(B, T, N * H))

    direct, precomputed, want = fast_jit(run)(m, x, context)
    chex.assert_trees_all_close(direct, want, atol=1e-6, rtol=1e-6)
    chex.assert_trees_all_close(precomputed, want, atol=1e-6, rtol=1e-6)


def test_cache_prefill_and_steps_equal_full_call(x):
    m = ajnn.MultiHeadAttention.create(D, N, num_kv_heads=K, positional="rope", rngs=nnx.Rngs(4))

    def run(m, x):
        full = m(x, is_causal=True)
        cache = m.init_cache(B, 8)
        first, cache = m(x[:, :3], is_causal=True, cache=cache)
        second, cache = m(x[:, 3:4], is_causal=True, cache=cache)
        third, cache = m(x[:, 4:], is_causal=True, cache=cache)
        return full, jnp.concatenate([first, second, third], 1), cache

    full, cached, cache = fast_jit(run)(m, x)
    chex.assert_trees_all_close(cached, full, atol=1e-6, rtol=1e-6)
    chex.assert_shape([cache.key, cache.value], (B, 8, K, H))
    assert int(cache.length) == T


def test_sow_weights_materializes_and_changes_nothing(x):
    m = ajnn.MultiHeadAttention.create(D, N, num_kv_heads=K, positional="alibi", rngs=nnx.Rngs(5))

    def run(m, x):
        plain = m(x, is_causal=True)
        sown, inter = nnx.capture(m, nnx.Intermediate)(x, is_causal=True, sow_weights=True)
        return plain, sown, inter["attention_weights"].get_value()

    plain, sown, (weights,) = fast_jit(run)(m, x)
    chex.assert_trees_all_close(sown, plain, atol=1e-6, rtol=1e-6)
    chex.assert_shape(weights, (B, N, T, T))
    assert weights.dtype == jnp.float32
    chex.assert_trees_all_close(weights.sum(-1), jnp.ones((B, N, T)), atol=1e-6)
    upper = np.triu(np.ones((T, T), bool), k=1)
    assert np.all(np.asarray(weights)[..., upper] == 0)


def test_bfloat16_computes_in_bf16_with_float32_params(x):
    kw = dict(num_kv_heads=K, positional="rope")
    m16 = ajnn.MultiHeadAttention.create(D, N, dtype=jnp.bfloat16, rngs=nnx.Rngs(6), **kw)
    m32 = ajnn.MultiHeadAttention.create(D, N, rngs=nnx.Rngs(6), **kw)  # the same parameters
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(m16, nnx.Param)))

    def run(m16, x):
        y, inter = nnx.capture(m16, nnx.Intermediate)(x, is_causal=True, sow_weights=True)
        return y, inter["attention_weights"].get_value()[0]

    y16, w16 = fast_jit(run)(m16, x)
    y32 = fast_jit(lambda m, x: m(x, is_causal=True))(m32, x)
    assert y16.dtype == jnp.bfloat16
    assert w16.dtype == jnp.float32  # the softmax runs in float32 in the core
    chex.assert_trees_all_close(y16.astype(jnp.float32), y32, atol=5e-2, rtol=5e-2)


def test_attention_dropout_only_when_not_deterministic(x):
    m = ajnn.MultiHeadAttention.create(D, N, attention_dropout=0.5, rngs=nnx.Rngs(7))

    def run(m, x, key):
        det = m(x)
        a = m(x, deterministic=False, rngs=key)
        b = m(x, deterministic=False, rngs=key)
        c = m(x, deterministic=False, rngs=jax.random.fold_in(key, 1))
        return det, a, b, c

    det, a, b, c = fast_jit(run)(m, x, jax.random.key(0))
    chex.assert_trees_all_close(a, b)
    assert not np.allclose(a, det) and not np.allclose(a, c)


# ------------------------------------------------------------------- AttentionConfig


def test_config_constructor_equals_create(x):
    config = ajnn.AttentionConfig(num_heads=N, head_dim=H, num_kv_heads=K, positional="rope")
    a = ajnn.MultiHeadAttention(D, config, rngs=nnx.Rngs(8))
    b = ajnn.MultiHeadAttention.create(D, N, num_kv_heads=K, positional="rope", rngs=nnx.Rngs(8))
    assert a.config == b.config == config
    ya, yb = fast_jit(lambda ms, x: (ms[0](x), ms[1](x)))(nnx.List([a, b]), x)
    chex.assert_trees_all_close(ya, yb, atol=0, rtol=0)


def test_config_resolves_kv_heads_and_canonicalizes():
    config = ajnn.AttentionConfig(num_heads=N, head_dim=H, dtype="bfloat16", local_window_size=3)
    assert config.num_kv_heads == N
    assert config.dtype == jnp.dtype(jnp.bfloat16) and config.local_window_size == (3, 3)
    assert config == ajnn.AttentionConfig(
        num_heads=N, head_dim=H, num_kv_heads=N, dtype=jnp.bfloat16, local_window_size=(3, 3)
    )
    hash(config)  # static configuration: hashable


def test_local_window_size_equals_core_with_that_window(x):
    m = ajnn.MultiHeadAttention.create(D, N, local_window_size=(2, 0), rngs=nnx.Rngs(9))

    def run(m, x):
        q = linear(m.query, x).reshape(B, T, N, H)
        k = linear(m.key, x).reshape(B, T, N, H)
        v = linear(m.value, x).reshape(B, T, N, H)
        out = aj.dot_product_attention(q, k, v, is_causal=True, local_window_size=(2, 0))
        return m(x, is_causal=True), linear(m.out, out.reshape(B, T, N * H))

    got, want = fast_jit(run)(m, x)
    chex.assert_trees_all_close(got, want, atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------------ bad input


def test_num_heads_not_multiple_of_num_kv_heads():
    with pytest.raises(
        ValueError,
        match=r"^MultiHeadAttention.create: num_heads must be a multiple of num_kv_heads=3, "
        r"got 4\.$",
    ):
        ajnn.MultiHeadAttention.create(D, 4, num_kv_heads=3, rngs=nnx.Rngs(0))
    with pytest.raises(
        ValueError, match=r"^AttentionConfig: num_heads must be a multiple of num_kv_heads=3"
    ):
        ajnn.AttentionConfig(num_heads=4, head_dim=H, num_kv_heads=3)


def test_in_features_not_divisible_without_head_dim():
    with pytest.raises(
        ValueError,
        match=r"^MultiHeadAttention.create: in_features must be divisible by num_heads=4 when "
        r"head_dim is None, got 18\.$",
    ):
        ajnn.MultiHeadAttention.create(18, 4, rngs=nnx.Rngs(0))


def test_unknown_positional():
    with pytest.raises(
        ValueError,
        match=r"^MultiHeadAttention.create: positional must be one of \('none', 'rope', "
        r"'alibi', 't5', 'rope_2d'\), got 'sinusoidal'\.$",
    ):
        ajnn.MultiHeadAttention.create(D, N, positional="sinusoidal", rngs=nnx.Rngs(0))


@pytest.mark.parametrize("rate", [1.0, -0.1])
def test_bad_attention_dropout(rate):
    with pytest.raises(
        ValueError,
        match=rf"^MultiHeadAttention.create: attention_dropout must be a number in \[0, 1\), "
        rf"got {rate}\.$",
    ):
        ajnn.MultiHeadAttention.create(D, N, attention_dropout=rate, rngs=nnx.Rngs(0))


def test_bad_softcap():
    with pytest.raises(
        ValueError,
        match=r"^MultiHeadAttention.create: softcap must be None or a finite number > 0, "
        r"got -1\.0\.$",
    ):
        ajnn.MultiHeadAttention.create(D, N, softcap=-1.0, rngs=nnx.Rngs(0))


def test_bad_normalizer():
    with pytest.raises(
        ValueError,
        match=r"^MultiHeadAttention.create: normalizer must be one of \(.*'softmax'.*\) or a "
        r"callable, got 'softermax'\.$",
    ):
        ajnn.MultiHeadAttention.create(D, N, normalizer="softermax", rngs=nnx.Rngs(0))


def test_unknown_option_lists_the_fields():
    with pytest.raises(
        ValueError,
        match=r"^MultiHeadAttention.create: unknown attention options \['dropout_rate'\]; .*"
        r"'attention_dropout'",
    ):
        ajnn.MultiHeadAttention.create(D, N, dropout_rate=0.1, rngs=nnx.Rngs(0))


def test_constructor_needs_an_attention_config():
    with pytest.raises(
        TypeError, match=r"^MultiHeadAttention: config must be an AttentionConfig, got 4 "
    ):
        ajnn.MultiHeadAttention(D, N, rngs=nnx.Rngs(0))


def test_cache_with_cross_attention(x):
    m = ajnn.MultiHeadAttention.create(D, N, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="^MultiHeadAttention: cache is for self-attention"):
        m(x, x, cache=m.init_cache(B, 8))


def test_key_value_positions_are_for_cross_attention(x):
    m = ajnn.MultiHeadAttention.create(D, N, rngs=nnx.Rngs(0))
    with pytest.raises(
        ValueError, match="^MultiHeadAttention: key_value_positions is for cross-attention"
    ):
        m(x, key_value_positions=jnp.arange(T))


def test_key_value_seq_lengths_with_cache(x):
    m = ajnn.MultiHeadAttention.create(D, N, rngs=nnx.Rngs(0))
    with pytest.raises(
        ValueError,
        match="^MultiHeadAttention: key_value_seq_lengths cannot be combined with a cache",
    ):
        m(x, cache=m.init_cache(B, 8), key_value_seq_lengths=jnp.array([1, 2]))
