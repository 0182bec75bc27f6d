"""Train short, test long: a character LM per positional encoding, evaluated at longer contexts.

After Press et al. 2022, "Train Short, Test Long: Attention with Linear Biases Enables Input
Length Extrapolation" (ALiBi, ICLR 2022). For each positional encoding (arm) the
character-level LM of ``experiments/char_lm.py`` is trained with that script's defaults
(nanoGPT's CPU configuration: 4 layers, 4 heads, d_model 128, block 64, batch 12, 2000
iterations, lr 1e-3 -> 1e-4 cosine with 100 warmup steps, AdamW beta2 0.99, weight decay
0.1) by calling its ``main`` with ``--positional <arm>``. The trained parameters are then
loaded into a model whose ``max_len`` is the longest evaluation length and the validation
loss is measured on non-overlapping windows (``sequential_windows``) of 64, 128, 256 and
512 characters, without retraining. Every length predicts the same validation characters
(the split is cut to a multiple of the evaluation batch), each once; only the context the
model sees differs. The learned absolute table has ``block`` rows and cannot index past
them: its losses beyond the training block are reported as not applicable (null).

    python experiments/lm_extrapolation.py --data /work/shared/data/tinyshakespeare.txt --out out/lm_extrap
    python experiments/lm_extrapolation.py --quick --out out/lm_extrap_quick
    python experiments/lm_extrapolation.py --arms alibi,rope --eval-lengths 64,256,1024 --steps 500 ...

Flags not listed below go to ``char_lm.py`` (``--layers``, ``--d-model``, ``--block``,
``--batch``, ``--lr``, ``--seed``, ...; see ``python experiments/char_lm.py --help``).

Writes into ``--out``: ``results.json``, ``results.md`` (validation loss per arm and length,
beside the published perplexities), ``val_loss_vs_length.png``, and per arm the full
``char_lm.py`` run directory ``<arm>/`` (metrics, loss curve, checkpoints).
"""

import argparse
import json
import math
import pathlib
import sys
import time

import char_lm  # experiments/char_lm.py, beside this script
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from attention_jax import train as T
from attention_jax.data import (
    CharTokenizer,
    load_tinyshakespeare,
    sequential_windows,
    train_val_split,
)
from attention_jax.nn import TransformerConfig, TransformerLM

DEFAULT_ARMS = ("sinusoidal", "learned", "rope", "alibi", "t5", "none")
ARMS = ("learned", "sinusoidal", "rope", "alibi", "t5", "none")

# `--quick`: a few hundred steps and part of the validation split (flags still override).
QUICK = dict(steps=200, eval_tokens=16384)
QUICK_CHAR_LM = ["--eval-interval", "100", "--eval-iters", "5"]

# Press et al. 2022, WikiText-103, 247M-parameter models trained on L = 512 tokens,
# non-overlapping evaluation: perplexity at L, ~2L and ~5L tokens.
PUBLISHED = {
    "source": "Press et al. 2022 (ALiBi), WikiText-103, trained at 512 tokens",
    "lengths": [512, 1012, 2512],
    "perplexity": {
        "sinusoidal": [20.05, 43.54, 132.41],
        "rope": [20.07, 21.37, 31.58],
        "t5": [19.65, 18.79, 20.41],
        "alibi": [19.73, 18.73, 18.41],
    },
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="smoke preset: " + str(QUICK))
    p.add_argument("--arms", default=",".join(DEFAULT_ARMS), help="comma-separated encodings")
    p.add_argument(
        "--eval-lengths", default="64,128,256,512", help="comma-separated window lengths"
    )
    p.add_argument(
        "--eval-tokens", type=int, default=None, help="validation characters (default: all)"
    )
    p.add_argument(
        "--eval-batch-tokens", type=int, default=4096, help="characters per evaluation batch"
    )
    p.add_argument("--data", default="tinyshakespeare", help="as char_lm.py")
    p.add_argument("--cache-dir", default=None, help="as char_lm.py")
    p.add_argument("--steps", type=int, default=None, help="training steps (char_lm default)")
    p.add_argument("--out", default="out/lm_extrap")
    p.add_argument("--resume", action="store_true", help="continue/skip trained arms")
    p.add_argument("--no-progress", action="store_true")
    args, rest = p.parse_known_args(argv)
    if args.quick:
        p.set_defaults(**QUICK)
        args, rest = p.parse_known_args(argv)
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    bad = [a for a in args.arms if a not in ARMS]
    if bad:
        p.error(f"unknown arm(s) {bad}; choose from {ARMS}")
    try:
        args.eval_lengths = sorted({int(x) for x in args.eval_lengths.split(",") if x.strip()})
    except ValueError:
        p.error(f"--eval-lengths must be integers, got {args.eval_lengths!r}")
    if not args.eval_lengths or args.eval_lengths[0] < 1:
        p.error("--eval-lengths must be positive integers")
    # Everything else configures the char_lm.py runs (its parser rejects unknown flags).
    lm_argv = ["--data", args.data, "--sample", "0", *(QUICK_CHAR_LM if args.quick else [])]
    lm_argv += [*rest, *(["--cache-dir", args.cache_dir] if args.cache_dir else [])]
    lm_argv += [*(["--steps", str(args.steps)] if args.steps is not None else [])]
    lm_argv += [*(["--resume"] if args.resume else []), *(["--no-progress"] * args.no_progress)]
    for flag in ("--positional", "--out"):
        if flag in rest:
            p.error(f"{flag} is set per arm by this script")
    args.lm_argv = lm_argv
    args.lm = char_lm.parse_args(lm_argv)  # the char_lm settings every arm trains with
    return args


def window_loss(model, val_ids: np.ndarray, length: int, batch_tokens: int) -> tuple[float, int]:
    """Mean next-character loss over non-overlapping windows of ``length`` characters.

    Returns ``(loss, number of predicted characters)``.
    """
    windows = jnp.asarray(sequential_windows(val_ids, block_size=length))
    rows = max(1, batch_tokens // length)
    num_batches = windows.shape[0] // rows

    def batch(i, w):
        w = jax.lax.dynamic_slice_in_dim(w, i * rows, rows)
        return w[:, :-1], w[:, 1:]

    loss = T.make_eval_fn(batch, num_batches=num_batches)(model, windows)
    return float(loss), num_batches * rows * length


def markdown_table(results: dict, lengths: list[int], block: int) -> str:
    head = " | ".join(f"{n}" + (" (train)" if n == block else "") for n in lengths)
    lines = [
        "Validation loss (nats per character) on non-overlapping windows; perplexity "
        f"exp(loss) in parentheses; trained on windows of {block}.",
        "",
        f"| arm | {head} |",
        "|---|" + "---|" * len(lengths),
    ]
    for arm, r in results.items():
        cells = []
        for n in lengths:
            v = r["val_loss"].get(str(n))
            cells.append("n/a" if v is None else f"{v:.4f} ({math.exp(v):.2f})")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    pub = PUBLISHED["perplexity"]
    lines += [
        "",
        f"Published perplexity, {PUBLISHED['source']}, at "
        + "/".join(map(str, PUBLISHED["lengths"]))
        + " tokens: "
        + "; ".join(f"{arm} {'/'.join(f'{v:g}' for v in vs)}" for arm, vs in pub.items())
        + ".",
    ]
    return "\n".join(lines) + "\n"


def plot(results: dict, lengths: list[int], block: int, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arm, r in results.items():
        pts = [(n, r["val_loss"][str(n)]) for n in lengths if r["val_loss"].get(str(n)) is not None]
        if pts:  # a lone point (the learned table) as a larger square, so it stays visible
            big = len(pts) == 1
            ax.plot(*zip(*pts, strict=True), marker="s" if big else "o", ms=9 if big else 6,
                    lw=1.5, label=arm, zorder=3 if big else 2)  # fmt: skip
    ax.axvline(block, color="k", ls="--", lw=1)
    ax.text(block * 1.03, ax.get_ylim()[1], f" train block {block}", va="top", fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [str(n) for n in lengths])
    ax.set_xlabel("evaluation window (characters)")
    ax.set_ylabel("validation loss (nats/char)")
    ax.set_title("Train short, test long: validation loss vs evaluation length")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    t_start = time.perf_counter()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lm = args.lm
    block, lengths = lm.block, args.eval_lengths

    if lm.data == "tinyshakespeare":
        text = load_tinyshakespeare(lm.cache_dir)
    else:
        text = pathlib.Path(lm.data).read_text(encoding="utf-8")
    _, val_ids = train_val_split(CharTokenizer.from_text(text).encode(text))  # as char_lm.py
    # One cut of the split shared by every length: all of them predict the same characters.
    usable = (
        len(val_ids) - 1 if args.eval_tokens is None else min(args.eval_tokens, len(val_ids) - 1)
    )
    batch_tokens = max(args.eval_batch_tokens, max(lengths))
    usable = usable // batch_tokens * batch_tokens
    if usable == 0:
        raise SystemExit(
            f"the validation split ({len(val_ids)} characters) is shorter than one evaluation "
            f"batch of {batch_tokens}; lower --eval-lengths/--eval-batch-tokens"
        )
    val_ids = val_ids[: usable + 1]
    print(
        f"arms {', '.join(args.arms)}; train block {block}, {lm.steps} steps; evaluation "
        f"lengths {lengths} on {usable:,} validation characters",
        file=sys.stderr,
    )

    results = {}
    for arm in args.arms:
        t0 = time.perf_counter()
        run_dir = out / arm
        metrics = char_lm.main([*args.lm_argv, "--positional", arm, "--out", str(run_dir)])
        train_seconds = time.perf_counter() - t0
        trained = json.loads((run_dir / "config.json").read_text())
        # Same weights, a longer max_len (positions past the block for all but the table).
        max_len = block if arm == "learned" else max(block, *lengths)
        model = TransformerLM(
            TransformerConfig(**{**trained, "max_len": max_len}), rngs=nnx.Rngs(0)
        )
        T.load_params(model, run_dir / "ckpt", lm.steps)
        val_loss, tokens = {}, {}
        for n in lengths:
            if n > max_len:
                val_loss[str(n)], tokens[str(n)] = None, 0  # no table rows past the block
            else:
                val_loss[str(n)], tokens[str(n)] = window_loss(model, val_ids, n, batch_tokens)
        results[arm] = {
            "positional": arm,
            "train_block": block,
            "max_len": max_len,
            "val_loss": val_loss,
            "perplexity": {n: (None if v is None else math.exp(v)) for n, v in val_loss.items()},
            "tokens_evaluated": tokens,
            "char_lm": {
                k: metrics.get(k)
                for k in (
                    "val_loss",
                    "val_loss_full",
                    "train_loss",
                    "num_params",
                    "ms_per_step_median",
                    "wall_seconds",
                    "resumed_from",
                )
            },
            "steps": lm.steps,
            "train_seconds": train_seconds,
            "seconds": time.perf_counter() - t0,
        }
        print(
            f"{arm}: "
            + ", ".join(f"{n}: {'n/a' if v is None else f'{v:.4f}'}" for n, v in val_loss.items())
            + f" ({time.perf_counter() - t0:.0f} s)",
            file=sys.stderr,
        )
        T.write_json(
            out / "results.json",
            {
                "experiment": "lm_extrapolation",
                "settings": {
                    "arms": args.arms,
                    "eval_lengths": lengths,
                    "eval_tokens": usable,
                    "eval_batch_tokens": batch_tokens,
                    "char_lm_args": {
                        k: v for k, v in vars(lm).items() if k not in ("out", "positional")
                    },
                },
                "published": PUBLISHED,
                "environment": {"jax": jax.__version__, "devices": [str(d) for d in jax.devices()]},
                "wall_seconds": time.perf_counter() - t_start,
                "results": results,
            },
        )

    table = markdown_table(results, lengths, block)
    (out / "results.md").write_text(table)
    plot(results, lengths, block, out / "val_loss_vs_length.png")
    print("\n" + table, file=sys.stderr)
    print(
        f"{(time.perf_counter() - t_start) / 60:.1f} min; wrote {out / 'results.json'}, "
        f"{out / 'results.md'}, {out / 'val_loss_vs_length.png'}",
        file=sys.stderr,
    )
    return results


if __name__ == "__main__":
    main()
