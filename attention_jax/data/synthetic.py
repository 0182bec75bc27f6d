"""Synthetic sequence tasks for attention research (:class:`SyntheticTask`).

Tasks ``copy``, ``reverse``, ``sort``, ``mqar`` and ``induction``, all in the format
``<bos> x <sep> y`` with the loss on ``y`` only; :func:`exact_match` scores answers.

Every function that produces batches takes a PRNG key and static keyword-only sizes and
returns arrays of static shape, so it can run inside :func:`jax.jit` without retracing.

Token layout. Ids ``PAD = 0``, ``BOS = 1``, ``SEP = 2``, then ``num_symbols`` content
symbols ``3 .. 2 + num_symbols``; ``vocab_size = 3 + num_symbols``. For an example of
length ``n``:

===========  ===============================  ========================  ===============
task         x                                y                         graded in y
===========  ===============================  ========================  ===============
copy         ``s_1 .. s_n``                   ``s_1 .. s_n``            every token
reverse      ``s_1 .. s_n``                   ``s_n .. s_1``            every token
sort         ``s_1 .. s_n``                   x sorted by id            every token
mqar         ``k_1 v_1 .. k_n v_n``           ``q_1 a_1 .. q_m a_m``    the answers a_j
induction    ``s_1 .. s_n`` (A once, then B)  ``A B``                   B
===========  ===============================  ========================  ===============

* copy / reverse / sort: ``s_i`` i.i.d. uniform over the symbols (repeats allowed).
* mqar (multi-query associative recall, Arora et al. 2023, "Zoology"): ``n`` key-value
  pairs with distinct keys from the first ``num_symbols // 2`` symbols and values
  (i.i.d., repeats allowed) from the remaining symbols; then ``m`` queries, each a key of
  the context (distinct, random order) immediately followed by its value ``a_j``, as in
  Zoology. ``m = n`` (every key is queried once) unless ``num_queries`` is set. Only the
  answers are graded: the queries themselves are random and cannot be predicted.
* induction (induction heads, Olsson et al. 2022): a random sequence in which a token
  ``A`` occurs exactly once, not last, followed by ``B``; after ``<sep>``, ``A`` appears
  again and the target is ``B``. ``A`` is unique so the answer is unambiguous; only
  ``B`` is graded. (The "repeated random sequence" formulation is the ``copy`` task.)
"""

import dataclasses
import functools
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp

from attention_jax._checks import check_choice, check_int, describe

__all__ = [
    "PAD",
    "BOS",
    "SEP",
    "NUM_SPECIAL_TOKENS",
    "TASKS",
    "Batch",
    "EvalBatch",
    "SyntheticTask",
    "exact_match",
]

PAD = 0
BOS = 1
SEP = 2
NUM_SPECIAL_TOKENS = 3

TaskName = Literal["copy", "reverse", "sort", "mqar", "induction"]
TASKS: tuple[str, ...] = ("copy", "reverse", "sort", "mqar", "induction")


class Batch(NamedTuple):
    """A training batch of a synthetic task, right-padded to a static length ``L``.

    Attributes:
      inputs: ``[B, L]`` int32 sequences ``<bos> x <sep> y`` followed by ``PAD``.
      targets: ``[B, L]`` int32 next tokens: ``inputs`` shifted left, ``PAD`` last.
      loss_mask: ``[B, L]`` bool, True exactly where the target is a graded ``y`` token
        (for copy/reverse/sort every ``y`` token, the last included).
      lengths: ``[B]`` int32 length ``n`` of each example (for mqar, the number of pairs).
    """

    inputs: jax.Array
    targets: jax.Array
    loss_mask: jax.Array
    lengths: jax.Array


class EvalBatch(NamedTuple):
    """Prompts and answers of one length ``n``, for greedy decoding.

    Attributes:
      prompt: ``[B, P]`` int32 ``<bos> x <sep>``, ``P = 2 + len(x)``; no padding.
      answer: ``[B, A]`` int32 ``y``, the continuation to produce, ``A = len(y)``.
      answer_mask: ``[B, A]`` bool, True at the tokens the model must predict. All True
        for copy/reverse/sort; for mqar and induction False at the query tokens, which a
        decoder feeds from ``answer`` instead of generating them.
    """

    prompt: jax.Array
    answer: jax.Array
    answer_mask: jax.Array


def _interleave(a: jax.Array, b: jax.Array) -> jax.Array:
    """``[B, n]``, ``[B, n]`` -> ``[B, 2n]`` as ``a_1 b_1 a_2 b_2 ...``."""
    return jnp.stack([a, b], axis=-1).reshape(a.shape[0], -1)


def _randint(words: jax.Array, low, high) -> jax.Array:
    """Integers uniform over ``[low, high)`` from random uint32 ``words`` (any shape).

    ``low`` and ``high`` may be arrays broadcasting against ``words``. The modulo bias,
    at most ``(high - low) / 2**32`` per value, is immaterial at these ranges.
    """
    span = jnp.asarray(high - low).astype(jnp.uint32)
    return low + (words % span).astype(jnp.int32)


def _take(x: jax.Array, index: jax.Array) -> jax.Array:
    """``x [B, m]`` at ``index [B, k]`` (clipped to the valid range) -> ``[B, k]``."""
    return jnp.take_along_axis(x, jnp.clip(index, 0, x.shape[1] - 1), axis=1)


@dataclasses.dataclass(frozen=True)
class SyntheticTask:
    """A synthetic sequence task; see the module docstring for the token layout.

    Immutable and hashable, so it can be a static argument of :func:`jax.jit`.

    Attributes:
      name: one of :data:`TASKS`: ``"copy"``, ``"reverse"``, ``"sort"``, ``"mqar"``,
        ``"induction"``.
      num_symbols: number of content symbols; ``vocab_size = 3 + num_symbols``. mqar
        uses the first ``num_symbols // 2`` as keys and the rest as values, so its length
        (number of pairs) is at most ``num_symbols // 2``.
      num_queries: mqar only: queries per example ``m`` (needs ``m <= min_length``);
        None queries every key once.
    """

    name: TaskName
    num_symbols: int = 16
    num_queries: int | None = None

    def __post_init__(self):
        fn = "SyntheticTask"
        check_choice(self.name, "name", TASKS, fn=fn)
        check_int(self.num_symbols, "num_symbols", fn=fn, minimum=4 if self.name == "mqar" else 2)
        if self.num_queries is not None:
            if self.name != "mqar":
                raise ValueError(
                    f"{fn}: num_queries must be None for {self.name!r} (it applies to mqar "
                    f"only), got {self.num_queries!r}."
                )
            check_int(self.num_queries, "num_queries", fn=fn)

    @property
    def vocab_size(self) -> int:
        """Number of token ids: ``PAD``, ``BOS``, ``SEP`` and the content symbols."""
        return NUM_SPECIAL_TOKENS + self.num_symbols

    @property
    def min_length(self) -> int:
        """Smallest valid length ``n``: 2 for induction (``A`` must precede a token), else 1."""
        return 2 if self.name == "induction" else 1

    @property
    def max_supported_length(self) -> int | None:
        """Largest valid length: ``num_symbols // 2`` for mqar (distinct keys), else None."""
        return self.num_symbols // 2 if self.name == "mqar" else None

    def _num_queries(self, n):
        return n if self.num_queries is None else self.num_queries

    def x_len(self, n):
        """Length of ``x`` for content length ``n`` (int or int array)."""
        return 2 * n if self.name == "mqar" else n

    def y_len(self, n):
        """Length of ``y`` for content length ``n`` (int or int array)."""
        if self.name == "mqar":
            return 2 * self._num_queries(n)
        if self.name == "induction":
            return 2
        return n

    def seq_len(self, max_length: int) -> int:
        """Static padded length ``L = 2 + len(x) + len(y)`` of batches up to ``max_length``."""
        return 2 + self.x_len(max_length) + self.y_len(max_length)

    def _check_lengths(
        self, min_length, max_length, *, fn: str, min_name="min_length", max_name="max_length"
    ) -> None:
        """Checks a range of content lengths; the names are the caller's arguments."""
        check_int(min_length, min_name, fn=fn)
        check_int(max_length, max_name, fn=fn)
        if max_length < min_length:
            raise ValueError(
                f"{fn}: {max_name} must be >= {min_name}={min_length}, got {max_length}."
            )
        if min_length < self.min_length:
            raise ValueError(
                f"{fn}: {min_name} must be >= {self.min_length} for {self.name!r}, "
                f"got {min_length}."
            )
        cap = self.max_supported_length
        if cap is not None and max_length > cap:
            raise ValueError(
                f"{fn}: {max_name} must be <= {cap} for mqar with num_symbols="
                f"{self.num_symbols} (its keys, all distinct, are the first num_symbols // 2 "
                f"symbols; raise num_symbols), got {max_length}."
            )
        if self.num_queries is not None and self.num_queries > min_length:
            raise ValueError(
                f"{fn}: {min_name} must be >= num_queries={self.num_queries} (every example "
                f"needs that many distinct keys to query), got {min_length}."
            )

    def _num_words(self, max_length: int) -> int:
        """Random uint32 words per example that :meth:`_xy` consumes."""
        if self.name == "mqar":
            return self.num_symbols // 2 + 2 * max_length
        if self.name == "induction":
            return 2 + max_length
        return max_length

    def _xy(self, words: jax.Array, lengths: jax.Array, max_length: int):
        """Content ``x [B, X]``, ``y [B, Y]`` (symbols 0-based) and ``graded [Y]`` from
        random ``words [B, _num_words(max_length)]`` and ``lengths [B]``."""
        s = self.num_symbols
        j = jnp.arange(max_length)[None, :]
        n = lengths[:, None]
        if self.name in ("copy", "reverse", "sort"):
            x = _randint(words, 0, s)
            if self.name == "copy":
                y = x
            elif self.name == "reverse":
                y = _take(x, n - 1 - j)
            else:
                # Padding slots sort last, leaving sorted x in the first n slots.
                y = jnp.sort(jnp.where(j < n, x, s), axis=1)
            return x, y, jnp.ones((max_length,), bool)
        if self.name == "mqar":
            num_keys = s // 2
            w_keys, w_values, w_order = jnp.split(words, [num_keys, num_keys + max_length], axis=1)
            # Sorting random words gives a random permutation of the key symbols per
            # example, whose first entries are distinct keys.
            keys = jnp.argsort(w_keys, axis=1)[:, :max_length]
            values = _randint(w_values, num_keys, s)
            # Padding pairs sort after the active ones (scores < 2**31), so the first n
            # entries of the argsort are a random order of the n active pairs.
            scores = jnp.where(j < n, w_order >> 1, jnp.uint32(1 << 31))
            order = jnp.argsort(scores, axis=1)[:, : self._num_queries(max_length)]
            x = _interleave(keys, values)
            y = _interleave(_take(keys, order), _take(values, order))
            graded = jnp.arange(y.shape[1]) % 2 == 1
            return x, y, graded
        # induction
        a = _randint(words[:, :1], 0, s)
        pos = _randint(words[:, 1:2], 0, n - 1)  # A is never last: it needs a successor
        rest = _randint(words[:, 2:], 0, s - 1)
        rest = rest + (rest >= a)  # skips A, which occurs only where placed below
        x = jnp.where(j == pos, a, rest)
        y = jnp.concatenate([a, _take(x, pos + 1)], axis=1)
        return x, y, jnp.array([False, True])

    def sample(
        self,
        key: jax.Array,
        *,
        batch_size: int,
        max_length: int,
        min_length: int | None = None,
    ) -> Batch:
        """A training batch with lengths uniform over ``[min_length, max_length]``.

        Lengths are drawn per example (Kazemnejad et al. 2023 train on ``U(1, L)``); the
        padded length ``L = seq_len(max_length)`` is static, so under :func:`jax.jit`
        every key reuses one compilation.

        Args:
          key: PRNG key.
          batch_size: ``B`` (static).
          max_length: largest content length ``n`` (static).
          min_length: smallest content length (static); defaults to the task's minimum
            (1, or 2 for induction).

        Returns:
          A :class:`Batch`: ``inputs``, ``targets``, ``loss_mask`` ``[B, L]`` and
          ``lengths`` ``[B]``.
        """
        fn = "SyntheticTask.sample"
        min_length = self.min_length if min_length is None else min_length
        check_int(batch_size, "batch_size", fn=fn)
        self._check_lengths(min_length, max_length, fn=fn)
        return self._sample(key, batch_size, min_length, max_length)

    # Jitted (the task and sizes static): eagerly, each of its ops would compile on its own.
    @functools.partial(jax.jit, static_argnums=(0, 2, 3, 4))
    def _sample(self, key: jax.Array, batch_size: int, min_length: int, max_length: int):
        """:meth:`sample` without the argument checks."""
        # One draw of random words for everything: each PRNG call site compiles its own
        # threefry kernel, which dominates compile time, and evaluation compiles the
        # sampler once per length.
        words = jax.random.bits(key, (batch_size, 1 + self._num_words(max_length)), jnp.uint32)
        lengths = _randint(words[:, 0], min_length, max_length + 1)
        x, y, graded = self._xy(words[:, 1:], lengths, max_length)
        x = x + NUM_SPECIAL_TOKENS
        y = y + NUM_SPECIAL_TOKENS

        t = jnp.arange(self.seq_len(max_length))[None, :]
        lx = self.x_len(lengths)[:, None]
        ly = jnp.broadcast_to(self.y_len(lengths), lengths.shape)[:, None]
        y_start = lx + 2
        inputs = jnp.where(
            t == 0,
            BOS,
            jnp.where(
                t <= lx,
                _take(x, t - 1),
                jnp.where(
                    t == lx + 1, SEP, jnp.where(t < y_start + ly, _take(y, t - y_start), PAD)
                ),
            ),
        ).astype(jnp.int32)
        targets = jnp.concatenate([inputs[:, 1:], jnp.full_like(inputs[:, :1], PAD)], axis=1)
        # Position t predicts y[t + 1 - y_start].
        y_index = t + 1 - y_start
        loss_mask = (y_index >= 0) & (y_index < ly) & graded[jnp.clip(y_index, 0, len(graded) - 1)]
        return Batch(inputs, targets, loss_mask, lengths.astype(jnp.int32))

    def sample_eval(self, key: jax.Array, *, batch_size: int, length: int) -> EvalBatch:
        """Prompts and answers of one content length ``n``, for greedy decoding.

        The examples are those of ``sample(key, batch_size=B, min_length=n,
        max_length=n)``, split after ``<sep>``.

        Since greedy decoding is deterministic, an answer is decoded exactly right iff the
        argmax is right at every graded position given the true prefix; so
        ``exact_match(argmax(logits), batch.targets, batch.loss_mask)`` on that batch
        gives the same per-example result in one teacher-forced pass.

        Args:
          key: PRNG key.
          batch_size: ``B`` (static).
          length: content length ``n`` (static).

        Returns:
          An :class:`EvalBatch`: ``prompt [B, P]``, ``answer [B, A]``, ``answer_mask
          [B, A]`` with ``P = 2 + x_len(n)`` and ``A = y_len(n)``.
        """
        fn = "SyntheticTask.sample_eval"
        check_int(batch_size, "batch_size", fn=fn)
        self._check_lengths(length, length, fn=fn, min_name="length", max_name="length")
        batch = self._sample(key, batch_size, length, length)
        p = 2 + self.x_len(length)
        return EvalBatch(
            prompt=batch.inputs[:, :p],
            answer=batch.inputs[:, p:],
            answer_mask=batch.loss_mask[:, p - 1 : -1],
        )


def exact_match(predictions: jax.Array, answers: jax.Array, mask: jax.Array | None = None):
    """Whether each sequence is entirely right.

    Args:
      predictions: ``[B, A]`` predicted token ids.
      answers: ``[B, A]`` reference token ids.
      mask: optional ``[B, A]`` bool, True at the positions that count (for example
        ``EvalBatch.answer_mask`` or ``Batch.loss_mask``); others are ignored.

    Returns:
      ``[B]`` bool, True where every counted position matches. Its mean is the
      sequence accuracy.
    """
    predictions = jnp.asarray(predictions)
    answers = jnp.asarray(answers)
    if predictions.shape != answers.shape or predictions.ndim != 2:
        raise ValueError(
            f"exact_match: predictions and answers must both be [B, A] of one shape, got "
            f"{describe(predictions)} and {describe(answers)}."
        )
    correct = predictions == answers
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.shape != answers.shape:
            raise ValueError(
                f"exact_match: mask must be of the answers' shape {answers.shape}, "
                f"got {describe(mask)}."
            )
        correct = correct | ~mask
    return jnp.all(correct, axis=1)
