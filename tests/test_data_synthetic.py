"""Tests for attention_jax.data.synthetic: the synthetic tasks and exact_match.

References are plain Python / NumPy re-implementations of each task's rule, applied to the
generated sequences.
"""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from attention_jax import data as D

# ----------------------------------------------------------------------------------------
# Synthetic tasks: NumPy reference
# ----------------------------------------------------------------------------------------


def _split_xy(task, row, n):
    """Checks the layout ``<bos> x <sep> y PAD...`` of one row; returns ``(x, y)``."""
    lx = 2 * n if task.name == "mqar" else n
    if task.name == "mqar":
        ly = 2 * (n if task.num_queries is None else task.num_queries)
    elif task.name == "induction":
        ly = 2
    else:
        ly = n
    assert row[0] == D.BOS
    assert row[1 + lx] == D.SEP
    x, y = row[1 : 1 + lx], row[2 + lx : 2 + lx + ly]
    assert len(y) == ly
    assert np.all(row[2 + lx + ly :] == D.PAD)
    for part in (x, y):
        assert np.all((part >= 3) & (part < task.vocab_size))
    return x, y


def _check_rule(task, x, y):
    """Checks that ``y`` is the right answer to ``x``; returns the graded mask of ``y``."""
    x, y = x.tolist(), y.tolist()
    if task.name == "copy":
        assert y == x
    elif task.name == "reverse":
        assert y == x[::-1]
    elif task.name == "sort":
        assert y == sorted(x)
    elif task.name == "mqar":
        num_keys = task.num_symbols // 2
        keys, values = x[0::2], x[1::2]
        assert len(set(keys)) == len(keys)
        assert all(3 <= k < 3 + num_keys for k in keys)
        assert all(3 + num_keys <= v < task.vocab_size for v in values)
        table = dict(zip(keys, values, strict=True))
        queries, answers = y[0::2], y[1::2]
        assert len(set(queries)) == len(queries) and set(queries) <= set(keys)
        if task.num_queries is None:
            assert sorted(queries) == sorted(keys)
        assert answers == [table[q] for q in queries]
        return [j % 2 == 1 for j in range(len(y))]
    elif task.name == "induction":
        a, b = y
        assert x.count(a) == 1
        i = x.index(a)
        assert i < len(x) - 1 and x[i + 1] == b
        return [False, True]
    return [True] * len(y)


def _check_batch(task, batch, *, batch_size, min_length, max_length):
    seq_len = task.seq_len(max_length)
    chex.assert_shape([batch.inputs, batch.targets, batch.loss_mask], (batch_size, seq_len))
    chex.assert_shape(batch.lengths, (batch_size,))
    assert batch.inputs.dtype == jnp.int32 and batch.targets.dtype == jnp.int32
    assert batch.loss_mask.dtype == jnp.bool_ and batch.lengths.dtype == jnp.int32
    inputs, targets = np.asarray(batch.inputs), np.asarray(batch.targets)
    loss_mask, lengths = np.asarray(batch.loss_mask), np.asarray(batch.lengths)
    assert lengths.min() >= min_length and lengths.max() <= max_length
    np.testing.assert_array_equal(targets[:, :-1], inputs[:, 1:])
    assert np.all(targets[:, -1] == D.PAD)
    for row, mask, n in zip(inputs, loss_mask, lengths, strict=True):
        x, y = _split_xy(task, row, int(n))
        graded = _check_rule(task, x, y)
        ref_mask = np.zeros(seq_len, bool)
        # Position 1 + len(x) holds <sep>, whose target is y[0].
        ref_mask[1 + len(x) : 1 + len(x) + len(y)] = graded
        np.testing.assert_array_equal(mask, ref_mask)


# Compiling (mostly the PRNG) dominates this file's runtime, so each task configuration is
# compiled once, into one function giving all the batches the tests below look at, and the
# tests vary the keys. The training batches share their shape and key with the evaluation
# batches, so XLA computes the random words once for all three.
_BATCH = 64
_MAX_LENGTH = _EVAL_LENGTH = 6
_CONFIGS = [  # (task, min_length, max_length) of the training batches
    (D.SyntheticTask(name, num_symbols=12), 2 if name == "induction" else 1, _MAX_LENGTH)
    for name in D.TASKS
] + [(D.SyntheticTask("mqar", num_symbols=12, num_queries=2), 2, _MAX_LENGTH)]
_IDS = [f"{t.name}" + ("" if t.num_queries is None else f"-q{t.num_queries}") for t, *_ in _CONFIGS]


@functools.cache
def _sampler(task, min_length, max_length):
    """``key -> (training batch, eval batch, fixed-length training batch)``, jitted."""
    traces = []

    def sample(key):
        traces.append(None)
        return (
            task.sample(key, batch_size=_BATCH, min_length=min_length, max_length=max_length),
            task.sample_eval(key, batch_size=_BATCH, length=_EVAL_LENGTH),
            task.sample(key, batch_size=_BATCH, min_length=_EVAL_LENGTH, max_length=_EVAL_LENGTH),
        )

    return jax.jit(sample), traces


@pytest.mark.parametrize("config", _CONFIGS, ids=_IDS)
@given(seed=st.integers(0, 2**31 - 1))
def test_synthetic_batches_match_reference(config, seed):
    task, min_length, max_length = config
    sample, _ = _sampler(*config)
    batch, _, fixed = sample(jax.random.key(seed))
    _check_batch(task, batch, batch_size=_BATCH, min_length=min_length, max_length=max_length)
    _check_batch(task, fixed, batch_size=_BATCH, min_length=_EVAL_LENGTH, max_length=_EVAL_LENGTH)


@pytest.mark.parametrize("config", _CONFIGS, ids=_IDS)
def test_synthetic_sampling_under_jit(config):
    task, min_length, max_length = config
    sample, traces = _sampler(*config)
    b0 = sample(jax.random.key(0))
    b0_again = sample(jax.random.key(0))
    b1 = sample(jax.random.key(1))
    assert len(traces) == 1  # static shapes: one compilation serves every key
    chex.assert_trees_all_equal(b0, b0_again)
    for x0, x1 in zip(b0, b1, strict=True):
        assert not np.array_equal(x0[0], x1[0])  # inputs / prompts differ
    # Lengths are uniform over [min_length, max_length]: each value shows up.
    assert set(np.asarray(b0[0].lengths).tolist()) == set(range(min_length, max_length + 1))
    # Every content symbol shows up (catches off-by-one ranges), and nothing else.
    inputs = np.asarray(b0[0].inputs)
    assert set(inputs[inputs >= 3].tolist()) == set(range(3, task.vocab_size))
    if task.name == "mqar":  # queries come in a random order, not the order of the pairs
        in_order = []
        for row, n in zip(inputs, np.asarray(b0[0].lengths), strict=True):
            m = n if task.num_queries is None else task.num_queries
            keys, queries = row[1 : 2 * n + 1 : 2], row[2 * n + 2 : 2 * n + 2 + 2 * m : 2]
            in_order.append(list(queries) == list(keys[:m]))
        assert 0 < sum(in_order) < len(in_order)
    # Hashable and compared by value, so a task can be a static argument of jax.jit.
    assert hash(task) == hash(dataclasses.replace(task)) and task == dataclasses.replace(task)


@pytest.mark.parametrize("config", _CONFIGS, ids=_IDS)
def test_sample_eval_prompt_and_answer(config):
    task = config[0]
    _, ev, fixed = _sampler(*config)[0](jax.random.key(7))
    p = 2 + task.x_len(_EVAL_LENGTH)
    a = task.y_len(_EVAL_LENGTH)
    chex.assert_shape(
        [ev.prompt, ev.answer, ev.answer_mask], [(_BATCH, p), (_BATCH, a), (_BATCH, a)]
    )
    assert ev.prompt.dtype == ev.answer.dtype == jnp.int32 and ev.answer_mask.dtype == jnp.bool_
    for prompt, answer, mask in zip(*map(np.asarray, ev), strict=True):
        assert prompt[0] == D.BOS and prompt[-1] == D.SEP
        graded = _check_rule(task, prompt[1:-1], answer)
        np.testing.assert_array_equal(mask, graded)
    # sample_eval splits the examples of sample(min_length=n, max_length=n) after <sep>.
    np.testing.assert_array_equal(np.concatenate([ev.prompt, ev.answer], axis=1), fixed.inputs)
    np.testing.assert_array_equal(ev.answer_mask, fixed.loss_mask[:, p - 1 : -1])


def test_vocab_and_seq_len():
    assert D.SyntheticTask("copy").vocab_size == 19
    assert D.SyntheticTask("copy", num_symbols=5).vocab_size == 8
    assert D.SyntheticTask("reverse").seq_len(10) == 22
    assert D.SyntheticTask("mqar", num_symbols=64).seq_len(10) == 42
    assert D.SyntheticTask("mqar", num_symbols=64, num_queries=3).seq_len(10) == 28
    assert D.SyntheticTask("induction").seq_len(10) == 14


def test_exact_match():
    answers = jnp.array([[3, 4, 5], [3, 4, 5], [3, 4, 5]])
    predictions = jnp.array([[3, 4, 5], [3, 4, 6], [9, 4, 5]])
    np.testing.assert_array_equal(D.exact_match(predictions, answers), [True, False, False])
    mask = jnp.array([[True, True, True], [True, True, False], [True, True, True]])
    np.testing.assert_array_equal(D.exact_match(predictions, answers, mask), [True, True, False])
    with pytest.raises(
        ValueError,
        match=r"exact_match: predictions and answers must both be \[B, A\] of one shape, got "
        r"int32 array of shape \(3, 2\) and int32 array of shape \(3, 3\)\.",
    ):
        D.exact_match(predictions[:, :2], answers)
    with pytest.raises(
        ValueError,
        match=r"exact_match: mask must be of the answers' shape \(3, 3\), got bool array of "
        r"shape \(3, 2\)\.",
    ):
        D.exact_match(predictions, answers, mask[:, :2])


@pytest.mark.parametrize("config", [_CONFIGS[0], _CONFIGS[3]], ids=[_IDS[0], _IDS[3]])
def test_greedy_exact_match_equals_teacher_forced(config):
    """The sample_eval docstring's claim, checked with a deterministic toy 'model'."""
    _, ev, batch = _sampler(*config)[0](jax.random.key(3))
    prompt, answer, answer_mask = map(np.asarray, ev)
    inputs, targets, loss_mask = map(np.asarray, batch[:3])

    def model(b, prefix):
        # Next token as a function of the prefix: right at most prefixes, wrong at some.
        right = inputs[b, len(prefix)]
        return right if (sum(prefix) * 31 + len(prefix)) % 5 else right + 1

    teacher = np.array(
        [
            [model(b, list(inputs[b, : t + 1])) for t in range(inputs.shape[1] - 1)]
            for b in range(_BATCH)
        ]
    )
    teacher = np.pad(teacher, ((0, 0), (0, 1)))  # the last position predicts nothing
    teacher_ok = np.asarray(D.exact_match(teacher, targets, loss_mask))
    decoded = []
    for b in range(_BATCH):
        prefix = list(prompt[b])
        for k in range(answer.shape[1]):
            # Tokens outside answer_mask (mqar's queries) are fed, not generated.
            prefix.append(answer[b, k] if not answer_mask[b, k] else model(b, prefix))
        decoded.append(prefix[prompt.shape[1] :])
    greedy_ok = np.asarray(D.exact_match(np.array(decoded), answer, answer_mask))
    np.testing.assert_array_equal(greedy_ok, teacher_ok)
    assert 0 < greedy_ok.sum() < _BATCH  # both outcomes occur
    assert np.all(D.exact_match(targets, targets, loss_mask))


# ----------------------------------------------------------------------------------------
# Synthetic tasks: argument checks
# ----------------------------------------------------------------------------------------


def test_synthetic_task_errors():
    key = jax.random.key(0)
    with pytest.raises(
        ValueError, match=r"SyntheticTask: name must be one of \('copy', .*\), got 'rev'\."
    ):
        D.SyntheticTask("rev")
    with pytest.raises(ValueError, match="SyntheticTask: num_symbols must be an int >= 2, got 1."):
        D.SyntheticTask("copy", num_symbols=1)
    with pytest.raises(ValueError, match="num_symbols must be an int >= 4, got 3."):
        D.SyntheticTask("mqar", num_symbols=3)
    with pytest.raises(
        ValueError, match=r"num_queries must be None for 'copy' \(it applies to mqar only\), got 2"
    ):
        D.SyntheticTask("copy", num_queries=2)
    with pytest.raises(ValueError, match="SyntheticTask: num_queries must be an int >= 1, got 0."):
        D.SyntheticTask("mqar", num_queries=0)
    task = D.SyntheticTask("copy")
    with pytest.raises(
        ValueError, match="SyntheticTask.sample: min_length must be an int >= 1, got 0."
    ):
        task.sample(key, batch_size=2, min_length=0, max_length=3)
    with pytest.raises(
        ValueError, match="SyntheticTask.sample: max_length must be an int >= 1, got 0."
    ):
        task.sample(key, batch_size=2, max_length=0)
    with pytest.raises(ValueError, match="max_length must be >= min_length=4, got 3."):
        task.sample(key, batch_size=2, min_length=4, max_length=3)
    with pytest.raises(
        ValueError, match="SyntheticTask.sample: batch_size must be an int >= 1, got 0."
    ):
        task.sample(key, batch_size=0, max_length=3)
    with pytest.raises(
        ValueError, match="SyntheticTask.sample_eval: length must be an int >= 1, got 0."
    ):
        task.sample_eval(key, batch_size=2, length=0)
    with pytest.raises(ValueError, match="sample_eval: batch_size must be an int >= 1, got 0."):
        task.sample_eval(key, batch_size=0, length=2)
    with pytest.raises(
        ValueError, match=r"sample: min_length must be >= 2 for 'induction', got 1\."
    ):
        D.SyntheticTask("induction").sample(key, batch_size=2, min_length=1, max_length=3)
    with pytest.raises(
        ValueError, match=r"sample_eval: length must be >= 2 for 'induction', got 1\."
    ):
        D.SyntheticTask("induction").sample_eval(key, batch_size=2, length=1)
    with pytest.raises(
        ValueError, match=r"max_length must be <= 8 for mqar with num_symbols=16 .*, got 9\."
    ):
        D.SyntheticTask("mqar").sample(key, batch_size=2, max_length=9)
    with pytest.raises(
        ValueError,
        match=r"sample_eval: length must be <= 8 for mqar with num_symbols=16 .*, got 9\.",
    ):
        D.SyntheticTask("mqar").sample_eval(key, batch_size=2, length=9)
    with pytest.raises(
        ValueError, match=r"min_length must be >= num_queries=3 \(every .*\), got 2\."
    ):
        D.SyntheticTask("mqar", num_queries=3).sample(key, batch_size=2, min_length=2, max_length=4)
