"""Transformer models: config validation, causality, padding, packing, wiring, parameter
counts, mixed precision and a jitted training step that compiles once."""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from attention_jax import nn as ajnn

V, D, N, K, MAX_LEN, B, T = 11, 16, 4, 2, 12, 2, 8
H, F = D // N, 4 * D


def fast_jit(fn):
    """``jit`` of ``fn(model, *arrays)`` at XLA backend optimization level 0 (tiny models:
    compiling dominates the runtime; the cheaper backend pass changes no semantics)."""

    @functools.partial(
        jax.jit, static_argnums=0, compiler_options={"xla_backend_optimization_level": 0}
    )
    def run(graphdef, state, *args):
        return fn(nnx.merge(graphdef, state), *args)

    def call(model, *args):
        return run(*nnx.split(model), *args)

    return call


def config(**kw):
    base = dict(vocab_size=V, d_model=D, num_layers=1, num_heads=N, num_kv_heads=K, max_len=MAX_LEN)
    return ajnn.TransformerConfig(**(base | kw))


def num_params(model) -> int:
    return sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.fixture(scope="module")
def tokens():
    return jax.random.randint(jax.random.key(1), (B, T), 0, V, dtype=jnp.int32)


@pytest.fixture(scope="module")
def alibi_lm():
    cfg = config(positional="alibi", norm="rmsnorm", mlp="swiglu", qk_norm=True, softcap=20.0)
    return ajnn.TransformerLM(cfg, rngs=nnx.Rngs(0))


# ---------------------------------------------------------------------------- config


def test_config_d_model_not_divisible_by_num_heads():
    with pytest.raises(ValueError, match=r"d_model=18 is not divisible by num_heads=4"):
        config(d_model=18)
    assert config(d_model=18, head_dim=4).head_size == 4  # explicit head_dim is fine


def test_config_num_heads_not_multiple_of_num_kv_heads():
    with pytest.raises(ValueError, match=r"num_heads=4 must be a multiple of num_kv_heads=3"):
        config(num_kv_heads=3)


@pytest.mark.parametrize("field", ["positional", "norm", "mlp"])
def test_config_unknown_choice_names_the_field(field):
    with pytest.raises(ValueError, match=rf"TransformerConfig: {field} must be one of"):
        config(**{field: "bogus"})


def test_config_is_frozen_and_keyword_only():
    cfg = config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.d_model = 32
    with pytest.raises(TypeError):
        ajnn.TransformerConfig(V, D, 1, N, MAX_LEN)


# --------------------------------------------------------------------- parameter counts


def test_parameter_count_lm_learned_layernorm_gelu_tied():
    model = ajnn.TransformerLM(config(positional="learned", num_layers=2), rngs=nnx.Rngs(0))
    attention = D * N * H + 2 * D * K * H + N * H * D
    layer = 2 * (2 * D) + attention + 2 * D * F  # two LayerNorms (scale + bias)
    assert num_params(model) == V * D + MAX_LEN * D + 2 * layer + 2 * D


def test_parameter_count_lm_t5_rmsnorm_swiglu_untied_qk_norm():
    cfg = config(
        positional="t5",
        num_layers=2,
        norm="rmsnorm",
        mlp="swiglu",
        tie_embeddings=False,
        qk_norm=True,
    )
    model = ajnn.TransformerLM(cfg, rngs=nnx.Rngs(0))
    attention = D * N * H + 2 * D * K * H + N * H * D + 2 * H  # + q/k RMSNorm scales
    layer = 2 * D + attention + 3 * D * F
    t5_table = 32 * N  # one table shared by the layers of the stack
    assert num_params(model) == V * D + t5_table + 2 * layer + D + D * V


def test_parameter_count_encoder_decoder_2017():
    cfg = config(
        positional="sinusoidal",
        prenorm=False,
        mlp="relu",
        use_bias=True,
        num_encoder_layers=2,
        num_decoder_layers=1,
    )
    model = ajnn.EncoderDecoder(cfg, rngs=nnx.Rngs(0))
    attention = (D * N * H + N * H) + 2 * (D * K * H + K * H) + (N * H * D + D)
    mlp = (D * F + F) + (F * D + D)
    encoder_layer = attention + mlp + 2 * (2 * D)
    decoder_layer = 2 * attention + mlp + 3 * (2 * D)
    # Shared, tied embedding; post-norm stacks have no final norm.
    assert num_params(model) == V * D + 2 * encoder_layer + decoder_layer


# ---------------------------------------------------------------------------- the LM


def test_lm_is_causal_and_sows_weights(alibi_lm, tokens):
    changed = tokens.at[:, 4].set((tokens[:, 4] + 1) % V)

    def run(model, a, b):
        logits = model(jnp.concatenate([a, b]))
        _, inter = nnx.capture(model, nnx.Intermediate)(a, sow_weights=True)
        return logits[:B], logits[B:], inter["blocks"][0]["attention"]["attention_weights"]

    a, b, weights = fast_jit(run)(alibi_lm, tokens, changed)
    chex.assert_shape(a, (B, T, V))
    assert a.dtype == jnp.float32
    chex.assert_trees_all_close(a[:, :4], b[:, :4], atol=0, rtol=0)
    assert not np.allclose(a[:, 4:], b[:, 4:])
    (w,) = weights.get_value()
    chex.assert_shape(w, (B, N, T, T))
    assert np.all(np.asarray(w)[..., np.triu(np.ones((T, T), bool), k=1)] == 0)


def test_packed_sequences_equal_separate_sequences(alibi_lm, tokens):
    # Two sequences of lengths 3 and 5 packed in one row: segment ids keep them apart and
    # positions restart, so each gets the logits it gets alone.
    segment_ids = jnp.array([[0, 0, 0, 1, 1, 1, 1, 1]] * B, jnp.int32)
    positions = jnp.array([[0, 1, 2, 0, 1, 2, 3, 4]] * B, jnp.int32)

    def run(model, tokens):
        packed = model(tokens, positions=positions, segment_ids=segment_ids)
        return packed, model(tokens[:, :3]), model(tokens[:, 3:])

    packed, first, second = fast_jit(run)(alibi_lm, tokens)
    chex.assert_trees_all_close(packed[:, :3], first, atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(packed[:, 3:], second, atol=1e-5, rtol=1e-5)


def test_block_wiring_pre_and_post_norm():
    x = jax.random.normal(jax.random.key(2), (B, T, D))
    pre = ajnn.TransformerBlock(D, N, rngs=nnx.Rngs(0))
    post = ajnn.TransformerBlock(D, N, prenorm=False, norm="rmsnorm", mlp="relu", rngs=nnx.Rngs(0))

    def run(blocks, x):
        pre, post = blocks
        h = x + pre.attention(pre.attention_norm(x), is_causal=True)
        want_pre = h + pre.mlp(pre.mlp_norm(h))
        h = post.attention_norm(x + post.attention(x, is_causal=True))
        want_post = post.mlp_norm(h + post.mlp(h))
        return pre(x, is_causal=True), want_pre, post(x, is_causal=True), want_post

    got_pre, want_pre, got_post, want_post = fast_jit(run)(nnx.List([pre, post]), x)
    chex.assert_trees_all_close(got_pre, want_pre, atol=1e-6, rtol=1e-6)
    chex.assert_trees_all_close(got_post, want_post, atol=1e-6, rtol=1e-6)


def test_mixed_precision_bf16_compute_float32_params_and_logits(tokens):
    m16 = ajnn.TransformerLM(config(positional="rope", dtype=jnp.bfloat16), rngs=nnx.Rngs(3))
    m32 = ajnn.TransformerLM(config(positional="rope"), rngs=nnx.Rngs(3))  # same parameters
    assert {p.dtype for p in jax.tree.leaves(nnx.state(m16, nnx.Param))} == {jnp.dtype("float32")}
    cache = m16.init_cache(B)
    assert cache.key[0].dtype == jnp.bfloat16

    def run(model, tokens, cache):
        hidden = model.embedder(tokens, jnp.arange(T))
        logits, cache = model(tokens, cache=cache)
        return hidden, logits

    hidden, logits16 = fast_jit(run)(m16, tokens, cache)
    logits32 = fast_jit(lambda m, t: m(t))(m32, tokens)
    assert hidden.dtype == jnp.bfloat16 and logits16.dtype == jnp.float32
    chex.assert_trees_all_close(logits16, logits32, atol=5e-2, rtol=5e-2)


def test_jitted_train_step_compiles_once(tokens):
    cfg = config(positional="rope", attention_dropout=0.1)
    model = ajnn.TransformerLM(cfg, rngs=nnx.Rngs(params=0, dropout=1))
    optimizer = nnx.Optimizer(model, optax.sgd(0.5), wrt=nnx.Param)
    traces = []

    @nnx.jit
    def train_step(model, optimizer, inputs, targets):
        traces.append(1)  # runs only while tracing

        def loss_fn(model):
            logits = model(inputs, deterministic=False)
            return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    losses = [float(train_step(model, optimizer, inputs, targets)) for _ in range(4)]
    assert len(traces) == 1
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]


# ------------------------------------------------------------------------ the encoder


def test_encoder_ignores_padding(tokens):
    encoder = ajnn.TransformerEncoder(config(positional="t5"), rngs=nnx.Rngs(4))
    lengths = jnp.array([T, 5], jnp.int32)
    padding_mask = jnp.arange(T)[None, :] < lengths[:, None]
    changed = tokens.at[1, 5:].set((tokens[1, 5:] + 3) % V)

    def run(encoder, a, b):
        return (
            encoder(a, lengths=lengths),
            encoder(b, lengths=lengths),
            encoder(b, padding_mask=padding_mask),
        )

    a, b, c = fast_jit(run)(encoder, tokens, changed)
    chex.assert_shape(a, (B, T, D))
    chex.assert_trees_all_close(b[1, :5], a[1, :5], atol=1e-6, rtol=1e-6)
    chex.assert_trees_all_close(c[1, :5], a[1, :5], atol=1e-6, rtol=1e-6)
    chex.assert_trees_all_close(b[0], a[0], atol=1e-6, rtol=1e-6)
    assert not np.allclose(b[1, 5:], a[1, 5:])


@pytest.mark.parametrize("pooling", ["cls", "mean", "attention"])
def test_classifier_pools_unpadded_tokens(pooling, tokens):
    cfg = config(positional="learned", num_classes=3, pooling=pooling)
    model = ajnn.TransformerClassifier(cfg, rngs=nnx.Rngs(5))
    lengths = jnp.array([T, 5], jnp.int32)
    changed = tokens.at[1, 5:].set((tokens[1, 5:] + 3) % V)

    def run(model, a, b):
        return model(a, lengths=lengths), model(b, lengths=lengths)

    a, b = fast_jit(run)(model, tokens, changed)
    chex.assert_shape(a, (B, 3))
    chex.assert_trees_all_close(a, b, atol=1e-6, rtol=1e-6)


def test_encoder_decoder_ignores_source_padding(tokens):
    cfg = config(positional="rope", num_encoder_layers=1, num_decoder_layers=1)
    model = ajnn.EncoderDecoder(cfg, rngs=nnx.Rngs(6))
    src = jax.random.randint(jax.random.key(7), (B, 6), 0, V, dtype=jnp.int32)
    src_lengths = jnp.array([6, 4], jnp.int32)
    changed = src.at[1, 4:].set((src[1, 4:] + 1) % V)

    def run(model, src, changed, tgt):
        return (
            model(src, tgt, src_lengths=src_lengths),
            model(changed, tgt, src_lengths=src_lengths),
            model(changed, tgt),
        )

    a, b, unmasked = fast_jit(run)(model, src, changed, tokens)
    chex.assert_shape(a, (B, T, V))
    chex.assert_trees_all_close(a, b, atol=1e-6, rtol=1e-6)
    assert not np.allclose(unmasked[1], a[1])  # without lengths the padding is attended


def test_classifier_needs_num_classes():
    with pytest.raises(ValueError, match="num_classes must be set"):
        ajnn.TransformerClassifier(config(), rngs=nnx.Rngs(0))


def test_lm_rejects_sequences_longer_than_max_len(alibi_lm):
    with pytest.raises(ValueError, match=r"tokens has length 13, longer than max_len=12"):
        alibi_lm(jnp.zeros((1, MAX_LEN + 1), jnp.int32))
