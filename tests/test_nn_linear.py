"""Linear-attention layers in the models: every mixer (and a hybrid) is causal, its O(1)
recurrent cache gives the full pass's logits and greedy generation equals the argmax of full
passes; the Gated DeltaNet layer follows its paper's recurrence (float64 NumPy loop written
here); configs without a definition are rejected by name."""

import functools
import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax
from nnx_helpers import dense, fast_jit

import attention_jax as aj
from attention_jax import nn as ajnn

VOCAB, MAX_LEN, B, T, PREFILL, NEW = 11, 12, 2, 9, 3, 4

MIXERS = {
    "linear": dict(attention="linear"),
    "based": dict(attention="based", head_dim=4),
    "gla": dict(attention="gla"),
    "deltanet": dict(attention="deltanet", conv_size=3),
    "gated_deltanet": dict(attention="gated_deltanet"),
    "gated_deltanet_conv": dict(attention="gated_deltanet", conv_size=4),
    "hybrid": dict(layer_attention=("gated_deltanet", "softmax"), positional="rope"),
}


def lm_config(**kw):
    base = dict(
        vocab_size=VOCAB,
        d_model=16,
        num_layers=2,
        num_heads=2,
        num_kv_heads=1,
        max_len=MAX_LEN,
        positional="none",
        linear_chunk_size=4,  # several chunks and a ragged one at T = 9
    )
    return ajnn.TransformerConfig(**(base | kw))


@fast_jit
def full_cached_and_perturbed(model, tokens):
    full = model(tokens)
    cache = model.init_cache(tokens.shape[0], MAX_LEN)
    first, cache = model(tokens[:, :PREFILL], cache=cache)
    chunk, cache = model(tokens[:, PREFILL : PREFILL + 2], cache=cache)

    def step(cache, token):
        logits, cache = model(token[:, None], cache=cache)
        return cache, logits[:, 0]

    cache, rest = lax.scan(step, cache, tokens[:, PREFILL + 2 :].T)
    cached = jnp.concatenate([first, chunk, jnp.swapaxes(rest, 0, 1)], axis=1)
    perturbed = model(tokens.at[:, 6:].set((tokens[:, 6:] + 3) % VOCAB))
    return full, cached, perturbed


@functools.cache
def mixer_model(name):
    return ajnn.TransformerLM(lm_config(**MIXERS[name]), rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def tokens():
    return jax.random.randint(jax.random.key(1), (B, T), 0, VOCAB, dtype=jnp.int32)


@pytest.mark.parametrize("name", sorted(MIXERS))
def test_recurrent_cache_equals_full_pass_and_is_causal(name, tokens):
    model = mixer_model(name)
    full, cached, perturbed = full_cached_and_perturbed(model, tokens)
    chex.assert_trees_all_close(cached, full, atol=3e-5, rtol=3e-5)
    chex.assert_trees_all_close(perturbed[:, :6], full[:, :6], atol=1e-6, rtol=1e-6)
    assert not np.allclose(perturbed[:, 6:], full[:, 6:]), name
    cache = model.init_cache(B, MAX_LEN)
    linear_layers = sum(isinstance(c, ajnn.RecurrentCache) for c in cache.layers)
    assert linear_layers == (1 if name == "hybrid" else 2)
    # Only the softmax layer of the hybrid grows with the context.
    assert cache.num_floats_per_token() == (2 * 1 * 8 if name == "hybrid" else 0)
    assert cache.num_state_floats() > 0


@pytest.mark.parametrize(
    "name",
    [n if n == "hybrid" else pytest.param(n, marks=pytest.mark.slow) for n in sorted(MIXERS)],
)
def test_greedy_generate_equals_argmax_of_full_passes(name, tokens):
    model = mixer_model(name)
    prompt = tokens[:, :PREFILL]
    out = aj.generate(model, prompt, NEW, temperature=0.0)
    forward = fast_jit(lambda m, t: m(t))
    buf = jnp.zeros((B, PREFILL + NEW), jnp.int32).at[:, :PREFILL].set(prompt)
    for t in range(PREFILL, PREFILL + NEW):
        buf = buf.at[:, t].set(jnp.argmax(forward(model, buf)[:, t - 1], axis=-1))
    np.testing.assert_array_equal(out, buf)


@pytest.mark.parametrize("gate", ["silu", "sigmoid"])
def test_gated_deltanet_layer_equals_the_paper_recurrence(gate):
    """Gated DeltaNet (Yang, Kautz & Hatamizadeh 2024): q, k = L2(SiLU(.)), beta = sigmoid,
    a_t = exp(-exp(A) softplus(x W_a + dt_bias)), S_t = a_t (I - beta k k^T) S + beta k v^T,
    o_t = S_t^T q_t / sqrt(H), per-head RMSNorm, output gate silu(x W_g) (or sigmoid, with
    linear_gate_activation="sigmoid")."""
    n, h = 2, 4
    cfg = ajnn.AttentionConfig(
        num_heads=n,
        head_dim=h,
        attention="gated_deltanet",
        linear_chunk_size=3,
        linear_gate_activation=gate,
    )
    layer = ajnn.LinearAttention(8, cfg, rngs=nnx.Rngs(2))
    x = jax.random.normal(jax.random.key(0), (B, 7, 8))

    def silu(z):
        return z / (1 + np.exp(-z))

    def l2(z):
        return z / np.sqrt((z * z).sum(-1, keepdims=True) + 1e-6)

    q = l2(silu(dense(layer.query, x).reshape(B, -1, n, h)))
    k = l2(silu(dense(layer.key, x).reshape(B, -1, n, h)))
    v = dense(layer.value, x).reshape(B, -1, n, h)
    beta = 1 / (1 + np.exp(-dense(layer.beta, x)))
    dt = np.logaddexp(0.0, dense(layer.decay, x) + np.asarray(layer.dt_bias[...], np.float64))
    a = np.exp(-np.exp(np.asarray(layer.a_log[...], np.float64)) * dt)
    out = np.zeros((B, x.shape[1], n, h))
    for b in range(B):
        for hd in range(n):
            s = np.zeros((h, h))
            for t in range(x.shape[1]):
                kt, vt = k[b, t, hd], v[b, t, hd]
                s = a[b, t, hd] * (s - beta[b, t, hd] * np.outer(kt, kt @ s))
                s = s + beta[b, t, hd] * np.outer(kt, vt)
                out[b, t, hd] = s.T @ q[b, t, hd] / math.sqrt(h)
    scale = np.asarray(layer.head_norm.scale[...], np.float64)
    out = out / np.sqrt((out**2).mean(-1, keepdims=True) + 1e-6) * scale
    g = dense(layer.output_gate, x)
    g = silu(g) if gate == "silu" else 1 / (1 + np.exp(-g))
    out = out * g.reshape(B, -1, n, h)
    want = dense(layer.out, out.reshape(B, -1, n * h))
    got = fast_jit(lambda m, x: m(x))(layer, x)
    chex.assert_trees_all_close(got, want.astype(np.float32), atol=2e-5, rtol=2e-5)


def test_config_round_trips_a_hybrid():
    cfg = lm_config(
        layer_attention=["gla", "softmax"],
        positional="rope",
        conv_size=None,
        linear_gate_activation="sigmoid",
    )
    assert cfg.layer_attention == ("gla", "softmax")
    assert ajnn.TransformerConfig.from_json(cfg.to_json()) == cfg
    assert cfg.layer_attention_config(0).positional == "none"
    assert cfg.layer_attention_config(1).positional == "rope"
    # The gate is the gated mixers' alone: the softmax layer keeps the default.
    assert cfg.layer_attention_config(0).linear_gate_activation == "sigmoid"
    assert cfg.layer_attention_config(1).linear_gate_activation == "silu"


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(attention="gla", sinks=True), "sinks must be False with attention='gla'"),
        (dict(conv_size=4), "conv_size must be None unless attention is a linear mixer"),
        (dict(attention="deltanet", conv_size=1), "conv_size must be an int >= 2, got 1."),
        (dict(layer_attention=("gla",)),
         "layer_attention must have num_layers=2 entries, got 1: ('gla',)."),
        (dict(layer_attention=("gla", "mamba")), "layer_attention entries must be one of"),
        (dict(layer_attention="gla"), "layer_attention must be None or a tuple of attention"),
        (dict(attention="deltanet", linear_gate_activation="sigmoid"),
         "linear_gate_activation must be 'silu' unless attention is one of the gated linear "
         "mixers ('gla', 'gated_deltanet'), got 'sigmoid' with attention='deltanet'."),
        (dict(attention="gla", linear_gate_activation="relu"),
         "linear_gate_activation must be one of ('silu', 'sigmoid'), got 'relu'."),
    ],
)  # fmt: skip
def test_config_rejects_undefined_linear_options(options, message):
    with pytest.raises(ValueError, match="^TransformerConfig: " + re.escape(message)):
        lm_config(**options)


def test_linear_layers_reject_what_a_recurrence_cannot_do():
    with pytest.raises(ValueError, match=re.escape(
        "AttentionConfig: positional must be 'none' with attention='gla'"
    )):  # fmt: skip
        ajnn.AttentionConfig(num_heads=2, head_dim=4, attention="gla", positional="rope")
    layer = ajnn.LinearAttention(
        8, ajnn.AttentionConfig(num_heads=2, head_dim=4, attention="linear"), rngs=nnx.Rngs(0)
    )
    x = jnp.ones((B, 5, 8))
    with pytest.raises(ValueError, match="is_causal must be True with attention='linear'"):
        layer(x, is_causal=False)
    with pytest.raises(ValueError, match="segment_ids is not supported with attention='linear'"):
        layer(x, segment_ids=jnp.ones((B, 5), jnp.int32))
    with pytest.raises(ValueError, match="attention must not be 'deltanet' in a bidirectional"):
        ajnn.TransformerEncoder(lm_config(attention="deltanet"), rngs=nnx.Rngs(0))


def test_short_convolution_runs_in_the_compute_dtype():
    """bf16 compute: the convolution's output stays bf16 (its kernel is a float32 param),
    as nnx.Conv(dtype=bfloat16) computes it."""
    cfg = ajnn.TransformerConfig(
        vocab_size=11, d_model=32, num_layers=1, num_heads=2, max_len=16, mlp="none",
        positional="none", attention="deltanet", conv_size=4, dtype=jnp.bfloat16,
    )  # fmt: skip
    layer = ajnn.TransformerLM(cfg, rngs=nnx.Rngs(0)).blocks[0].attention
    qkv = jax.random.normal(jax.random.key(1), (2, 5, 3 * 32), jnp.bfloat16)
    out, tail = layer._short_conv(qkv, None)
    padded = jnp.concatenate([jnp.zeros((2, 3, 3 * 32), jnp.bfloat16), qkv], axis=1)
    want = jax.nn.silu(layer.conv(padded))
    assert out.dtype == want.dtype == jnp.bfloat16
    chex.assert_trees_all_close(out.astype(jnp.float32), want.astype(jnp.float32), atol=5e-2)
    chex.assert_trees_all_equal(tail, padded[:, -3:])
