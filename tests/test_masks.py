"""Tests of the boolean attention masks against NumPy loop references."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from hypothesis import given, settings
from hypothesis import strategies as st

from attention_jax import (
    attention_mask,
    causal_mask,
    combine_masks,
    padding_mask,
    segment_mask,
    sliding_window_mask,
)

LENGTHS = st.integers(1, 6)
SEEDS = st.integers(0, 2**32 - 1)


# ---------------------------------------------------------------------------------------------
# NumPy loop references, [B, 1, T, S]
# ---------------------------------------------------------------------------------------------


def np_mask(
    b,
    t,
    s,
    *,
    q_pos=None,
    kv_pos=None,
    causal=False,
    window=None,
    q_lengths=None,
    kv_lengths=None,
    q_seg=None,
    kv_seg=None,
):
    """The reference: one Python test per (example, query, key)."""
    out = np.ones((b, 1, t, s), bool)
    for bi in range(b):
        for i in range(t):
            for j in range(s):
                qp = i if q_pos is None else np.broadcast_to(q_pos, (b, t))[bi, i]
                kp = j if kv_pos is None else np.broadcast_to(kv_pos, (b, s))[bi, j]
                ok = True
                if causal:
                    ok &= kp <= qp
                if window is not None:
                    left, right = (window, window) if isinstance(window, int) else window
                    ok &= qp - left <= kp <= qp + right
                if q_lengths is not None:
                    ok &= i < q_lengths[bi]
                if kv_lengths is not None:
                    ok &= j < kv_lengths[bi]
                if q_seg is not None:
                    ok &= q_seg[bi, i] == kv_seg[bi, j]
                out[bi, 0, i, j] = ok
    return out


def assert_mask_equal(got, expected, shape=None):
    got = np.asarray(got)
    assert got.dtype == np.bool_
    if shape is not None:
        chex.assert_shape(got, shape)
    np.testing.assert_array_equal(np.broadcast_to(got, expected.shape), expected)


WINDOWS = st.one_of(
    st.integers(0, 4), st.tuples(st.integers(0, 4), st.integers(0, 4)), st.just((7, 0))
)


# ---------------------------------------------------------------------------------------------
# each mask against the reference
# ---------------------------------------------------------------------------------------------


@given(LENGTHS, st.one_of(st.none(), LENGTHS), st.integers(-3, 6))
def test_causal_mask_matches_reference(t, s, offset):
    got = causal_mask(t, s, offset=offset)
    s_ = t if s is None else s
    expected = np_mask(1, t, s_, q_pos=np.arange(t) + offset, causal=True)
    assert_mask_equal(got, expected, (1, 1, t, s_))


def test_causal_mask_defaults_to_lower_triangle():
    np.testing.assert_array_equal(causal_mask(4)[0, 0], np.tril(np.ones((4, 4), bool)))
    # Cached decoding: 2 new queries after 3 cached keys see everything up to themselves.
    np.testing.assert_array_equal(
        causal_mask(2, 5, offset=3)[0, 0], [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    )


@given(st.integers(1, 3), LENGTHS, LENGTHS, SEEDS, st.sampled_from(["both", "q", "kv", "none"]))
def test_padding_mask_matches_reference(b, t, s, seed, which):
    rng = np.random.default_rng(seed)
    q_lengths = rng.integers(0, t + 1, b) if which in ("both", "q") else None
    kv_lengths = rng.integers(0, s + 1, b) if which in ("both", "kv") else None
    got = padding_mask(
        None if q_lengths is None else jnp.asarray(q_lengths),
        None if kv_lengths is None else jnp.asarray(kv_lengths),
        t,
        s,
    )
    expected = np_mask(b, t, s, q_lengths=q_lengths, kv_lengths=kv_lengths)
    shape = (1, 1, t, s) if which == "none" else (b, 1, t, s)
    assert_mask_equal(got, expected, shape)


@given(LENGTHS, LENGTHS, WINDOWS)
def test_sliding_window_mask_matches_reference(t, s, window):
    got = sliding_window_mask(t, s, window)
    assert_mask_equal(got, np_mask(1, t, s, window=window), (1, 1, t, s))


def test_sliding_window_int_is_symmetric_pair():
    np.testing.assert_array_equal(sliding_window_mask(5, 6, 2), sliding_window_mask(5, 6, (2, 2)))
    # A window (left, 0) with left >= T is the causal mask.
    np.testing.assert_array_equal(sliding_window_mask(5, 5, (5, 0)), causal_mask(5))


@given(st.integers(1, 3), LENGTHS, LENGTHS, SEEDS, st.booleans())
def test_segment_mask_matches_reference(b, t, s, seed, self_attention):
    rng = np.random.default_rng(seed)
    q_seg = np.sort(rng.integers(0, 3, (b, t)), axis=-1).astype(np.int32)
    if self_attention:
        got = segment_mask(jnp.asarray(q_seg))
        expected = np_mask(b, t, t, q_seg=q_seg, kv_seg=q_seg)
        assert_mask_equal(got, expected, (b, 1, t, t))
    else:
        kv_seg = rng.integers(0, 3, (b, s)).astype(np.int32)
        got = segment_mask(jnp.asarray(q_seg), jnp.asarray(kv_seg))
        expected = np_mask(b, t, s, q_seg=q_seg, kv_seg=kv_seg)
        assert_mask_equal(got, expected, (b, 1, t, s))


@given(SEEDS, st.integers(0, 4))
@settings(max_examples=8)
def test_combine_masks_is_logical_and(seed, n_none):
    rng = np.random.default_rng(seed)
    shapes = [(2, 1, 3, 4), (1, 1, 3, 4), (3, 1), (4,), (2, 5, 1, 1)]
    masks = [rng.random(sh) < 0.7 for sh in shapes]
    expected = np.ones((2, 5, 3, 4), bool)
    for m in masks:
        expected = expected & m
    args = [jnp.asarray(m) for m in masks] + [None] * n_none
    order = rng.permutation(len(args))
    got = combine_masks(*[args[i] for i in order])
    assert_mask_equal(got, expected, (2, 5, 3, 4))


def test_combine_masks_of_nothing_is_none():
    assert combine_masks() is None
    assert combine_masks(None, None) is None
    m = jnp.asarray([True, False])
    np.testing.assert_array_equal(combine_masks(None, m, None), m)


# ---------------------------------------------------------------------------------------------
# the shared builder
# ---------------------------------------------------------------------------------------------


@st.composite
def builder_cases(draw):
    b = draw(st.integers(1, 2))
    t, s = draw(LENGTHS), draw(LENGTHS)
    rng = np.random.default_rng(draw(SEEDS))
    opts = {}
    if draw(st.booleans()):
        opts["is_causal"] = True
    if draw(st.booleans()):
        opts["local_window_size"] = draw(WINDOWS)
    if draw(st.booleans()):
        opts["query_seq_lengths"] = rng.integers(0, t + 1, b).astype(np.int32)
    if draw(st.booleans()):
        opts["key_value_seq_lengths"] = rng.integers(0, s + 1, b).astype(np.int32)
    if draw(st.booleans()):
        opts["query_segment_ids"] = rng.integers(0, 2, (b, t)).astype(np.int32)
        opts["key_value_segment_ids"] = rng.integers(0, 2, (b, s)).astype(np.int32)
    positions = draw(st.sampled_from(["none", "offset", "batched"]))
    if positions == "offset":
        opts["query_positions"] = np.arange(t, dtype=np.int32) + (s - t)
    elif positions == "batched":
        opts["query_positions"] = (rng.integers(0, s + 1, (b, 1)) + np.arange(t)).astype(np.int32)
        opts["key_value_positions"] = np.broadcast_to(np.arange(s, dtype=np.int32), (b, s)).copy()
    return b, t, s, opts


def _reference_for(b, t, s, opts):
    return np_mask(
        b,
        t,
        s,
        q_pos=opts.get("query_positions"),
        kv_pos=opts.get("key_value_positions"),
        causal=opts.get("is_causal", False),
        window=opts.get("local_window_size"),
        q_lengths=opts.get("query_seq_lengths"),
        kv_lengths=opts.get("key_value_seq_lengths"),
        q_seg=opts.get("query_segment_ids"),
        kv_seg=opts.get("key_value_segment_ids"),
    )


@given(builder_cases())
@settings(max_examples=20)
def test_attention_mask_matches_reference(case):
    b, t, s, opts = case
    got = attention_mask(jnp.arange(t), jnp.arange(s), **opts)
    expected = _reference_for(b, t, s, opts)
    masking = {k for k in opts if k not in ("query_positions", "key_value_positions")}
    if not masking:
        assert got is None
    else:
        assert got.ndim == 4 and np.broadcast_shapes(got.shape, (b, 1, t, s)) == (b, 1, t, s)
        assert_mask_equal(got, expected)


@given(builder_cases(), SEEDS)
@settings(max_examples=12)
def test_attention_mask_on_a_block_is_the_slice_of_the_full_mask(case, seed):
    # The flash path builds the mask per block of rows and columns: the pieces must agree with
    # the full mask.
    b, t, s, opts = case
    opts = {**opts, "is_causal": True}
    rng = np.random.default_rng(seed)
    q0, kv0 = rng.integers(0, t), rng.integers(0, s)
    q1, kv1 = rng.integers(q0 + 1, t + 1), rng.integers(kv0 + 1, s + 1)
    full = np.broadcast_to(_reference_for(b, t, s, opts), (b, 1, t, s))
    block_opts = dict(opts)
    for name, lo, hi in (("query_positions", q0, q1), ("key_value_positions", kv0, kv1)):
        if name in opts:
            block_opts[name] = opts[name][..., lo:hi]
    if "query_segment_ids" in opts:
        block_opts["query_segment_ids"] = opts["query_segment_ids"][:, q0:q1]
        block_opts["key_value_segment_ids"] = opts["key_value_segment_ids"][:, kv0:kv1]
    got = attention_mask(jnp.arange(q0, q1), jnp.arange(kv0, kv1), **block_opts)
    assert_mask_equal(got, full[:, :, q0:q1, kv0:kv1])


# ---------------------------------------------------------------------------------------------
# traced and eager
# ---------------------------------------------------------------------------------------------


class MaskVariantsTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_causal_mask_with_traced_offset(self):
        fn = self.variant(lambda offset: causal_mask(3, 6, offset=offset))
        for offset in (0, 3):
            got = fn(jnp.int32(offset))
            expected = np_mask(1, 3, 6, q_pos=np.arange(3) + offset, causal=True)
            assert_mask_equal(got, expected, (1, 1, 3, 6))

    @chex.variants(with_jit=True, without_jit=True)
    def test_padding_mask(self):
        q_lengths, kv_lengths = np.array([2, 0, 4]), np.array([5, 1, 0])
        got = self.variant(lambda q, kv: padding_mask(q, kv, 4, 5))(q_lengths, kv_lengths)
        assert_mask_equal(got, np_mask(3, 4, 5, q_lengths=q_lengths, kv_lengths=kv_lengths))
        got = self.variant(lambda kv: padding_mask(None, kv, 4, 5))(kv_lengths)
        assert_mask_equal(got, np_mask(3, 4, 5, kv_lengths=kv_lengths), (3, 1, 4, 5))

    @chex.variants(with_jit=True, without_jit=True)
    def test_sliding_window_mask(self):
        got = self.variant(lambda: sliding_window_mask(4, 6, (1, 2)))()
        assert_mask_equal(got, np_mask(1, 4, 6, window=(1, 2)), (1, 1, 4, 6))

    @chex.variants(with_jit=True, without_jit=True)
    def test_segment_mask(self):
        q_seg = np.array([[0, 0, 1, 1], [3, 3, 3, 5]], np.int32)
        kv_seg = np.array([[0, 1, 1], [5, 3, 4]], np.int32)
        got = self.variant(segment_mask)(q_seg, kv_seg)
        assert_mask_equal(got, np_mask(2, 4, 3, q_seg=q_seg, kv_seg=kv_seg), (2, 1, 4, 3))

    @chex.variants(with_jit=True, without_jit=True)
    def test_attention_mask_with_everything(self):
        b, t, s = 2, 3, 5
        opts = dict(
            query_positions=np.array([[2, 3, 4], [1, 2, 3]], np.int32),
            is_causal=True,
            local_window_size=(2, 0),
            query_seq_lengths=np.array([3, 2], np.int32),
            key_value_seq_lengths=np.array([5, 3], np.int32),
            query_segment_ids=np.array([[0, 1, 1], [0, 0, 0]], np.int32),
            key_value_segment_ids=np.array([[0, 0, 1, 1, 1], [0, 0, 0, 1, 1]], np.int32),
        )
        arrays = {k: v for k, v in opts.items() if isinstance(v, np.ndarray)}
        static = {k: v for k, v in opts.items() if k not in arrays}
        fn = self.variant(lambda a: attention_mask(jnp.arange(t), jnp.arange(s), **a, **static))
        assert_mask_equal(fn(arrays), _reference_for(b, t, s, opts))

    @chex.variants(with_jit=True, without_jit=True)
    def test_combine_masks(self):
        a = np.array([[True, False, True]])
        b = np.array([[True], [False]])
        got = self.variant(lambda x, y: combine_masks(x, None, y))(a, b)
        assert_mask_equal(got, a & b, (2, 3))

    # --- errors, raised at trace time ---

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(-1, 2.0, True, None)
    def test_bad_length_raises(self, bad):
        with pytest.raises(ValueError, match=r"causal_mask: q_len must be an int >= 0, got"):
            self.variant(lambda: causal_mask(bad, 3))()
        with pytest.raises(
            ValueError, match=r"sliding_window_mask: kv_len must be an int >= 0, got"
        ):
            self.variant(lambda: sliding_window_mask(3, bad, 1))()

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(((-1, 2),), ((1, -2),), (-1,), ((1.5, 2),), ((True, 1),), ("ab",))
    def test_bad_window_raises(self, window):
        with pytest.raises(
            ValueError,
            match=r"sliding_window_mask: local_window_size must be an int >= 0 or a \(left, right\) pair of them, got",
        ):
            self.variant(lambda: sliding_window_mask(3, 4, window))()

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(((1, 2, 3),), (1.0,), ((4,),))
    def test_window_not_a_pair_raises(self, window):
        with pytest.raises(
            ValueError,
            match=r"attention_mask: local_window_size must be an int >= 0 or a \(left, right\) pair of them, got",
        ):
            self.variant(
                lambda: attention_mask(jnp.arange(3), jnp.arange(4), local_window_size=window)
            )()

    @chex.variants(with_jit=True, without_jit=True)
    def test_float_segment_ids_raise(self):
        with pytest.raises(
            TypeError,
            match=r"segment_mask: query_segment_ids must be an integer array, got float32 array",
        ):
            self.variant(segment_mask)(jnp.zeros((2, 3)))

    @chex.variants(with_jit=True, without_jit=True)
    def test_segment_ids_of_wrong_rank_raise(self):
        with pytest.raises(
            ValueError,
            match=r"segment_mask: key_value_segment_ids must be of shape \[B, T\], got int32 \(3,\)",
        ):
            self.variant(segment_mask)(jnp.zeros((2, 3), jnp.int32), jnp.zeros(3, jnp.int32))

    @chex.variants(with_jit=True, without_jit=True)
    def test_segment_ids_batch_mismatch_raises(self):
        with pytest.raises(
            ValueError,
            match=r"segment_mask: query_segment_ids and key_value_segment_ids must share the batch size, got \(2, 3\) and \(1, 4\)",
        ):
            self.variant(segment_mask)(jnp.zeros((2, 3), jnp.int32), jnp.zeros((1, 4), jnp.int32))

    @chex.variants(with_jit=True, without_jit=True)
    def test_non_boolean_mask_to_combine_raises(self):
        with pytest.raises(
            TypeError,
            match=r"combine_masks: masks must be a boolean array, got int32 array of shape \(2, 3\)",
        ):
            self.variant(combine_masks)(jnp.ones((2, 3), bool), jnp.ones((2, 3), jnp.int32))


def test_masks_work_under_vmap():
    # Per-example lengths mapped over the batch give the batched padding mask.
    lengths = jnp.asarray([1, 3, 0])
    got = jax.vmap(lambda n: padding_mask(n[None], n[None], 3, 4)[0])(lengths)
    assert_mask_equal(got, np_mask(3, 3, 4, q_lengths=[1, 3, 0], kv_lengths=[1, 3, 0]))
