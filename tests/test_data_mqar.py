"""Zoology's multi-query associative recall generator: every query repeats a context key, its
target is the value that key was paired with, nothing else is scored; static shapes."""

import re

import chex
import jax
import numpy as np
import pytest

from attention_jax.data.mqar import multiquery_ar


@pytest.mark.parametrize("random_non_queries", [True, False])
def test_queries_recall_the_paired_values(random_non_queries):
    n, length, vocab = 4, 32, 64
    batch = jax.jit(
        lambda k: multiquery_ar(
            k, batch_size=16, seq_len=length, num_kv_pairs=n, vocab_size=vocab,
            random_non_queries=random_non_queries,
        )
    )(jax.random.key(0))  # fmt: skip
    chex.assert_shape([batch.inputs, batch.targets, batch.loss_mask], (16, length))
    inputs, targets, mask = map(np.asarray, batch)
    for x, y, m in zip(inputs, targets, mask, strict=True):
        keys, values = x[: 2 * n : 2], x[1 : 2 * n : 2]
        assert len(set(keys)) == n and len(set(values)) == n
        assert keys.min() >= 1 and keys.max() < vocab // 2 <= values.min()
        assert m.sum() == n and not m[: 2 * n].any()
        assert ((np.flatnonzero(m) - 2 * n) % 2 == 0).all()  # queries on the even slots
        pair = dict(zip(keys, values, strict=True))
        assert sorted(x[m]) == sorted(keys)
        assert all(pair[k] == v for k, v in zip(x[m], y[m], strict=True))
        assert (y[~m] == 0).all()
        if not random_non_queries:
            assert (x[2 * n :][~m[2 * n :]] == 0).all()


def test_power_law_puts_most_queries_near_the_context():
    batch = multiquery_ar(
        jax.random.key(1), batch_size=256, seq_len=256, num_kv_pairs=4, vocab_size=512
    )
    gaps = (np.flatnonzero(np.asarray(batch.loss_mask).ravel()) % 256 - 8) // 2
    assert np.median(gaps) < 40 and gaps.max() > 80  # heavy head, long tail (124 slots)


def test_bad_sizes_name_the_argument():
    with pytest.raises(ValueError, match=re.escape(
        "multiquery_ar: seq_len must be even and >= 4 * num_kv_pairs = 32 (context and "
        "queries), got 30."
    )):  # fmt: skip
        multiquery_ar(jax.random.key(0), batch_size=2, seq_len=30, num_kv_pairs=8, vocab_size=64)
    with pytest.raises(ValueError, match="vocab_size must be > seq_len=32"):
        multiquery_ar(jax.random.key(0), batch_size=2, seq_len=32, num_kv_pairs=4, vocab_size=32)
