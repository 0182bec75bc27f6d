"""KV-cache decoding and generation: cached logits equal the full pass, greedy generation
equals argmax decoding with full passes, and bad inputs raise clear errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax
from jax.experimental import checkify
from nnx_helpers import fast_jit

import attention_jax as aj
from attention_jax import nn as ajnn
from attention_jax.nn.generation import _generate

VOCAB, MAX_LEN, B, T, PREFILL, NEW = 11, 12, 2, 8, 3, 5


def lm_config(**kw):
    base = dict(
        vocab_size=VOCAB, d_model=16, num_layers=1, num_heads=4, num_kv_heads=2, max_len=MAX_LEN
    )
    return ajnn.TransformerConfig(**(base | kw))


@pytest.fixture(scope="module")
def tokens():
    return jax.random.randint(jax.random.key(1), (B, T), 0, VOCAB, dtype=jnp.int32)


@pytest.fixture(scope="module")
def rope_lm():
    # Two layers: the cache is threaded through a stack, not just one layer.
    return ajnn.TransformerLM(lm_config(positional="rope", num_layers=2), rngs=nnx.Rngs(0))


@fast_jit
def full_and_cached(model, tokens):
    """Full-pass logits and the same logits from cached decoding: a prefill of PREFILL
    tokens, one 2-token chunk, then one token per ``lax.scan`` step."""
    full = model(tokens)
    cache = model.init_cache(tokens.shape[0], MAX_LEN)
    first, cache = model(tokens[:, :PREFILL], cache=cache)
    chunk, cache = model(tokens[:, PREFILL : PREFILL + 2], cache=cache)

    def step(cache, token):
        logits, cache = model(token[:, None], cache=cache)
        return cache, logits[:, 0]

    cache, rest = lax.scan(step, cache, tokens[:, PREFILL + 2 :].T)
    cached = jnp.concatenate([first, chunk, jnp.swapaxes(rest, 0, 1)], axis=1)
    return full, cached, cache.length


@pytest.mark.parametrize(
    "positional, num_kv_heads, window",
    [
        ("none", 2, None),
        ("sinusoidal", 2, None),
        ("learned", 2, None),
        ("rope", 2, None),
        ("alibi", 2, None),
        ("t5", 2, None),
        ("rope", 1, None),  # multi-query
        ("alibi", 2, (2, 0)),  # sliding window over the cache
    ],
)
def test_cached_decoding_matches_full_pass(positional, num_kv_heads, window, tokens, rope_lm):
    if (positional, num_kv_heads, window) == ("rope", 2, None):
        model = rope_lm
    else:
        cfg = lm_config(positional=positional, num_kv_heads=num_kv_heads, local_window_size=window)
        model = ajnn.TransformerLM(cfg, rngs=nnx.Rngs(0))
    full, cached, length = full_and_cached(model, tokens)
    chex.assert_shape(full, (B, T, VOCAB))
    chex.assert_trees_all_close(cached, full, atol=1e-5, rtol=1e-5)
    assert int(length) == T


def test_cache_structure_stores_kv_heads(rope_lm):
    cache = rope_lm.init_cache(B, 10)
    assert isinstance(cache, ajnn.KVCache)
    assert cache.num_layers == 2
    for layer in cache.layers:
        assert isinstance(layer, ajnn.AttentionCache) and layer.log_forget is None
        chex.assert_shape([layer.key, layer.value], (B, 10, 2, 4))  # K = 2 heads, not N = 4
    assert cache.num_floats_per_token() == 2 * 2 * (2 * 4)
    assert cache.length.dtype == jnp.int32 and cache.length.shape == ()
    assert int(cache.length) == 0


def argmax_decode_full_passes(model, prompt, steps):
    """Greedy decoding by a full forward pass per token (fixed shape: causality makes the
    logits at t independent of the zeros after it)."""
    forward = fast_jit(lambda m, t: m(t))
    t0 = prompt.shape[1]
    buf = jnp.zeros((prompt.shape[0], t0 + steps), jnp.int32).at[:, :t0].set(prompt)
    for t in range(t0, t0 + steps):
        logits = forward(model, buf)
        buf = buf.at[:, t].set(jnp.argmax(logits[:, t - 1], axis=-1))
    return buf


def test_greedy_generate_equals_argmax_of_full_passes(rope_lm, tokens):
    prompt = tokens[:, :PREFILL]
    out = aj.generate(rope_lm, prompt, NEW, temperature=0.0)
    chex.assert_shape(out, (B, PREFILL + NEW))
    np.testing.assert_array_equal(out, argmax_decode_full_passes(rope_lm, prompt, NEW))


def test_generate_compiles_once_per_shape(rope_lm, tokens):
    a = aj.generate(rope_lm, tokens[:, :PREFILL], NEW, temperature=0.0)
    before = _generate._cache_size()
    b = aj.generate(rope_lm, tokens[:, 1 : 1 + PREFILL], NEW, temperature=0.0)
    assert _generate._cache_size() == before
    np.testing.assert_array_equal(a[:, :PREFILL], tokens[:, :PREFILL])
    np.testing.assert_array_equal(b[:, :PREFILL], tokens[:, 1 : 1 + PREFILL])


def test_sample_logits_filters():
    # 200 rows with the same distribution: each row is an independent draw.
    logits = jnp.log(jnp.tile(jnp.array([[0.5, 0.3, 0.15, 0.05]]), (200, 1)))

    @jax.jit
    def draws(key):
        return (
            ajnn.sample_logits(logits, key, top_k=2),
            ajnn.sample_logits(logits, key, top_p=0.7),
            ajnn.sample_logits(logits, key),
        )

    top_k, top_p, plain = map(np.asarray, draws(jax.random.key(0)))
    assert set(top_k) == {0, 1} and set(top_p) == {0, 1}  # 0.5 + 0.3 reaches 0.7
    assert set(plain) == {0, 1, 2, 3}


def test_top_k_1_sampling_is_greedy_and_rows_keep_emitting_eos(rope_lm, tokens):
    prompt = tokens[:, :PREFILL]
    greedy = np.asarray(aj.generate(rope_lm, prompt, NEW, temperature=0.0))
    eos = int(greedy[0, PREFILL])  # the first generated token of row 0 becomes "eos"
    key = jax.random.key(7)
    # top_k=1 leaves one candidate, so sampling must reproduce greedy decoding up to eos.
    out = np.asarray(
        aj.generate(rope_lm, prompt, NEW, rng=key, temperature=1.3, top_k=1, eos_id=eos)
    )
    again = aj.generate(rope_lm, prompt, NEW, rng=key, temperature=1.3, top_k=1, eos_id=eos)
    np.testing.assert_array_equal(out, again)
    for row in range(B):
        new = out[row, PREFILL:]
        hits = np.flatnonzero(new == eos)
        stop = hits[0] if hits.size else NEW
        np.testing.assert_array_equal(new[:stop], greedy[row, PREFILL : PREFILL + stop])
        assert (new[stop:] == eos).all()
    assert (out[0, PREFILL:] == eos).all()


# ------------------------------------------------------------------- encoder-decoder


@pytest.fixture(scope="module")
def seq2seq():
    cfg = lm_config(positional="sinusoidal", prenorm=False, mlp="relu", scale_embeddings=True)
    return ajnn.EncoderDecoder(cfg, rngs=nnx.Rngs(0))


@fast_jit
def encdec_full_and_cached(model, src, src_lengths, tgt):
    full = model(src, tgt, src_lengths=src_lengths)
    cache = model.init_cache(src, MAX_LEN, src_lengths=src_lengths)
    first, cache = model.decode(tgt[:, :PREFILL], cache=cache)

    def step(cache, token):
        logits, cache = model.decode(token[:, None], cache=cache)
        return cache, logits[:, 0]

    cache, rest = lax.scan(step, cache, tgt[:, PREFILL:].T)
    return full, jnp.concatenate([first, jnp.swapaxes(rest, 0, 1)], axis=1)


def test_encoder_decoder_cached_decoding_matches_full_pass(seq2seq, tokens):
    src = jax.random.randint(jax.random.key(2), (B, 6), 0, VOCAB, dtype=jnp.int32)
    src_lengths = jnp.array([6, 4], jnp.int32)
    full, cached = encdec_full_and_cached(seq2seq, src, src_lengths, tokens)
    chex.assert_trees_all_close(cached, full, atol=1e-5, rtol=1e-5)
    out = aj.generate(
        seq2seq, tokens[:, :1], 4, temperature=0.0, src_tokens=src, src_lengths=src_lengths
    )
    chex.assert_shape(out, (B, 5))
    # The first generated token is the argmax of the full pass on the 1-token prefix.
    np.testing.assert_array_equal(out[:, 1], jnp.argmax(full[:, 0], axis=-1))


# ------------------------------------------------------------------------ bad input


def test_prompt_longer_than_max_len(rope_lm):
    with pytest.raises(
        ValueError,
        match=r"^generate: prompt must have length T <= 12 \(max_len\), got int32 array of "
        r"shape \(1, 13\)\.$",
    ):
        aj.generate(rope_lm, jnp.zeros((1, MAX_LEN + 1), jnp.int32), 1, temperature=0.0)


def test_max_new_tokens_overflows_cache(rope_lm):
    with pytest.raises(
        ValueError,
        match=r"^generate: max_new_tokens must be an int in \[0, 8\] \(max_len=12 - prompt "
        r"length 4: the KV cache capacity\), got 9\.$",
    ):
        aj.generate(rope_lm, jnp.zeros((1, 4), jnp.int32), 9, temperature=0.0)


def test_prompt_outside_vocabulary(rope_lm):
    with pytest.raises(
        ValueError,
        match=r"^generate: prompt must be in \[0, 11\) \(vocab_size=11\), got min 1 and max 11 "
        r"in int32 array of shape \(1, 2\)\.$",
    ):
        aj.generate(rope_lm, jnp.array([[1, 11]], jnp.int32), 2, temperature=0.0)


def test_sampling_needs_rng(rope_lm):
    with pytest.raises(
        ValueError,
        match=r"^generate: rng must be a jax.random key when sampling \(temperature > 0\), "
        r"got None\.$",
    ):
        aj.generate(rope_lm, jnp.zeros((1, 2), jnp.int32), 2)


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(top_k=0), "top_k must be an int in [1, 11] (vocab_size), got 0."),
        (dict(top_p=1.5), "top_p must be None or a number in (0, 1], got 1.5."),
        (dict(eos_id=11), "eos_id must be an int in [0, 10] (an id), got 11."),
        (dict(temperature=-1.0), "temperature must be a finite number >= 0, got -1.0."),
        (dict(max_new_tokens=-1), "max_new_tokens must be an int >= 0, got -1."),
    ],
)
def test_generate_messages_in_the_shared_style(rope_lm, kw, message):
    kw = dict(max_new_tokens=2, rng=jax.random.key(0)) | kw
    with pytest.raises(ValueError) as info:
        aj.generate(rope_lm, jnp.zeros((1, 2), jnp.int32), **kw)
    assert str(info.value) == "generate: " + message


def test_validate_tokens_eager():
    aj.validate_tokens(jnp.array([[0, 10]]), VOCAB)
    with pytest.raises(
        ValueError, match=r"^validate_tokens: tokens must be in \[0, 11\) .*got min -1 and max 3"
    ):
        aj.validate_tokens(jnp.array([[-1, 3]]), VOCAB)


def test_validate_tokens_checkify_under_jit(rope_lm):
    def checked_embed(tokens):
        return rope_lm.embedder.token.embedding[...][aj.validate_tokens(tokens, VOCAB)]

    checked = jax.jit(checkify.checkify(checked_embed))
    err, _ = checked(jnp.array([[1, 2, 3]], jnp.int32))
    err.throw()  # in range: no error
    err, _ = checked(jnp.array([[1, 12, 3]], jnp.int32))
    with pytest.raises(
        checkify.JaxRuntimeError, match=r"validate_tokens: tokens must be in \[0, 11\).*max 12"
    ):
        err.throw()


def test_cache_overflow_in_call(rope_lm):
    cache = rope_lm.init_cache(1, 4).with_length(3)  # as after a 3-token prefill
    with pytest.raises(
        ValueError,
        match=r"^TransformerLM: cache must have room for 2 new tokens, got 3 of 4 slots "
        r"filled\.$",
    ):
        rope_lm(jnp.zeros((1, 2), jnp.int32), cache=cache)


def test_init_cache_longer_than_max_len(rope_lm):
    with pytest.raises(
        ValueError,
        match=r"^TransformerLM.init_cache: max_len must be an int in \[1, 12\] \(the model's "
        r"max_len\), got 13\.$",
    ):
        rope_lm.init_cache(1, MAX_LEN + 1)


def test_cache_of_another_model(rope_lm, seq2seq):
    with pytest.raises(
        ValueError, match=r"^TransformerLM: cache must have num_layers=2 layers, got 1\.$"
    ):
        rope_lm(jnp.zeros((1, 1), jnp.int32), cache=seq2seq.decoder.init_cache(1))
    with pytest.raises(
        TypeError,
        match=r"^EncoderDecoder.decode: cache must be an EncoderDecoderCache, got KVCache\.$",
    ):
        seq2seq.decode(jnp.zeros((1, 1), jnp.int32), cache=seq2seq.decoder.init_cache(1))
