"""Text corpora for character-level language modelling (as nanoGPT's ``shakespeare_char``).

* :class:`CharTokenizer` -- vocabulary = sorted set of the corpus' characters.
* :func:`train_val_split` -- first 90% / last 10%.
* :func:`random_windows` -- jit-able random training batches ``(x, y)``.
* :func:`sequential_windows` -- non-overlapping evaluation windows.
* :func:`load_tinyshakespeare` -- the corpus, downloaded once and checksummed.
"""

import dataclasses
import hashlib
import json
import os
import pathlib
import tempfile
import urllib.request

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax._checks import check_int, describe, int_array

__all__ = [
    "TINYSHAKESPEARE_URL",
    "TINYSHAKESPEARE_SIZE",
    "TINYSHAKESPEARE_SHA256",
    "CharTokenizer",
    "train_val_split",
    "random_windows",
    "sequential_windows",
    "load_tinyshakespeare",
]

TINYSHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
TINYSHAKESPEARE_SIZE = 1_115_394
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
_DEFAULT_CACHE_DIR = "~/.cache/attention_jax"
_CACHE_NAME = "tinyshakespeare.txt"


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
            raise ValueError(f"CharTokenizer: chars must be a non-empty str, got {self.chars!r}.")
        if len(set(self.chars)) != len(self.chars):
            dup = sorted({c for c in self.chars if self.chars.count(c) > 1})
            raise ValueError(
                f"CharTokenizer: chars must be distinct characters, got {dup!r} repeated."
            )
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
                f"CharTokenizer.encode: text must hold only characters of the vocabulary of "
                f"{self.vocab_size}, got {len(bad)} not in the vocabulary: {shown}."
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
                f"CharTokenizer.decode: ids must be a [T] integer array, got {describe(ids)}."
            )
        ids = ids.reshape(-1).astype(np.int64)
        bad = (ids < 0) | (ids >= self.vocab_size)
        if bad.any():
            raise ValueError(
                f"CharTokenizer.decode: ids must lie in [0, {self.vocab_size}), "
                f"got {sorted(set(ids[bad].tolist()))[:20]}."
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
            raise ValueError(
                f"CharTokenizer.from_json: s must be the JSON of a CharTokenizer, got {s[:80]!r}."
            )
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
    if isinstance(train_fraction, bool) or not 0.0 < train_fraction < 1.0:
        raise ValueError(
            f"train_val_split: train_fraction must be a number in (0, 1), got {train_fraction!r}."
        )
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
    fn = "random_windows"
    check_int(batch_size, "batch_size", fn=fn)
    check_int(block_size, "block_size", fn=fn)
    data = int_array(data, "data", fn=fn)
    if data.ndim != 1 or data.shape[0] <= block_size:
        raise ValueError(
            f"{fn}: data must be [N] with N > block_size={block_size}, got {describe(data)}."
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
    fn = "sequential_windows"
    check_int(block_size, "block_size", fn=fn)
    if np.ndim(data) != 1 or len(data) <= block_size:
        raise ValueError(
            f"{fn}: data must be [N] with N > block_size={block_size}, got {describe(data)}."
        )
    n = len(data)
    num_windows = (n - 1) // block_size
    index = np.arange(num_windows)[:, None] * block_size + np.arange(block_size + 1)
    return data[index]


def _check_corpus(raw: bytes, what: str, hint: str = "") -> None:
    """Raises unless ``raw`` is Tiny Shakespeare; ``what`` names the file in the message."""
    fn = "load_tinyshakespeare"
    if len(raw) != TINYSHAKESPEARE_SIZE:
        raise ValueError(
            f"{fn}: {what} must be the {TINYSHAKESPEARE_SIZE:,} bytes of Tiny Shakespeare, "
            f"got {len(raw):,} bytes{hint}."
        )
    digest = hashlib.sha256(raw).hexdigest()
    if digest != TINYSHAKESPEARE_SHA256:
        raise ValueError(
            f"{fn}: {what} must have Tiny Shakespeare's sha256 {TINYSHAKESPEARE_SHA256}, "
            f"got {digest}{hint}."
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
        _check_corpus(pathlib.Path(tmp).read_bytes(), f"the download from {url}")
        os.replace(tmp, dest)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def load_tinyshakespeare(
    cache_dir: str | os.PathLike | None = None,
    *,
    path: str | os.PathLike | None = None,
    url: str = TINYSHAKESPEARE_URL,
) -> str:
    """The Tiny Shakespeare corpus (Karpathy's char-rnn), checked against its sha256.

    With ``path``, reads that file. Otherwise returns the copy cached in ``cache_dir``,
    downloading it once from ``url`` when absent. Either way the bytes must be the
    1,115,394-byte file with sha256 :data:`TINYSHAKESPEARE_SHA256`.

    Args:
      cache_dir: download cache (default ``~/.cache/attention_jax``); ignored with ``path``.
      path: a local copy of the corpus.
      url: where to download it from (default :data:`TINYSHAKESPEARE_URL`; any URL that
        ``urllib.request.urlopen`` opens, a mirror or a ``file:`` URL).

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
        _check_corpus(raw, f"the file {path}")
        return raw.decode("utf-8")
    cache_dir = pathlib.Path(_DEFAULT_CACHE_DIR if cache_dir is None else cache_dir)
    cached = cache_dir.expanduser() / _CACHE_NAME
    if not cached.exists():
        _download(url, cached)
    raw = cached.read_bytes()
    _check_corpus(raw, f"the cached copy {cached}", "; delete it to download again")
    return raw.decode("utf-8")
