"""Attention benchmark: time and peak memory of the attention implementations.

Implementations (``--impls``):

- ``jax.nn``: ``jax.nn.dot_product_attention(..., implementation="xla")``;
- ``materialized``: ``attention_jax.dot_product_attention(..., implementation="xla")``;
- ``flash``: ``attention_jax.flash_attention``;
- ``cudnn``: ``jax.nn.dot_product_attention(..., implementation="cudnn")`` (NVIDIA GPU);
- ``tokamax``: ``tokamax.dot_product_attention`` (when installed);
- ``torch``: PyTorch's ``torch.nn.functional.scaled_dot_product_attention`` (when installed;
  the ``bench`` extra), the CPU peer.

For every shape ``(B, T, N, H)`` (``S = T``, ``K = N``), causal or not, the forward and the
forward+backward passes are jitted, warmed up and timed (median of ``--repeats`` runs,
``block_until_ready``). The implementations of one point are timed round-robin, so that a
change of machine load hits them alike, or with ``--schedule blocked`` one after the other,
each undisturbed by the others' allocations (the better choice on an idle machine).
Throughput is reported in GFLOP/s with the FlashAttention convention (forward ``4 B N T S H``, halved when causal; forward+backward
3.5 times the forward) and against a float32 (bfloat16 on GPU) matmul measured in the same
run.

Peak memory runs each point in a fresh subprocess: it creates the inputs, compiles, resets
the kernel's peak-RSS counter (``/proc/self/clear_refs``), runs once and reports the peak
RSS minus the RSS after creating the inputs and compiling. Beside it, for the JAX paths,
the compiled program's own count (``memory_analysis()``: temporaries plus outputs), which,
unlike the RSS peak, is the same on every machine. Points whose estimated footprint does not
fit in the available memory are skipped.

Usage::

  python benchmarks/attention.py --out out/bench                # the full CPU table
  python benchmarks/attention.py --quick --out out/quick        # two small shapes
  python benchmarks/attention.py --shapes 1x4096x8x64 --impls flash,torch --causal yes
  python benchmarks/attention.py --sweep-blocks --shapes 1x4096x8x64 --out out/sweep
  python benchmarks/attention.py --memory-only --shapes 1x16384x8x64 --impls flash,jax.nn

Writes ``results.json``, ``results.md`` and ``attention.png`` (or ``sweep.*``) into ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_SHAPES = "8x256x8x64,4x1024x8x64,1x4096x8x64,1x16384x8x64,1x32768x4x64"
QUICK_SHAPES = "8x256x8x64,1x1024x8x64"
ALL_IMPLS = ("jax.nn", "materialized", "flash", "cudnn", "tokamax", "torch")
QUADRATIC = ("jax.nn", "materialized")
# Quadratic paths are timed up to this T (beyond it one run takes minutes); their memory is
# still measured wherever it fits.
QUADRATIC_MAX_T_TIMING = 8192


def parse_shapes(text: str) -> list[tuple[int, int, int, int]]:
    """``"8x256x8x64,1x1024x8x64"`` -> ``[(8, 256, 8, 64), (1, 1024, 8, 64)]``; ValueError
    for an item that is not four positive integers."""
    shapes = []
    for item in text.split(","):
        try:
            parts = tuple(int(x) for x in item.lower().split("x"))
        except ValueError:
            parts = ()
        if len(parts) != 4 or min(parts) < 1:
            raise ValueError(f"--shapes takes BxTxNxH items of positive integers, got {item!r}")
        shapes.append(parts)
    return shapes


def parse_ints(text: str, flag: str) -> list[int]:
    """``"128,256"`` -> ``[128, 256]``; ValueError unless positive integers."""
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise ValueError(f"{flag} takes comma-separated positive integers, got {text!r}")
    return values


def check_args(parser, args) -> None:
    """Every flag, before JAX is set up or anything is timed; ``parser.error`` (one line,
    exit status 2) on the first bad one."""
    try:
        parse_shapes(args.shapes or DEFAULT_SHAPES)
        parse_ints(args.sweep_q, "--sweep-q")
        parse_ints(args.sweep_k, "--sweep-k")
    except ValueError as e:
        parser.error(str(e))
    bad = [i for i in args.impls.split(",") if i not in ALL_IMPLS]
    if bad:
        parser.error(f"--impls: unknown {bad}; choose from {','.join(ALL_IMPLS)}")
    bad = [m for m in args.modes.split(",") if m not in ("fwd", "fwdbwd")]
    if bad:
        parser.error(f"--modes: unknown {bad}; choose from fwd,fwdbwd")
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be an int >= 1, got {args.repeats}")
    if args.max_timing_t < 1:
        parser.error(f"--max-timing-t must be an int >= 1, got {args.max_timing_t}")
    if not args.memory_timeout > 0:
        parser.error(f"--memory-timeout must be a number of seconds > 0, got {args.memory_timeout}")


def flops(b, t, n, h, causal: bool, mode: str) -> float:
    f = 4.0 * b * n * t * t * h / (2 if causal else 1)
    return f if mode == "fwd" else 3.5 * f


def available_memory_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def estimated_bytes(impl, b, t, n, h, mode, itemsize) -> float:
    """A rough footprint: the inputs plus, for the quadratic paths, a few [B, N, T, T]
    float32 arrays (logits, weights; and their cotangents for the backward pass). PyTorch's
    CPU SDPA runs a fused blockwise kernel, linear in T like the flash path."""
    linear = 8 * b * t * n * h * max(itemsize, 4)
    if impl in QUADRATIC:
        # jax.nn's forward peaks near 2.5x the float32 logits (10.7 GB at 1x16384x4x64).
        return linear + (2.6 if mode == "fwd" else 5.0) * 4.0 * b * n * t * t
    return linear + 64e6


# ----------------------------------------------------------------------------------------
# Building the functions to time.
# ----------------------------------------------------------------------------------------


def jax_setup(device: str):
    import jax

    if device == "cpu":
        jax.config.update("jax_platforms", "cpu")
    return jax


def make_jax_fn(impl, causal, mode, block_q=None, block_k=None):
    import jax

    import attention_jax

    if impl == "jax.nn":

        def attn(q, k, v):
            return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="xla")

    elif impl == "cudnn":

        def attn(q, k, v):
            return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="cudnn")

    elif impl == "materialized":

        def attn(q, k, v):
            return attention_jax.dot_product_attention(
                q, k, v, is_causal=causal, implementation="xla"
            )

    elif impl == "flash":
        kw = {}
        if block_q:
            kw["block_q"] = block_q
        if block_k:
            kw["block_k"] = block_k

        def attn(q, k, v):
            return attention_jax.flash_attention(q, k, v, is_causal=causal, **kw)

    elif impl == "tokamax":
        import tokamax

        def attn(q, k, v):
            return tokamax.dot_product_attention(q, k, v, is_causal=causal)

    else:
        raise ValueError(impl)

    if mode == "fwd":
        return jax.jit(attn)

    def fwd_bwd(q, k, v, d_out):
        out, vjp = jax.vjp(attn, q, k, v)
        return vjp(d_out.astype(out.dtype))

    return jax.jit(fwd_bwd)


def make_jax_inputs(b, t, n, h, dtype, seed=0):
    import jax
    import jax.numpy as jnp

    keys = jax.random.split(jax.random.key(seed), 4)
    dt = jnp.dtype(dtype)
    q, k, v, d_out = (jax.random.normal(kk, (b, t, n, h), dt) for kk in keys)
    return jax.block_until_ready((q, k, v, d_out))


def make_torch_fn(causal, mode):
    import torch
    import torch.nn.functional as F

    def fwd(q, k, v, d_out):
        with torch.no_grad():
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    def fwd_bwd(q, k, v, d_out):
        for x in (q, k, v):
            x.grad = None
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        out.backward(d_out)
        return q.grad

    return fwd if mode == "fwd" else fwd_bwd


def make_torch_inputs(b, t, n, h, dtype, requires_grad, device="cpu"):
    import torch

    torch.manual_seed(0)
    dt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    dev = "cuda" if device == "gpu" else "cpu"
    # [B, N, T, H], the layout SDPA takes.
    q, k, v = (
        torch.randn(b, n, t, h, dtype=dt, device=dev).requires_grad_(requires_grad)
        for _ in range(3)
    )
    return q, k, v, torch.randn(b, n, t, h, dtype=dt, device=dev)


class Point:
    """One implementation at one shape, causal or not, with a callable to time."""

    def __init__(
        self, impl, shape, causal, mode, dtype, block_q=None, block_k=None, device="cpu",
        jax_fn=None,
    ):  # fmt: skip
        """``jax_fn``: a jitted function of ``(q, k, v)`` (forward) or ``(q, k, v, d_out)`` to
        time in place of ``impl``'s (``impl`` then only names it)."""
        self.impl, self.shape, self.causal, self.mode = impl, shape, causal, mode
        self.cpu: list[float] = []
        self.block_q, self.block_k = block_q, block_k
        b, t, n, h = shape
        if impl == "torch":
            import torch

            self.args = make_torch_inputs(b, t, n, h, dtype, mode == "fwdbwd", device)
            self.fn = make_torch_fn(causal, mode)
            # CUDA calls return before the kernels finish.
            self._block = torch.cuda.synchronize if device == "gpu" else (lambda: None)
        else:
            import jax

            q, k, v, d_out = make_jax_inputs(b, t, n, h, dtype)
            self.args = (q, k, v) if mode == "fwd" else (q, k, v, d_out)
            self.fn = jax_fn or make_jax_fn(impl, causal, mode, block_q, block_k)
            self.fn = self.fn.lower(*self.args).compile()
            self._block = jax.block_until_ready

    def run(self) -> float:
        """Runs once; returns the wall time and records the process CPU time in ``cpu``."""
        c0, t0 = time.process_time(), time.perf_counter()
        out = self.fn(*self.args)
        if self.impl == "torch":
            self._block()
        else:
            self._block(out)
        wall = time.perf_counter() - t0
        self.cpu.append(time.process_time() - c0)
        return wall


def time_points(
    points: list[Point], repeats: int, warmup: int = 2, schedule: str = "round-robin"
) -> list[float]:
    """Median wall time of each point; each point's median process CPU time (all threads)
    goes to ``point.cpu_median``, a steadier figure on a busy machine.

    ``schedule="round-robin"`` runs the points in turn (run 1 of each, run 2 of each, ...),
    so that a change of machine load hits them alike; ``"blocked"`` warms up and times each
    point in turn, undisturbed by the others (on an idle machine a call right after one that
    allocated and freed gigabytes of logits ran 10 to 30% slower).
    """
    if schedule not in ("round-robin", "blocked"):
        raise ValueError(f"schedule must be 'round-robin' or 'blocked', got {schedule!r}")
    if schedule == "blocked":
        return [time_points([p], repeats, warmup)[0] for p in points]
    times: list[list[float]] = [[] for _ in points]
    for p in points:
        for _ in range(warmup):
            p.run()
        p.cpu = []
    for _ in range(repeats):
        for i, p in enumerate(points):
            times[i].append(p.run())
    for p in points:
        p.cpu_median = statistics.median(p.cpu)
    return [statistics.median(ts) for ts in times]


def matmul_rate(device: str, repeats: int) -> tuple[float, str]:
    """GFLOP/s of a square matmul in the benchmark dtype (float32 on CPU, bf16 on GPU)."""
    import jax
    import jax.numpy as jnp

    n, dtype = (2048, jnp.float32) if device == "cpu" else (8192, jnp.bfloat16)
    a = jax.random.normal(jax.random.key(1), (n, n), dtype)
    f = jax.jit(lambda a: a @ a).lower(a).compile()
    jax.block_until_ready(f(a))
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(a))
        ts.append(time.perf_counter() - t0)
    return 2.0 * n**3 / statistics.median(ts) / 1e9, f"{n}x{n} {jnp.dtype(dtype).name} matmul"


# ----------------------------------------------------------------------------------------
# Memory: one subprocess per point.
# ----------------------------------------------------------------------------------------


def _rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def measure_peak(run) -> dict:
    """Peak RSS of one call of ``run`` (which returns its wall seconds) above the RSS before
    it: resets the kernel's peak counter (``/proc/self/clear_refs``; without it, the process's
    lifetime peak ``ru_maxrss``), calls ``run()`` once and reads ``VmHWM``."""
    import resource

    base = _rss_bytes("VmRSS")
    reset = True
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        reset = False
    seconds = run()
    peak = _rss_bytes("VmHWM")
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "baseline_bytes": base,
        "peak_bytes": peak if reset else maxrss,
        "peak_above_baseline_bytes": (peak if reset else maxrss) - base,
        "peak_reset": reset,
        "seconds": seconds,
    }


def memory_child(spec: dict) -> dict:
    """Runs in the subprocess: inputs, compile, reset peak, run once, report."""
    if spec["impl"] != "torch":
        jax_setup(spec["device"])
    b, t, n, h = spec["shape"]
    point = Point(
        spec["impl"],
        tuple(spec["shape"]),
        spec["causal"],
        spec["mode"],
        spec["dtype"],
        spec.get("block_q"),
        spec.get("block_k"),
    )
    result = measure_peak(point.run)
    if spec["impl"] != "torch":
        # What the compiled program allocates beyond its arguments, by XLA's own count: unlike
        # the RSS peak, it does not depend on the allocator, the thread pools or the machine.
        m = point.fn.memory_analysis()
        result["program_bytes"] = m.temp_size_in_bytes + m.output_size_in_bytes
    return result


def measure_memory(spec: dict, timeout: float, script: str | None = None) -> dict:
    """Runs ``script --_memory-child SPEC`` (default this file) in a fresh process and
    returns the JSON dict on its last stdout line, or ``{"error": ...}``."""
    script = os.path.abspath(script or __file__)
    cmd = [sys.executable, script, "--_memory-child", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------
# Reports.
# ----------------------------------------------------------------------------------------


def environment(device: str) -> dict:
    import jax
    import jaxlib

    info = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "device": device,
        "devices": [str(d) for d in jax.devices()],
        "cpu_count": os.cpu_count(),
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
    }
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                info["cpu"] = line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        info["loadavg"] = os.getloadavg()
    except OSError:
        pass
    if importlib.util.find_spec("torch") is not None:
        import torch

        info["torch"] = torch.__version__
    return info


def fmt(x, spec="{:.0f}"):
    return "-" if x is None else spec.format(x)


def markdown_table(rows: list[dict], rate: float) -> str:
    lines = [
        "| B, T, N, H | causal | impl | fwd ms | fwd+bwd ms | fwd GFLOP/s | fwd+bwd GFLOP/s "
        "| fwd % matmul | fwd peak MB | fwd+bwd peak MB | fwd XLA MB | fwd+bwd XLA MB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def ms(r, mode):
        if r.get(f"{mode}_ms") is not None:
            return fmt(r[f"{mode}_ms"])
        single = r.get(f"{mode}_single_run_ms")  # untimed point: its one memory run
        return "-" if single is None else f"{single:.0f}*"

    for r in rows:
        gf, gfb = r.get("fwd_gflops"), r.get("fwdbwd_gflops")
        lines.append(
            f"| {', '.join(map(str, r['shape']))} | {'yes' if r['causal'] else 'no'} | "
            f"{r['impl']} | {ms(r, 'fwd')} | {ms(r, 'fwdbwd')} | {fmt(gf)} | "
            f"{fmt(gfb)} | {fmt(None if gf is None else 100 * gf / rate)} | "
            f"{fmt(r.get('fwd_peak_mb'))} | {fmt(r.get('fwdbwd_peak_mb'))} | "
            f"{fmt(r.get('fwd_program_mb'))} | {fmt(r.get('fwdbwd_program_mb'))} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Forward and forward+backward time, and peak memory, against T (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def value(r, key):
        if key.endswith("_ms") and r.get(key) is None:
            return r.get(key.replace("_ms", "_single_run_ms"))
        return r.get(key)

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    panels = (
        ("fwd_ms", "forward time (ms)"),
        ("fwdbwd_ms", "forward+backward time (ms)"),
        ("fwdbwd_peak_mb", "peak memory above inputs (MB)"),
    )
    # One line per implementation (colour) and causality (dashed); the shapes of one
    # line may differ in B and N (see the table), T is on the x axis.
    colours = {impl: f"C{i}" for i, impl in enumerate(ALL_IMPLS)}
    series: dict[tuple, list] = {}
    for r in rows:
        series.setdefault((r["impl"], r["causal"]), []).append(r)
    for (impl, causal), rs in sorted(series.items()):
        rs = sorted(rs, key=lambda r: (r["shape"][1], -r["shape"][2]))
        label = f"{impl}{' causal' if causal else ''}"
        for ax, (key, _) in zip(axes, panels, strict=True):
            pts = [(r["shape"][1], value(r, key)) for r in rs if value(r, key)]
            if key.endswith("peak_mb") and not pts:  # forward-only memory points
                pts = [(r["shape"][1], r["fwd_peak_mb"]) for r in rs if r.get("fwd_peak_mb")]
                label += " [fwd]"
            if pts:
                ax.plot(
                    *zip(*pts, strict=True),
                    "--" if causal else "-",
                    color=colours.get(impl),
                    marker="o",
                    label=label,
                )
    for ax, (_, ylabel) in zip(axes, panels, strict=True):
        ax.set(xscale="log", yscale="log", xlabel="T", ylabel=ylabel)
        ax.grid(True, which="both", alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------
# Main modes.
# ----------------------------------------------------------------------------------------


def available_impls(requested: list[str], device: str) -> list[str]:
    out = []
    for impl in requested:
        if impl == "torch" and importlib.util.find_spec("torch") is None:
            print("skipping torch: not installed (pip install 'attention_jax[bench]')")
            continue
        if impl == "tokamax" and importlib.util.find_spec("tokamax") is None:
            print("skipping tokamax: not installed")
            continue
        if impl == "cudnn" and device != "gpu":
            print("skipping cudnn: needs an NVIDIA GPU")
            continue
        if impl == "torch" and device == "gpu":
            import torch

            if not torch.cuda.is_available():
                print("skipping torch: this PyTorch build has no CUDA")
                continue
        out.append(impl)
    return out


def run_benchmark(args, device: str) -> None:
    jax_setup(device)
    dtype = args.dtype or ("float32" if device == "cpu" else "bfloat16")
    shapes = parse_shapes(args.shapes or (QUICK_SHAPES if args.quick else DEFAULT_SHAPES))
    impls = available_impls(args.impls.split(","), device)
    causals = {"yes": [True], "no": [False], "both": [False, True]}[args.causal]
    modes = args.modes.split(",")
    repeats = 3 if args.quick and not args.repeats else (args.repeats or 10)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = environment(device)
    print(json.dumps(env))
    rate, rate_what = matmul_rate(device, max(repeats, 10))
    print(f"matmul: {rate:.1f} GFLOP/s ({rate_what})")
    itemsize = 2 if dtype == "bfloat16" else 4
    avail = available_memory_bytes()
    rows = []
    for shape in shapes:
        b, t, n, h = shape
        # Causal and non-causal points of a shape are timed in one round-robin too, so that
        # their ratio is measured under the same load.
        row_of = {
            (impl, causal): {"impl": impl, "shape": shape, "causal": causal}
            for causal in causals
            for impl in impls
        }
        if not args.memory_only:
            for mode in modes:
                timed = []
                for causal in causals:
                    for impl in impls:
                        if t > args.max_timing_t or (
                            impl in QUADRATIC and t > QUADRATIC_MAX_T_TIMING
                        ):
                            continue
                        if estimated_bytes(impl, b, t, n, h, mode, itemsize) > 0.8 * avail:
                            continue
                        try:
                            timed.append(Point(impl, shape, causal, mode, dtype, device=device))
                        except Exception as e:  # an implementation that cannot serve it
                            row_of[impl, causal][f"{mode}_error"] = f"{type(e).__name__}: {e}"[:200]
                if not timed:
                    continue
                reps = repeats if t <= 8192 or args.repeats else max(3, repeats // 2)
                meds = time_points(timed, reps, schedule=args.schedule)
                for p, sec in zip(timed, meds, strict=True):
                    row = row_of[p.impl, p.causal]
                    row[f"{mode}_ms"] = 1e3 * sec
                    row[f"{mode}_gflops"] = flops(b, t, n, h, p.causal, mode) / sec / 1e9
                    row[f"{mode}_repeats"] = reps
                    row[f"{mode}_cpu_ms"] = 1e3 * p.cpu_median
                    print(
                        f"{shape} causal={p.causal} {p.impl:12s} {mode:6s} {1e3 * sec:9.1f} ms "
                        f"(cpu {1e3 * p.cpu_median:.0f} ms)"
                    )
                del timed
        for causal in causals:
            if not args.no_memory:
                for mode in modes:
                    for impl in impls:
                        need = estimated_bytes(impl, b, t, n, h, mode, itemsize)
                        if need > 0.8 * avail:
                            row_of[impl, causal][f"{mode}_peak_skipped"] = (
                                f"needs ~{need / 1e9:.1f} GB, {avail / 1e9:.1f} GB available"
                            )
                            continue
                        res = measure_memory(
                            {
                                "impl": impl,
                                "shape": shape,
                                "causal": causal,
                                "mode": mode,
                                "dtype": dtype,
                                "device": device,
                            },
                            timeout=args.memory_timeout,
                        )
                        if "error" in res:
                            row_of[impl, causal][f"{mode}_peak_error"] = res["error"]
                            print(f"{shape} {impl} {mode} memory: {res['error']}")
                            continue
                        row = row_of[impl, causal]
                        row[f"{mode}_peak_mb"] = res["peak_above_baseline_bytes"] / 1e6
                        row[f"{mode}_peak_reset"] = res["peak_reset"]
                        row[f"{mode}_single_run_ms"] = 1e3 * res["seconds"]
                        program = res.get("program_bytes")
                        if program is not None:
                            row[f"{mode}_program_mb"] = program / 1e6
                        print(
                            f"{shape} causal={causal} {impl:12s} {mode:6s} peak "
                            f"{res['peak_above_baseline_bytes'] / 1e6:9.1f} MB"
                            + ("" if program is None else f" (XLA program {program / 1e6:.1f} MB)")
                        )
        rows += [r for r in row_of.values() if len(r) > 3]
    result = {"environment": env, "matmul_gflops": rate, "matmul": rate_what, "rows": rows}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    table = markdown_table(rows, rate)
    header = (
        f"{env.get('cpu', device)}, {env['cpu_count']} cores; python {env['python']}, "
        f"jax {env['jax']}, jaxlib {env['jaxlib']}"
        + (f", torch {env['torch']}" if "torch" in env else "")
        + f"; {dtype}; matmul {rate:.0f} GFLOP/s ({rate_what}); {env['date']}"
    )
    note = (
        "\n\n`*`: not timed (T above --max-timing-t); the wall time of the single run "
        "made by the memory subprocess. Peak MB: peak RSS above the RSS after creating "
        "the inputs and compiling. XLA MB: the compiled program's temporaries and outputs "
        "(`memory_analysis()`), which do not depend on the machine."
    )
    (out / "results.md").write_text(header + "\n\n" + table + note + "\n")
    plot(rows, out / "attention.png", header)
    print()
    print(header)
    print(table)


def run_sweep(args, device: str) -> None:
    jax_setup(device)
    dtype = args.dtype or ("float32" if device == "cpu" else "bfloat16")
    shapes = parse_shapes(args.shapes or "1x4096x8x64")
    blocks_q = parse_ints(args.sweep_q, "--sweep-q")
    blocks_k = parse_ints(args.sweep_k, "--sweep-k")
    causals = {"yes": [True], "no": [False], "both": [False, True]}[args.causal]
    modes = args.modes.split(",")
    repeats = args.repeats or (3 if args.quick else 10)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = environment(device)
    print(json.dumps(env))
    rows = []
    for shape in shapes:
        for causal in causals:
            for mode in modes:
                points = [
                    Point("flash", shape, causal, mode, dtype, bq, bk)
                    for bq in blocks_q
                    for bk in blocks_k
                ]
                meds = time_points(points, repeats, warmup=1, schedule=args.schedule)
                for p, sec in zip(points, meds, strict=True):
                    bq, bk = p.block_q, p.block_k
                    rows.append(
                        {
                            "shape": shape,
                            "causal": causal,
                            "mode": mode,
                            "block_q": bq,
                            "block_k": bk,
                            "ms": 1e3 * sec,
                            "cpu_ms": 1e3 * p.cpu_median,
                        }
                    )
                    print(
                        f"{shape} causal={causal} {mode} bq={bq} bk={bk} {1e3 * sec:.1f} ms "
                        f"(cpu {1e3 * p.cpu_median:.0f} ms)"
                    )
                del points
    (out / "sweep.json").write_text(json.dumps({"environment": env, "rows": rows}, indent=1))
    lines = []
    for shape in shapes:
        for causal in causals:
            for mode in modes:
                sel = [
                    r
                    for r in rows
                    if r["shape"] == shape and r["causal"] == causal and r["mode"] == mode
                ]
                best = min(sel, key=lambda r: r["ms"])
                best_cpu = min(sel, key=lambda r: r["cpu_ms"])
                lines.append(
                    f"\n{shape}, causal={causal}, {mode}: wall ms / process CPU ms "
                    f"(fastest wall: bq={best['block_q']}, bk={best['block_k']}; least CPU: "
                    f"bq={best_cpu['block_q']}, bk={best_cpu['block_k']}):\n"
                )
                lines.append("| block_q \\ block_k | " + " | ".join(map(str, blocks_k)) + " |")
                lines.append("|---" * (len(blocks_k) + 1) + "|")
                for bq in blocks_q:
                    cells = []
                    for bk in blocks_k:
                        r = next(r for r in sel if r["block_q"] == bq and r["block_k"] == bk)
                        cells.append(f"{r['ms']:.0f} / {r['cpu_ms']:.0f}")
                    lines.append(f"| {bq} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    (out / "sweep.md").write_text(text + "\n")
    print(text)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="out/bench", help="output folder")
    parser.add_argument("--shapes", help=f"BxTxNxH list (default {DEFAULT_SHAPES})")
    parser.add_argument(
        "--impls", default=",".join(ALL_IMPLS), help=f"subset of {','.join(ALL_IMPLS)}"
    )
    parser.add_argument("--causal", choices=["yes", "no", "both"], default="both")
    parser.add_argument("--modes", default="fwd,fwdbwd", help="fwd, fwdbwd or both")
    parser.add_argument("--quick", action="store_true", help="small shapes, 3 repeats")
    parser.add_argument("--repeats", type=int, help="timed runs per point (default 10)")
    parser.add_argument(
        "--schedule",
        choices=["round-robin", "blocked"],
        default="round-robin",
        help="round-robin (robust to a changing load) or blocked (each point alone; idle machine)",
    )
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], help="default by device")
    parser.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--memory-only", action="store_true", help="skip the timing")
    parser.add_argument("--memory-timeout", type=float, default=1800.0)
    parser.add_argument(
        "--max-timing-t",
        type=int,
        default=8192,
        help="above this T only the memory run (one run, marked *) is made",
    )
    parser.add_argument("--sweep-blocks", action="store_true", help="flash block-size sweep")
    parser.add_argument("--sweep-q", default="128,256,512,1024")
    parser.add_argument("--sweep-k", default="128,256,512,1024")
    parser.add_argument("--_memory-child", dest="memory_child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        print(json.dumps(memory_child(json.loads(args.memory_child))))
        return
    check_args(parser, args)
    device = args.device
    if device == "auto":
        import jax

        device = "gpu" if jax.default_backend() in ("gpu", "cuda") else "cpu"
    if args.sweep_blocks:
        run_sweep(args, device)
    else:
        run_benchmark(args, device)


if __name__ == "__main__":
    main()
