"""Transformer models: config validation, causality, padding, packing, wiring, parameter
counts, mixed precision and a jitted training step that compiles once."""

import dataclasses
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from nnx_helpers import fast_jit

import attention_jax as aj
from attention_jax import nn as ajnn

V, D, N, K, MAX_LEN, B, T = 11, 16, 4, 2, 12, 2, 8
H, F = D // N, 4 * D


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
    with pytest.raises(
        ValueError,
        match=r"^TransformerConfig: d_model must be divisible by num_heads=4 when head_dim is "
        r"None, got 18\.$",
    ):
        config(d_model=18)
    assert config(d_model=18, head_dim=4).attention_config.head_dim == 4  # explicit is fine


def test_config_num_heads_not_multiple_of_num_kv_heads():
    with pytest.raises(
        ValueError,
        match=r"^TransformerConfig: num_heads must be a multiple of num_kv_heads=3, got 4\.$",
    ):
        config(num_kv_heads=3)


@pytest.mark.parametrize("field", ["positional", "norm", "mlp", "pooling"])
def test_config_unknown_choice_names_the_field(field):
    with pytest.raises(
        ValueError, match=rf"^TransformerConfig: {field} must be one of \(.*\), got 'bogus'\.$"
    ):
        config(**{field: "bogus"})


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(num_heads=0), "num_heads must be an int >= 1, got 0."),
        (dict(vocab_size=2.5), "vocab_size must be an int >= 1, got 2.5."),
        (dict(num_kv_heads=0), "num_kv_heads must be an int >= 1, got 0."),
        (dict(dropout=1.0), "dropout must be a number in [0, 1), got 1.0."),
        (dict(attention_dropout=-0.1), "attention_dropout must be a number in [0, 1), got -0.1."),
        (dict(softcap=0.0), "softcap must be None or a finite number > 0, got 0.0."),
        (
            dict(local_window_size=(1, 2, 3)),
            "local_window_size must be an int >= 0 or a (left, right) pair of them, got (1, 2, 3).",
        ),
        (
            dict(implementation="fast"),
            "implementation must be one of (None, 'xla', 'flash', 'cudnn', 'tokamax'), got 'fast'.",
        ),
        (dict(qk_norm="yes"), "qk_norm must be a bool, got 'yes'."),
        (dict(dtype="float33"), "dtype must be None or a dtype, got 'float33'."),
        (dict(num_classes=0), "num_classes must be an int >= 1, got 0."),
    ],
)
def test_config_messages_in_the_shared_style(kw, message):
    with pytest.raises(ValueError) as info:
        config(**kw)
    assert str(info.value) == "TransformerConfig: " + message


def test_config_normalizer_message():
    with pytest.raises(
        ValueError,
        match=r"^TransformerConfig: normalizer must be one of \(.*\) or a callable, got 'x'\.$",
    ):
        config(normalizer="x")


def test_attention_config_is_derived_from_the_fields_of_the_same_names():
    cfg = config(
        num_kv_heads=None,
        head_dim=8,
        positional="alibi",
        qk_norm=True,
        softcap=30,
        local_window_size=4,
        attention_dropout=0.1,
        use_bias=True,
        normalizer="softmax_one",
        dtype="bfloat16",
    )
    assert cfg.attention_config == ajnn.AttentionConfig(
        num_heads=N,
        num_kv_heads=N,  # resolved
        head_dim=8,
        positional="alibi",
        qk_norm=True,
        softcap=30.0,
        local_window_size=(4, 4),
        attention_dropout=0.1,
        use_bias=True,
        normalizer="softmax_one",
        dtype=jnp.bfloat16,
    )
    assert cfg.softcap == 30.0 and cfg.local_window_size == (4, 4)  # canonical form
    assert config().attention_config.head_dim == H
    assert config().attention_config.num_kv_heads == K
    for positional in ("learned", "sinusoidal", "none"):  # these act outside attention
        assert config(positional=positional).attention_config.positional == "none"
    assert config(positional="t5").attention_config.positional == "t5"


def test_config_json_round_trip_yarn_bfloat16():
    cfg = config(rope_scaling=aj.RopeScaling("yarn", 4.0, 64), dtype=jnp.bfloat16)
    assert ajnn.TransformerConfig.from_json(cfg.to_json()) == cfg


# The attention-variant fields exclude each other in part (e.g. MLA has no value residual);
# tests/test_nn_variants.py and tests/test_nn_linear.py round-trip them.
VARIANT_FIELDS = (
    "attention",
    "kv_latent_dim",
    "rope_head_dim",
    "sinks",
    "attention_gate",
    "value_residual",
    "talking_heads",
    "linear_chunk_size",
    "conv_size",
    "linear_gate_activation",  # gla / gated_deltanet only: round-tripped in test_nn_linear
    "layer_attention",
    "context_parallel",  # needs plain softmax options: round-tripped in test_context_parallel
)


def test_config_json_round_trip_every_field_non_default():
    defaults = {
        f.name: f.default
        for f in dataclasses.fields(ajnn.TransformerConfig)
        if f.name not in VARIANT_FIELDS
    }
    cfg = ajnn.TransformerConfig(
        vocab_size=13,
        d_model=24,
        num_layers=3,
        num_heads=6,
        max_len=40,
        num_kv_heads=3,
        head_dim=8,
        mlp_ratio=2.5,
        positional="t5",
        rope_base=500.0,
        rope_fraction=0.5,
        rope_scaling=aj.RopeScaling("ntk", 2.0),
        t5_num_buckets=16,
        t5_max_distance=64,
        norm="rmsnorm",
        norm_eps=1e-5,
        embedding_norm=True,
        type_vocab_size=2,
        mlp="swiglu",
        prenorm=False,
        dropout=0.1,
        attention_dropout=0.2,
        tie_embeddings=False,
        scale_embeddings=True,
        use_bias=True,
        qkv_bias=True,
        qk_norm=True,
        normalizer="sigmoid",
        softcap=50.0,
        local_window_size=(8, 0),
        num_encoder_layers=2,
        num_decoder_layers=1,
        num_classes=5,
        pooling="attention",
        dtype=jnp.float16,
        param_dtype=jnp.bfloat16,
        implementation="xla",
    )
    assert all(getattr(cfg, name) != default for name, default in defaults.items())
    text = cfg.to_json(indent=2)
    assert ajnn.TransformerConfig.from_json(text) == cfg
    assert json.loads(text)["dtype"] == "float16"


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


def test_logits_to_keep_equals_the_rows_of_the_full_logits(alibi_lm, tokens):
    keep = jnp.array([[T - 1, 0, 3]] * B, jnp.int32).at[1].set(jnp.array([2, 2, 5]))

    def run(model, tokens):
        return model(tokens), model(tokens, logits_to_keep=keep)

    full, kept = fast_jit(run)(alibi_lm, tokens)
    chex.assert_shape(kept, (B, 3, V))
    chex.assert_trees_all_close(kept, jnp.take_along_axis(full, keep[..., None], axis=1))
    with pytest.raises(TypeError, match=r"TransformerLM: logits_to_keep must be an integer"):
        alibi_lm(tokens, logits_to_keep=jnp.zeros((B, 2)))
    with pytest.raises(ValueError, match=r"TransformerLM: logits_to_keep must be of shape "):
        alibi_lm(tokens, logits_to_keep=jnp.zeros((B + 1, 2), jnp.int32))


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


def test_lm_local_window_equals_core_with_that_window(tokens):
    window = (2, 0)
    model = ajnn.TransformerLM(
        config(positional="rope", local_window_size=window), rngs=nnx.Rngs(8)
    )
    assert model.blocks[0].attention.config.local_window_size == window

    def run(model, tokens):
        # The one-layer pre-norm LM spelled out, attention by the core with the window.
        x = model.embedder(tokens, jnp.arange(T))
        block, attention = model.blocks[0], model.blocks[0].attention
        h = block.attention_norm(x)
        q = attention.project_query(h)
        k, v = attention.project_key_value(h)
        out = aj.dot_product_attention(q, k, v, is_causal=True, local_window_size=window)
        x = x + attention.out(out.reshape(B, T, N * H))
        x = x + block.mlp(block.mlp_norm(x))
        want = model.embedder.attend(model.final_norm(x))
        _, inter = nnx.capture(model, nnx.Intermediate)(tokens, sow_weights=True)
        return model(tokens), want, inter["blocks"][0]["attention"]["attention_weights"]

    got, want, weights = fast_jit(run)(model, tokens)
    chex.assert_trees_all_close(got, want, atol=1e-5, rtol=1e-5)
    (w,) = weights.get_value()
    i, j = np.indices((T, T))
    assert np.all(np.asarray(w)[..., (j > i) | (j < i - window[0])] == 0)
    assert np.all(np.asarray(w)[..., (j <= i) & (j >= i - window[0])] > 0)


def test_lm_sequence_lengths_reach_every_layer(tokens):
    model = ajnn.TransformerLM(config(positional="rope", num_layers=2), rngs=nnx.Rngs(9))
    lengths = jnp.array([T, 5], jnp.int32)

    def run(model, tokens):
        _, inter = nnx.capture(model, nnx.Intermediate)(
            tokens, query_seq_lengths=lengths, key_value_seq_lengths=lengths, sow_weights=True
        )
        return [inter["blocks"][i]["attention"]["attention_weights"] for i in range(2)]

    for weights in fast_jit(run)(model, tokens):
        (w,) = np.asarray(weights.get_value())
        assert np.all(w[1, :, 5:, :] == 0)  # padded query rows
        assert np.all(w[1, :, :, 5:] == 0)  # padded keys
        np.testing.assert_allclose(w[0].sum(-1), 1.0, atol=1e-6)  # the full row is untouched


def test_lm_and_encoder_decoder_share_the_decoder_stack():
    lm = ajnn.TransformerLM(config(), rngs=nnx.Rngs(0))
    seq2seq = ajnn.EncoderDecoder(config(), rngs=nnx.Rngs(0))
    assert isinstance(lm, ajnn.DecoderStack) and isinstance(seq2seq.decoder, ajnn.DecoderStack)
    assert type(lm).forward is type(seq2seq.decoder).forward
    assert seq2seq.decoder.blocks[0].cross_attention is not None


def test_block_wiring_pre_and_post_norm():
    x = jax.random.normal(jax.random.key(2), (B, T, D))
    attention = ajnn.AttentionConfig(num_heads=N, head_dim=H)
    pre = ajnn.TransformerBlock(D, attention, rngs=nnx.Rngs(0))
    post = ajnn.TransformerBlock(
        D, attention, prenorm=False, norm="rmsnorm", mlp="relu", rngs=nnx.Rngs(0)
    )

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
    assert cache.layers[0].key.dtype == jnp.bfloat16

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
    with pytest.raises(
        ValueError,
        match=r"^TransformerClassifier: config.num_classes must be an int >= 1, got None\.$",
    ):
        ajnn.TransformerClassifier(config(), rngs=nnx.Rngs(0))


def test_lm_rejects_sequences_longer_than_max_len(alibi_lm):
    with pytest.raises(
        ValueError,
        match=r"^TransformerLM: tokens must have length T <= 12 \(max_len\), got int32 array "
        r"of shape \(1, 13\)\.$",
    ):
        alibi_lm(jnp.zeros((1, MAX_LEN + 1), jnp.int32))


def test_classifier_cls_token_counts_against_max_len():
    model = ajnn.TransformerClassifier(config(num_classes=2), rngs=nnx.Rngs(0))
    with pytest.raises(
        ValueError,
        match=r"^TransformerClassifier: tokens must have length T <= 11 \(max_len - 1: "
        r"pooling='cls' prepends a token\), got int32 array of shape \(1, 12\)\.$",
    ):
        model(jnp.zeros((1, MAX_LEN), jnp.int32))


def test_lm_rejects_float_tokens_and_bad_positions(alibi_lm):
    with pytest.raises(
        TypeError,
        match=r"^TransformerLM: tokens must be an integer array, got float32 array of shape "
        r"\(1, 3\)\.$",
    ):
        alibi_lm(jnp.zeros((1, 3), jnp.float32))
    with pytest.raises(
        ValueError,
        match=r"^TransformerLM: positions must be of shape \[3\] or \[1, 3\], got int32 "
        r"array of shape \(4,\)\.$",
    ):
        alibi_lm(jnp.zeros((1, 3), jnp.int32), positions=jnp.arange(4, dtype=jnp.int32))
    with pytest.raises(
        ValueError,
        match=r"^TransformerLM: query_seq_lengths must be of shape \(1,\), got int32 array of "
        r"shape \(2,\)\.$",
    ):
        alibi_lm(jnp.zeros((1, 3), jnp.int32), query_seq_lengths=jnp.array([1, 2], jnp.int32))


def test_lm_segment_ids_with_cache(alibi_lm):
    with pytest.raises(
        ValueError, match=r"^TransformerLM: segment_ids must be None with a cache, got "
    ):
        alibi_lm(
            jnp.zeros((1, 3), jnp.int32),
            segment_ids=jnp.zeros((1, 3), jnp.int32),
            cache=alibi_lm.init_cache(1),
        )


def test_encoder_padding_mask_must_be_boolean(tokens):
    encoder = ajnn.TransformerEncoder(config(), rngs=nnx.Rngs(0))
    with pytest.raises(
        TypeError,
        match=r"^TransformerEncoder.encode: padding_mask must be a boolean array \(True = "
        r"token\), got int32 array of shape \(2, 8\)\.$",
    ):
        encoder(tokens, padding_mask=jnp.ones((B, T), jnp.int32))


def test_block_and_mlp_messages():
    attention = ajnn.AttentionConfig(num_heads=N, head_dim=H)
    with pytest.raises(
        ValueError,
        match=r"^TransformerBlock: norm must be one of \('layernorm', 'rmsnorm'\), got "
        r"'batchnorm'\.$",
    ):
        ajnn.TransformerBlock(D, attention, norm="batchnorm", rngs=nnx.Rngs(0))
    with pytest.raises(
        ValueError, match=r"^TransformerBlock: dropout must be a number in \[0, 1\), got 2\.$"
    ):
        ajnn.TransformerBlock(D, attention, dropout=2, rngs=nnx.Rngs(0))
    with pytest.raises(
        TypeError, match=r"^TransformerBlock: attention_config must be an AttentionConfig, got 4\.$"
    ):
        ajnn.TransformerBlock(D, N, rngs=nnx.Rngs(0))
    with pytest.raises(
        ValueError,
        match=r"^MLP: kind must be one of \('gelu', 'gelu_exact', 'swiglu', 'relu'\), got 'tanh'\.$",
    ):
        ajnn.MLP(D, F, kind="tanh", rngs=nnx.Rngs(0))
