"""Data for the experiments: text corpora and synthetic sequence tasks.

* :mod:`attention_jax.data.text` -- a character tokenizer, Tiny Shakespeare (downloaded once
  and checksummed), train/validation split, random and sequential windows.
* :mod:`attention_jax.data.synthetic` -- ``copy``, ``reverse``, ``sort``, ``mqar`` and
  ``induction`` as ``<bos> x <sep> y`` batches, and :func:`exact_match`.
* :mod:`attention_jax.data.mqar` -- Zoology's multi-query associative recall generator.
* :mod:`attention_jax.data.dates` -- human-written dates and their ISO form (the seq2seq
  translation task of ``experiments/date_translation.py``).
"""

from attention_jax.data.synthetic import (
    BOS,
    NUM_SPECIAL_TOKENS,
    PAD,
    SEP,
    TASKS,
    Batch,
    EvalBatch,
    SyntheticTask,
    exact_match,
)
from attention_jax.data.text import (
    TINYSHAKESPEARE_SHA256,
    TINYSHAKESPEARE_SIZE,
    TINYSHAKESPEARE_URL,
    CharTokenizer,
    load_tinyshakespeare,
    random_windows,
    sequential_windows,
    train_val_split,
)

__all__ = [
    "PAD",
    "BOS",
    "SEP",
    "NUM_SPECIAL_TOKENS",
    "TASKS",
    "TINYSHAKESPEARE_URL",
    "TINYSHAKESPEARE_SIZE",
    "TINYSHAKESPEARE_SHA256",
    "CharTokenizer",
    "train_val_split",
    "random_windows",
    "sequential_windows",
    "load_tinyshakespeare",
    "Batch",
    "EvalBatch",
    "SyntheticTask",
    "exact_match",
]
