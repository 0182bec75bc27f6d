"""Data for the experiments: a character tokenizer, Tiny Shakespeare, synthetic tasks.

Text (character-level language modelling, as nanoGPT's ``shakespeare_char``):

* :class:`CharTokenizer` -- vocabulary = sorted set of the corpus' characters.
* :func:`train_val_split` -- first 90% / last 10%.
* :func:`random_windows` -- jit-able random training batches ``(x, y)``.
* :func:`sequential_windows` -- non-overlapping evaluation windows.
* :func:`load_tinyshakespeare` -- the corpus, downloaded once and checksummed.

Synthetic sequence tasks for attention research (:class:`SyntheticTask`): ``copy``,
``reverse``, ``sort``, ``mqar`` and ``induction``, all in the format
``<bos> x <sep> y`` with the loss on ``y`` only; :func:`exact_match` scores answers.

Every function that produces batches takes a PRNG key and static keyword-only sizes and
returns arrays of static shape, so it can run inside :func:`jax.jit` without retracing.

Token layout of the synthetic tasks. Ids ``PAD = 0``, ``BOS = 1``, ``SEP = 2``, then
``num_symbols`` content symbols ``3 .. 2 + num_symbols``; ``vocab_size = 3 + num_symbols``.
For an example of length ``n``:

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
import hashlib
import json
import os
import pathlib
import tempfile
import urllib.request
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

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

PAD = 0
BOS = 1
SEP = 2
NUM_SPECIAL_TOKENS = 3

TaskName = Literal["copy", "reverse", "sort", "mqar", "induction"]
TASKS: tuple[str, ...] = ("copy", "reverse", "sort", "mqar", "induction")

TINYSHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
TINYSHAKESPEARE_SIZE = 1_115_394
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
_DEFAULT_CACHE_DIR = "~/.cache/attention_jax"
_CACHE_NAME = "tinyshakespeare.txt"


def _check_int(value, name: str, minimum: int) -> None:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be a Python int >= {minimum}, got {value!r}.")


# ----------------------------------------------------------------------------------------
# Text
# ----------------------------------------------------------------------------------------


def _code_points(text: str) -> np.ndarray:
    # UTF-32 gives one fixed-width unit per character: a vectorized ord() over the string.
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


@dataclasses.dataclass(frozen=True)
class CharTokenizer:
    """Character-level tokenizer: token id ``i`` is the character ``chars[i]``.

    Build it with :meth:`from_text` (vocabulary = sorted set of the corpus' characters, as
    nanoGPT). It is immutable and hashable; :meth:`to_json` / :meth:`save` store it beside
    a checkpoint.

    Attributes:
      chars: the vocabulary, one distinct character per token id.
    """

    chars: str
    _code_points: np.ndarray = dataclasses.field(init=False, repr=False, compare=False)
    _lookup: np.ndarray = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if not isinstance(self.chars, str) or not self.chars:
            raise ValueError(f"chars must be a non-empty str, got {self.chars!r}.")
        if len(set(self.chars)) != len(self.chars):
            dup = sorted({c for c in self.chars if self.chars.count(c) > 1})
            raise ValueError(f"chars must be distinct; repeated: {dup!r}.")
        codes = _code_points(self.chars)
        # Dense code point -> id table (-1 = unknown); the corpus alphabet is small.
        lookup = np.full(int(codes.max()) + 1, -1, dtype=np.int32)
        lookup[codes] = np.arange(len(codes), dtype=np.int32)
        object.__setattr__(self, "_code_points", codes)
        object.__setattr__(self, "_lookup", lookup)

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        """Tokenizer whose vocabulary is the sorted set of the characters of ``text``."""
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        """Number of token ids, ``len(chars)``."""
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        """Maps a string to token ids.

        Args:
          text: a string of length ``T`` whose characters are all in the vocabulary.

        Returns:
          ``[T]`` int32 token ids.

        Raises:
          ValueError: if ``text`` holds characters outside the vocabulary (they are named).
        """
        codes = _code_points(text)
        in_table = codes < len(self._lookup)
        ids = self._lookup[np.where(in_table, codes, 0)]
        unknown = ~in_table | (ids < 0)
        if unknown.any():
            bad = sorted({chr(c) for c in codes[unknown]})
            shown = ", ".join(repr(c) for c in bad[:20]) + (", ..." if len(bad) > 20 else "")
            raise ValueError(
                f"encode: {len(bad)} character(s) not in the vocabulary of "
                f"{self.vocab_size}: {shown}."
            )
        return ids.astype(np.int32, copy=False)

    def decode(self, ids) -> str:
        """Maps token ids back to a string.

        Args:
          ids: ``[T]`` integer token ids (NumPy or JAX array, or a list), each in
            ``[0, vocab_size)``.

        Returns:
          The string of length ``T``.
        """
        ids = np.asarray(ids)
        if ids.ndim > 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise ValueError(
                f"decode: ids must be a [T] integer array, got {ids.dtype} {ids.shape}."
            )
        ids = ids.reshape(-1).astype(np.int64)
        bad = (ids < 0) | (ids >= self.vocab_size)
        if bad.any():
            raise ValueError(
                f"decode: ids must lie in [0, {self.vocab_size}); got {sorted(set(ids[bad]))[:20]}."
            )
        return self._code_points[ids].astype("<u4").tobytes().decode("utf-32-le", "surrogatepass")

    def to_json(self) -> str:
        """JSON string that :meth:`from_json` turns back into an equal tokenizer."""
        return json.dumps({"type": "CharTokenizer", "chars": self.chars})

    @classmethod
    def from_json(cls, s: str) -> "CharTokenizer":
        """Inverse of :meth:`to_json`."""
        obj = json.loads(s)
        if not isinstance(obj, dict) or obj.get("type") != "CharTokenizer" or "chars" not in obj:
            raise ValueError("from_json: not a serialized CharTokenizer.")
        return cls(obj["chars"])

    def save(self, path: str | os.PathLike) -> None:
        """Writes :meth:`to_json` to ``path`` (UTF-8)."""
        pathlib.Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CharTokenizer":
        """Reads a tokenizer written by :meth:`save`."""
        return cls.from_json(pathlib.Path(path).read_text(encoding="utf-8"))


def train_val_split(tokens, train_fraction: float = 0.9):
    """Splits a corpus into its first ``train_fraction`` and the rest, as nanoGPT.

    The split point is ``int(len(tokens) * train_fraction)``; for Tiny Shakespeare and
    0.9 that is 1,003,854 training and 111,540 validation characters.

    Args:
      tokens: ``[N]`` token ids (or a string, or anything sliceable with a length).
      train_fraction: share of the corpus, in ``(0, 1)``, that goes to training.

    Returns:
      ``(train [N_train], val [N - N_train])``, slices of ``tokens``.
    """
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must lie in (0, 1), got {train_fraction!r}.")
    n = int(len(tokens) * train_fraction)
    return tokens[:n], tokens[n:]


def random_windows(key: jax.Array, data, *, batch_size: int, block_size: int):
    """Random training windows of a token stream, with next-token targets.

    Window starts are uniform over ``[0, N - block_size - 1]`` (as nanoGPT's
    ``get_batch``), so ``y`` never runs past the end of ``data``. Jit-able: pass ``data``
    as a device array argument (a NumPy array would be copied to the device on every
    call, or baked into the compiled program as a constant under jit).

    Args:
      key: PRNG key.
      data: ``[N]`` integer token ids, ``N > block_size``.
      batch_size: number of windows ``B`` (static).
      block_size: window length ``T`` (static).

    Returns:
      ``(x [B, T], y [B, T])`` in the dtype of ``data``, with
      ``x[b] = data[s_b : s_b + T]`` and ``y[b] = data[s_b + 1 : s_b + T + 1]``.
    """
    _check_int(batch_size, "batch_size", 1)
    _check_int(block_size, "block_size", 1)
    data = jnp.asarray(data)
    if data.ndim != 1 or data.shape[0] <= block_size:
        raise ValueError(
            f"random_windows: data must be [N] with N > block_size={block_size}, "
            f"got shape {data.shape}."
        )
    starts = jax.random.randint(key, (batch_size,), 0, data.shape[0] - block_size)
    windows = data[starts[:, None] + jnp.arange(block_size + 1)]
    return windows[:, :-1], windows[:, 1:]


def sequential_windows(data, *, block_size: int):
    """Consecutive evaluation windows that predict every token once.

    Window ``w`` is ``data[w * T : w * T + T + 1]``: its inputs ``[:, :-1]`` tile the
    stream without overlap and its targets ``[:, 1:]`` are each token after the first
    exactly once. The remainder that does not fill a window is dropped.

    Args:
      data: ``[N]`` token ids (NumPy or JAX), ``N > block_size``.
      block_size: number of predictions per window ``T`` (static).

    Returns:
      ``[W, T + 1]`` windows, ``W = (N - 1) // T``, of the same array type as ``data``.
    """
    _check_int(block_size, "block_size", 1)
    n = len(data)
    if np.ndim(data) != 1 or n <= block_size:
        raise ValueError(
            f"sequential_windows: data must be [N] with N > block_size={block_size}, "
            f"got shape {np.shape(data)}."
        )
    num_windows = (n - 1) // block_size
    index = np.arange(num_windows)[:, None] * block_size + np.arange(block_size + 1)
    return data[index]


def _check_corpus(raw: bytes, where: str) -> None:
    if len(raw) != TINYSHAKESPEARE_SIZE:
        raise ValueError(
            f"{where}: expected {TINYSHAKESPEARE_SIZE:,} bytes of Tiny Shakespeare, "
            f"got {len(raw):,}."
        )
    digest = hashlib.sha256(raw).hexdigest()
    if digest != TINYSHAKESPEARE_SHA256:
        raise ValueError(
            f"{where}: sha256 {digest} does not match Tiny Shakespeare's {TINYSHAKESPEARE_SHA256}."
        )


def _download(url: str, dest: pathlib.Path, timeout: float = 60.0) -> None:
    # Write beside the destination, check, then rename atomically: an interrupted or
    # corrupt download never leaves a file that a later call would trust.
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=timeout) as resp:
            while chunk := resp.read(1 << 16):
                f.write(chunk)
        _check_corpus(pathlib.Path(tmp).read_bytes(), f"download from {url}")
        os.replace(tmp, dest)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def load_tinyshakespeare(
    cache_dir: str | os.PathLike | None = None, *, path: str | os.PathLike | None = None
) -> str:
    """The Tiny Shakespeare corpus (Karpathy's char-rnn), checked against its sha256.

    With ``path``, reads that file. Otherwise returns the copy cached in ``cache_dir``,
    downloading it once from :data:`TINYSHAKESPEARE_URL` when absent. Either way the
    bytes must be the 1,115,394-byte file with sha256 :data:`TINYSHAKESPEARE_SHA256`.

    Args:
      cache_dir: download cache (default ``~/.cache/attention_jax``); ignored with ``path``.
      path: a local copy of the corpus.

    Returns:
      The text, 1,115,394 characters.

    Raises:
      ValueError: if the file (local, cached or downloaded) has the wrong size or sha256;
        a bad download is deleted, not cached.
      OSError: if the download fails (nothing is written then).
    """
    if path is not None:
        path = pathlib.Path(path)
        raw = path.read_bytes()
        _check_corpus(raw, str(path))
        return raw.decode("utf-8")
    cache_dir = pathlib.Path(_DEFAULT_CACHE_DIR if cache_dir is None else cache_dir)
    cached = cache_dir.expanduser() / _CACHE_NAME
    if not cached.exists():
        _download(TINYSHAKESPEARE_URL, cached)
    raw = cached.read_bytes()
    _check_corpus(raw, f"{cached} (delete it to download again)")
    return raw.decode("utf-8")


# ----------------------------------------------------------------------------------------
# Synthetic tasks
# ----------------------------------------------------------------------------------------


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
        if self.name not in TASKS:
            raise ValueError(f"name must be one of {TASKS}, got {self.name!r}.")
        _check_int(self.num_symbols, "num_symbols", 4 if self.name == "mqar" else 2)
        if self.num_queries is not None:
            if self.name != "mqar":
                raise ValueError(f"num_queries applies to mqar only, not {self.name!r}.")
            _check_int(self.num_queries, "num_queries", 1)

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

    def _check_lengths(self, min_length, max_length) -> None:
        _check_int(min_length, "min_length", 1)
        _check_int(max_length, "max_length", 1)
        if max_length < min_length:
            raise ValueError(
                f"max_length must be >= min_length, got max_length={max_length} < "
                f"min_length={min_length}."
            )
        if min_length < self.min_length:
            raise ValueError(
                f"min_length must be >= {self.min_length} for {self.name!r}, got {min_length}."
            )
        cap = self.max_supported_length
        if cap is not None and max_length > cap:
            raise ValueError(
                f"max_length={max_length} exceeds the {cap} distinct keys of mqar with "
                f"num_symbols={self.num_symbols} (keys are the first num_symbols // 2 "
                "symbols); raise num_symbols."
            )
        if self.num_queries is not None and self.num_queries > min_length:
            raise ValueError(
                f"num_queries={self.num_queries} must be <= min_length={min_length}: every "
                "example needs that many distinct keys to query."
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
        min_length = self.min_length if min_length is None else min_length
        _check_int(batch_size, "batch_size", 1)
        self._check_lengths(min_length, max_length)
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
        _check_int(length, "length", self.min_length)
        batch = self.sample(key, batch_size=batch_size, min_length=length, max_length=length)
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
            f"exact_match: predictions {predictions.shape} and answers {answers.shape} must "
            "both be [B, A]."
        )
    correct = predictions == answers
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.shape != answers.shape:
            raise ValueError(f"exact_match: mask {mask.shape} must match answers {answers.shape}.")
        correct = correct | ~mask
    return jnp.all(correct, axis=1)
