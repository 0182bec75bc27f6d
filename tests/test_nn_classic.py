"""The recurrent models: AdditiveAttention against the functional core and a float64 NumPy
Bahdanau reference; RNNAttentionClassifier shapes, pooling and padding invariance;
Seq2SeqAttention teacher forcing vs greedy decoding, alignments, source padding; gradients,
jit and error messages."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from flax import nnx
from nnx_helpers import dense, fast_jit

import attention_jax as aj
from attention_jax import nn as ajnn

B, T, S = 2, 3, 5
DQ, DK, DV, A = 6, 4, 3, 8


@functools.cache
def build(cls, *args, seed: int = 0, **kw):
    """``cls(*args, **kw)`` with parameters drawn in NumPy: normal, scaled by
    ``1/sqrt(fan_in)`` for kernels (eagerly, each initializer op of each shape would compile
    on its own, which dominates these tiny tests). The constructor still runs (abstractly,
    under ``nnx.eval_shape``); cached per arguments."""
    abstract = nnx.eval_shape(lambda: cls(*args, **kw, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    rng = np.random.default_rng(seed)

    def draw(leaf):
        scale = 1.0 / np.sqrt(leaf.shape[0]) if len(leaf.shape) == 2 else 0.5
        return jnp.asarray(rng.normal(0.0, scale, leaf.shape), leaf.dtype)

    return nnx.merge(graphdef, jax.tree.map(draw, state))


def bahdanau_reference(query, keys, values, w_query, w_key, v, mask=None):
    """float64 NumPy: score_j = v^T tanh(W_q q + W_k k_j), softmax over the unmasked j (a
    row without an unmasked key gets zero weights)."""
    q, k, x = (np.asarray(a, np.float64) for a in (query, keys, values))
    w_query, w_key, v = (np.asarray(a, np.float64) for a in (w_query, w_key, v))
    single = q.ndim == 2
    q = q[:, None] if single else q
    scores = np.tanh((q @ w_query)[:, :, None, :] + (k @ w_key)[:, None, :, :]) @ v  # [B, T, S]
    allowed = np.ones(scores.shape, bool)
    if mask is not None:
        m = np.asarray(mask)
        allowed = np.broadcast_to(m[:, None] if m.ndim == 2 else m, scores.shape)
    scores = np.where(allowed, scores, -np.inf)
    top = np.max(scores, -1, keepdims=True)
    e = np.where(allowed, np.exp(scores - np.where(np.isfinite(top), top, 0)), 0.0)
    total = e.sum(-1, keepdims=True)
    weights = np.where(total > 0, e / np.where(total > 0, total, 1), 0.0)
    out = weights @ x
    return (out[:, 0], weights[:, 0]) if single else (out, weights)


# ------------------------------------------------------------------ AdditiveAttention


def additive_inputs_():
    ks = jax.random.split(jax.random.key(0), 3)
    return (
        jax.random.normal(ks[0], (B, T, DQ)),
        jax.random.normal(ks[1], (B, S, DK)),
        jax.random.normal(ks[2], (B, S, DV)),
    )


@pytest.fixture(scope="module")
def additive_inputs():
    return additive_inputs_()


class AdditiveAttentionTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        ("one_query_masked", True, True), ("queries_unmasked", False, False)
    )
    def test_equals_core_and_numpy_reference(self, single_query, masked):
        query, keys, values = additive_inputs_()
        if single_query:
            query = query[:, 0]
        mask = jnp.array([[True] * S, [True, False, True, False, False]]) if masked else None
        m = build(ajnn.AdditiveAttention, DQ, DK, A, seed=1)
        assert m.w_query.shape == (DQ, A) and m.w_key.shape == (DK, A) and m.v.shape == (A,)

        def run(query, keys, values):
            core = aj.additive_attention(
                query, keys, values, m.core_params(), mask=mask, return_weights=True
            )
            return m(query, keys, values, mask=mask), core

        (out, weights), core = self.variant(run)(query, keys, values)
        lead = (B,) if single_query else (B, T)
        chex.assert_shape([out, weights], [(*lead, DV), (*lead, S)])
        chex.assert_trees_all_close((out, weights), core, atol=0, rtol=0)
        params = (m.w_query[...], m.w_key[...], m.v[...])
        want = bahdanau_reference(query, keys, values, *params, mask)
        chex.assert_trees_all_close((out, weights), want, atol=1e-5, rtol=1e-5)
        if masked:
            assert np.all(np.asarray(weights)[1, ..., [1, 3, 4]] == 0)


def test_additive_masked_keys_do_not_matter(additive_inputs):
    query, keys, values = additive_inputs
    m = build(ajnn.AdditiveAttention, DQ, DK, A, seed=1)
    mask = jnp.arange(S)[None, :] < jnp.array([[S], [2]])
    junk = jax.random.normal(jax.random.key(9), keys.shape) * 10
    keys2 = jnp.where(mask[..., None], keys, junk)
    values2 = jnp.where(mask[..., None], values, junk[..., :DV])
    out, weights = m(query, keys, values, mask)
    out2, weights2 = m(query, keys2, values2, mask)
    chex.assert_trees_all_close((out, weights), (out2, weights2), atol=1e-6, rtol=1e-6)
    assert np.all(np.asarray(weights)[1, :, 2:] == 0)
    chex.assert_trees_all_close(weights.sum(-1), jnp.ones((B, T)), atol=1e-6)
    # values default to the keys
    chex.assert_trees_all_close(m(query, keys), m(query, keys, keys), atol=0, rtol=0)


def test_additive_per_query_mask_and_empty_rows(additive_inputs):
    query, keys, values = additive_inputs
    m = build(ajnn.AdditiveAttention, DQ, DK, A, seed=1)
    mask = jax.random.bernoulli(jax.random.key(10), 0.6, (B, T, S)).at[0, 1].set(False)
    out, weights = m(query, keys, values, mask)
    want = bahdanau_reference(query, keys, values, *m.core_params().values(), mask)
    chex.assert_trees_all_close((out, weights), want, atol=1e-5, rtol=1e-5)
    assert np.all(np.asarray(weights)[~np.asarray(mask)] == 0)
    # a query with no allowed key: zero weights and a zero context, not NaN
    assert np.all(np.asarray(weights)[0, 1] == 0) and np.all(np.asarray(out)[0, 1] == 0)


# ------------------------------------------------------------- RNNAttentionClassifier

C, H, V, E, F = 3, 6, 11, 5, 4
TT = 6  # classifier sequence length
LENGTHS = jnp.array([TT, 3], jnp.int32)


def classifier_inputs(tokens: bool, length: int = TT):
    if tokens:
        return jax.random.randint(jax.random.key(3), (B, length), 0, V)
    return jax.random.normal(jax.random.key(3), (B, length, F))


def make_classifier(tokens: bool, bidirectional: bool = False, pooling: str = "attention"):
    dims = dict(vocab_size=V, embed_dim=E) if tokens else dict(input_dim=F)
    kw = dict(bidirectional=bidirectional, pooling=pooling, seed=4)
    return build(ajnn.RNNAttentionClassifier, C, H, **dims, **kw)


@pytest.mark.parametrize(
    "tokens, bidirectional, pooling",
    [
        (True, False, "attention"),
        (True, True, "attention"),
        (False, True, "last"),
        (True, False, "last"),
    ],
)
def test_classifier_shapes_and_padding_invariance(tokens, bidirectional, pooling):
    m = make_classifier(tokens, bidirectional=bidirectional, pooling=pooling)
    x = classifier_inputs(tokens)
    mask = jnp.arange(TT)[None, :] < LENGTHS[:, None]
    # The second example's padding holds junk: it must not matter.
    x = jnp.where(mask if tokens else mask[..., None], x, 7 if tokens else 100.0)
    attention = pooling == "attention"

    def run(m, x, x_short):
        full = m(x)
        with_lengths = m(x, lengths=LENGTHS, return_weights=attention)
        with_mask = m(x, mask=mask)
        trimmed = m(x_short)  # the second example alone, unpadded
        return full, with_lengths, with_mask, trimmed

    full, with_lengths, with_mask, trimmed = fast_jit(run)(m, x, x[1:, :3])
    logits, weights = with_lengths if attention else (with_lengths, None)
    chex.assert_shape([full, logits, with_mask], (B, C))
    assert logits.dtype == jnp.float32
    chex.assert_trees_all_close(with_mask, logits, atol=1e-6, rtol=1e-6)
    chex.assert_trees_all_close(logits[0], full[0], atol=1e-6, rtol=1e-6)  # no padding
    chex.assert_trees_all_close(logits[1], trimmed[0], atol=1e-5, rtol=1e-5)
    assert not np.allclose(full[1], logits[1])  # the junk padding would have mattered
    if attention:
        chex.assert_shape(weights, (B, TT))
        assert np.all(np.asarray(weights)[1, 3:] == 0)
        chex.assert_trees_all_close(weights.sum(-1), jnp.ones(B), atol=1e-6)


def test_classifier_attention_pooling_equals_reference():
    """The pooled vector is softmax(states q)-weighted states of the LSTM, then the head."""
    m = make_classifier(False)
    x = classifier_inputs(False)

    def run(m, x):
        zeros = jnp.zeros((B, H))
        states = m.rnn(x, initial_carry=(zeros, zeros), seq_lengths=LENGTHS)
        return m(x, lengths=LENGTHS, return_weights=True), states

    (logits, weights), states = fast_jit(run)(m, x)
    states = np.asarray(states, np.float64)
    scores = states @ np.asarray(m.pool_query[...], np.float64)
    valid = np.arange(TT)[None, :] < np.asarray(LENGTHS)[:, None]
    e = np.where(valid, np.exp(scores - scores.max(-1, keepdims=True)), 0)
    want_weights = e / e.sum(-1, keepdims=True)
    pooled = np.einsum("bt,btd->bd", want_weights, states)
    chex.assert_trees_all_close(weights, want_weights, atol=1e-6, rtol=1e-5)
    chex.assert_trees_all_close(logits, dense(m.head, pooled), atol=1e-5, rtol=1e-5)


def test_classifier_gradients_finite_under_jit():
    m = make_classifier(True, bidirectional=True)
    x = classifier_inputs(True)
    labels = jnp.array([0, 2])

    def grad(m, x):
        def loss(m):
            logits = m(x, lengths=LENGTHS)
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

        return nnx.grad(loss)(m)

    g = fast_jit(grad)(m, x)
    chex.assert_tree_all_finite(g)
    assert float(jnp.abs(g["pool_query"][...]).sum()) > 0
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(m, nnx.Param)))
    assert not jax.tree.leaves(nnx.state(m, nnx.Not(nnx.Param)))  # no hidden RNG state


# ------------------------------------------------------------------- Seq2SeqAttention

SV, TV, SE, SH = 9, 10, 5, 6  # source/target vocabulary, embedding, GRU width
SS, ST = 5, 4  # source and target lengths
SRC_LENGTHS = jnp.array([SS, 2], jnp.int32)


@pytest.fixture(scope="module")
def seq2seq():
    m = build(ajnn.Seq2SeqAttention, SV, TV, SE, SH, seed=5)
    src = jax.random.randint(jax.random.key(6), (B, SS), 0, SV)
    src = jnp.where(jnp.arange(SS)[None, :] < SRC_LENGTHS[:, None], src, 3)  # junk padding
    tgt_in = jax.random.randint(jax.random.key(7), (B, ST), 0, TV)
    return m, src, tgt_in


def test_seq2seq_shapes_alignments_and_source_padding(seq2seq):
    m, src, tgt_in = seq2seq

    def run(m, src, tgt_in, src_short, tgt_short):
        padded = m(src, tgt_in, SRC_LENGTHS, return_alignments=True)
        trimmed = m(src_short, tgt_short, return_alignments=True)
        return padded, trimmed, m(src, tgt_in)

    (logits, alignments), (logits1, alignments1), unmasked = fast_jit(run)(
        m, src, tgt_in, src[1:, :2], tgt_in[1:]
    )
    chex.assert_shape([logits, unmasked], (B, ST, TV))
    chex.assert_shape(alignments, (B, ST, SS))
    assert logits.dtype == alignments.dtype == jnp.float32
    chex.assert_trees_all_close(alignments.sum(-1), jnp.ones((B, ST)), atol=1e-6)
    assert np.all(np.asarray(alignments)[1, :, 2:] == 0)
    chex.assert_trees_all_close(logits[1], logits1[0], atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(alignments[1, :, :2], alignments1[0], atol=1e-6, rtol=1e-6)
    chex.assert_trees_all_close(logits[0], unmasked[0], atol=1e-6, rtol=1e-6)
    assert not np.allclose(logits[1], unmasked[1])  # the padding would have mattered


def test_seq2seq_decode_equals_teacher_forcing_of_its_outputs(seq2seq):
    m, src, _ = seq2seq
    max_len, bos = 6, 0

    def run(m, src):
        # Probe run: then pick as eos the token example 0 emits at step 1, so it stops there.
        probe, _ = m.decode(
            src, max_len=max_len, bos_id=bos, eos_id=TV - 1, src_lengths=SRC_LENGTHS
        )
        return probe

    probe = fast_jit(run)(m, src)
    eos = int(probe[0, 1])

    def decode_and_force(m, src):
        tokens, alignments = m.decode(
            src, max_len=max_len, bos_id=bos, eos_id=eos, src_lengths=SRC_LENGTHS
        )
        tgt_in = jnp.concatenate([jnp.full((B, 1), bos, jnp.int32), tokens[:, :-1]], axis=1)
        logits, forced = m(src, tgt_in, SRC_LENGTHS, return_alignments=True)
        return tokens, alignments, logits, forced

    tokens, alignments, logits, forced = fast_jit(decode_and_force)(m, src)
    chex.assert_shape(tokens, (B, max_len))
    chex.assert_shape(alignments, (B, max_len, SS))
    assert tokens.dtype == jnp.int32
    tokens, greedy = np.asarray(tokens), np.asarray(jnp.argmax(logits, -1))
    for b in range(B):
        hits = np.flatnonzero(tokens[b] == eos)
        stop = hits[0] + 1 if hits.size else max_len  # up to and including the first eos
        assert b > 0 or stop <= 2
        np.testing.assert_array_equal(tokens[b, :stop], greedy[b, :stop])
        chex.assert_trees_all_close(alignments[b, :stop], forced[b, :stop], atol=1e-6)
        assert np.all(tokens[b, stop:] == eos)  # eos is sticky
    chex.assert_trees_all_close(alignments.sum(-1), jnp.ones((B, max_len)), atol=1e-6)
    assert np.all(np.asarray(alignments)[1, :, 2:] == 0)


def test_seq2seq_gradients_finite_under_jit(seq2seq):
    m, src, tgt_in = seq2seq
    targets = jnp.roll(tgt_in, -1, axis=1)

    def grad(m, src, tgt_in):
        def loss(m):
            logp = jax.nn.log_softmax(m(src, tgt_in, SRC_LENGTHS))
            return -jnp.mean(jnp.take_along_axis(logp, targets[..., None], -1))

        return nnx.grad(loss)(m)

    g = fast_jit(grad)(m, src, tgt_in)
    chex.assert_tree_all_finite(g)
    for name in ("w_query", "w_key", "v"):
        assert float(jnp.abs(g["attention"][name][...]).sum()) > 0, name
    assert float(jnp.abs(g["init_state"]["kernel"][...]).sum()) > 0
    assert not jax.tree.leaves(nnx.state(m, nnx.Not(nnx.Param)))


# ------------------------------------------------------------------------ bad input


def test_additive_bad_inputs(additive_inputs):
    query, keys, values = additive_inputs
    m = build(ajnn.AdditiveAttention, DQ, DK, A, seed=1)
    with pytest.raises(
        ValueError,
        match=r"^AdditiveAttention: query must be of shape \[B, Dq\] or \[B, T, Dq\] with "
        r"Dq=6 \(query_features\), got float32 array of shape \(2, 3, 4\)\.$",
    ):
        m(keys[:, :T], keys)
    with pytest.raises(
        ValueError,
        match=r"^AdditiveAttention: keys must be of shape \[B, S, Dk\] with Dk=4 "
        r"\(key_features\), got float32 array of shape \(2, 5, 3\)\.$",
    ):
        m(query, values)
    with pytest.raises(
        ValueError,
        match=r"^AdditiveAttention: keys must have leading axes \[B\] of query=\(1,\), got "
        r"float32 array of shape \(2, 5, 4\)\.$",
    ):
        m(query[:1], keys)
    with pytest.raises(
        ValueError,
        match=r"^AdditiveAttention: values must have leading axes \[B, S\] of keys=\(2, 5\), "
        r"got float32 array of shape \(2, 4, 3\)\.$",
    ):
        m(query, keys, values[:, :4])
    with pytest.raises(
        TypeError,
        match=r"^AdditiveAttention: query must be a floating-point array, got int32 array",
    ):
        m(jnp.zeros((B, DQ), jnp.int32), keys)
    with pytest.raises(
        TypeError,
        match=r"^AdditiveAttention: mask must be a boolean array \(True = may attend\), got "
        r"int32 array of shape \(2, 5\)\.$",
    ):
        m(query, keys, mask=jnp.ones((B, S), jnp.int32))
    with pytest.raises(
        ValueError,
        match=r"^AdditiveAttention: mask must be broadcastable to \[B, T, S\]=\(2, 3, 5\), got "
        r"bool array of shape \(2, 4, 5\)\.$",
    ):
        m(query, keys, mask=jnp.ones((B, 4, S), bool))
    with pytest.raises(
        ValueError, match=r"^AdditiveAttention: hidden_features must be an int >= 1, got 0\.$"
    ):
        ajnn.AdditiveAttention(DQ, DK, 0, rngs=nnx.Rngs(0))


def test_classifier_bad_arguments():
    fn = "RNNAttentionClassifier"
    with pytest.raises(
        ValueError,
        match=rf"^{fn}: exactly one of vocab_size \(token inputs\) and input_dim \(float "
        r"inputs\) must be given, got vocab_size=11 and input_dim=4\.$",
    ):
        ajnn.RNNAttentionClassifier(C, H, vocab_size=V, input_dim=F, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=rf"^{fn}: exactly one of vocab_size"):
        ajnn.RNNAttentionClassifier(C, H, rngs=nnx.Rngs(0))
    with pytest.raises(
        ValueError,
        match=rf"^{fn}: embed_dim must be None with float inputs \(input_dim=4; it is for "
        r"token inputs\), got 5\.$",
    ):
        ajnn.RNNAttentionClassifier(C, H, input_dim=F, embed_dim=E, rngs=nnx.Rngs(0))
    with pytest.raises(
        ValueError,
        match=rf"^{fn}: pooling must be one of \('attention', 'last'\), got 'mean'\.$",
    ):
        ajnn.RNNAttentionClassifier(C, H, vocab_size=V, pooling="mean", rngs=nnx.Rngs(0))


def test_classifier_bad_inputs():
    fn = "RNNAttentionClassifier"
    tokens_model, float_model = make_classifier(True), make_classifier(False, pooling="last")
    x = classifier_inputs(True)
    with pytest.raises(
        TypeError,
        match=rf"^{fn}: inputs must be an integer array, got float32 array of shape "
        r"\(2, 6, 4\)\.$",
    ):
        tokens_model(classifier_inputs(False))
    with pytest.raises(
        ValueError,
        match=rf"^{fn}: inputs must be of shape \[B, T, D\] with D=4 \(input_dim\), got "
        r"float32 array of shape \(2, 6, 5\)\.$",
    ):
        float_model(jnp.ones((B, TT, 5)))
    with pytest.raises(
        ValueError,
        match=rf"^{fn}: lengths must be None when mask is given \(pass one of them\), got "
        r"int32 array of shape \(2,\)\.$",
    ):
        tokens_model(x, mask=jnp.ones((B, TT), bool), lengths=LENGTHS)
    with pytest.raises(
        ValueError,
        match=rf"^{fn}: mask must be of shape \[B, T\]=\(2, 6\), got bool array of shape "
        r"\(2, 5\)\.$",
    ):
        tokens_model(x, mask=jnp.ones((B, TT - 1), bool))
    with pytest.raises(
        ValueError,
        match=rf"^{fn}: lengths must be of shape \(2,\), got int32 array of shape \(3,\)\.$",
    ):
        tokens_model(x, lengths=jnp.ones((3,), jnp.int32))
    with pytest.raises(
        ValueError,
        match=rf"^{fn}: return_weights must be False with pooling='last' \(there are no "
        r"attention weights\), got True\.$",
    ):
        float_model(classifier_inputs(False), return_weights=True)


def test_seq2seq_bad_inputs(seq2seq):
    m, src, tgt_in = seq2seq
    with pytest.raises(
        TypeError,
        match=r"^Seq2SeqAttention: src must be an integer array, got float32 array of shape "
        r"\(2, 5\)\.$",
    ):
        m(src.astype(jnp.float32), tgt_in)
    with pytest.raises(
        ValueError,
        match=r"^Seq2SeqAttention: tgt_in must have leading axes \[B\] of src=\(2,\), got "
        r"int32 array of shape \(1, 4\)\.$",
    ):
        m(src, tgt_in[:1])
    with pytest.raises(
        ValueError,
        match=r"^Seq2SeqAttention: src_lengths must be of shape \(2,\), got int32 array of "
        r"shape \(2, 1\)\.$",
    ):
        m(src, tgt_in, SRC_LENGTHS[:, None])
    with pytest.raises(
        ValueError,
        match=r"^Seq2SeqAttention.decode: eos_id must be an int in \[0, 9\] \(tgt_vocab - 1\), "
        r"got 10\.$",
    ):
        m.decode(src, max_len=3, bos_id=0, eos_id=TV)
    with pytest.raises(
        ValueError, match=r"^Seq2SeqAttention.decode: max_len must be an int >= 1, got 0\.$"
    ):
        m.decode(src, max_len=0, bos_id=0, eos_id=1)
    with pytest.raises(
        ValueError, match=r"^Seq2SeqAttention: embed_dim must be an int >= 1, got 0\.$"
    ):
        ajnn.Seq2SeqAttention(SV, TV, 0, SH, rngs=nnx.Rngs(0))
