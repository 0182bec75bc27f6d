"""FlexAttention benchmark: ``score_mod`` / ``mask_mod`` / ``block_mask`` against the built-in
options of the flash path, and against PyTorch's ``flex_attention`` on CPU.

Cases (``--cases``), each as "ours, mod" (``score_mod`` / a ``BlockMask`` from
``attention_jax.flex.create_block_mask``) against "ours, built-in" (the equivalent option of
``dot_product_attention``), both ``implementation="flash"`` and jitted:

- ``causal``: ``causal_mask_mod`` with its block mask vs ``is_causal=True``;
- ``alibi``: ``alibi_score_mod(alibi_slopes(N))`` + the causal block mask vs
  ``bias_fn=partial(alibi_bias, slopes)`` + ``is_causal=True`` (ALiBi is causal in the paper);
- ``document``: ``--documents`` documents of equal length (8 of 512 at T=4096), non-causal
  inside a document: the block mask of ``document_mask_mod(segment_ids)`` vs
  ``segment_ids=``;
- ``sliding_window``: ``and_masks(causal_mask_mod, sliding_window_mask_mod(256))`` with its
  block mask vs ``is_causal=True, local_window_size=(256, 0)``;
- ``prefix_lm``: ``prefix_lm_mask_mod(1024)`` with its block mask vs a dense boolean
  ``mask=`` of shape ``[T, S]`` made outside the timed function: there is no built-in
  prefix-LM option.

Plus a reference row, full non-causal attention (flash, no mask), forward only: the target
"document mask with its block mask at most 0.3x the forward time of full non-causal
attention" is measured against it. The block masks are made outside the timed functions and
passed in as arguments; ``create_block_mask`` (jitted) is timed on its own.

The PyTorch peer (when torch is installed and the device is the CPU; ``--no-torch`` to
skip) is ``torch.nn.attention.flex_attention.flex_attention`` under ``torch.compile`` with
the same ``score_mod`` / ``mask_mod`` written in torch and torch's
``create_block_mask(mask_mod, B, H, T, S, device="cpu")``, inputs in its ``[B, N, T, H]``
layout, forward only: its backward raises ``NotImplementedError`` on CPU (tried once per
case and recorded).

Before timing, every case is run once and the outputs compared at the timed shape: ours-mod
against ours-built-in and against torch (outputs), and ours-mod against ours-built-in
(gradients); the max abs differences go to the JSON. A disagreement above the tolerance is
reported and makes the script exit with status 1 after writing its outputs.

Timing is :mod:`attention`'s (the sibling benchmark): ``block_until_ready``, ``--warmup``
untimed runs, then the median of ``--repeats`` runs of wall time and of process CPU time (all
threads), the points of one pass (all the forwards, all the forward+backwards, all the
block-mask creations) timed round-robin, or each alone with ``--schedule blocked`` (the better
choice on an idle machine). Forward+backward is the gradient of ``sum(out * cotangent)`` with
respect to q, k and v. Peak memory (``--memory-shape``, ``--no-memory`` to skip) is the
forward+backward peak RSS above the RSS after making the inputs (block mask or dense mask
included) and compiling, one fresh subprocess per point, as :mod:`attention` measures it.

Ratios reported: mod / built-in (forward and forward+backward; target <= 1.15), ours-mod
forward / torch flex forward (target <= 1.2), document forward / full non-causal forward
(target <= 0.3).

Usage::

  python benchmarks/flex.py --out out/bench-flex                 # full run (make bench-flex)
  python benchmarks/flex.py --schedule blocked --out out/bench-flex   # on an idle machine
  python benchmarks/flex.py --shape 1x1024x8x64 --repeats 3 --no-memory --out out/flex-quick
  python benchmarks/flex.py --cases document --no-torch --no-memory --out out/flex-doc

Writes ``flex.json``, ``flex.md`` and ``flex.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path

import attention  # the sibling benchmark: timing loop, memory measurement, environment

CASES = ("causal", "alibi", "document", "sliding_window", "prefix_lm")
DEFAULT_SHAPE = "1x4096x8x64"
DEFAULT_MEMORY_SHAPE = "1x16384x8x64"
TARGETS = {"mod_over_builtin": 1.15, "mod_over_torch_fwd": 1.2, "document_over_full_fwd": 0.3}
# Max abs difference allowed between two outputs, and between two gradients relative to the
# gradients' largest magnitude (float32, different block and summation orders).
OUT_TOL = 1e-4
GRAD_RTOL = 1e-4
ISA_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_bf16",
)

MOD_DESC = {
    "causal": "block_mask(causal_mask_mod)",
    "alibi": "score_mod=alibi_score_mod(slopes), block_mask(causal_mask_mod)",
    "document": "block_mask(document_mask_mod(segment_ids))",
    "sliding_window": "block_mask(and_masks(causal, sliding_window_mask_mod(W)))",
    "prefix_lm": "block_mask(prefix_lm_mask_mod(P))",
    "full": "no mask",
}
BUILTIN_DESC = {
    "causal": "is_causal=True",
    "alibi": "bias_fn=partial(alibi_bias, slopes), is_causal=True",
    "document": "segment_ids=segment_ids",
    "sliding_window": "is_causal=True, local_window_size=(W, 0)",
    "prefix_lm": "no built-in option: a dense boolean mask= [T, S]",
    "full": "no mask",
}


# ----------------------------------------------------------------------------------------
# Flags.
# ----------------------------------------------------------------------------------------


def parse_shape(text: str, flag: str) -> tuple[int, int, int, int]:
    try:
        shapes = attention.parse_shapes(text)
    except ValueError:
        shapes = []
    if len(shapes) != 1:
        raise ValueError(f"{flag} takes one BxTxNxH of positive integers, got {text!r}")
    return shapes[0]


def parse_cases(text: str) -> list[str]:
    cases = [c.strip() for c in text.split(",") if c.strip()]
    bad = [c for c in cases if c not in CASES]
    if bad or not cases:
        raise ValueError(f"--cases: unknown {bad or [text]}; choose from {','.join(CASES)}")
    return list(dict.fromkeys(cases))


def check_args(parser, args) -> None:
    """Every flag, before JAX is set up; ``parser.error`` (exit status 2) on the first bad one."""
    try:
        shape = parse_shape(args.shape, "--shape")
        memory_shape = parse_shape(args.memory_shape, "--memory-shape")
        parse_cases(args.cases)
    except ValueError as e:
        parser.error(str(e))
    if args.repeats < 1:
        parser.error(f"--repeats must be an int >= 1, got {args.repeats}")
    if args.warmup < 0:
        parser.error(f"--warmup must be an int >= 0, got {args.warmup}")
    if args.window < 0:
        parser.error(f"--window must be an int >= 0, got {args.window}")
    if args.prefix < 0:
        parser.error(f"--prefix must be an int >= 0, got {args.prefix}")
    t_min = min(shape[1], memory_shape[1] if not args.no_memory else shape[1])
    if not 1 <= args.documents <= t_min:
        parser.error(f"--documents must be an int in [1, T = {t_min}], got {args.documents}")
    if not args.memory_timeout > 0:
        parser.error(f"--memory-timeout must be a number of seconds > 0, got {args.memory_timeout}")


# ----------------------------------------------------------------------------------------
# The cases, in JAX and in torch.
# ----------------------------------------------------------------------------------------


def segment_ids(b: int, t: int, documents: int):
    """int32 ``[B, T]``: ``documents`` documents of (nearly) equal length, ids 0, 1, ..."""
    import jax.numpy as jnp

    ids = jnp.arange(t, dtype=jnp.int32) * documents // t
    return jnp.broadcast_to(ids, (b, t))


def jax_case(case: str, shape, opts: dict) -> dict:
    """The two versions of ``case`` in JAX.

    Returns a dict: ``mask_mod`` and ``batch`` (what ``create_block_mask`` gets; None
    ``mask_mod``: no block mask), ``score_mod`` (the mod version's), ``builtin`` (static
    keyword arguments of the built-in version) and ``builtin_aux`` (its array arguments,
    passed into the jitted function).
    """
    import jax.numpy as jnp

    import attention_jax as aj
    from attention_jax import flex

    b, t, n, h = shape
    c = {"mask_mod": None, "batch": None, "score_mod": None, "builtin": {}, "builtin_aux": {}}
    if case == "causal":
        c.update(mask_mod=flex.causal_mask_mod, builtin={"is_causal": True})
    elif case == "alibi":
        slopes = aj.alibi_slopes(n)
        c.update(
            mask_mod=flex.causal_mask_mod,
            score_mod=flex.alibi_score_mod(slopes),
            builtin={"bias_fn": functools.partial(aj.alibi_bias, slopes), "is_causal": True},
        )
    elif case == "document":
        seg = segment_ids(b, t, opts["documents"])
        c.update(mask_mod=flex.document_mask_mod(seg), batch=b, builtin_aux={"segment_ids": seg})
    elif case == "sliding_window":
        w = opts["window"]
        c.update(
            mask_mod=flex.and_masks(flex.causal_mask_mod, flex.sliding_window_mask_mod(w)),
            builtin={"is_causal": True, "local_window_size": (w, 0)},
        )
    elif case == "prefix_lm":
        p = opts["prefix"]
        i = jnp.arange(t)
        dense = (i[None, :] < p) | (i[None, :] <= i[:, None])  # [T, S], True = may attend
        c.update(mask_mod=flex.prefix_lm_mask_mod(p), builtin_aux={"mask": dense})
    elif case != "full":
        raise ValueError(case)
    return c


def jax_block_mask_fn(c: dict, shape):
    """Jitted, compiled ``() -> BlockMask`` of the case (its mask_mod's captured arrays are
    constants)."""
    import jax

    from attention_jax import flex

    _, t, _, _ = shape

    def make():
        return flex.create_block_mask(c["mask_mod"], c["batch"], None, t, t)

    return jax.jit(make).lower().compile()


def jax_attention_fn(static: dict, mode: str, args):
    """Jitted, compiled ``(q, k, v, aux)`` (forward) or ``(q, k, v, ct, aux)`` (the gradients
    of ``sum(out * ct)`` with respect to q, k, v) of the flash path with the static keyword
    arguments ``static`` and the array (pytree) keyword arguments ``aux``."""
    import jax
    import jax.numpy as jnp

    import attention_jax as aj

    def attn(q, k, v, aux):
        return aj.dot_product_attention(q, k, v, implementation="flash", **static, **aux)

    if mode == "fwd":
        fn = attn
    else:

        def fn(q, k, v, ct, aux):
            def loss(q, k, v):
                return jnp.sum(attn(q, k, v, aux) * ct)

            return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

    return jax.jit(fn).lower(*args).compile()


def torch_case(case: str, shape, opts: dict):
    """``(score_mod, mask_mod, batch)`` of ``case`` in torch (None where there is none)."""
    import numpy as np
    import torch

    import attention_jax as aj

    b, t, n, h = shape

    def causal(b_, h_, q_idx, kv_idx):
        return q_idx >= kv_idx

    if case == "causal":
        return None, causal, None
    if case == "alibi":
        slopes = torch.from_numpy(np.asarray(aj.alibi_slopes(n)))

        def alibi(score, b_, h_, q_idx, kv_idx):
            return score - slopes[h_] * (q_idx - kv_idx).abs()

        return alibi, causal, None
    if case == "document":
        seg = torch.from_numpy(np.asarray(segment_ids(b, t, opts["documents"])).copy())

        def document(b_, h_, q_idx, kv_idx):
            return seg[b_, q_idx] == seg[b_, kv_idx]

        return None, document, b
    if case == "sliding_window":
        w = opts["window"]

        def sliding(b_, h_, q_idx, kv_idx):
            return (q_idx >= kv_idx) & (q_idx - kv_idx <= w)

        return None, sliding, None
    if case == "prefix_lm":
        p = opts["prefix"]

        def prefix_lm(b_, h_, q_idx, kv_idx):
            return (kv_idx < p) | (kv_idx <= q_idx)

        return None, prefix_lm, None
    if case == "full":
        from torch.nn.attention.flex_attention import noop_mask

        # An explicit full block mask, made outside the timed call like the others (without
        # one, every flex_attention call makes it).
        return None, noop_mask, None
    raise ValueError(case)


class Timed:
    """One callable with its arguments, timed by :func:`attention.time_points` (which reads
    ``run`` and ``cpu`` and sets ``cpu_median``); ``walls`` keeps every wall time."""

    def __init__(self, case: str, impl: str, mode: str, fn, args, block=None):
        self.case, self.impl, self.mode = case, impl, mode
        self.fn, self.args, self.block = fn, args, block
        self.cpu: list[float] = []
        self.walls: list[float] = []

    def run(self) -> float:
        c0, t0 = time.process_time(), time.perf_counter()
        out = self.fn(*self.args)
        if self.block is not None:
            self.block(out)
        wall = time.perf_counter() - t0
        self.cpu.append(time.process_time() - c0)
        self.walls.append(wall)
        return wall


def max_abs_diff(a, b) -> float:
    import numpy as np

    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


# ----------------------------------------------------------------------------------------
# Memory: one subprocess per point (attention.measure_memory runs this file as the child).
# ----------------------------------------------------------------------------------------


def memory_child(spec: dict) -> dict:
    """Inputs (block mask or dense mask included), compile, then one forward+backward under
    :func:`attention.measure_peak`."""
    import jax

    attention.jax_setup(spec["device"])
    shape = tuple(spec["shape"])
    b, t, n, h = shape
    q, k, v, ct = attention.make_jax_inputs(b, t, n, h, "float32")
    c = jax_case(spec["case"], shape, spec["opts"])
    if spec["variant"] == "mod":
        static = {"score_mod": c["score_mod"]} if c["score_mod"] is not None else {}
        aux = {"block_mask": jax_block_mask_fn(c, shape)()}
    else:
        static, aux = c["builtin"], c["builtin_aux"]
    aux = jax.block_until_ready(aux)
    args = (q, k, v, ct, aux)
    point = Timed(
        spec["case"],
        spec["variant"],
        "fwdbwd",
        jax_attention_fn(static, "fwdbwd", args),
        args,
        jax.block_until_ready,
    )
    return attention.measure_peak(point.run)


def memory_rows(cases, memory_shape, opts, device, timeout) -> dict:
    b, t, n, h = memory_shape
    avail = attention.available_memory_bytes()
    result: dict = {}
    for case in cases:
        for variant in ("mod", "builtin"):
            need = attention.estimated_bytes("flash", b, t, n, h, "fwdbwd", 4)
            if case == "prefix_lm" and variant == "builtin":
                need += t * t  # the dense boolean mask
            key = f"{case}/{variant}"
            if need > 0.8 * avail:
                result[key] = {
                    "skipped": f"needs ~{need / 1e9:.1f} GB, {avail / 1e9:.1f} GB available"
                }
                print(f"{memory_shape} {key:24s} memory skipped: {result[key]['skipped']}")
                continue
            spec = {
                "case": case,
                "variant": variant,
                "shape": memory_shape,
                "opts": opts,
                "device": device,
            }
            res = attention.measure_memory(spec, timeout, script=__file__)
            result[key] = res
            if "error" in res:
                print(f"{memory_shape} {key:24s} memory: {res['error']}")
            else:
                print(
                    f"{memory_shape} {key:24s} fwdbwd peak "
                    f"{res['peak_above_baseline_bytes'] / 1e6:9.1f} MB"
                )
    return result


# ----------------------------------------------------------------------------------------
# Environment and reports.
# ----------------------------------------------------------------------------------------


def machine_info(device: str, with_torch: bool) -> dict:
    info = attention.environment(device)
    info["machine"] = platform.machine()
    info["platform"] = platform.platform()
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = next(
            (ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []
        )
        info["isa"] = [f for f in ISA_FLAGS if f in flags]
    except OSError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["mem_total_gb"] = round(int(line.split()[1]) / 1e6, 1)
    except OSError:
        pass
    if with_torch:
        import torch

        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        info["torch_threads"] = torch.get_num_threads()
    info["command"] = " ".join([os.path.basename(sys.executable)] + sys.argv)
    return info


def cell(row: dict, key: str) -> str:
    wall, cpu = row.get(f"{key}_ms"), row.get(f"{key}_cpu_ms")
    return "-" if wall is None else f"{wall:.1f} / {cpu:.0f}"


def ratio(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def markdown(rows: list[dict], full: dict, memory: dict | None, memory_shape, opts) -> str:
    lines = [
        "| case | ours-mod fwd ms | ours-builtin fwd ms | mod / builtin | torch flex fwd ms "
        "| mod / torch | ours-mod fwd+bwd ms | builtin fwd+bwd ms | mod / builtin |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {cell(r, 'mod_fwd')} | {cell(r, 'builtin_fwd')} | "
            f"{ratio(r.get('mod_over_builtin_fwd'))} | {cell(r, 'torch_fwd')} | "
            f"{ratio(r.get('mod_over_torch_fwd'))} | {cell(r, 'mod_fwdbwd')} | "
            f"{cell(r, 'builtin_fwdbwd')} | {ratio(r.get('mod_over_builtin_fwdbwd'))} |"
        )
    lines.append(
        f"| full non-causal (reference) | {cell(full, 'ours_fwd')} | - | - | "
        f"{cell(full, 'torch_fwd')} | {ratio(full.get('ours_over_torch_fwd'))} | - | - | - |"
    )
    lines += [
        "",
        "Times: median wall ms / median process CPU ms (all threads). Ratios on wall time.",
        "",
        "| case | ours, mod | ours, built-in | create_block_mask ms (ours, jit) | torch "
        "create_block_mask ms | empty blocks | max abs diff mod vs built-in (out / grads) "
        "| vs torch (out) | torch fwd+bwd |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        a = r["agreement"]
        grads, vs_torch = a.get("mod_vs_builtin_grads"), a.get("mod_vs_torch_out")
        lines.append(
            f"| {r['case']} | {MOD_DESC[r['case']]} | {BUILTIN_DESC[r['case']]} | "
            f"{cell(r, 'mod_block_mask')} | {cell(r, 'torch_block_mask')} | "
            f"{r['block_mask_sparsity']:.2f} | {a['mod_vs_builtin_out']:.1e} / "
            f"{'-' if grads is None else f'{grads:.1e}'} | "
            f"{'-' if vs_torch is None else f'{vs_torch:.1e}'} | "
            f"{r.get('torch_fwdbwd', '-')} |"
        )
    lines.append(
        f"\nW = {opts['window']}, P = {opts['prefix']}, {opts['documents']} documents; "
        "the built-in prefix-LM is a dense [T, S] boolean mask (no built-in option exists)."
    )
    lines += ["", "| target | measured | |", "|---|---|---|"]
    for r in rows:
        for key, name in (("fwd", "forward"), ("fwdbwd", "forward+backward")):
            x = r.get(f"mod_over_builtin_{key}")
            if x is not None:
                t = TARGETS["mod_over_builtin"]
                lines.append(
                    f"| {r['case']} mod / built-in {name} <= {t} | {x:.2f} | {'met' if x <= t else 'not met'} |"
                )
        x = r.get("mod_over_torch_fwd")
        if x is not None:
            t = TARGETS["mod_over_torch_fwd"]
            lines.append(
                f"| {r['case']} ours-mod / torch flex forward <= {t} | {x:.2f} | {'met' if x <= t else 'not met'} |"
            )
        x = r.get("document_over_full_fwd")
        if x is not None:
            t = TARGETS["document_over_full_fwd"]
            lines.append(
                f"| document (block mask) / full non-causal forward <= {t} | {x:.2f} | {'met' if x <= t else 'not met'} |"
            )
    if memory:
        lines += [
            "",
            f"Forward+backward peak memory at {memory_shape}: peak RSS above the RSS after making "
            "the inputs (block mask, dense mask) and compiling, MB.",
            "",
            "| case | ours, mod | ours, built-in |",
            "|---|---:|---:|",
        ]

        def mb(key):
            res = memory.get(key, {})
            if "peak_above_baseline_bytes" in res:
                return f"{res['peak_above_baseline_bytes'] / 1e6:.0f}"
            return "skipped" if "skipped" in res else ("error" if "error" in res else "-")

        for r in rows:
            lines.append(
                f"| {r['case']} | {mb(r['case'] + '/mod')} | {mb(r['case'] + '/builtin')} |"
            )
    return "\n".join(lines)


def plot(rows: list[dict], full: dict, memory: dict | None, path: Path, title: str) -> None:
    """Bars per case: forward ms, forward+backward ms, forward+backward peak MB."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cases = [r["case"] for r in rows]
    x = np.arange(len(cases))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    panels = (
        (
            axes[0],
            "forward (ms)",
            (
                ("mod_fwd", "ours, mod"),
                ("builtin_fwd", "ours, built-in"),
                ("torch_fwd", "torch flex"),
            ),
        ),
        (
            axes[1],
            "forward+backward (ms)",
            (("mod_fwdbwd", "ours, mod"), ("builtin_fwdbwd", "ours, built-in")),
        ),
    )
    for ax, ylabel, series in panels:
        width = 0.8 / len(series)
        for i, (key, label) in enumerate(series):
            vals = [r.get(f"{key}_ms") or 0.0 for r in rows]
            if any(vals):
                ax.bar(
                    x + (i - (len(series) - 1) / 2) * width, vals, width, label=label, color=f"C{i}"
                )
        ax.set_ylabel(ylabel)
    if full.get("ours_fwd_ms"):
        axes[0].axhline(
            full["ours_fwd_ms"], color="k", ls="--", lw=1, label="full non-causal (ours)"
        )
        axes[0].axhline(
            TARGETS["document_over_full_fwd"] * full["ours_fwd_ms"],
            color="grey",
            ls=":",
            lw=1,
            label=f"{TARGETS['document_over_full_fwd']}x full (document target)",
        )
    ax = axes[2]
    if memory:
        for i, variant in enumerate(("mod", "builtin")):
            vals = [
                memory.get(f"{c}/{variant}", {}).get("peak_above_baseline_bytes", 0) / 1e6
                for c in cases
            ]
            ax.bar(
                x + (i - 0.5) * 0.4,
                vals,
                0.4,
                label=f"ours, {'mod' if variant == 'mod' else 'built-in'}",
                color=f"C{i}",
            )
        ax.set_ylabel("forward+backward peak above inputs (MB)")
    else:
        ax.text(0.5, 0.5, "memory not measured", ha="center", va="center", transform=ax.transAxes)
    for ax in axes:
        ax.set_xticks(x, cases, rotation=20, fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------
# The run.
# ----------------------------------------------------------------------------------------


def run(args, device: str) -> int:
    jax = attention.jax_setup(device)
    shape = parse_shape(args.shape, "--shape")
    memory_shape = parse_shape(args.memory_shape, "--memory-shape")
    cases = parse_cases(args.cases)
    opts = {"documents": args.documents, "window": args.window, "prefix": args.prefix}
    b, t, n, h = shape
    with_torch = not args.no_torch
    if with_torch and importlib.util.find_spec("torch") is None:
        print("skipping torch: not installed (pip install 'attention_jax[bench]')")
        with_torch = False
    if with_torch and device != "cpu":
        print("skipping torch: the PyTorch peer is a CPU build")
        with_torch = False
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = machine_info(device, with_torch)
    print(json.dumps(env))

    q, k, v, ct = attention.make_jax_inputs(b, t, n, h, "float32")
    if with_torch:
        import numpy as np
        import torch
        import torch._dynamo.config
        from torch.nn.attention.flex_attention import create_block_mask as torch_block_mask
        from torch.nn.attention.flex_attention import flex_attention

        # One compiled flex_attention; each case's mods are a recompile of it.
        torch._dynamo.config.recompile_limit = max(64, torch._dynamo.config.recompile_limit)
        torch_flex = torch.compile(flex_attention, dynamic=False)

        def to_torch(x):  # [B, T, N, H] -> [B, N, T, H]
            return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 2, 1, 3)))

        tq, tk, tv, tct = map(to_torch, (q, k, v, ct))

    fwd, fwdbwd, masks = [], [], []
    rows, failures = [], []
    torch_backward = []  # (row, flex_attention kwargs): tried after the timing
    block = jax.block_until_ready
    for case in cases + ["full"]:
        t0 = time.perf_counter()
        c = jax_case(case, shape, opts)
        mod_static = {"score_mod": c["score_mod"]} if c["score_mod"] is not None else {}
        row: dict = {"case": case, "mod": MOD_DESC[case], "builtin": BUILTIN_DESC[case]}
        if c["mask_mod"] is not None:
            make_bm = jax_block_mask_fn(c, shape)
            bm = block(make_bm())
            masks.append(Timed(case, "mod", "block_mask", make_bm, (), block))
            mod_aux = {"block_mask": bm}
            row["block_mask_sparsity"] = float(bm.sparsity())
            row["block_sizes"] = [bm.block_q, bm.block_k]
        else:
            mod_aux = {}
        builtin_aux = block(c["builtin_aux"])
        f_mod = jax_attention_fn(mod_static, "fwd", (q, k, v, mod_aux))
        fwd.append(Timed(case, "mod", "fwd", f_mod, (q, k, v, mod_aux), block))
        if case != "full":
            f_bi = jax_attention_fn(c["builtin"], "fwd", (q, k, v, builtin_aux))
            g_mod = jax_attention_fn(mod_static, "fwdbwd", (q, k, v, ct, mod_aux))
            g_bi = jax_attention_fn(c["builtin"], "fwdbwd", (q, k, v, ct, builtin_aux))
            fwd.append(Timed(case, "builtin", "fwd", f_bi, (q, k, v, builtin_aux), block))
            fwdbwd.append(Timed(case, "mod", "fwdbwd", g_mod, (q, k, v, ct, mod_aux), block))
            fwdbwd.append(Timed(case, "builtin", "fwdbwd", g_bi, (q, k, v, ct, builtin_aux), block))
            # Agreement, once, at the timed shape.
            o_mod, o_bi = block(f_mod(q, k, v, mod_aux)), block(f_bi(q, k, v, builtin_aux))
            gm, gb = block(g_mod(q, k, v, ct, mod_aux)), block(g_bi(q, k, v, ct, builtin_aux))
            scale = max(1.0, max(float(abs(g).max()) for g in gb))
            agree = {
                "mod_vs_builtin_out": max_abs_diff(o_mod, o_bi),
                "mod_vs_builtin_grads": max(
                    max_abs_diff(x, y) for x, y in zip(gm, gb, strict=True)
                ),
                "grads_max_abs": scale,
                "out_tol": OUT_TOL,
                "grads_tol": GRAD_RTOL * scale,
            }
        else:
            o_mod = block(f_mod(q, k, v, mod_aux))
            agree = {"out_tol": OUT_TOL}
        if with_torch:
            sm, mm, tb = torch_case(case, shape, opts)
            kw = {"score_mod": sm}
            if mm is not None:
                make_tbm = functools.partial(torch_block_mask, mm, tb, None, t, t, device="cpu")
                kw["block_mask"] = make_tbm()
                masks.append(Timed(case, "torch", "block_mask", make_tbm, ()))

            def torch_fwd(q, k, v, kw=kw):
                with torch.no_grad():
                    return torch_flex(q, k, v, **kw)

            o_torch = torch_fwd(tq, tk, tv).numpy().transpose(0, 2, 1, 3)
            agree["mod_vs_torch_out"] = max_abs_diff(o_mod, o_torch)
            if case != "full":
                agree["builtin_vs_torch_out"] = max_abs_diff(o_bi, o_torch)
            fwd.append(Timed(case, "torch", "fwd", torch_fwd, (tq, tk, tv)))
            if case != "full":
                torch_backward.append((row, kw))
        bad = [
            name
            for name, tol_key in (
                ("mod_vs_builtin_out", "out_tol"),
                ("mod_vs_builtin_grads", "grads_tol"),
                ("mod_vs_torch_out", "out_tol"),
                ("builtin_vs_torch_out", "out_tol"),
            )
            if name in agree and not agree[name] <= agree[tol_key]
        ]
        agree["ok"] = not bad
        if bad:
            failures.append(f"{case}: {', '.join(f'{x} = {agree[x]:.2e}' for x in bad)}")
            print(f"DISAGREEMENT {case}: " + ", ".join(f"{x} = {agree[x]:.2e}" for x in bad))
        row["agreement"] = agree
        print(
            f"{case:16s} set up in {time.perf_counter() - t0:.1f} s; agreement "
            + ", ".join(
                f"{key} {val:.1e}" for key, val in agree.items() if key.endswith(("_out", "_grads"))
            )
        )
        rows.append(row)

    timings = []
    for points in (fwd, fwdbwd, masks):
        if not points:
            continue
        meds = attention.time_points(points, args.repeats, args.warmup, schedule=args.schedule)
        for p, sec in zip(points, meds, strict=True):
            row = next(r for r in rows if r["case"] == p.case)
            row[f"{p.impl}_{p.mode}_ms"] = 1e3 * sec
            row[f"{p.impl}_{p.mode}_cpu_ms"] = 1e3 * p.cpu_median
            walls = p.walls[-args.repeats :]
            timings.append(
                {
                    "case": p.case,
                    "impl": {"mod": "ours-mod", "builtin": "ours-builtin", "torch": "torch-flex"}[
                        p.impl
                    ],
                    "mode": p.mode,
                    "wall_ms": 1e3 * sec,
                    "cpu_ms": 1e3 * p.cpu_median,
                    "wall_ms_runs": [1e3 * w for w in walls],
                    "cpu_ms_runs": [1e3 * x for x in p.cpu],
                    "repeats": args.repeats,
                    "warmup": args.warmup,
                }
            )
            print(
                f"{p.case:16s} {timings[-1]['impl']:13s} {p.mode:10s} {1e3 * sec:9.1f} ms "
                f"(cpu {1e3 * p.cpu_median:.0f} ms)"
            )

    # Torch's backward, tried once per case after the timing: on CPU it raises, and a failed
    # call leaves the compiled flex_attention running eagerly (about 15x slower) afterwards.
    for row, kw in torch_backward:
        try:
            tq_g = tq.clone().requires_grad_(True)
            torch_flex(tq_g, tk, tv, **kw).backward(tct)
            row["torch_fwdbwd"] = "supported (not timed)"
        except NotImplementedError as e:
            row["torch_fwdbwd"] = "not supported"
            row["torch_fwdbwd_error"] = str(e)[:300]
        except Exception as e:  # noqa: BLE001 - recorded, not fatal
            row["torch_fwdbwd"] = f"error: {type(e).__name__}"
            row["torch_fwdbwd_error"] = str(e)[:300]

    full_row = rows.pop()  # the "full" reference
    full = {
        "ours_fwd_ms": full_row.get("mod_fwd_ms"),
        "ours_fwd_cpu_ms": full_row.get("mod_fwd_cpu_ms"),
        "torch_fwd_ms": full_row.get("torch_fwd_ms"),
        "torch_fwd_cpu_ms": full_row.get("torch_fwd_cpu_ms"),
        "agreement": full_row["agreement"],
    }
    if full["torch_fwd_ms"]:
        full["ours_over_torch_fwd"] = full["ours_fwd_ms"] / full["torch_fwd_ms"]
    for r in rows:
        for mode in ("fwd", "fwdbwd"):
            if r.get(f"builtin_{mode}_ms"):
                r[f"mod_over_builtin_{mode}"] = r[f"mod_{mode}_ms"] / r[f"builtin_{mode}_ms"]
                r[f"mod_over_builtin_{mode}_cpu"] = (
                    r[f"mod_{mode}_cpu_ms"] / r[f"builtin_{mode}_cpu_ms"]
                )
        if r.get("torch_fwd_ms"):
            r["mod_over_torch_fwd"] = r["mod_fwd_ms"] / r["torch_fwd_ms"]
            r["mod_over_torch_fwd_cpu"] = r["mod_fwd_cpu_ms"] / r["torch_fwd_cpu_ms"]
        if r["case"] == "document":
            r["document_over_full_fwd"] = r["mod_fwd_ms"] / full["ours_fwd_ms"]
            r["document_over_full_fwd_cpu"] = r["mod_fwd_cpu_ms"] / full["ours_fwd_cpu_ms"]

    memory = None
    if not args.no_memory:
        memory = memory_rows(cases, memory_shape, opts, device, args.memory_timeout)
        for r in rows:
            for variant in ("mod", "builtin"):
                res = memory.get(f"{r['case']}/{variant}", {})
                if "peak_above_baseline_bytes" in res:
                    r[f"{variant}_fwdbwd_peak_mb"] = res["peak_above_baseline_bytes"] / 1e6

    header = (
        f"{env.get('cpu', device)}, {env['cpu_count']} cores ({', '.join(env.get('isa', []))}); "
        f"python {env['python']}, jax {env['jax']}, jaxlib {env['jaxlib']}"
        + (f", torch {env['torch']}" if with_torch else "")
        + f"; float32 {shape}; {args.schedule}, {args.repeats} repeats; {env['date']}"
    )
    table = markdown(rows, full, memory, memory_shape, opts)
    result = {
        "environment": env,
        "config": {
            "shape": shape,
            "memory_shape": None if args.no_memory else memory_shape,
            "cases": cases,
            "dtype": "float32",
            "repeats": args.repeats,
            "warmup": args.warmup,
            "schedule": args.schedule,
            "torch": with_torch,
            **opts,
        },
        "targets": TARGETS,
        "rows": rows,
        "full": full,
        "memory": memory,
        "timings": timings,
        "agreement_ok": not failures,
        "agreement_failures": failures,
    }
    (out_dir / "flex.json").write_text(json.dumps(result, indent=1))
    (out_dir / "flex.md").write_text(header + "\n\n" + table + "\n")
    plot(rows, full, memory, out_dir / "flex.png", header)
    print()
    print(header)
    print(table)
    if failures:
        print("\nDISAGREEMENT (outputs differ beyond the tolerance): " + "; ".join(failures))
        return 1
    return 0


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="out/bench-flex", help="output folder")
    parser.add_argument("--shape", default=DEFAULT_SHAPE, help=f"BxTxNxH (default {DEFAULT_SHAPE})")
    parser.add_argument(
        "--memory-shape",
        default=DEFAULT_MEMORY_SHAPE,
        help=f"BxTxNxH of the memory runs (default {DEFAULT_MEMORY_SHAPE})",
    )
    parser.add_argument("--cases", default=",".join(CASES), help=f"subset of {','.join(CASES)}")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per point")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per point")
    parser.add_argument(
        "--schedule",
        choices=["round-robin", "blocked"],
        default="round-robin",
        help="round-robin (robust to a changing load) or blocked (each point alone; idle machine)",
    )
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch peer")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument(
        "--memory-timeout", type=float, default=1800.0, help="seconds per memory point"
    )
    parser.add_argument("--documents", type=int, default=8, help="documents in the document case")
    parser.add_argument("--window", type=int, default=256, help="left window of sliding_window")
    parser.add_argument("--prefix", type=int, default=1024, help="prefix length of prefix_lm")
    parser.add_argument("--_memory-child", dest="memory_child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        print(json.dumps(memory_child(json.loads(args.memory_child))))
        return
    check_args(parser, args)
    import jax

    device = "gpu" if jax.default_backend() in ("gpu", "cuda") else "cpu"
    sys.exit(run(args, device))


if __name__ == "__main__":
    main()
