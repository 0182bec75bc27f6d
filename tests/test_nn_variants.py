"""The attention variants as model options: every variant is causal in a language model, its
cached decoding equals the full pass (and greedy generation the argmax of full passes), the
layers follow their papers' formulas (checked against float64 NumPy written here), and
combinations without a definition are rejected with a clear error."""

import dataclasses
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

VOCAB, MAX_LEN, B, T, PREFILL, NEW = 11, 12, 2, 8, 3, 4

# One model per variant: (TransformerConfig options, cache floats per token per layer).
VARIANTS = {
    "sinks": (dict(sinks=True), 2 * 2 * 4),
    "gate_headwise": (dict(attention_gate="headwise"), 2 * 2 * 4),
    "gate_elementwise": (dict(attention_gate="elementwise", num_kv_heads=1), 2 * 1 * 4),
    "differential": (dict(attention="differential"), 2 * 2 * 4),
    "forgetting": (dict(attention="forgetting", positional="none"), 2 * 2 * 4 + 4),
    "stick_breaking": (dict(attention="stick_breaking", positional="none"), 2 * 2 * 4),
    "mla": (dict(attention="mla", num_kv_heads=4, kv_latent_dim=6, rope_head_dim=2), 6 + 2),
    "value_residual": (dict(value_residual=True), 2 * 2 * 4),
    "talking_heads": (dict(talking_heads=True), 2 * 2 * 4),
}


def lm_config(**kw):
    base = dict(
        vocab_size=VOCAB,
        d_model=16,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        max_len=MAX_LEN,
        positional="rope",
    )
    return ajnn.TransformerConfig(**(base | kw))


@fast_jit
def full_cached_and_perturbed(model, tokens):
    """Full-pass logits, the same from cached decoding (prefill, then one token per
    ``lax.scan`` step), and the full pass with the last tokens changed."""
    full = model(tokens)
    cache = model.init_cache(tokens.shape[0], MAX_LEN)
    first, cache = model(tokens[:, :PREFILL], cache=cache)

    def step(cache, token):
        logits, cache = model(token[:, None], cache=cache)
        return cache, logits[:, 0]

    cache, rest = lax.scan(step, cache, tokens[:, PREFILL:].T)
    cached = jnp.concatenate([first, jnp.swapaxes(rest, 0, 1)], axis=1)
    perturbed = model(tokens.at[:, 5:].set((tokens[:, 5:] + 3) % VOCAB))
    return full, cached, perturbed


@pytest.fixture(scope="module")
def tokens():
    return jax.random.randint(jax.random.key(1), (B, T), 0, VOCAB, dtype=jnp.int32)


@functools.cache
def variant_model(name):
    options, _ = VARIANTS[name]
    model = ajnn.TransformerLM(lm_config(**options), rngs=nnx.Rngs(0))
    # Nonzero sinks and non-identity head mixes, so that they matter in the checks.
    for param_name in ("sinks", "logits_head_mix", "weights_head_mix"):
        for block in model.blocks:
            param = getattr(block.attention, param_name)
            if param is not None:
                noise = jax.random.normal(jax.random.key(7), param[...].shape)
                param[...] = param[...] + 0.5 * noise
    return model


@pytest.fixture(params=sorted(VARIANTS))
def variant_lm(request):
    return request.param, variant_model(request.param), VARIANTS[request.param][1]


def test_cached_decoding_equals_full_pass_and_is_causal(variant_lm, tokens):
    name, model, floats = variant_lm
    full, cached, perturbed = full_cached_and_perturbed(model, tokens)
    chex.assert_trees_all_close(cached, full, atol=2e-5, rtol=2e-5)
    chex.assert_trees_all_close(perturbed[:, :5], full[:, :5], atol=1e-6, rtol=1e-6)
    assert not np.allclose(perturbed[:, 5:], full[:, 5:]), name
    cache = model.init_cache(B, MAX_LEN)
    assert cache.num_floats_per_token() == 2 * floats  # two layers


# The variants with caches of their own in the default run, the rest under `make test-all`
# (their cached logits equal the full pass above, and greedy decoding follows the logits).
GENERATE_FAST = ("forgetting", "mla")


@pytest.mark.parametrize(
    "name",
    [
        n if n in GENERATE_FAST else pytest.param(n, marks=pytest.mark.slow)
        for n in sorted(VARIANTS)
    ],
)
def test_greedy_generate_equals_argmax_of_full_passes(name, tokens):
    model = variant_model(name)
    prompt = tokens[:, :PREFILL]
    out = aj.generate(model, prompt, NEW, temperature=0.0)
    forward = fast_jit(lambda m, t: m(t))
    buf = jnp.zeros((B, PREFILL + NEW), jnp.int32).at[:, :PREFILL].set(prompt)
    for t in range(PREFILL, PREFILL + NEW):
        buf = buf.at[:, t].set(jnp.argmax(forward(model, buf)[:, t - 1], axis=-1))
    np.testing.assert_array_equal(out, buf)


# ---------------------------------------------------------------------------- the layers


def x_input(d=16, t=7, seed=0):
    return jax.random.normal(jax.random.key(seed), (B, t, d), jnp.float32)


def rms_norm(layer, x, eps=1e-6):
    x = np.asarray(x, np.float64)
    scale = np.asarray(layer.scale[...], np.float64)
    return x / np.sqrt(np.mean(x**2, -1, keepdims=True) + eps) * scale


def causal_softmax_attention(q, k, v, scale, sinks=None):
    """float64 loops: ``q [B, T, N, H]``, ``k, v [B, S, N, *]`` (heads already expanded)."""
    b, t, n, _ = q.shape
    out = np.zeros((b, t, n, v.shape[-1]))
    for bi in range(b):
        for h in range(n):
            for i in range(t):
                logits = np.array([scale * q[bi, i, h] @ k[bi, j, h] for j in range(i + 1)])
                m = logits.max()
                w = np.exp(logits - m)
                denom = w.sum() + (0.0 if sinks is None else np.exp(sinks[h] - m))
                out[bi, i, h] = (w / denom) @ v[bi, : i + 1, h]
    return out


def rope64(x, positions):
    return np.asarray(aj.apply_rope(jnp.asarray(x, jnp.float32), positions), np.float64)


def test_mla_layer_equals_deepseek_v2_equations():
    """MLA (DeepSeek-V2, Sec. 2.1): c = RMSNorm(x W_dkv), k_C = c W_uk, v = c W_uv, a RoPE
    key from x shared by the heads, q = [x W_q, RoPE(x W_qr)]; against float64 loops."""
    n, h, c, r = 4, 4, 6, 2
    cfg = ajnn.AttentionConfig(
        num_heads=n, head_dim=h, attention="mla", kv_latent_dim=c, rope_head_dim=r,
        positional="rope",
    )  # fmt: skip
    layer = ajnn.MultiHeadAttention(16, cfg, rngs=nnx.Rngs(3))
    x = x_input()
    pos = jnp.arange(x.shape[1])
    q = dense(layer.query, x).reshape(B, -1, n, h + r)
    q = np.concatenate([q[..., :h], rope64(q[..., h:], pos)], -1)
    down = dense(layer.kv_down, x)
    latent = rms_norm(layer.kv_norm, down[..., :c])
    k_rope = rope64(down[..., None, c:], pos)  # [B, T, 1, r]
    kv = dense(layer.kv_up, latent).reshape(B, -1, n, 2 * h)
    k = np.concatenate([kv[..., :h], np.broadcast_to(k_rope, (B, x.shape[1], n, r))], -1)
    out = causal_softmax_attention(q, k, kv[..., h:], 1 / math.sqrt(h + r))
    want = dense(layer.out, out.reshape(B, -1, n * h))
    chex.assert_trees_all_close(layer(x, is_causal=True), want.astype(np.float32), atol=2e-5)


def test_differential_layer_equals_the_paper():
    """Diff Transformer (Ye et al. 2024, Eq. 1-3): two softmax maps of the q/k halves,
    lambda = exp(lq1.lk1) - exp(lq2.lk2) + lambda_init, per-head RMSNorm, (1 - lambda_init)."""
    n, h = 2, 8
    cfg = ajnn.AttentionConfig(num_heads=n, head_dim=h, attention="differential")
    layer = ajnn.MultiHeadAttention(16, cfg, layer_index=3, rngs=nnx.Rngs(4))
    lam_init = 0.8 - 0.6 * math.exp(-0.3 * 3)
    assert layer.lambda_init == pytest.approx(lam_init)
    lq = np.asarray(layer.lambda_query[...], np.float64)
    lk = np.asarray(layer.lambda_key[...], np.float64)
    lam = np.exp(lq[0] @ lk[0]) - np.exp(lq[1] @ lk[1]) + lam_init
    chex.assert_trees_all_close(layer.differential_lambda(), np.float32(lam), atol=1e-6)
    x = x_input()
    q = dense(layer.query, x).reshape(B, -1, n, 2, h // 2)
    k = dense(layer.key, x).reshape(B, -1, n, 2, h // 2)
    v = dense(layer.value, x).reshape(B, -1, n, h)
    s = 1 / math.sqrt(h // 2)
    a0 = causal_softmax_attention(q[..., 0, :], k[..., 0, :], v, s)
    a1 = causal_softmax_attention(q[..., 1, :], k[..., 1, :], v, s)
    heads = rms_norm(layer.head_norm, a0 - lam * a1) * (1 - lam_init)
    want = dense(layer.out, heads.reshape(B, -1, n * h))
    chex.assert_trees_all_close(layer(x, is_causal=True), want.astype(np.float32), atol=2e-5)


@pytest.mark.parametrize("gate", ["headwise", "elementwise"])
def test_gated_attention_and_sinks_equal_their_formulas(gate):
    """Gated attention (Qiu et al. 2025): Y * sigmoid(x W_g) per head before the output
    projection; with a learned sink per head in the softmax denominator."""
    n, h = 4, 4
    cfg = ajnn.AttentionConfig(num_heads=n, head_dim=h, attention_gate=gate, sinks=True)
    layer = ajnn.MultiHeadAttention(16, cfg, rngs=nnx.Rngs(5))
    layer.sinks[...] = jnp.array([0.5, -1.0, 2.0, 0.0])
    x = x_input()
    q = dense(layer.query, x).reshape(B, -1, n, h)
    k = dense(layer.key, x).reshape(B, -1, n, h)
    v = dense(layer.value, x).reshape(B, -1, n, h)
    out = causal_softmax_attention(q, k, v, 1 / math.sqrt(h), np.asarray(layer.sinks[...]))
    g = 1 / (1 + np.exp(-dense(layer.gate, x)))
    out = out * g.reshape(B, -1, n, 1 if gate == "headwise" else h)
    want = dense(layer.out, out.reshape(B, -1, n * h))
    chex.assert_trees_all_close(layer(x, is_causal=True), want.astype(np.float32), atol=2e-5)


def test_forgetting_layer_gate_comes_from_the_layer_input():
    """FoX: log f_t = log_sigmoid(x_t w_f + b_f) per head, D_ij = sum_{j<l<=i} log f_l."""
    n, h = 2, 4
    cfg = ajnn.AttentionConfig(num_heads=n, head_dim=h, attention="forgetting")
    layer = ajnn.MultiHeadAttention(16, cfg, rngs=nnx.Rngs(6))
    x = x_input()
    q = dense(layer.query, x).reshape(B, -1, n, h)
    k = dense(layer.key, x).reshape(B, -1, n, h)
    v = dense(layer.value, x).reshape(B, -1, n, h)
    log_f = -np.logaddexp(0.0, -dense(layer.forget_gate, x))  # log_sigmoid: [B, T, N]
    t = x.shape[1]
    out = np.zeros((B, t, n, h))
    for b in range(B):
        for hd in range(n):
            for i in range(t):
                logits = np.array(
                    [q[b, i, hd] @ k[b, j, hd] / 2 + log_f[b, j + 1 : i + 1, hd].sum()
                     for j in range(i + 1)]
                )  # fmt: skip
                w = np.exp(logits - logits.max())
                out[b, i, hd] = (w / w.sum()) @ v[b, : i + 1, hd]
    want = dense(layer.out, out.reshape(B, -1, n * h))
    chex.assert_trees_all_close(layer(x, is_causal=True), want.astype(np.float32), atol=2e-5)


def test_value_residual_mixes_the_first_layer_values():
    """ResFormer (Zhou et al. 2024): v_l <- lambda_1 v_l + lambda_2 v_1, learned, init 0.5."""
    cfg = ajnn.AttentionConfig(num_heads=2, head_dim=4, value_residual=True)
    first = ajnn.MultiHeadAttention(16, cfg, layer_index=0, rngs=nnx.Rngs(0))
    later = ajnn.MultiHeadAttention(16, cfg, layer_index=1, rngs=nnx.Rngs(1))
    assert first.value_residual_lambdas is None
    chex.assert_trees_all_close(later.value_residual_lambdas[...], jnp.array([0.5, 0.5]))
    later.value_residual_lambdas[...] = jnp.array([0.3, 1.7])
    x = x_input()
    y, v_first = first(x, is_causal=True, return_values=True)
    _, v_first_again = first.project_key_value(x)
    chex.assert_trees_all_close(v_first, v_first_again)
    plain = ajnn.MultiHeadAttention(16, dataclasses.replace(cfg, value_residual=False),
                                    rngs=nnx.Rngs(1))  # fmt: skip
    k, v = later.project_key_value(x)
    want = aj.dot_product_attention(
        later.project_query(x), k, 0.3 * v + 1.7 * v_first, is_causal=True
    )
    want = later.out(want.reshape(B, x.shape[1], -1))
    got = later(x, is_causal=True, first_values=v_first)
    chex.assert_trees_all_close(got, want, atol=1e-6)
    del plain
    with pytest.raises(ValueError, match="first_values .* is required with value_residual"):
        later(x, is_causal=True)


def test_talking_heads_mix_logits_and_weights_across_heads():
    """Talking heads (Shazeer et al. 2020): the layer passes its [N, N] mixes to the core."""
    cfg = ajnn.AttentionConfig(num_heads=3, head_dim=4, talking_heads=True)
    layer = ajnn.MultiHeadAttention(12, cfg, rngs=nnx.Rngs(0))
    chex.assert_trees_all_close(layer.logits_head_mix[...], jnp.eye(3))
    layer.logits_head_mix[...] = jax.random.normal(jax.random.key(1), (3, 3))
    layer.weights_head_mix[...] = jax.random.normal(jax.random.key(2), (3, 3))
    x = x_input(12)
    k, v = layer.project_key_value(x)
    want = aj.dot_product_attention(
        layer.project_query(x),
        k,
        v,
        is_causal=True,
        logits_head_mix=layer.logits_head_mix[...],
        weights_head_mix=layer.weights_head_mix[...],
    )
    want = layer.out(want.reshape(B, x.shape[1], -1))
    chex.assert_trees_all_close(layer(x, is_causal=True), want, atol=1e-6)


def test_variants_train_under_grad_and_jit(tokens):
    """Every parameter of a stack of variants gets a finite gradient."""
    cfg = lm_config(attention="differential", sinks=False, attention_gate="headwise",
                    value_residual=True)  # fmt: skip
    model = ajnn.TransformerLM(cfg, rngs=nnx.Rngs(0))

    @fast_jit
    def loss_grad(model, tokens):
        def loss(model):
            logits = model(tokens[:, :-1])
            return -jnp.mean(jax.nn.log_softmax(logits)[..., 0])

        return nnx.grad(loss)(model)

    grads = jax.tree.leaves(loss_grad(model, tokens))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)
    assert sum(float(jnp.abs(g).sum() > 0) for g in grads) == len(grads)


def test_encoders_take_the_bidirectional_variants_and_reject_the_causal_ones():
    cfg = lm_config(attention="differential", value_residual=True, num_classes=3)
    classify = fast_jit(lambda m, t, n: m(t, lengths=n))
    logits = classify(
        ajnn.TransformerClassifier(cfg, rngs=nnx.Rngs(0)),
        jnp.ones((B, 5), jnp.int32),
        jnp.array([5, 3]),
    )
    chex.assert_shape(logits, (B, 3))
    seq2seq = ajnn.EncoderDecoder(lm_config(attention="mla", num_kv_heads=4, kv_latent_dim=6,
                                            rope_head_dim=2), rngs=nnx.Rngs(0))  # fmt: skip
    assert seq2seq.decoder.blocks[0].cross_attention.config.attention == "softmax"
    for kind in ("forgetting", "stick_breaking"):
        with pytest.raises(ValueError, match=f"attention must not be '{kind}' in a bidir"):
            ajnn.TransformerEncoder(lm_config(attention=kind), rngs=nnx.Rngs(0))


def test_config_round_trips_the_variant_fields():
    cfg = lm_config(attention="mla", num_kv_heads=4, kv_latent_dim=6, rope_head_dim=2,
                    sinks=True, attention_gate="elementwise", talking_heads=True)  # fmt: skip
    assert ajnn.TransformerConfig.from_json(cfg.to_json()) == cfg
    assert cfg.attention_config.kv_latent_dim == 6
    cfg = lm_config(attention="differential", value_residual=True, attention_gate="headwise")
    assert ajnn.TransformerConfig.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(attention="mamba"), "attention must be one of ('softmax', 'differential'"),
        (dict(attention_gate="channel"), "attention_gate must be one of (None, 'headwise'"),
        (dict(sinks=1), "sinks must be a bool, got 1"),
        (dict(attention="mla", num_kv_heads=4), "kv_latent_dim must be an int >= 1 with "
         "attention='mla' (the width of the shared key/value latent), got None."),
        (dict(attention="mla", kv_latent_dim=6, rope_head_dim=2),
         "num_kv_heads must equal num_heads=4 with attention='mla'"),
        (dict(attention="mla", num_kv_heads=4, kv_latent_dim=6),
         "rope_head_dim must be an int >= 1 with attention='mla' and positional='rope'"),
        (dict(attention="mla", num_kv_heads=4, kv_latent_dim=6, rope_head_dim=2,
              positional="alibi"), "rope_head_dim must be None with positional='alibi'"),
        (dict(attention="mla", num_kv_heads=4, kv_latent_dim=6, rope_head_dim=2,
              value_residual=True), "value_residual must be False with attention='mla'"),
        (dict(kv_latent_dim=8), "kv_latent_dim must be None unless attention='mla', got 8."),
        (dict(attention="differential", head_dim=5, positional="none"),
         "head_dim must be even with attention='differential'"),
        (dict(attention="differential", positional="alibi"),
         "positional must be 'none' or 'rope' with attention='differential'"),
        (dict(attention="forgetting", sinks=True),
         "sinks must be False with attention='forgetting' (its core function has no such "
         "option), got True."),
        (dict(attention="stick_breaking", local_window_size=4),
         "local_window_size must be None with attention='stick_breaking'"),
        (dict(attention="stick_breaking", implementation="flash"),
         "implementation must be None with attention='stick_breaking'"),
        (dict(attention="differential", normalizer="sigmoid"),
         "normalizer must be 'softmax' with attention='differential'"),
        (dict(talking_heads=True, implementation="flash"),
         "implementation must be None or 'xla' with talking_heads=True"),
        (dict(sinks=True, normalizer="sparsemax"), "normalizer must be 'softmax' with sinks"),
    ],
)  # fmt: skip
def test_config_rejects_undefined_combinations(options, message):
    with pytest.raises(ValueError, match="^TransformerConfig: " + re.escape(message)):
        lm_config(**options)


def test_layer_call_errors_name_the_argument():
    fox = ajnn.MultiHeadAttention.create(16, 2, attention="forgetting", rngs=nnx.Rngs(0))
    x = x_input()
    with pytest.raises(ValueError, match=re.escape(
        "MultiHeadAttention: is_causal must be True with attention='forgetting', got False."
    )):  # fmt: skip
        fox(x)
    with pytest.raises(ValueError, match="attention='forgetting' is self-attention only"):
        fox(x, x_input(seed=1), is_causal=True)
    sb = ajnn.MultiHeadAttention.create(16, 2, attention="stick_breaking", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=re.escape(
        "MultiHeadAttention: query_seq_lengths is not supported with "
        "attention='stick_breaking' (its core function has no such argument)"
    )):  # fmt: skip
        sb(x, is_causal=True, query_seq_lengths=jnp.array([3, 4]))
    with pytest.raises(
        TypeError,
        match="cache must be an AttentionCache for attention='stick_breaking', got LatentCache",
    ):
        sb(x, is_causal=True, cache=ajnn.LatentCache(jnp.zeros((B, 9, 3)),
                                                     jnp.zeros((B, 9, 0)), jnp.int32(0)))  # fmt: skip


def test_no_two_parameters_share_a_buffer():
    """Training steps donate every parameter: a buffer shared by two parameters (one array
    used for two initial values) would be donated twice."""
    for name in VARIANTS:
        options, _ = VARIANTS[name]
        model = ajnn.TransformerLM(lm_config(**options), rngs=nnx.Rngs(0))
        leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
        assert len({x.unsafe_buffer_pointer() for x in leaves}) == len(leaves), name
        cache = jax.tree.leaves(model.init_cache(1, 4))
        arrays = [x for x in cache if x.ndim]
        assert len({x.unsafe_buffer_pointer() for x in arrays}) == len(arrays), name
