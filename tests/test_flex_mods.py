"""attention_jax.flex score_mod / mask_mod helpers against float64 NumPy loop references.

Each mod is evaluated on the full ``[B, N, T, S]`` grid with nested ``jax.vmap`` (as the
attention functions apply it) and compared with the formula written out with loops.
"""

import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import attention_jax as aj
from attention_jax import flex

B, N = 2, 3
Q_POS = np.arange(5) + 3  # T = 5 queries at positions 3..7 (as after a cache of 3)
KV_POS = np.arange(9)  # S = 9 keys
T, S = len(Q_POS), len(KV_POS)
ATOL = RTOL = 1e-6


def grid(mod, batch, heads, q_positions, kv_positions, scores=None):
    """``mod`` on every ``(b, h, q, kv)`` through nested vmaps: ``[B, N, T, S]``.

    With ``scores`` (``[B, N, T, S]``) ``mod`` is a score_mod, otherwise a mask_mod.
    """
    b = jnp.arange(batch, dtype=jnp.int32)
    h = jnp.arange(heads, dtype=jnp.int32)
    q = jnp.asarray(q_positions, jnp.int32)
    kv = jnp.asarray(kv_positions, jnp.int32)
    if scores is None:
        f = mod
        for axes in [(None, None, None, 0), (None, None, 0, None), (None, 0, None, None)]:
            f = jax.vmap(f, in_axes=axes)
        return jax.jit(jax.vmap(f, in_axes=(0, None, None, None)))(b, h, q, kv)
    f = mod
    for axes in [(0, None, None, None, 0), (0, None, None, 0, None), (0, None, 0, None, None)]:
        f = jax.vmap(f, in_axes=axes)
    return jax.jit(jax.vmap(f, in_axes=(0, 0, None, None, None)))(scores, b, h, q, kv)


def broadcast(mod, batch, heads, q_positions, kv_positions, scores=None):
    """``mod`` called once on broadcasting index arrays (no vmap), ``[B, N, T, S]``."""
    b = jnp.arange(batch, dtype=jnp.int32)[:, None, None, None]
    h = jnp.arange(heads, dtype=jnp.int32)[None, :, None, None]
    q = jnp.asarray(q_positions, jnp.int32)[None, None, :, None]
    kv = jnp.asarray(kv_positions, jnp.int32)[None, None, None, :]
    shape = (batch, heads, len(q_positions), len(kv_positions))
    if scores is None:
        return jax.jit(lambda *a: jnp.broadcast_to(mod(*a), shape))(b, h, q, kv)
    return jax.jit(lambda *a: jnp.broadcast_to(mod(*a), shape))(scores, b, h, q, kv)


def random_scores(seed, t=T, s=S):
    return jnp.asarray(3.0 * np.random.default_rng(seed).normal(size=(B, N, t, s)), jnp.float32)


def ref_loop(fn, q_pos=Q_POS, kv_pos=KV_POS):
    """``out[b, h, i, j] = fn(b, h, i, j, q_pos[i], kv_pos[j])`` with Python loops."""
    out = np.zeros((B, N, len(q_pos), len(kv_pos)))
    for b in range(B):
        for h in range(N):
            for i in range(len(q_pos)):
                for j in range(len(kv_pos)):
                    out[b, h, i, j] = fn(b, h, i, j, int(q_pos[i]), int(kv_pos[j]))
    return out


def ref_t5_bucket(rel, bidirectional, num_buckets, max_distance):
    """Hugging Face's ``_relative_position_bucket`` for one Python int (key - query)."""
    n = -rel
    shift = 0
    if bidirectional:
        per_direction = num_buckets // 2
        if n < 0:
            shift = per_direction
        n = abs(n)
    else:
        per_direction = num_buckets
        n = max(n, 0)
    exact = per_direction // 2
    if n < exact:
        return shift + n
    large = exact + int(
        math.log(n / exact) / math.log(max_distance / exact) * (per_direction - exact)
    )
    return shift + min(large, per_direction - 1)


def assert_mask(got, want):
    chex.assert_shape(got, want.shape)
    assert got.dtype == jnp.bool_
    chex.assert_trees_all_equal(np.asarray(got), want.astype(bool))


def assert_close(got, want):
    chex.assert_shape(got, want.shape)
    chex.assert_trees_all_close(np.asarray(got, np.float64), want, atol=ATOL, rtol=RTOL)


# -------------------------------------------------------------------------- mask mods


def test_noop_and_causal():
    assert_mask(grid(flex.noop_mask_mod, B, N, Q_POS, KV_POS), ref_loop(lambda *a: True))
    want = ref_loop(lambda b, h, i, j, p, q: q <= p)
    assert_mask(grid(flex.causal_mask_mod, B, N, Q_POS, KV_POS), want)
    # Queries at positions S - T .. S - 1 are aj.causal_mask with offset S - T.
    t, s = 4, 7
    got = grid(flex.causal_mask_mod, 1, 1, np.arange(t) + s - t, np.arange(s))
    chex.assert_trees_all_equal(got, aj.causal_mask(t, s, offset=s - t))


@pytest.mark.parametrize("left, right", [(0, 0), (2, 0), (1, 3), (0, 2), (20, 20)])
def test_sliding_window(left, right):
    mod = flex.sliding_window_mask_mod(left, right)
    want = ref_loop(lambda b, h, i, j, p, q: p - left <= q <= p + right)
    assert_mask(grid(mod, B, N, Q_POS, KV_POS), want)
    # The same keys as local_window_size=(left, right) with default positions.
    t, s = 5, 8
    got = grid(mod, 1, 1, np.arange(t), np.arange(s))
    chex.assert_trees_all_equal(got, aj.sliding_window_mask(t, s, (left, right)))


def test_sliding_window_default_right_is_causal_window():
    want = ref_loop(lambda b, h, i, j, p, q: p - 2 <= q <= p)
    assert_mask(grid(flex.sliding_window_mask_mod(2), B, N, Q_POS, KV_POS), want)


def test_document_mask_mod():
    rng = np.random.default_rng(0)
    t, s = 5, 7
    q_ids = np.sort(rng.integers(0, 3, (B, t)), axis=1).astype(np.int32)
    kv_ids = np.sort(rng.integers(0, 3, (B, s)), axis=1).astype(np.int32)
    q_pos, kv_pos = np.arange(t), np.arange(s)

    want = ref_loop(lambda b, h, i, j, p, q: q_ids[b, p] == kv_ids[b, q], q_pos, kv_pos)
    assert_mask(grid(flex.document_mask_mod(q_ids, kv_ids), B, N, q_pos, kv_pos), want)
    chex.assert_trees_all_equal(  # the same as aj.segment_mask on the default positions
        grid(flex.document_mask_mod(q_ids, kv_ids), B, 1, q_pos, kv_pos),
        aj.segment_mask(q_ids, kv_ids),
    )

    # Self-attention default, positions out of order: ids are read at the positions.
    pos = np.array([4, 0, 2, 3, 1])
    want = ref_loop(lambda b, h, i, j, p, q: q_ids[b, p] == q_ids[b, q], pos, pos)
    assert_mask(grid(flex.document_mask_mod(q_ids), B, N, pos, pos), want)

    # 1-D ids are shared by the batch.
    want = ref_loop(lambda b, h, i, j, p, q: q_ids[0, p] == kv_ids[1, q], q_pos, kv_pos)
    assert_mask(grid(flex.document_mask_mod(q_ids[0], kv_ids[1]), B, N, q_pos, kv_pos), want)


def test_prefix_lm_mask_mod():
    lengths = np.array([0, 6], np.int32)
    want = ref_loop(lambda b, h, i, j, p, q: q < lengths[b] or q <= p)
    assert_mask(grid(flex.prefix_lm_mask_mod(lengths), B, N, Q_POS, KV_POS), want)
    # A Python int (and a scalar array) serves every example.
    want = ref_loop(lambda b, h, i, j, p, q: q < 8 or q <= p)
    assert_mask(grid(flex.prefix_lm_mask_mod(8), B, N, Q_POS, KV_POS), want)
    assert_mask(grid(flex.prefix_lm_mask_mod(jnp.int32(8)), B, N, Q_POS, KV_POS), want)
    # 0 is plain causal.
    want = ref_loop(lambda b, h, i, j, p, q: q <= p)
    assert_mask(grid(flex.prefix_lm_mask_mod(0), B, N, Q_POS, KV_POS), want)


def _pattern_mod(pattern):
    """A mask_mod reading a fixed ``[T, S]`` boolean pattern at (q_idx, kv_idx)."""
    pattern = jnp.asarray(pattern)
    return lambda b, h, q_idx, kv_idx: pattern[q_idx, kv_idx]


def test_and_or_truth_tables():
    # Over a 2x2 grid the two patterns take every combination (F,F), (F,T), (T,F), (T,T).
    a = np.array([[False, False], [True, True]])
    c = np.array([[False, True], [False, True]])
    pos = np.arange(2)
    a_mod, c_mod = _pattern_mod(a), _pattern_mod(c)
    tile = lambda m: np.broadcast_to(m, (B, N, 2, 2))  # noqa: E731
    assert_mask(grid(flex.and_masks(a_mod, c_mod), B, N, pos, pos), tile(a & c))
    assert_mask(grid(flex.or_masks(a_mod, c_mod), B, N, pos, pos), tile(a | c))
    assert_mask(grid(flex.and_masks(a_mod), B, N, pos, pos), tile(a))
    assert_mask(grid(flex.or_masks(c_mod), B, N, pos, pos), tile(c))
    # No mods: and -> always True, or -> always False (PyTorch's convention).
    assert_mask(grid(flex.and_masks(), B, N, pos, pos), tile(np.ones((2, 2), bool)))
    assert_mask(grid(flex.or_masks(), B, N, pos, pos), tile(np.zeros((2, 2), bool)))


def test_combined_masks_nest():
    lengths = np.array([4, 6], np.int32)
    mod = flex.or_masks(
        flex.and_masks(flex.causal_mask_mod, flex.sliding_window_mask_mod(1)),
        flex.prefix_lm_mask_mod(lengths),
    )
    want = ref_loop(lambda b, h, i, j, p, q: (p - 1 <= q <= p) or q < lengths[b] or q <= p)
    assert_mask(grid(mod, B, N, Q_POS, KV_POS), want)
    mod = flex.and_masks(flex.sliding_window_mask_mod(2, 1), flex.prefix_lm_mask_mod(lengths))
    want = ref_loop(lambda b, h, i, j, p, q: (p - 2 <= q <= p + 1) and (q < lengths[b] or q <= p))
    assert_mask(grid(mod, B, N, Q_POS, KV_POS), want)


def test_traced_captured_arrays_under_jit():
    rng = np.random.default_rng(1)
    t, s = 5, 7
    q_ids = rng.integers(0, 2, (B, t)).astype(np.int32)
    kv_ids = rng.integers(0, 2, (B, s)).astype(np.int32)
    lengths = np.array([2, 5], np.int32)
    q_pos, kv_pos = np.arange(t), np.arange(s)

    @jax.jit
    def masks(q_ids, kv_ids, lengths):
        mod = flex.and_masks(
            flex.document_mask_mod(q_ids, kv_ids), flex.prefix_lm_mask_mod(lengths)
        )
        return grid(mod, B, N, q_pos, kv_pos)

    want = ref_loop(
        lambda b, h, i, j, p, q: q_ids[b, p] == kv_ids[b, q] and (q < lengths[b] or q <= p),
        q_pos,
        kv_pos,
    )
    assert_mask(masks(q_ids, kv_ids, lengths), want)

    @jax.jit
    def scores(slopes, table, x):
        mod = flex.compose_score_mods(
            flex.alibi_score_mod(slopes), flex.relative_position_score_mod(table, max_distance=2)
        )
        return grid(mod, B, N, Q_POS, KV_POS, x)

    slopes = np.asarray(aj.alibi_slopes(N))
    table = rng.normal(size=(N, 5)).astype(np.float32)
    x = random_scores(2)
    xs = np.asarray(x, np.float64)
    want = ref_loop(
        lambda b, h, i, j, p, q: (
            xs[b, h, i, j] - float(slopes[h]) * abs(p - q) + table[h, min(max(q - p, -2), 2) + 2]
        )
    )
    assert_close(scores(slopes, table, x), want)


# ------------------------------------------------------------------------- score mods


def test_alibi_score_mod():
    slopes = np.asarray(aj.alibi_slopes(N), np.float64)
    x = random_scores(0)
    xs = np.asarray(x, np.float64)
    want = ref_loop(lambda b, h, i, j, p, q: xs[b, h, i, j] - slopes[h] * abs(p - q))
    assert_close(grid(flex.alibi_score_mod(aj.alibi_slopes(N)), B, N, Q_POS, KV_POS, x), want)


def test_alibi_score_mod_equals_alibi_bias():
    slopes = aj.alibi_slopes(N)
    zeros = jnp.zeros((B, N, len(Q_POS), len(KV_POS)), jnp.float32)
    got = grid(flex.alibi_score_mod(slopes), B, N, Q_POS, KV_POS, zeros)
    bias = aj.alibi_bias(slopes, Q_POS, KV_POS)  # [N, T, S]
    chex.assert_trees_all_equal(got, jnp.broadcast_to(bias, got.shape))


def test_softcap_score_mod():
    x = random_scores(1) * 10
    xs = np.asarray(x, np.float64)
    want = ref_loop(lambda b, h, i, j, p, q: 5.0 * np.tanh(xs[b, h, i, j] / 5.0))
    got = grid(flex.softcap_score_mod(5.0), B, N, Q_POS, KV_POS, x)
    assert_close(got, want)
    chex.assert_trees_all_close(got, aj.softcap(x, 5.0), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize(
    "bidirectional, num_buckets, max_distance",
    [(True, 8, 20), (False, 6, 20), (True, 32, 128), (True, 9, 5)],
)
def test_t5_score_mod(bidirectional, num_buckets, max_distance):
    q_pos = np.arange(0, 45, 4)  # T = 12 queries spread over 0..44
    kv_pos = np.arange(0, 45, 3)  # S = 15 keys
    table = np.random.default_rng(3).normal(size=(num_buckets, N)).astype(np.float32)
    x = random_scores(3, len(q_pos), len(kv_pos))
    xs = np.asarray(x, np.float64)
    mod = flex.t5_score_mod(table, bidirectional=bidirectional, max_distance=max_distance)

    def ref(b, h, i, j, p, q):
        return (
            xs[b, h, i, j]
            + table[ref_t5_bucket(q - p, bidirectional, num_buckets, max_distance), h]
        )

    got = grid(mod, B, N, q_pos, kv_pos, x)
    assert_close(got, ref_loop(ref, q_pos, kv_pos))
    # With zero scores: the values of aj.t5_relative_bias.
    bias = aj.t5_relative_bias(
        table, q_pos, kv_pos, bidirectional=bidirectional, max_distance=max_distance
    )
    got = grid(mod, B, N, q_pos, kv_pos, jnp.zeros_like(x))
    chex.assert_trees_all_equal(got, jnp.broadcast_to(bias, got.shape))


@pytest.mark.parametrize("max_distance", [0, 1, 3])
def test_relative_position_score_mod(max_distance):
    d = max_distance
    table = np.random.default_rng(4).normal(size=(N, 2 * d + 1)).astype(np.float32)
    x = random_scores(4)
    xs = np.asarray(x, np.float64)
    want = ref_loop(lambda b, h, i, j, p, q: xs[b, h, i, j] + table[h, min(max(q - p, -d), d) + d])
    got = grid(flex.relative_position_score_mod(table, max_distance=d), B, N, Q_POS, KV_POS, x)
    assert_close(got, want)


def test_compose_score_mods_order():
    slopes = np.asarray(aj.alibi_slopes(N), np.float64)
    x = random_scores(5)
    xs = np.asarray(x, np.float64)
    alibi, cap = flex.alibi_score_mod(aj.alibi_slopes(N)), flex.softcap_score_mod(2.0)

    want = ref_loop(
        lambda b, h, i, j, p, q: 2.0 * np.tanh((xs[b, h, i, j] - slopes[h] * abs(p - q)) / 2.0)
    )
    assert_close(grid(flex.compose_score_mods(alibi, cap), B, N, Q_POS, KV_POS, x), want)
    want = ref_loop(
        lambda b, h, i, j, p, q: 2.0 * np.tanh(xs[b, h, i, j] / 2.0) - slopes[h] * abs(p - q)
    )
    assert_close(grid(flex.compose_score_mods(cap, alibi), B, N, Q_POS, KV_POS, x), want)
    # No mods: the identity.
    chex.assert_trees_all_equal(grid(flex.compose_score_mods(), B, N, Q_POS, KV_POS, x), x)


# --------------------------------------------------------------------------- gradients


def test_gradient_of_relative_position_table():
    d = 2
    rng = np.random.default_rng(6)
    table = rng.normal(size=(N, 2 * d + 1)).astype(np.float32)
    cot = rng.normal(size=(B, N, len(Q_POS), len(KV_POS))).astype(np.float32)
    x = random_scores(6)

    def loss(table):
        mod = flex.relative_position_score_mod(table, max_distance=d)
        return jnp.sum(cot * grid(mod, B, N, Q_POS, KV_POS, x))

    want = np.zeros((N, 2 * d + 1))
    for b in range(B):
        for h in range(N):
            for i, p in enumerate(Q_POS):
                for j, q in enumerate(KV_POS):
                    want[h, min(max(q - p, -d), d) + d] += cot[b, h, i, j]
    assert_close(jax.grad(loss)(table), want)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_gradient_of_t5_table(bidirectional):
    num_buckets, max_distance = 8, 6
    rng = np.random.default_rng(7)
    table = rng.normal(size=(num_buckets, N)).astype(np.float32)
    cot = rng.normal(size=(B, N, len(Q_POS), len(KV_POS))).astype(np.float32)
    x = random_scores(7)

    def loss(table):
        mod = flex.t5_score_mod(table, bidirectional=bidirectional, max_distance=max_distance)
        return jnp.sum(cot * grid(mod, B, N, Q_POS, KV_POS, x))

    want = np.zeros((num_buckets, N))
    for b in range(B):
        for h in range(N):
            for i, p in enumerate(Q_POS):
                for j, q in enumerate(KV_POS):
                    bucket = ref_t5_bucket(q - p, bidirectional, num_buckets, max_distance)
                    want[bucket, h] += cot[b, h, i, j]
    assert_close(jax.jit(jax.grad(loss))(table), want)


def test_gradient_of_alibi_slopes_and_scores():
    rng = np.random.default_rng(8)
    slopes = np.asarray(aj.alibi_slopes(N))
    cot = rng.normal(size=(B, N, len(Q_POS), len(KV_POS))).astype(np.float32)
    x = random_scores(8)
    mod = lambda s: flex.compose_score_mods(flex.alibi_score_mod(s), flex.softcap_score_mod(3.0))  # noqa: E731

    def loss(slopes, x):
        return jnp.sum(cot * grid(mod(slopes), B, N, Q_POS, KV_POS, x))

    g_slopes, g_x = jax.grad(loss, argnums=(0, 1))(slopes, x)
    xs = np.asarray(x, np.float64)
    want_slopes = np.zeros(N)
    want_x = np.zeros(xs.shape)
    for b in range(B):
        for h in range(N):
            for i, p in enumerate(Q_POS):
                for j, q in enumerate(KV_POS):
                    biased = xs[b, h, i, j] - float(slopes[h]) * abs(p - q)
                    dcap = 1.0 - np.tanh(biased / 3.0) ** 2  # d/ds 3 tanh(s / 3)
                    want_x[b, h, i, j] = cot[b, h, i, j] * dcap
                    want_slopes[h] -= cot[b, h, i, j] * dcap * abs(p - q)
    chex.assert_trees_all_close(g_slopes, want_slopes, atol=1e-4, rtol=1e-5)
    assert_close(g_x, want_x)


# ---------------------------------------------------------- broadcasting index arrays


def test_mods_accept_broadcasting_index_arrays():
    rng = np.random.default_rng(9)
    ids = rng.integers(0, 2, (B, 12)).astype(np.int32)  # indexed at positions up to 11
    x = random_scores(9)
    masks = [
        flex.noop_mask_mod,
        flex.causal_mask_mod,
        flex.sliding_window_mask_mod(2, 1),
        flex.document_mask_mod(ids),
        flex.document_mask_mod(ids[0]),
        flex.prefix_lm_mask_mod(np.array([2, 6], np.int32)),
        flex.prefix_lm_mask_mod(4),
        flex.and_masks(flex.causal_mask_mod, flex.noop_mask_mod),
        flex.or_masks(flex.causal_mask_mod, flex.sliding_window_mask_mod(0, 2)),
    ]
    for mod in masks:
        chex.assert_trees_all_equal(
            broadcast(mod, B, N, Q_POS, KV_POS), grid(mod, B, N, Q_POS, KV_POS)
        )
    scores = [
        flex.alibi_score_mod(aj.alibi_slopes(N)),
        flex.softcap_score_mod(4.0),
        flex.t5_score_mod(rng.normal(size=(8, N)).astype(np.float32), max_distance=6),
        flex.relative_position_score_mod(
            rng.normal(size=(N, 5)).astype(np.float32), max_distance=2
        ),
        flex.compose_score_mods(
            flex.alibi_score_mod(aj.alibi_slopes(N)), flex.softcap_score_mod(4.0)
        ),
    ]
    for mod in scores:
        chex.assert_trees_all_close(
            broadcast(mod, B, N, Q_POS, KV_POS, x), grid(mod, B, N, Q_POS, KV_POS, x), atol=1e-6
        )


# ------------------------------------------------------------------------------ errors


F32_2x3 = np.zeros((2, 3), np.float32)
I32_2x3 = np.zeros((2, 3), np.int32)

ERRORS = [
    (
        lambda: flex.sliding_window_mask_mod(-1),
        ValueError,
        "sliding_window_mask_mod: left must be an int >= 0, got -1.",
    ),
    (
        lambda: flex.sliding_window_mask_mod(2, 1.5),
        ValueError,
        "sliding_window_mask_mod: right must be an int >= 0, got 1.5.",
    ),
    (
        lambda: flex.document_mask_mod(F32_2x3),
        TypeError,
        "document_mask_mod: segment_ids must be an integer array, got float32 array of shape (2, 3).",
    ),
    (
        lambda: flex.document_mask_mod(I32_2x3, np.zeros((3, 4), np.int32)),
        ValueError,
        "document_mask_mod: segment_ids and key_value_segment_ids must share the batch size, "
        "got (2, 3) and (3, 4).",
    ),
    (
        lambda: flex.document_mask_mod(np.zeros((1, 2, 3), np.int32)),
        ValueError,
        "document_mask_mod: segment_ids must be of shape [B, T] or [T], got int32 array of shape (1, 2, 3).",
    ),
    (
        lambda: flex.prefix_lm_mask_mod(-2),
        ValueError,
        "prefix_lm_mask_mod: prefix_lengths must be an int >= 0, got -2.",
    ),
    (
        lambda: flex.prefix_lm_mask_mod(I32_2x3),
        ValueError,
        "prefix_lm_mask_mod: prefix_lengths must be an int >= 0 or an integer array of shape [B], "
        "got int32 array of shape (2, 3).",
    ),
    (
        lambda: flex.prefix_lm_mask_mod(np.array([1.0, 2.0], np.float32)),
        TypeError,
        "prefix_lm_mask_mod: prefix_lengths must be an integer array, got float32 array of shape (2,).",
    ),
    (
        lambda: flex.and_masks(flex.causal_mask_mod, 3),
        TypeError,
        "and_masks: mask_mods[1] must be a callable, got 3.",
    ),
    (
        lambda: flex.or_masks(None),
        TypeError,
        "or_masks: mask_mods[0] must be a callable, got None.",
    ),
    (
        lambda: flex.compose_score_mods(flex.softcap_score_mod(1.0), "alibi"),
        TypeError,
        "compose_score_mods: score_mods[1] must be a callable, got 'alibi'.",
    ),
    (
        lambda: flex.alibi_score_mod(F32_2x3),
        ValueError,
        "alibi_score_mod: slopes must be of shape [N], got float32 array of shape (2, 3).",
    ),
    (
        lambda: flex.alibi_score_mod(np.arange(3)),
        TypeError,
        "alibi_score_mod: slopes must be a floating-point array, got int",
    ),
    (
        lambda: flex.softcap_score_mod(0.0),
        ValueError,
        "softcap_score_mod: cap must be a finite number > 0, got 0.0.",
    ),
    (
        lambda: flex.softcap_score_mod(None),
        ValueError,
        "softcap_score_mod: cap must be a finite number > 0, got None.",
    ),
    (
        lambda: flex.t5_score_mod(np.zeros(8, np.float32)),
        ValueError,
        "t5_score_mod: table must be of shape [num_buckets, N], got float32 array of shape (8,).",
    ),
    (
        lambda: flex.t5_score_mod(np.zeros((8, 2), np.float32), max_distance=2),
        ValueError,
        "t5_score_mod: max_distance must be an int > 2 (the exactly bucketed distances for "
        "num_buckets=8, bidirectional=True), got 2.",
    ),
    (
        lambda: flex.t5_score_mod(np.zeros((8, 2), np.float32), bidirectional="yes"),
        TypeError,
        "t5_score_mod: bidirectional must be a bool, got 'yes'.",
    ),
    (
        lambda: flex.relative_position_score_mod(np.zeros((2, 5), np.float32), max_distance=3),
        ValueError,
        "relative_position_score_mod: table must be of shape [N, 2 * max_distance + 1] = [N, 7], "
        "got float32 array of shape (2, 5).",
    ),
    (
        lambda: flex.relative_position_score_mod(np.zeros((2, 5), np.float32), max_distance=-1),
        ValueError,
        "relative_position_score_mod: max_distance must be an int >= 0, got -1.",
    ),
]


@pytest.mark.parametrize("make, error, message", ERRORS, ids=[e[2].split(":")[0] for e in ERRORS])
def test_factory_errors(make, error, message):
    with pytest.raises(error, match=re.escape(message)):
        make()
