"""Tests for attention_jax.dispatch.select_implementation and the forced-path errors.

The cuDNN and tokamax branches cannot run without an NVIDIA GPU; their selection logic is
tested here with the platform and the installed packages patched.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from attention_jax import (
    canonicalize_attention_inputs,
    dispatch,
    dot_product_attention,
    select_implementation,
)
from attention_jax.dispatch import FLASH_MIN_LOGITS, IMPLEMENTATIONS, Selection


def spec(shape, dtype=jnp.float32):
    return jax.ShapeDtypeStruct(shape, dtype)


def select(
    query,
    key,
    *,
    implementation=None,
    normalizer="softmax",
    attention_dropout=0.0,
    return_weights=False,
    **options,
):
    """The selection for abstract ``query``/``key`` specs and the options of
    ``dot_product_attention`` (traced under ``jax.eval_shape``: nothing is computed)."""
    found = []

    def trace(q, k):
        inputs = canonicalize_attention_inputs(q, k, k, **options)
        found.append(
            select_implementation(
                inputs,
                implementation=implementation,
                normalizer=normalizer,
                attention_dropout=attention_dropout,
                return_weights=return_weights,
            )
        )
        return q

    jax.eval_shape(trace, query, key)
    return found[0]


SHORT = spec((2, 16, 4, 64))
LONG_T = 4096
LONG = spec((1, LONG_T, 8, 64))
BF16 = spec((1, 1024, 8, 64), jnp.bfloat16)


@pytest.fixture
def on_gpu(monkeypatch):
    """An NVIDIA Hopper GPU, as far as the dispatcher can tell."""
    monkeypatch.setattr(dispatch, "_platform", lambda: "cuda")
    monkeypatch.setattr(dispatch, "_cuda_compute_capability", lambda: (9, 0))


@pytest.fixture
def on_cpu(monkeypatch):
    """A CPU, whatever this machine has (the suite also runs on GPUs)."""
    monkeypatch.setattr(dispatch, "_platform", lambda: "cpu")


@pytest.fixture
def tokamax_installed(monkeypatch):
    monkeypatch.setattr(dispatch, "_tokamax_installed", lambda: True)


@pytest.fixture
def tokamax_missing(monkeypatch):
    monkeypatch.setattr(dispatch, "_tokamax_installed", lambda: False)


def test_names():
    assert IMPLEMENTATIONS == ("xla", "flash", "cudnn", "tokamax")


def test_short_sequences_on_cpu_use_xla(on_cpu):
    sel = select(SHORT, SHORT)
    assert isinstance(sel, Selection)
    assert sel.name == "xla"
    assert "FLASH_MIN_LOGITS" in sel.reason


def test_long_sequences_use_flash(on_cpu):
    assert 8 * LONG_T * LONG_T >= FLASH_MIN_LOGITS
    sel = select(LONG, LONG, is_causal=True)
    assert sel.name == "flash"
    assert sel.reason.startswith("B*N*T*S = ")


def test_threshold_is_on_logits_size(on_cpu):
    t = 64
    while 1 * 1 * t * t < FLASH_MIN_LOGITS:
        t *= 2
    below, at = spec((1, t // 2, 1, 8)), spec((1, t, 1, 8))
    assert select(below, below).name == "xla"
    assert select(at, at).name == "flash"
    # Unbatched [T, N, H] inputs count B = 1.
    assert select(spec((t, 1, 8)), spec((t, 1, 8))).name == "flash"


@pytest.mark.parametrize(
    "options, reason",
    [
        (dict(return_weights=True), "return_weights"),
        (dict(attention_dropout=0.1), "dropout"),
        (dict(normalizer="sparsemax"), "normalizer"),
        (dict(normalizer=lambda x, where=None: x), "normalizer"),
    ],
)
def test_softmax_only_options_never_pick_flash(options, reason):
    sel = select(LONG, LONG, **options)
    assert sel.name == "xla"
    assert reason in sel.reason
    with pytest.raises(ValueError, match=f"implementation='flash'.*{reason}"):
        select(LONG, LONG, implementation="flash", **options)


def test_unknown_implementation_raises():
    with pytest.raises(ValueError, match="one of"):
        select(SHORT, SHORT, implementation="triton")


def test_forced_xla_and_flash_are_honored():
    assert select(LONG, LONG, implementation="xla").name == "xla"
    assert select(SHORT, SHORT, implementation="flash").name == "flash"


def test_forced_cudnn_on_cpu_raises(on_cpu):
    with pytest.raises(ValueError, match="platform 'cpu'.*NVIDIA GPU"):
        select(BF16, BF16, implementation="cudnn")


def test_forced_cudnn_raises_through_dot_product_attention(on_cpu):
    q = jnp.ones((1, 4, 2, 8), jnp.bfloat16)
    with pytest.raises(ValueError, match="implementation='cudnn' cannot serve"):
        dot_product_attention(q, q, q, implementation="cudnn")
    with pytest.raises(ValueError, match="implementation='flash' cannot serve"):
        dot_product_attention(q, q, q, implementation="flash", return_weights=True)


def test_forced_tokamax_not_installed_raises(tokamax_missing):
    with pytest.raises(ValueError, match="tokamax is not installed"):
        select(BF16, BF16, implementation="tokamax")


def test_tokamax_detection_uses_find_spec(monkeypatch):
    seen = []
    monkeypatch.setattr(
        dispatch.importlib.util, "find_spec", lambda name: seen.append(name) or object()
    )
    assert dispatch._tokamax_installed()
    assert seen == ["tokamax"]


def test_cudnn_selected_on_gpu(on_gpu, tokamax_missing):
    sel = select(BF16, BF16, is_causal=True, key_value_seq_lengths=jnp.ones(1, jnp.int32))
    assert sel == Selection("cudnn", "NVIDIA GPU and options cuDNN supports")
    assert select(BF16, BF16, implementation="cudnn").name == "cudnn"


@pytest.mark.parametrize(
    "query, options, blocker",
    [
        (spec((1, 1024, 8, 64)), {}, "dtype float32"),
        (spec((1, 1024, 8, 60), jnp.bfloat16), {}, "head dim 60"),
        (spec((1, 1024, 8, 512), jnp.float16), {}, "head dim 512"),
        (BF16, dict(softcap=30.0), "softcap"),
        (BF16, dict(bias_fn=lambda q, k: 0.0), "bias_fn"),
        (BF16, dict(segment_ids=jnp.zeros((1, 1024), jnp.int32)), "segment_ids"),
        (BF16, dict(is_causal=True, query_positions=jnp.arange(1024)), "positions"),
        (BF16, dict(local_window_size=(4, 2)), "right=2"),
        (spec((1, 1023, 8, 64), jnp.bfloat16), dict(bias=jnp.zeros((1, 1, 1, 1))), "odd"),
        (BF16, dict(attention_dropout=0.1), "dropout"),
        (BF16, dict(normalizer="softmax_one"), "normalizer"),
    ],
)
def test_cudnn_blockers(on_gpu, tokamax_missing, query, options, blocker):
    key = spec((1, query.shape[1], 8, query.shape[3]), query.dtype)
    with pytest.raises(ValueError, match=f"implementation='cudnn'.*{blocker}"):
        select(query, key, implementation="cudnn", **options)
    # Automatic selection falls back to a path that serves the options.
    assert select(query, key, **options).name in ("xla", "flash")


def test_cudnn_accepts_left_windows_and_causal_windows(on_gpu):
    for options in (dict(local_window_size=(8, 0)), dict(is_causal=True, local_window_size=8)):
        assert select(BF16, BF16, implementation="cudnn", **options).name == "cudnn"


def test_cudnn_head_dim_limit_depends_on_architecture(monkeypatch):
    monkeypatch.setattr(dispatch, "_platform", lambda: "cuda")
    q = spec((1, 256, 4, 256), jnp.bfloat16)
    monkeypatch.setattr(dispatch, "_cuda_compute_capability", lambda: (8, 0))
    with pytest.raises(ValueError, match="<= 128"):
        select(q, q, implementation="cudnn")
    monkeypatch.setattr(dispatch, "_cuda_compute_capability", lambda: (9, 0))
    assert select(q, q, implementation="cudnn").name == "cudnn"


def test_tokamax_selected_on_gpu_when_cudnn_cannot(on_gpu, tokamax_installed):
    # float32 or a softcap rule out cuDNN; tokamax serves both.
    assert select(LONG, LONG).name == "tokamax"
    assert select(BF16, BF16, softcap=20.0).name == "tokamax"
    assert select(BF16, BF16).name == "cudnn"


@pytest.mark.parametrize(
    "options, blocker",
    [
        (dict(softcap=20.0, bias=jnp.zeros((1, 1, 1, 1))), "softcap together with a bias"),
        (dict(segment_ids=jnp.zeros((1, 4096), jnp.int32)), "segment_ids"),
        (dict(local_window_size=3, query=spec((1, 8, 8, 64))), "T=8 != S=4096"),
    ],
)
def test_tokamax_blockers(on_gpu, tokamax_installed, options, blocker):
    query = options.pop("query", LONG)
    with pytest.raises(ValueError, match=f"implementation='tokamax'.*{blocker}"):
        select(query, LONG, implementation="tokamax", **options)
    assert select(query, LONG, **options).name in ("xla", "flash")


def test_no_fused_kernel_off_nvidia(monkeypatch, tokamax_installed):
    monkeypatch.setattr(dispatch, "_platform", lambda: "tpu")
    short_bf16 = spec(SHORT.shape, jnp.bfloat16)
    assert select(short_bf16, short_bf16).name == "xla"
    assert select(BF16, BF16).name == "xla"  # 2^23 logits: below the accelerator threshold
    big = spec((16, 4096, 16, 64), jnp.bfloat16)
    assert select(big, big).name == "flash"
    monkeypatch.setattr(dispatch, "_platform", lambda: "rocm")
    with pytest.raises(ValueError, match="platform 'rocm'"):
        select(BF16, BF16, implementation="cudnn")


def test_platform_names_the_backend():
    backend = jax.default_backend()
    expected = {"gpu": ("cuda", "rocm"), "cuda": ("cuda",), "rocm": ("rocm",)}
    assert dispatch._platform() in expected.get(backend, (backend,))


def test_accelerators_keep_the_materialized_path_longer(monkeypatch, tokamax_missing):
    monkeypatch.setattr(dispatch, "_platform", lambda: "cuda")
    # float32: cuDNN does not serve it, so the logits-size rule decides.
    t = 1024  # 8 * 8 * 1024 * 1024 = 2^26 logits: flash on CPU, xla on a GPU
    q = jax.ShapeDtypeStruct((8, t, 8, 64), jnp.float32)
    sel = select(q, q)
    assert sel.name == "xla" and "FLASH_MIN_LOGITS_ACCELERATOR" in sel.reason
    big = jax.ShapeDtypeStruct((16, 4096, 16, 64), jnp.float32)  # 2^32 logits
    assert select(big, big).name == "flash"
    monkeypatch.setattr(dispatch, "_platform", lambda: "cpu")
    assert select(q, q).name == "flash"


def test_automatic_choice_matches_forced_result():
    rng = jax.random.key(0)
    q = jax.random.normal(rng, (1, 24, 2, 8))
    auto = dot_product_attention(q, q, q, is_causal=True)
    flash = dot_product_attention(q, q, q, is_causal=True, implementation="flash")
    assert jnp.allclose(auto, flash, atol=1e-5)
