"""Tests for attention_jax.data.text: tokenizer, text windows, corpus loading."""

import functools
import io
import urllib.request

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from attention_jax import data as D

# ----------------------------------------------------------------------------------------
# CharTokenizer
# ----------------------------------------------------------------------------------------


def test_tokenizer_vocabulary_is_sorted_set():
    tok = D.CharTokenizer.from_text("hello world\n")
    assert tok.chars == "\n dehlorw"
    assert tok.vocab_size == 9
    ids = tok.encode("hello")
    assert ids.dtype == np.int32
    np.testing.assert_array_equal(ids, [4, 3, 5, 5, 6])
    assert tok.decode(ids) == "hello"
    assert tok.decode(jnp.asarray(ids)) == "hello"
    assert tok.decode([]) == ""
    assert tok.encode("").shape == (0,)


@given(st.text(min_size=1, max_size=50))
def test_tokenizer_roundtrip(text):
    tok = D.CharTokenizer.from_text(text)
    assert list(tok.chars) == sorted(set(text))
    ids = tok.encode(text)
    chex.assert_shape(ids, (len(text),))
    assert ids.min() >= 0 and ids.max() < tok.vocab_size
    # Ids follow the sorted order of the characters.
    np.testing.assert_array_equal(ids, [sorted(set(text)).index(c) for c in text])
    assert tok.decode(ids) == text


def test_tokenizer_unknown_characters_are_named():
    tok = D.CharTokenizer.from_text("abc")
    with pytest.raises(
        ValueError,
        match=r"CharTokenizer.encode: text must .* got 2 not in the vocabulary: 'x', 'z'\.",
    ):
        tok.encode("abzcx")
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tok.encode("\u00e9")  # code point beyond the lookup table
    with pytest.raises(
        ValueError, match=r"CharTokenizer.decode: ids must lie in \[0, 3\), got \[3\]"
    ):
        tok.decode([0, 3])
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 3\), got \[-1\]"):
        tok.decode([-1])
    with pytest.raises(ValueError, match=r"decode: ids must be a \[T\] integer array, got float"):
        tok.decode(np.zeros(2))
    with pytest.raises(
        ValueError, match=r"CharTokenizer: chars must be distinct characters, got \['a'\]"
    ):
        D.CharTokenizer("aba")
    with pytest.raises(ValueError, match="CharTokenizer: chars must be a non-empty str, got ''"):
        D.CharTokenizer("")


def test_tokenizer_json_and_file_roundtrip(tmp_path):
    tok = D.CharTokenizer.from_text('a "quoted"\tline\n\u00e9\u4e2d')
    assert D.CharTokenizer.from_json(tok.to_json()) == tok
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    loaded = D.CharTokenizer.load(path)
    assert loaded == tok and hash(loaded) == hash(tok)
    text = "\u4e2d a\n"
    assert loaded.decode(loaded.encode(text)) == text
    with pytest.raises(ValueError, match="from_json: s must be the JSON of a CharTokenizer"):
        D.CharTokenizer.from_json('{"type": "other"}')


# ----------------------------------------------------------------------------------------
# train_val_split, random_windows, sequential_windows
# ----------------------------------------------------------------------------------------


def test_train_val_split():
    data = np.arange(11)
    train, val = D.train_val_split(data)
    np.testing.assert_array_equal(train, np.arange(9))  # int(11 * 0.9) = 9
    np.testing.assert_array_equal(val, [9, 10])
    assert D.train_val_split("abcd", train_fraction=0.5) == ("ab", "cd")
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(
            ValueError, match=rf"train_fraction must be a number in \(0, 1\), got {bad}"
        ):
            D.train_val_split(data, train_fraction=bad)


@functools.cache
def _jitted_windows(batch_size, block_size):
    traces = []

    def windows(key, data):
        traces.append(None)
        return D.random_windows(key, data, batch_size=batch_size, block_size=block_size)

    return jax.jit(windows), traces


@given(seed=st.integers(0, 2**31 - 1))
def test_random_windows_are_contiguous_slices(seed):
    # One fixed shape (compiling dominates the runtime); the keys vary.
    n, block_size, batch_size = 10, 4, 256
    data = jnp.arange(n, dtype=jnp.int32) * 3  # distinct values reveal the slice taken
    windows, _ = _jitted_windows(batch_size, block_size)
    x, y = windows(jax.random.key(seed), data)
    chex.assert_shape([x, y], (batch_size, block_size))
    assert x.dtype == y.dtype == jnp.int32
    x, y = np.asarray(x), np.asarray(y)
    starts = x[:, 0] // 3
    assert starts.min() >= 0 and starts.max() <= n - block_size - 1
    ref = np.arange(n) * 3
    for b, s in enumerate(starts):
        np.testing.assert_array_equal(x[b], ref[s : s + block_size])
        np.testing.assert_array_equal(y[b], ref[s + 1 : s + block_size + 1])


def test_random_windows_jit_keys_and_range():
    data = jnp.arange(10, dtype=jnp.int32)
    windows, traces = _jitted_windows(256, 4)
    x0, _ = windows(jax.random.key(0), data)
    x0_again, _ = windows(jax.random.key(0), data)
    x1, _ = windows(jax.random.key(1), data)
    windows(jax.random.key(2), data + 1)  # new data, same shape: no retrace
    assert len(traces) == 1
    chex.assert_trees_all_equal(x0, x0_again)
    assert not np.array_equal(x0, x1)
    # Every start in [0, N - T - 1] = [0, 5] is reachable, and nothing beyond.
    assert set(np.asarray(x0[:, 0]).tolist()) == set(range(6))
    with pytest.raises(
        ValueError,
        match=r"data must be \[N\] with N > block_size=10, got int32 array of shape \(10,\)",
    ):
        D.random_windows(jax.random.key(0), data, batch_size=2, block_size=10)
    with pytest.raises(ValueError, match="random_windows: batch_size must be an int >= 1, got 0."):
        D.random_windows(jax.random.key(0), data, batch_size=0, block_size=2)
    with pytest.raises(ValueError, match="random_windows: block_size must be an int >= 1, got 2.0"):
        D.random_windows(jax.random.key(0), data, batch_size=2, block_size=2.0)
    with pytest.raises(TypeError, match="random_windows: data must be an integer array, got float"):
        D.random_windows(jax.random.key(0), data * 1.0, batch_size=2, block_size=2)


@given(n=st.integers(2, 60), block_size=st.integers(1, 12))
def test_sequential_windows(n, block_size):
    if n <= block_size:
        with pytest.raises(
            ValueError,
            match=rf"sequential_windows: data must be \[N\] with N > block_size={block_size}, got .* shape \({n},\)",
        ):
            D.sequential_windows(np.arange(n), block_size=block_size)
        return
    data = np.arange(n) + 100
    windows = D.sequential_windows(data, block_size=block_size)
    num = (n - 1) // block_size
    chex.assert_shape(windows, (num, block_size + 1))
    ref = np.stack([data[w * block_size : w * block_size + block_size + 1] for w in range(num)])
    np.testing.assert_array_equal(windows, ref)
    # Inputs tile the stream without overlap; each target after the first appears once.
    np.testing.assert_array_equal(windows[:, :-1].ravel(), data[: num * block_size])
    np.testing.assert_array_equal(windows[:, 1:].ravel(), data[1 : num * block_size + 1])


def test_sequential_windows_jax_array():
    data = jnp.arange(11)
    out = D.sequential_windows(data, block_size=3)
    assert isinstance(out, jax.Array)
    np.testing.assert_array_equal(out, [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]])


# ----------------------------------------------------------------------------------------
# Tiny Shakespeare
# ----------------------------------------------------------------------------------------


def test_tinyshakespeare_local_file(tinyshakespeare_path):
    text = D.load_tinyshakespeare(path=tinyshakespeare_path)
    assert len(text) == 1_115_394
    assert text.startswith("First Citizen:")
    tok = D.CharTokenizer.from_text(text)
    assert tok.vocab_size == 65
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    train, val = D.train_val_split(ids)
    assert (len(train), len(val)) == (1_003_854, 111_540)
    windows = D.sequential_windows(val, block_size=512)
    chex.assert_shape(windows, ((111_540 - 1) // 512, 513))


def _serve(monkeypatch, payload: bytes, calls: list, fail_after: int | None = None):
    class Response(io.BytesIO):
        def read(self, size=-1):
            if fail_after is not None and self.tell() >= fail_after:
                raise ConnectionResetError("connection dropped")
            return super().read(size)

    def urlopen(url, timeout=None):
        calls.append(url)
        return Response(payload)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)


def test_tinyshakespeare_download_then_cache(tinyshakespeare_path, tmp_path, monkeypatch):
    raw = tinyshakespeare_path.read_bytes()
    calls = []
    _serve(monkeypatch, raw, calls)
    cache = tmp_path / "cache"
    text = D.load_tinyshakespeare(cache)
    assert calls == [D.TINYSHAKESPEARE_URL]
    assert len(text) == D.TINYSHAKESPEARE_SIZE
    assert [p.name for p in cache.iterdir()] == ["tinyshakespeare.txt"]
    # The second call reads the cache and does not touch the network.
    assert D.load_tinyshakespeare(cache) == text
    assert len(calls) == 1


def test_tinyshakespeare_download_from_another_url(tinyshakespeare_path, tmp_path):
    # A mirror (here a file: URL, no network) is downloaded, checked and cached alike.
    cache = tmp_path / "cache"
    text = D.load_tinyshakespeare(cache, url=tinyshakespeare_path.resolve().as_uri())
    assert len(text) == D.TINYSHAKESPEARE_SIZE
    assert (cache / "tinyshakespeare.txt").stat().st_size == D.TINYSHAKESPEARE_SIZE
    # An unreachable URL raises an OSError and writes nothing.
    missing = (tmp_path / "nowhere" / "input.txt").as_uri()
    with pytest.raises(OSError):
        D.load_tinyshakespeare(tmp_path / "cache2", url=missing)
    assert list((tmp_path / "cache2").iterdir()) == []


def test_tinyshakespeare_bad_download_leaves_nothing(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    calls = []
    _serve(monkeypatch, b"<html>rate limited</html>", calls)
    with pytest.raises(
        ValueError,
        match=r"load_tinyshakespeare: the download from https://\S+ must be the 1,115,394 bytes "
        r"of Tiny Shakespeare, got 25 bytes\.",
    ):
        D.load_tinyshakespeare(cache)
    assert list(cache.iterdir()) == []
    # Right size, wrong content: the sha256 check catches it.
    _serve(monkeypatch, b"x" * D.TINYSHAKESPEARE_SIZE, calls)
    with pytest.raises(ValueError, match=r"must have Tiny Shakespeare's sha256 86c4e6aa\w+, got "):
        D.load_tinyshakespeare(cache)
    assert list(cache.iterdir()) == []
    # A connection that drops half-way leaves no partial file either.
    _serve(monkeypatch, b"x" * D.TINYSHAKESPEARE_SIZE, calls, fail_after=1 << 17)
    with pytest.raises(ConnectionResetError):
        D.load_tinyshakespeare(cache)
    assert list(cache.iterdir()) == []
    assert len(calls) == 3


def test_tinyshakespeare_rejects_wrong_files(tmp_path, monkeypatch):
    wrong = tmp_path / "wrong.txt"
    wrong.write_bytes(b"To be, or not to be")
    with pytest.raises(
        ValueError, match=r"the file \S+wrong.txt must be the 1,115,394 bytes .* got 19 bytes"
    ):
        D.load_tinyshakespeare(path=wrong)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "tinyshakespeare.txt").write_bytes(b"y" * D.TINYSHAKESPEARE_SIZE)
    calls = []
    _serve(monkeypatch, b"", calls)
    with pytest.raises(
        ValueError, match=r"the cached copy \S+ must have .*; delete it to download again\."
    ):
        D.load_tinyshakespeare(cache)
    assert calls == []
