"""Multi-query associative recall as Zoology generates it (Arora et al. 2023, "Zoology:
Measuring and Improving Recall in Efficient Language Models", Sec. 3 and App. E).

A sequence of ``seq_len`` tokens starts with ``num_kv_pairs`` key-value pairs
``k_1 v_1 .. k_n v_n`` (distinct keys from the lower half of the vocabulary, distinct values
from the upper half); the rest holds each key once more as a query, at positions whose gaps
follow a power law (``p(g) ~ g^(power_a - 1)``, ``power_a = 0.01``: most queries come soon
after the context, some far), and random filler tokens elsewhere. The model reads the
sequence causally and must predict, at each query, the value its key was paired with; only
those positions are scored. Unlike :class:`attention_jax.data.SyntheticTask` ``"mqar"``
(the ``<bos> x <sep> y`` format of the seq2seq tasks) this is the language-model form the
Zoology benchmark trains recurrent mixers and attention on.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax._checks import check_int, check_positive

__all__ = ["MQARBatch", "multiquery_ar"]


class MQARBatch(NamedTuple):
    """One batch of :func:`multiquery_ar`.

    Attributes:
      inputs: ``[B, L]`` int32 tokens.
      targets: ``[B, L]`` int32: at a query position the value to recall, else 0.
      loss_mask: ``[B, L]`` bool, True exactly at the ``num_kv_pairs`` query positions.
    """

    inputs: jax.Array
    targets: jax.Array
    loss_mask: jax.Array


def multiquery_ar(
    key: jax.Array,
    *,
    batch_size: int,
    seq_len: int,
    num_kv_pairs: int,
    vocab_size: int,
    power_a: float = 0.01,
    random_non_queries: bool = True,
) -> MQARBatch:
    """A batch of Zoology's multi-query associative recall (see the module docstring).

    Layout of one example (``C = 2 num_kv_pairs`` context tokens, ``S = (L - C) // 2`` query
    slots): tokens ``0 .. C-1`` are ``k_1 v_1 .. k_n v_n``; each key ``k_j`` appears again at
    position ``C + 2 g_j`` where the gaps ``g_j`` are ``n`` distinct draws from ``0 .. S-1``
    with ``p(g) ~ (g + 1)^(power_a - 1)``; the target at that position is ``v_j``. Other
    positions hold random tokens (``random_non_queries``) or 0. Keys come from
    ``1 .. vocab_size // 2 - 1``, values from ``vocab_size // 2 .. vocab_size - 1``.

    Args:
      key: PRNG key.
      batch_size: ``B``.
      seq_len: ``L``, even, with ``4 num_kv_pairs <= L < vocab_size`` (as Zoology).
      num_kv_pairs: ``n``.
      vocab_size: ``V``.
      power_a: the power law's exponent parameter (1.0: uniform gaps).
      random_non_queries: fill the non-query positions after the context with random tokens
        from ``0 .. V - 1`` (Zoology's default) instead of 0.

    Returns:
      :class:`MQARBatch` of ``[B, L]`` arrays (static shapes: usable inside ``jit``).

    Raises:
      ValueError: sizes outside the rules above, naming the argument.
    """
    fn = "multiquery_ar"
    batch_size = check_int(batch_size, "batch_size", fn=fn)
    seq_len = check_int(seq_len, "seq_len", fn=fn)
    n = check_int(num_kv_pairs, "num_kv_pairs", fn=fn)
    vocab_size = check_int(vocab_size, "vocab_size", fn=fn)
    power_a = check_positive(power_a, "power_a", fn=fn)
    if seq_len % 2 or 4 * n > seq_len:
        raise ValueError(
            f"{fn}: seq_len must be even and >= 4 * num_kv_pairs = {4 * n} (context and "
            f"queries), got {seq_len}."
        )
    if vocab_size <= seq_len or vocab_size // 2 - 1 < n:
        raise ValueError(
            f"{fn}: vocab_size must be > seq_len={seq_len} and leave num_kv_pairs={n} "
            f"distinct keys below vocab_size // 2, got {vocab_size}."
        )
    context = 2 * n
    slots = (seq_len - context) // 2
    weights = power_a * np.arange(1, slots + 1, dtype=np.float64) ** (power_a - 1)
    p = jnp.asarray(weights / weights.sum(), jnp.float32)
    half = vocab_size // 2

    def one(k):
        k_key, k_val, k_gap, k_fill = jax.random.split(k, 4)
        keys = jax.random.choice(k_key, jnp.arange(1, half), (n,), replace=False)
        values = jax.random.choice(k_val, jnp.arange(half, vocab_size), (n,), replace=False)
        gaps = jax.random.choice(k_gap, slots, (n,), replace=False, p=p)
        pairs = jnp.stack([keys, values], axis=1).reshape(context)
        where = context + 2 * gaps
        rest = jnp.zeros((seq_len,), jnp.int32).at[:context].set(pairs).at[where].set(keys)
        is_query = jnp.zeros((seq_len,), bool).at[where].set(True)
        if random_non_queries:
            fill = jax.random.randint(k_fill, (seq_len,), 0, vocab_size)
            empty = (jnp.arange(seq_len) >= context) & ~is_query
            rest = jnp.where(empty, fill, rest)
        targets = jnp.zeros((seq_len,), jnp.int32).at[where].set(values)
        return rest.astype(jnp.int32), targets, is_query

    inputs, targets, mask = jax.vmap(one)(jax.random.split(key, batch_size))
    return MQARBatch(inputs, targets, mask)
