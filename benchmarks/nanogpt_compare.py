"""Training-step time and validation loss of ``experiments/char_lm.py`` against nanoGPT,
measured in one run on the same machine (its CPU "baby GPT": 4 layers, 4 heads, d_model
128, context 64, batch 12, lr 1e-3 -> 1e-4, 2000 iterations, no dropout).

nanoGPT is not part of this repository: pass a checkout with ``--nanogpt PATH`` (a pinned
copy lives at ``../shared/peers/nanogpt``, the default when it exists). Without one the
script says so and exits 0. nanoGPT runs from a working copy under ``--out`` (its
``train.py`` writes next to itself), with PyTorch eager (``--compile=False``) on the CPU.

Each repeat runs the two programs one after the other (the order alternates between
repeats), each in its own process:

* nanoGPT: ``train.py config/train_shakespeare_char.py --device=cpu --compile=False
  --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4
  --n_embd=128 --max_iters=N --lr_decay_iters=N --dropout=0.0``; its ms/iteration is the
  median of the per-iteration times it prints (iterations after the first), its validation
  loss the last ``val loss`` it prints (20 random batches).
  It runs with glibc's default allocator settings unless ``--nanogpt-tuned-malloc``.
* ours: ``experiments/char_lm.py --steps N`` (the same recipe by default); ms/step is the
  median of its logged intervals, and it reports both the 20-batch and the whole-split
  validation loss.

    python benchmarks/nanogpt_compare.py --data ../shared/data/tinyshakespeare.txt \\
        --out out/nanogpt_compare --repeats 3
    python benchmarks/nanogpt_compare.py --iters 300 --repeats 1   # a quick look

Generation (``--parts generation``): :func:`attention_jax.nn.generate` (KV cache, one
compiled prefill + ``lax.while_loop``) against nanoGPT's ``GPT.generate`` as ``sample.py``
calls it (PyTorch, ``no_grad``, the whole prefix recomputed for each new token), on freshly
initialized models of the baby GPT's size with room for the whole sequence (``block_size``
/ ``max_len`` = 64 + 500): a 64-token prompt, 500 new tokens, temperature 0.8, batch 1 and
16. Tokens/s counts new tokens (batch x 500) per second, the median of ``--repeats`` runs
after a first one; our first run's extra time is reported as compile time.

Writes ``results.json`` and ``results.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_NANOGPT = ROOT.parent / "shared" / "peers" / "nanogpt"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"

BABY_GPT = [
    "--device=cpu",
    "--compile=False",
    "--eval_iters=20",
    "--log_interval=1",
    "--block_size=64",
    "--batch_size=12",
    "--n_layer=4",
    "--n_head=4",
    "--n_embd=128",
    "--dropout=0.0",
]
# What attention_jax.train.tune_host_malloc sets, as environment variables (for the peer).
MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "1073741824"}
ITER_RE = re.compile(r"^iter (\d+): loss ([\d.]+), time ([\d.]+)ms", re.M)
EVAL_RE = re.compile(r"^step (\d+): train loss ([\d.]+), val loss ([\d.]+)", re.M)


def prepare_nanogpt(src: Path, data: Path, work: Path, python: str) -> Path:
    """A working copy of nanoGPT with ``data/shakespeare_char/{train,val}.bin`` made from
    ``data`` by nanoGPT's own ``prepare.py``."""
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(src, work, ignore=shutil.ignore_patterns("out*", "*.bin", "*.pkl"))
    prep = work / "data" / "shakespeare_char"
    shutil.copyfile(data, prep / "input.txt")
    subprocess.run([python, "prepare.py"], cwd=prep, check=True, capture_output=True, text=True)
    return work


def run_nanogpt(work: Path, iters: int, python: str, log: Path, *, malloc_env: bool) -> dict:
    cmd = [
        python,
        "train.py",
        "config/train_shakespeare_char.py",
        *BABY_GPT,
        f"--max_iters={iters}",
        f"--lr_decay_iters={iters}",
        f"--out_dir={work / 'out'}",
    ]
    env = dict(os.environ, **(MALLOC_ENV if malloc_env else {}))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"nanoGPT failed (see {log}):\n{proc.stderr[-2000:]}")
    times = [float(t) for i, _, t in ITER_RE.findall(proc.stdout) if int(i) > 0]
    evals = EVAL_RE.findall(proc.stdout)
    return {
        "ms_per_step": statistics.median(times),
        "val_loss_20": float(evals[-1][2]) if evals else None,
        "train_loss_20": float(evals[-1][1]) if evals else None,
        "wall_s": wall,
        "command": " ".join(cmd[1:]),
    }


def run_ours(data: Path, iters: int, out: Path, extra: list[str], log: Path) -> dict:
    cmd = [
        sys.executable,
        str(ROOT / "experiments" / "char_lm.py"),
        f"--data={data}",
        f"--out={out}",
        f"--steps={iters}",
        "--no-progress",
        "--sample=0",
        *extra,
    ]
    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"char_lm.py failed (see {log}):\n{proc.stderr[-2000:]}")
    m = json.loads((out / "metrics.json").read_text())
    return {
        "ms_per_step": m["ms_per_step_median"],
        "val_loss_20": m["val_loss"],
        "val_loss_full": m.get("val_loss_full"),
        "train_loss_20": m["train_loss"],
        "compile_s": m["compile_seconds"],
        "wall_s": wall,
        "command": " ".join(["experiments/char_lm.py", *cmd[2:]]),
    }


GEN_PROMPT, GEN_NEW, GEN_BATCHES = 64, 500, (1, 16)


def run_generation(nanogpt: Path, repeats: int) -> list[dict]:
    """Tokens/s of our cached ``generate`` and of nanoGPT's ``GPT.generate`` (no cache)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    from flax import nnx

    from attention_jax.nn import TransformerConfig, TransformerLM, generate

    sys.path.insert(0, str(nanogpt))
    from model import GPT, GPTConfig  # nanoGPT's model.py

    max_len = GEN_PROMPT + GEN_NEW
    torch.manual_seed(0)
    peer = GPT(
        GPTConfig(
            block_size=max_len, vocab_size=65, n_layer=4, n_head=4, n_embd=128,
            dropout=0.0, bias=False,
        )
    ).eval()  # fmt: skip
    config = TransformerConfig(
        vocab_size=65, d_model=128, num_layers=4, num_heads=4, max_len=max_len,
        positional="learned", norm="layernorm", mlp="gelu", use_bias=False,
        tie_embeddings=True,
    )  # fmt: skip
    model = TransformerLM(config, rngs=nnx.Rngs(0))
    rows = []
    for batch in GEN_BATCHES:
        prompt = np.random.default_rng(0).integers(0, 65, (batch, GEN_PROMPT))

        def ours(i, prompt=prompt):
            key = jax.random.key(i)
            return generate(model, jnp.asarray(prompt), GEN_NEW, rng=key, temperature=0.8)

        def theirs(i, prompt=prompt):
            torch.manual_seed(i)
            with torch.no_grad():
                return peer.generate(torch.from_numpy(prompt), GEN_NEW, temperature=0.8)

        times = {}
        for who, fn in (("ours", lambda i: jax.block_until_ready(ours(i))), ("nanogpt", theirs)):
            ts = []
            for i in range(repeats + 1):
                t0 = time.perf_counter()
                out = fn(i)
                ts.append(time.perf_counter() - t0)
            assert tuple(out.shape) == (batch, max_len), out.shape
            times[who] = (ts[0], statistics.median(ts[1:]))
        rows.append(
            {
                "batch": batch,
                "ours_tokens_per_s": batch * GEN_NEW / times["ours"][1],
                "nanogpt_tokens_per_s": batch * GEN_NEW / times["nanogpt"][1],
                "ours_seconds": times["ours"][1],
                "nanogpt_seconds": times["nanogpt"][1],
                "ours_compile_s": times["ours"][0] - times["ours"][1],
            }
        )
        print(
            f"  batch {batch}: ours {rows[-1]['ours_tokens_per_s']:,.0f} tokens/s "
            f"(compile {rows[-1]['ours_compile_s']:.1f} s), nanoGPT "
            f"{rows[-1]['nanogpt_tokens_per_s']:,.0f} tokens/s",
            flush=True,
        )
    return rows


def generation_markdown(rows: list[dict]) -> str:
    lines = [
        "| batch | ours tokens/s | nanoGPT tokens/s | ours / nanoGPT speed | ours compile s |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch']} | {r['ours_tokens_per_s']:,.0f} | {r['nanogpt_tokens_per_s']:,.0f} "
            f"| {r['ours_tokens_per_s'] / r['nanogpt_tokens_per_s']:.1f}x "
            f"| {r['ours_compile_s']:.1f} |"
        )
    return "\n".join(lines)


def fmt(x, spec=".1f"):
    return "-" if x is None else format(x, spec)


def markdown(rows: list[dict], summary: dict) -> str:
    lines = [
        "| repeat | nanoGPT ms/iter | ours ms/step | ours / nanoGPT | nanoGPT val (20 batches) "
        "| ours val (20 batches) | ours val (whole split) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        n, o = r["nanogpt"], r["ours"]
        lines.append(
            f"| {r['repeat']} | {fmt(n['ms_per_step'])} | {fmt(o['ms_per_step'])} "
            f"| {o['ms_per_step'] / n['ms_per_step']:.2f} | {fmt(n['val_loss_20'], '.4f')} "
            f"| {fmt(o['val_loss_20'], '.4f')} | {fmt(o['val_loss_full'], '.4f')} |"
        )
    lines.append(
        f"| median | {summary['nanogpt_ms']:.1f} | {summary['ours_ms']:.1f} "
        f"| {summary['ratio_median']:.2f} | | | |"
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    doc = __doc__.split("\n\n")[0]
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--nanogpt", type=Path, default=DEFAULT_NANOGPT, help="nanoGPT checkout")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="tinyshakespeare.txt")
    parser.add_argument("--iters", type=int, default=2000, help="iterations of each run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("out/nanogpt_compare"))
    parser.add_argument("--python", default=sys.executable, help="interpreter for nanoGPT")
    parser.add_argument(
        "--char-lm-args", default="", help="extra flags for char_lm.py (one string)"
    )
    parser.add_argument(
        "--nanogpt-tuned-malloc",
        action="store_true",
        help="run nanoGPT with the allocator settings char_lm.py applies (MALLOC_MMAP_MAX_=0 "
        "MALLOC_TRIM_THRESHOLD_=1073741824) instead of glibc's defaults",
    )
    parser.add_argument(
        "--parts",
        default="train,generation",
        help="comma-separated: train (the training runs), generation (tokens/s)",
    )
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    if not parts or not parts <= {"train", "generation"}:
        parser.error(f"--parts must name train and/or generation, got {args.parts!r}")
    if args.iters < 2 or args.repeats < 1:
        parser.error(f"--iters must be >= 2 and --repeats >= 1, got {args.iters}, {args.repeats}")
    if not (args.nanogpt / "train.py").exists() or not (args.nanogpt / "model.py").exists():
        print(
            f"--nanogpt {args.nanogpt}: no nanoGPT checkout there (train.py, model.py); "
            "the comparison is skipped. Pass --nanogpt PATH to a karpathy/nanoGPT checkout."
        )
        return 0
    try:
        # nanoGPT's only heavy dependency; this process needs it too (the generation peer
        # and the environment record), whatever --python runs nanoGPT's train.py.
        import torch  # noqa: F401
    except ImportError:
        print("PyTorch is not installed (pip install torch); the comparison is skipped.")
        return 0
    if not args.data.is_file():
        parser.error(f"--data {args.data}: no such file (the Tiny Shakespeare text)")

    args.out.mkdir(parents=True, exist_ok=True)
    result: dict = {}
    md: list[str] = []
    if "train" in parts:
        rows, summary = run_training(args)
        result.update(summary=summary, runs=rows)
        md.append(markdown(rows, summary))
    if "generation" in parts:
        print(f"generation: {GEN_PROMPT}-token prompt, {GEN_NEW} new tokens", flush=True)
        rows = run_generation(args.nanogpt, args.repeats)
        result["generation"] = rows
        md.append(generation_markdown(rows))
    import flex  # the sibling benchmark: versions, CPU model and ISA, load, command

    result["environment"] = {
        **flex.machine_info("cpu", with_torch=True),
        "iters": args.iters,
        "repeats": args.repeats,
        "parts": sorted(parts),
        "nanogpt_tuned_malloc": args.nanogpt_tuned_malloc,
    }
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    (args.out / "results.md").write_text("\n\n".join(md) + "\n")
    env = result["environment"]
    isa = " ".join(env.get("isa", []))
    print(f"{env.get('cpu')} ({isa}); jax {env['jax']}, torch {env.get('torch')}")
    print("\n\n".join(md))
    return 0


def run_training(args) -> tuple[list[dict], dict]:
    """``--repeats`` pairs of training runs, alternating which goes first."""
    work = prepare_nanogpt(args.nanogpt, args.data, args.out / "nanogpt_work", args.python)
    extra = args.char_lm_args.split()
    if args.iters < 100 and not any(a.startswith("--log-interval") for a in extra):
        extra.append("--log-interval=1")  # a short run still has whole logging intervals
    rows = []
    for r in range(args.repeats):
        order = ("nanogpt", "ours") if r % 2 == 0 else ("ours", "nanogpt")
        row = {"repeat": r + 1, "order": list(order)}
        for who in order:
            print(f"repeat {r + 1}/{args.repeats}: {who} ({args.iters} iterations)", flush=True)
            if who == "nanogpt":
                row[who] = run_nanogpt(
                    work,
                    args.iters,
                    args.python,
                    args.out / f"nanogpt_{r}.log",
                    malloc_env=args.nanogpt_tuned_malloc,
                )
            else:
                row[who] = run_ours(
                    args.data, args.iters, args.out / f"char_lm_{r}", extra,
                    args.out / f"char_lm_{r}.log",
                )  # fmt: skip
            print(f"  {row[who]['ms_per_step']:.1f} ms/step, val {row[who]['val_loss_20']}")
        rows.append(row)
    ratios = [r["ours"]["ms_per_step"] / r["nanogpt"]["ms_per_step"] for r in rows]
    summary = {
        "nanogpt_ms": statistics.median(r["nanogpt"]["ms_per_step"] for r in rows),
        "ours_ms": statistics.median(r["ours"]["ms_per_step"] for r in rows),
        "ratio_median": statistics.median(ratios),
        "ratios": ratios,
    }
    return rows, summary


if __name__ == "__main__":
    sys.exit(main())
