"""Linear-attention benchmark: forward+backward time (and peak memory) against sequence length,
the chunked linear mixers of :mod:`attention_jax.linear` beside causal flash softmax attention.

Implementations (``--impls``; all but ``based`` by default), all jitted, ``[B, T, N, H]``
inputs in ``--dtype``:

- ``linear``: ``linear_attention`` (elu+1 feature map, normalized);
- ``based``: ``linear_attention`` with the Taylor feature map (Based; normalized, 153
  features for ``--head-dim 16``);
- ``gla``: ``gated_linear_attention`` with one log decay per token and head (``[B, T, N]``,
  RetNet / Mamba-2 style);
- ``gla_dim``: ``gated_linear_attention`` with a log decay per key dimension
  (``[B, T, N, H]``, GLA);
- ``deltanet``: ``delta_rule_attention`` (L2-normalized q and k, beta = sigmoid(.));
- ``gated_deltanet``: ``delta_rule_attention`` with ``log_decay`` (Gated DeltaNet);
- ``flash``: ``attention_jax.dot_product_attention(..., is_causal=True,
  implementation="flash")``, the quadratic peer.

The linear mixers run at ``--chunk`` (default 64). Forward+backward is the gradient of
``sum(out * cotangent)`` with respect to q, k and v (and the gates, which are inputs too).
Timing is :mod:`attention`'s (the sibling benchmark): ``block_until_ready``, ``--warmup``
untimed runs, then the median of ``--repeats`` runs of wall time and of process CPU time, the
implementations of one length timed round-robin. Peak memory (``--no-memory`` to skip) is the
peak RSS of one forward+backward above the RSS after making the inputs and compiling, one
fresh subprocess per point, as :mod:`attention` measures it. ``flash`` is timed up to
``--max-flash-t`` (default 32768: at 65536 one causal forward+backward takes minutes on a
2-core CPU).

The JSON lists every point and, per linear mixer, the crossover: the smallest timed ``T`` from
which it is faster than flash at every timed length.

Usage::

  python benchmarks/linear.py                         # T = 1k .. 64k into benchmarks/results/
  python benchmarks/linear.py --quick --out out/linear-quick   # T <= 2k, 1 repetition
  python benchmarks/linear.py --impls gla,flash --lengths 4096,16384 --no-memory
  python benchmarks/linear.py --impls linear,based --lengths 64,256 --batch 192 --heads 8 \
      --head-dim 16 --chunk 16 --no-memory     # the MQAR grid's shapes (3 lrs x batch 64)

Writes ``linear_<device>.json``, ``.md`` and ``.png`` (``linear_<device>_quick.*`` with
``--quick``) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import attention  # the sibling benchmark: timing loop, memory measurement, environment

ALL_IMPLS = ("linear", "based", "gla", "gla_dim", "deltanet", "gated_deltanet", "flash")
# Based only when asked: at --head-dim 64 its state has 2145 features per head.
DEFAULT_IMPLS = tuple(i for i in ALL_IMPLS if i != "based")
DEFAULT_LENGTHS = "1024,2048,4096,8192,16384,32768,65536"
QUICK_LENGTHS = "1024,2048"


# ----------------------------------------------------------------------------------------
# Flags.
# ----------------------------------------------------------------------------------------


def parse_impls(text: str) -> list[str]:
    impls = [i.strip() for i in text.split(",") if i.strip()]
    bad = [i for i in impls if i not in ALL_IMPLS]
    if bad or not impls:
        raise ValueError(f"--impls: unknown {bad or [text]}; choose from {','.join(ALL_IMPLS)}")
    return list(dict.fromkeys(impls))


def check_args(parser, args) -> None:
    """Every flag, before JAX is set up; ``parser.error`` (exit status 2) on the first bad one."""
    try:
        parse_impls(args.impls)
        if args.lengths:
            attention.parse_ints(args.lengths, "--lengths")
    except ValueError as e:
        parser.error(str(e))
    for flag in ("batch", "heads", "head_dim", "chunk", "max_flash_t"):
        if getattr(args, flag) < 1:
            parser.error(
                f"--{flag.replace('_', '-')} must be an int >= 1, got {getattr(args, flag)}"
            )
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be an int >= 1, got {args.repeats}")
    if args.warmup < 0:
        parser.error(f"--warmup must be an int >= 0, got {args.warmup}")
    if not args.memory_timeout > 0:
        parser.error(f"--memory-timeout must be a number of seconds > 0, got {args.memory_timeout}")


# ----------------------------------------------------------------------------------------
# The functions to time.
# ----------------------------------------------------------------------------------------


def make_inputs(impl: str, b: int, t: int, n: int, h: int, dtype: str, seed: int = 0) -> tuple:
    """``(q, k, v, cotangent, *gates)`` for ``impl``: gates as the papers' modules make them
    (log-sigmoid decays near 1, beta = sigmoid(.), unit-norm q and k for the delta rule)."""
    import jax
    import jax.numpy as jnp

    keys = jax.random.split(jax.random.key(seed), 6)
    dt = jnp.dtype(dtype)
    q, k, v, ct = (jax.random.normal(kk, (b, t, n, h), jnp.float32) for kk in keys[:4])
    gates = ()
    if impl in ("deltanet", "gated_deltanet"):
        q = q / jnp.linalg.norm(q, axis=-1, keepdims=True)
        k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
        gates = (jax.nn.sigmoid(jax.random.normal(keys[4], (b, t, n))),)
    if impl in ("gla", "gated_deltanet"):
        gates += (jax.nn.log_sigmoid(jax.random.normal(keys[5], (b, t, n)) + 4.0),)
    if impl == "gla_dim":
        gates += (jax.nn.log_sigmoid(jax.random.normal(keys[5], (b, t, n, h)) + 4.0) / 16,)
    return jax.block_until_ready((q.astype(dt), k.astype(dt), v.astype(dt), ct.astype(dt), *gates))


def make_fn(impl: str, chunk: int):
    """A jitted ``(q, k, v, ct, *gates) -> grads`` (forward+backward) for ``impl``."""
    import jax
    import jax.numpy as jnp

    import attention_jax
    from attention_jax import linear

    def attend(q, k, v, *gates):
        if impl == "flash":
            return attention_jax.dot_product_attention(
                q, k, v, is_causal=True, implementation="flash"
            )
        if impl == "linear":
            return linear.linear_attention(q, k, v, chunk_size=chunk)
        if impl == "based":
            return linear.linear_attention(q, k, v, feature_map="taylor", chunk_size=chunk)
        if impl in ("gla", "gla_dim"):
            return linear.gated_linear_attention(q, k, v, gates[0], chunk_size=chunk)
        if impl == "deltanet":
            return linear.delta_rule_attention(q, k, v, gates[0], chunk_size=chunk)
        return linear.delta_rule_attention(q, k, v, gates[0], log_decay=gates[1], chunk_size=chunk)

    def fwd_bwd(q, k, v, ct, *gates):
        def loss(*args):
            return jnp.sum(attend(*args).astype(jnp.float32) * ct.astype(jnp.float32))

        return jax.grad(loss, argnums=tuple(range(3 + len(gates))))(q, k, v, *gates)

    return jax.jit(fwd_bwd)


class Point:
    """One implementation at one length; ``run()`` as :class:`attention.Point`'s."""

    def __init__(self, impl: str, shape: tuple, dtype: str, chunk: int):
        import time

        import jax

        self.impl, self.shape, self.cpu = impl, shape, []
        self.args = make_inputs(impl, *shape, dtype)
        t0 = time.perf_counter()
        self.fn = make_fn(impl, chunk).lower(*self.args).compile()
        self.compile_s = time.perf_counter() - t0
        self._block = jax.block_until_ready

    def run(self) -> float:
        import time

        c0, t0 = time.process_time(), time.perf_counter()
        self._block(self.fn(*self.args))
        wall = time.perf_counter() - t0
        self.cpu.append(time.process_time() - c0)
        return wall


def memory_child(spec: dict) -> dict:
    """Runs in the subprocess: inputs, compile, reset the peak, run once, report."""
    attention.jax_setup(spec["device"])
    point = Point(spec["impl"], tuple(spec["shape"]), spec["dtype"], spec["chunk"])
    return attention.measure_peak(point.run)


# ----------------------------------------------------------------------------------------
# Reports.
# ----------------------------------------------------------------------------------------


def crossovers(rows: list[dict]) -> dict:
    """Per linear mixer: the smallest timed T from which it beats flash at every timed T
    (None when it never does, or flash was not timed)."""
    flash = {r["T"]: r["fwdbwd_ms"] for r in rows if r["impl"] == "flash" and "fwdbwd_ms" in r}
    out = {}
    for impl in dict.fromkeys(r["impl"] for r in rows):
        if impl == "flash":
            continue
        mine = {r["T"]: r["fwdbwd_ms"] for r in rows if r["impl"] == impl and "fwdbwd_ms" in r}
        common = sorted(set(mine) & set(flash))
        faster = [t for t in common if mine[t] < flash[t]]
        out[impl] = next((t for t in common if all(u in faster for u in common if u >= t)), None)
    return out


def markdown(rows: list[dict], header: str) -> str:
    lines = [
        header,
        "",
        "| impl | T | fwd+bwd ms | process CPU ms | vs flash | compile s | peak MB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    flash = {r["T"]: r.get("fwdbwd_ms") for r in rows if r["impl"] == "flash"}

    def fmt(x, spec="{:.1f}"):
        return "-" if x is None else spec.format(x)

    for r in sorted(rows, key=lambda r: (ALL_IMPLS.index(r["impl"]), r["T"])):
        ms, ref = r.get("fwdbwd_ms"), flash.get(r["T"])
        ratio = None if ms is None or ref is None else ms / ref
        lines.append(
            f"| {r['impl']} | {r['T']} | {fmt(ms)} | {fmt(r.get('fwdbwd_cpu_ms'), '{:.0f}')} | "
            f"{fmt(ratio, '{:.2f}x')} | {fmt(r.get('compile_s'))} | {fmt(r.get('peak_mb'))} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Forward+backward time and peak memory against T, log-log, one line per impl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_memory = any("peak_mb" in r for r in rows)
    fig, axes = plt.subplots(1, 2 if with_memory else 1, figsize=(12 if with_memory else 6.5, 4.8))
    axes = list(axes) if with_memory else [axes]
    panels = [("fwdbwd_ms", "forward+backward time (ms)"), ("peak_mb", "peak memory (MB)")]
    for ax, (key, ylabel) in zip(axes, panels, strict=False):
        for i, impl in enumerate(ALL_IMPLS):
            pts = sorted((r["T"], r[key]) for r in rows if r["impl"] == impl and key in r)
            if pts:
                ax.plot(
                    *zip(*pts, strict=True),
                    "--" if impl == "flash" else "-",
                    marker="o",
                    color=f"C{i}",
                    label=impl + (" (softmax, causal)" if impl == "flash" else ""),
                )
        ax.set(xscale="log", yscale="log", xlabel="T", ylabel=ylabel)
        ax.set_xscale("log", base=2)
        ax.grid(True, which="both", alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------
# The run.
# ----------------------------------------------------------------------------------------


def run(args, device: str) -> None:
    attention.jax_setup(device)
    impls = parse_impls(args.impls)
    lengths = attention.parse_ints(
        args.lengths or (QUICK_LENGTHS if args.quick else DEFAULT_LENGTHS), "--lengths"
    )
    repeats = args.repeats or (1 if args.quick else 5)
    warmup = min(args.warmup, 1) if args.quick else args.warmup
    b, n, h = args.batch, args.heads, args.head_dim
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"linear_{device}" + ("_quick" if args.quick else "")
    env = attention.environment(device)
    print(json.dumps(env))
    rows = []
    for t in lengths:
        shape = (b, t, n, h)
        row_of = {impl: {"impl": impl, "T": t, "shape": list(shape)} for impl in impls}
        timed = []
        for impl in impls:
            if impl == "flash" and t > args.max_flash_t:
                row_of[impl]["skipped"] = f"T > --max-flash-t {args.max_flash_t}"
                continue
            try:
                timed.append(Point(impl, shape, args.dtype, args.chunk))
            except Exception as e:  # e.g. out of memory: recorded, the others go on
                row_of[impl]["error"] = f"{type(e).__name__}: {e}"[:200]
                print(f"T={t} {impl}: {row_of[impl]['error']}")
        if timed:
            meds = attention.time_points(timed, repeats, warmup, schedule=args.schedule)
            for p, sec in zip(timed, meds, strict=True):
                row = row_of[p.impl]
                row.update(
                    fwdbwd_ms=1e3 * sec,
                    fwdbwd_cpu_ms=1e3 * p.cpu_median,
                    repeats=repeats,
                    compile_s=p.compile_s,
                )
                print(
                    f"T={t:6d} {p.impl:15s} {1e3 * sec:10.1f} ms (cpu {1e3 * p.cpu_median:.0f} ms)"
                )
        del timed
        if not args.no_memory:
            for impl in impls:
                if "skipped" in row_of[impl] or "error" in row_of[impl]:
                    continue
                spec = {
                    "impl": impl,
                    "shape": list(shape),
                    "dtype": args.dtype,
                    "chunk": args.chunk,
                    "device": device,
                }
                res = attention.measure_memory(spec, args.memory_timeout, script=__file__)
                if "error" in res:
                    row_of[impl]["peak_error"] = res["error"]
                    print(f"T={t} {impl} memory: {res['error']}")
                    continue
                row_of[impl]["peak_mb"] = res["peak_above_baseline_bytes"] / 1e6
                row_of[impl]["peak_reset"] = res["peak_reset"]
                print(f"T={t:6d} {impl:15s} peak {row_of[impl]['peak_mb']:9.1f} MB")
        rows += list(row_of.values())
    config = {
        "impls": impls,
        "lengths": lengths,
        "batch": b,
        "heads": n,
        "head_dim": h,
        "chunk": args.chunk,
        "dtype": args.dtype,
        "repeats": repeats,
        "warmup": warmup,
        "schedule": args.schedule,
        "max_flash_t": args.max_flash_t,
        "quick": args.quick,
    }
    cross = crossovers(rows)
    result = {"environment": env, "config": config, "rows": rows, "crossover_t": cross}
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    header = (
        f"{env.get('cpu', device)}, {env['cpu_count']} cores; python {env['python']}, "
        f"jax {env['jax']}; B={b}, N={n}, H={h}, {args.dtype}, chunk {args.chunk}; "
        f"median of {repeats}; {env['date']}"
    )
    table = markdown(rows, header)
    (out / f"{stem}.md").write_text(table + f"\ncrossover T (faster than flash from): {cross}\n")
    plot(rows, out / f"{stem}.png", header)
    print()
    print(table)
    print(f"crossover T (faster than flash from): {cross}")
    print(f"wrote {out / stem}.json, .md, .png")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"), help="folder")
    parser.add_argument("--impls", default=",".join(DEFAULT_IMPLS), help=f"subset of {ALL_IMPLS}")
    parser.add_argument("--lengths", help=f"comma-separated T (default {DEFAULT_LENGTHS})")
    parser.add_argument("--quick", action="store_true", help=f"T in {QUICK_LENGTHS}, 1 repeat")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=64, help="chunk size of the linear mixers")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--repeats", type=int, help="timed runs per point (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per point")
    parser.add_argument(
        "--schedule",
        choices=["round-robin", "blocked"],
        default="round-robin",
        help="round-robin (robust to a changing load) or blocked (each point alone; idle machine)",
    )
    parser.add_argument("--max-flash-t", type=int, default=32768, help="flash timed up to this T")
    parser.add_argument("--device", choices=["auto", "cpu", "gpu"], default="auto")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--memory-timeout", type=float, default=1800.0)
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
    run(args, device)


if __name__ == "__main__":
    sys.exit(main())
