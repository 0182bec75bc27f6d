"""Context parallelism on host devices: memory per device, bytes sent, load balance.

On the host devices of one CPU the times say nothing about a real cluster, so this measures
what transfers to one:

1. **Memory per device** vs the number of devices ``P`` (1, 2, 4, 8) for causal
   forward+backward at ``--seq-len`` (default T=32768, B=1, N=8, H=64, float32): the
   compiled program's arguments, outputs and temporaries per device
   (``jax.jit(...).lower(...).compile().memory_analysis()``; an SPMD program is compiled
   once per device). ``P = 1`` is plain :func:`attention_jax.flash_attention` on one device.
2. **Bytes each device sends** per forward+backward: read off the jaxpr of the per-device
   program (every collective with its local operand, times the trip count of the ``scan``
   it sits in): a ``ppermute`` sends its operand once, an ``all_to_all`` or
   ``reduce_scatter`` ``(P-1)/P`` of it, an ``all_gather`` its shard to the ``P-1`` others,
   a ``psum`` ``2(P-1)/P`` of it (a ring all-reduce).
3. **Load balance**: the flash blocks each device computes in the causal ring
   (:func:`attention_jax.ring_block_counts`), zigzag layout and contiguous.
4. **A long run**: ``--long-seq-len`` (default T=131072) forward+backward of the ring on all
   ``P`` devices actually runs (``--long-heads``, default 1 head, to finish in minutes on 2
   cores), beside the memory of the 1-device flash program for the same shape (compiled,
   not run).

    python benchmarks/context_parallel.py --out out/context_parallel
    python benchmarks/context_parallel.py --quick --out out/cp_quick   # small shapes

Sets ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` itself (before JAX starts)
unless ``XLA_FLAGS`` is already set. Writes ``results.json``, ``results.md`` and
``context_parallel.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

STRATEGIES = ("ring", "ulysses", "all_gather")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="out/context_parallel", help="output folder")
    p.add_argument("--seq-len", type=int, default=32768, help="T of the memory table")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--devices", default="1,2,4,8", help="values of P")
    p.add_argument("--long-seq-len", type=int, default=131072, help="T of the long run (0: none)")
    p.add_argument("--long-heads", type=int, default=1, help="heads of the long run")
    p.add_argument("--quick", action="store_true", help="T=4096 and a long run of T=16384")
    args = p.parse_args(argv)
    if args.quick:
        args.seq_len, args.long_seq_len = 4096, 16384
    try:
        args.devices = [int(x) for x in args.devices.split(",")]
    except ValueError:
        p.error(f"--devices must be comma-separated ints, got {args.devices!r}")
    for name in ("seq_len", "heads", "head_dim", "long_heads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    top = max(args.devices)
    for t, flag in ((args.seq_len, "--seq-len"), (args.long_seq_len, "--long-seq-len")):
        if t and t % (2 * top):
            p.error(f"{flag} {t} must be divisible by 2 x the largest P = {2 * top}")
    if min(args.devices) < 1 or args.heads % top:
        p.error(
            f"--devices must be >= 1 and divide --heads {args.heads} (Ulysses), got {args.devices}"
        )
    return args


def local_collective_bytes(jaxpr, num_shards: int) -> dict[str, float]:
    """Bytes one device sends, by collective, in a per-device jaxpr (scans multiply)."""
    import numpy as np

    totals: dict[str, float] = {}

    def nbytes(aval) -> float:
        return float(np.prod(aval.shape)) * aval.dtype.itemsize

    def walk(jx, mult: float) -> None:
        for eqn in jx.eqns:
            name = eqn.primitive.name
            if name in ("ppermute", "all_to_all", "all_gather", "reduce_scatter", "psum"):
                size = sum(nbytes(v.aval) for v in eqn.invars)
                if name in ("all_to_all", "reduce_scatter"):
                    size *= (num_shards - 1) / num_shards
                elif name == "psum":  # a ring all-reduce
                    size *= 2 * (num_shards - 1) / num_shards
                elif name == "all_gather":
                    size *= num_shards - 1
                totals[name] = totals.get(name, 0.0) + mult * size
            inner = mult * (eqn.params["length"] if name == "scan" else 1)
            for param in eqn.params.values():
                for sub in param if isinstance(param, tuple | list) else (param,):
                    sub_jaxpr = getattr(sub, "jaxpr", sub)
                    if hasattr(sub_jaxpr, "eqns"):
                        # cond branches: the ring's skip branch sends nothing, count the max.
                        walk(sub_jaxpr, inner)

    walk(jaxpr, 1.0)
    return totals


def measure(args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    import attention_jax as aj

    b, n, h = 1, args.heads, args.head_dim
    devices = jax.devices()
    local_fns = {
        "ring": aj.ring_attention,
        "ulysses": aj.ulysses_attention,
        "all_gather": aj.all_gather_attention,
    }

    def per_device_grad(strategy):
        """Gradients of one device's shard: the program each device runs."""

        def loss(q, k, v):
            out = local_fns[strategy](
                q, k, v, axis_name="sequence", load_balance=True, is_causal=True
            )
            return out.sum()

        return jax.grad(loss, argnums=(0, 1, 2))

    def program(strategy, p):
        """Causal fwd+bwd, inputs already split over P devices (in the zigzag layout, as
        a context-parallel training step keeps them)."""
        if strategy == "flash":

            def loss(q, k, v):
                return aj.flash_attention(q, k, v, is_causal=True).sum()

            return jax.jit(jax.grad(loss, argnums=(0, 1, 2))), None
        mesh = Mesh(np.asarray(devices[:p]), ("sequence",))
        spec = P(None, "sequence")
        fn = jax.shard_map(
            per_device_grad(strategy),
            mesh=mesh,
            in_specs=(spec,) * 3,
            out_specs=(spec,) * 3,
            check_vma=False,
        )
        return jax.jit(fn), NamedSharding(mesh, spec)

    def memory(fn, sharding, t, heads):
        spec = jax.ShapeDtypeStruct((b, t, heads, h), jnp.float32, sharding=sharding)
        m = fn.lower(spec, spec, spec).compile().memory_analysis()
        sizes = {
            "argument_mb": m.argument_size_in_bytes / 1e6,
            "output_mb": m.output_size_in_bytes / 1e6,
            "temp_mb": m.temp_size_in_bytes / 1e6,
        }
        sizes["total_mb"] = sum(sizes.values())
        return sizes

    rows = []
    t = args.seq_len
    for p in args.devices:
        for strategy in ("flash",) if p == 1 else STRATEGIES:
            fn, sharding = program(strategy, p)
            row = {"P": p, "strategy": strategy, "T": t, **memory(fn, sharding, t, n)}
            if p > 1:
                local = jax.ShapeDtypeStruct((b, t // p, n, h), jnp.float32)
                jaxpr = jax.make_jaxpr(per_device_grad(strategy), axis_env=[("sequence", p)])(
                    local, local, local
                )
                sent = local_collective_bytes(jaxpr.jaxpr, p)
                row["sent_mb"] = sum(sent.values()) / 1e6
                row["sent_by_collective_mb"] = {k: v / 1e6 for k, v in sent.items()}
            rows.append(row)
            print(json.dumps(row), flush=True)

    balance = []
    for p in [x for x in args.devices if x > 1]:
        for lb in (True, False):
            counts = aj.ring_block_counts(t, p, is_causal=True, load_balance=lb)
            balance.append(
                {
                    "P": p,
                    "load_balance": lb,
                    "blocks": counts.tolist(),
                    "max_over_min": float(counts.max() / max(counts.min(), 1)),
                }
            )
            print(json.dumps(balance[-1]), flush=True)

    long = None
    if args.long_seq_len:
        tl, nl, p = args.long_seq_len, args.long_heads, max(args.devices)
        ring, sharding = program("ring", p)
        key = jax.random.split(jax.random.key(0), 3)
        q, k, v = (
            jax.device_put(jax.random.normal(kk, (b, tl, nl, h), jnp.float32), sharding)
            for kk in key
        )
        t0 = time.perf_counter()
        grads = jax.block_until_ready(ring(q, k, v))
        seconds = time.perf_counter() - t0
        flash, _ = program("flash", 1)
        long = {
            "T": tl,
            "heads": nl,
            "P": p,
            "ring_seconds_incl_compile": seconds,
            "finite": bool(all(jnp.isfinite(g).all() for g in grads)),
            "ring_per_device": memory(ring, sharding, tl, nl),
            "flash_one_device": memory(flash, None, tl, nl),
        }
        long["ratio"] = long["ring_per_device"]["total_mb"] / long["flash_one_device"]["total_mb"]
        print(json.dumps(long), flush=True)
    return {"rows": rows, "balance": balance, "long": long}


def markdown(result: dict, args) -> str:
    lines = [
        f"Memory per device, causal forward+backward, (B, T, N, H) = (1, {args.seq_len}, "
        f"{args.heads}, {args.head_dim}) float32:",
        "",
        "| P | strategy | arguments MB | outputs MB | temporaries MB | total MB | sent MB |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        sent = f"{r['sent_mb']:.1f}" if "sent_mb" in r else "-"
        lines.append(
            f"| {r['P']} | {r['strategy']} | {r['argument_mb']:.1f} | {r['output_mb']:.1f} | "
            f"{r['temp_mb']:.1f} | {r['total_mb']:.1f} | {sent} |"
        )
    lines += ["", "Flash blocks per device in the causal ring (512 x 256 blocks):", ""]
    lines += ["| P | layout | blocks per device | max / min |", "|---:|---|---|---:|"]
    for r in result["balance"]:
        layout = "zigzag" if r["load_balance"] else "contiguous"
        lines.append(f"| {r['P']} | {layout} | {r['blocks']} | {r['max_over_min']:.2f} |")
    long = result["long"]
    if long:
        lines += [
            "",
            f"Long run: ring forward+backward at T={long['T']} ({long['heads']} head of "
            f"{args.head_dim}) on {long['P']} host devices ran in {long['ring_seconds_incl_compile']:.0f} s "
            f"(with compilation), gradients finite: {long['finite']}; per device "
            f"{long['ring_per_device']['total_mb']:.1f} MB against "
            f"{long['flash_one_device']['total_mb']:.1f} MB for 1-device flash "
            f"({long['ratio']:.3f}x).",
        ]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    flash = [r for r in result["rows"] if r["strategy"] == "flash"]
    for strategy in STRATEGIES:
        rows = flash + [r for r in result["rows"] if r["strategy"] == strategy]
        ax.plot([r["P"] for r in rows], [r["total_mb"] for r in rows], "o-", label=strategy)
    if flash:
        ps = sorted({r["P"] for r in result["rows"]})
        ax.plot(ps, [flash[0]["total_mb"] / p for p in ps], "k:", label="1-device / P")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("devices P")
    ax.set_ylabel("MB per device (fwd+bwd)")
    ax.legend()
    ax.set_title("context parallelism: memory per device")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    args = parse_args(argv)
    if "XLA_FLAGS" not in os.environ:
        os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={max(args.devices)}"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    if jax.device_count() < max(args.devices):
        sys.exit(
            f"context_parallel.py: error: needs {max(args.devices)} devices, found "
            f"{jax.device_count()} (XLA_FLAGS is set to {os.environ['XLA_FLAGS']!r})"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from attention import environment  # benchmarks/attention.py: date, versions, CPU model

    env = environment("cpu")
    print(json.dumps(env), flush=True)
    result = {"environment": env, "args": vars(args), **measure(args)}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    md = markdown(result, args)
    (out / "results.md").write_text(md)
    plot(result, out / "context_parallel.png")
    print(md)


if __name__ == "__main__":
    main()
