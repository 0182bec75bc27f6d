"""Which attention implementation serves a call, and why.

``dot_product_attention(..., implementation=None)`` asks :func:`select_implementation`; a
forced implementation that cannot serve the requested options raises instead of silently
falling back to another path.

Implementations:

- ``"xla"``: the materialized path (full ``[B, N, T, S]`` logits); serves every option.
- ``"flash"``: :func:`attention_jax.flash_attention`, blockwise in plain JAX, memory linear in
  the sequence length; softmax only, no dropout, no returned weights; reverse-mode autodiff
  only (``jax.grad``/``vjp``; use ``"xla"`` for ``jax.jvp``/``jacfwd``).
- ``"cudnn"``: ``jax.nn.dot_product_attention(..., implementation="cudnn")``, cuDNN's fused
  flash attention on NVIDIA GPUs; float16/bfloat16, head dim a multiple of 8 up to 128
  (256 from Hopper on), masks from causal / left windows / lengths / a dense mask, a dense
  bias; no ``bias_fn``, softcap, segment ids or positions.
- ``"tokamax"``: ``tokamax.dot_product_attention`` (Pallas kernels; optional extra
  ``tokamax``, Python >= 3.12), which picks its fastest backend for the device.
"""

from __future__ import annotations

import importlib.util
from typing import NamedTuple

import jax
import jax.numpy as jnp

from attention_jax._inputs import AttentionInputs

__all__ = [
    "IMPLEMENTATIONS",
    "FLASH_MIN_LOGITS",
    "FLASH_MIN_LOGITS_ACCELERATOR",
    "Selection",
    "select_implementation",
]

IMPLEMENTATIONS = ("xla", "flash", "cudnn", "tokamax")

# With implementation=None, calls whose logits B*N*T*S have at least this many entries go to
# the flash path (on CPU, and on accelerators where no fused kernel serves the options).
# Measured on a 2-core x86 CPU, float32, H=64 (benchmarks/RESULTS.md): flash costs as much
# CPU time as the materialized path at 2^17 logits, half of it at 2^19 and a fifth at 2^23.
# The threshold sits a little above the crossover so that small calls, where either path
# takes a few milliseconds, keep the materialized path (which also supports forward-mode
# autodiff; the flash path's custom VJP is reverse-mode only).
FLASH_MIN_LOGITS = 2**20

# The same threshold on GPUs (and other accelerators) when no fused kernel serves the call.
# There the materialized path is the faster one at every size measured (H100, jax 0.11,
# benchmarks/gpu_check.py: 1.4x to 3x faster than the pure-JAX flash path up to
# B*N*T*S = 2^29), so flash is kept for what only it gives, memory: 2^28 logits are 1 GiB
# in float32 per layer and per buffer, kept for the backward pass in every layer.
FLASH_MIN_LOGITS_ACCELERATOR = 2**28


class Selection(NamedTuple):
    """The implementation chosen for an attention call.

    Attributes:
      name: one of :data:`IMPLEMENTATIONS`.
      reason: a short human-readable explanation of the choice.
    """

    name: str
    reason: str


def _platform() -> str:
    """``"cuda"`` (NVIDIA GPU), ``"rocm"``, ``"tpu"``, ``"cpu"``, or another backend name."""
    backend = jax.default_backend()
    if backend in ("gpu", "cuda", "rocm"):
        try:
            version = jax.devices()[0].client.platform_version.lower()
        except Exception:  # pragma: no cover - depends on the installed plugin
            version = ""
        return "rocm" if ("rocm" in version or backend == "rocm") else "cuda"
    return backend


def _cuda_compute_capability() -> tuple[int, int] | None:
    """The compute capability of the first GPU, e.g. ``(9, 0)``, or None if unknown."""
    try:
        major, minor = str(jax.devices()[0].compute_capability).split(".")[:2]
        return int(major), int(minor)
    except Exception:
        return None


def _tokamax_installed() -> bool:
    return importlib.util.find_spec("tokamax") is not None


def _softmax_only_blockers(inp, normalizer, attention_dropout, return_weights) -> list[str]:
    """Options that only the materialized path serves."""
    out = []
    if inp.logits_head_mix is not None or inp.weights_head_mix is not None:
        out.append("logits_head_mix / weights_head_mix (talking heads mix whole logit rows)")
    if return_weights:
        out.append("return_weights=True (the weights are never materialized)")
    if attention_dropout > 0.0:
        out.append(f"attention_dropout={attention_dropout} (attention-weight dropout)")
    if not (isinstance(normalizer, str) and normalizer == "softmax"):
        out.append(f"normalizer={normalizer!r} (only 'softmax')")
    return out


def _positions_matter(inp: AttentionInputs) -> bool:
    """Positions change the result only through causality, windows or ``bias_fn``."""
    given = inp.query_positions is not None or inp.key_value_positions is not None
    return given and (inp.is_causal or inp.local_window_size is not None or inp.bias_fn is not None)


def _fused_kernel_blockers(inp: AttentionInputs) -> list[str]:
    """Options that neither cuDNN nor tokamax take."""
    out = []
    if inp.bias_fn is not None:
        out.append("bias_fn (pass a dense bias instead)")
    if inp.query_segment_ids is not None:
        out.append("segment_ids")
    if inp.score_mod is not None:
        out.append("score_mod (runs on the xla and flash paths)")
    if inp.sinks is not None:
        out.append("sinks (run on the xla and flash paths)")
    if inp.mask_mod is not None:
        out.append("mask_mod / block_mask (run on the xla and flash paths)")
    if _positions_matter(inp):
        out.append("query_positions / key_value_positions with causal, window or bias_fn")
    return out


def _cudnn_blockers(inp: AttentionInputs) -> list[str]:
    out = []
    platform = _platform()
    if platform != "cuda":
        out.append(f"platform {platform!r} (cuDNN needs an NVIDIA GPU)")
    dtype = inp.query.dtype
    if dtype not in (jnp.float16, jnp.bfloat16):
        out.append(f"dtype {dtype} (cuDNN takes float16/bfloat16)")
    _, t, s, _, _, h = inp.dims
    cc = _cuda_compute_capability() if platform == "cuda" else None
    h_max = 256 if cc is not None and cc >= (9, 0) else 128
    if h % 8 != 0 or h > h_max:
        out.append(f"head dim {h} (cuDNN needs a multiple of 8, <= {h_max})")
    out += _fused_kernel_blockers(inp)
    if inp.softcap is not None:
        out.append("softcap")
    if inp.local_window_size is not None:
        right = inp.local_window_size[1]
        if right > 0 and not inp.is_causal:
            out.append(f"local_window_size right={right} > 0 without is_causal (left windows only)")
    if inp.bias is not None and (t % 2 or s % 2):
        # cuDNN's backward pass with a bias needs even sequence lengths.
        out.append(f"a bias with odd T={t} or S={s}")
    return out


def _tokamax_blockers(inp: AttentionInputs) -> list[str]:
    out = []
    if not _tokamax_installed():
        out.append(
            "tokamax is not installed (pip install 'attention_jax[tokamax]', Python >= 3.12)"
        )
    out += _fused_kernel_blockers(inp)
    if inp.softcap is not None and (inp.bias is not None or inp.bias_fn is not None):
        # tokamax caps scale * q k^T + bias; here the cap comes before the bias.
        out.append("softcap together with a bias (tokamax caps after adding the bias)")
    _, t, s, _, _, _ = inp.dims
    if inp.local_window_size is not None and t != s:
        out.append(f"local_window_size with T={t} != S={s} (tokamax windows assume T == S)")
    if inp.query.dtype == jnp.float64:
        out.append("dtype float64")
    return out


def _error(name: str, blockers: list[str]) -> ValueError:
    return ValueError(
        f"implementation={name!r} cannot serve this call: " + "; ".join(blockers) + ". "
        "Use implementation=None to choose automatically."
    )


def select_implementation(
    inputs: AttentionInputs,
    *,
    implementation: str | None = None,
    normalizer="softmax",
    attention_dropout: float = 0.0,
    return_weights: bool = False,
) -> Selection:
    """Chooses the attention implementation for one canonical attention call.

    With ``implementation=None``:

    1. ``return_weights``, dropout or a normalizer other than softmax -> ``"xla"`` (the only
       path that materializes the weights).
    2. An NVIDIA GPU and options cuDNN supports (see the module docstring) -> ``"cudnn"``.
    3. An NVIDIA GPU with ``tokamax`` installed and options it supports -> ``"tokamax"``.
    4. Logits of at least :data:`FLASH_MIN_LOGITS` entries (``B * N * T * S``) on CPU, of
       :data:`FLASH_MIN_LOGITS_ACCELERATOR` on GPUs and TPUs -> ``"flash"``; otherwise
       ``"xla"``.

    Only shapes, dtypes and which options are set are looked at, so this also runs on
    abstract inputs (under ``jax.eval_shape`` or ``jit``). To ask which path a call would
    take::

      inputs = attention_jax.canonicalize_attention_inputs(q, k, v, is_causal=True)
      attention_jax.select_implementation(inputs).reason

    Args:
      inputs: the call's :class:`attention_jax.AttentionInputs`, from
        :func:`attention_jax.canonicalize_attention_inputs` (the arguments of
        :func:`attention_jax.dot_product_attention`).
      implementation: None to choose automatically, or a name from :data:`IMPLEMENTATIONS`.
      normalizer: the attention normalizer requested.
      attention_dropout: attention dropout requested.
      return_weights: whether the caller wants the ``[B, N, T, S]`` weights back.

    Returns:
      A :class:`Selection` ``(name, reason)``.

    Raises:
      ValueError: an unknown implementation, or a forced one that cannot serve the options
        (``"flash"`` with weights/dropout/another normalizer, ``"cudnn"`` off NVIDIA GPUs or
        with unsupported options, ``"tokamax"`` not installed or unsupported options).
    """
    if implementation is not None and implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"select_implementation: implementation must be None or one of {IMPLEMENTATIONS}, "
            f"got {implementation!r}."
        )
    softmax_only = _softmax_only_blockers(inputs, normalizer, attention_dropout, return_weights)
    if implementation == "xla":
        return Selection("xla", "requested")
    if implementation is not None:
        blockers = list(softmax_only)
        if implementation == "cudnn":
            blockers += _cudnn_blockers(inputs)
        elif implementation == "tokamax":
            blockers += _tokamax_blockers(inputs)
        if blockers:
            raise _error(implementation, blockers)
        return Selection(implementation, "requested")

    if softmax_only:
        return Selection("xla", "only the materialized path serves " + "; ".join(softmax_only))
    platform = _platform()
    if platform == "cuda":
        if not _cudnn_blockers(inputs):
            return Selection("cudnn", "NVIDIA GPU and options cuDNN supports")
        if _tokamax_installed() and not _tokamax_blockers(inputs):
            return Selection("tokamax", "NVIDIA GPU, tokamax installed, options it supports")
    b, t, s, n, _, _ = inputs.dims
    logits = b * n * t * s
    if platform == "cpu":
        name, threshold = "FLASH_MIN_LOGITS", FLASH_MIN_LOGITS
    else:
        name, threshold = "FLASH_MIN_LOGITS_ACCELERATOR", FLASH_MIN_LOGITS_ACCELERATOR
    if logits >= threshold:
        return Selection("flash", f"B*N*T*S = {logits} >= {name} = {threshold} on {platform}")
    return Selection("xla", f"B*N*T*S = {logits} < {name} = {threshold} on {platform}")
