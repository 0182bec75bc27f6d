"""Train short, test long: a character LM per positional encoding, evaluated at longer contexts.

After Press et al. 2022, "Train Short, Test Long: Attention with Linear Biases Enables Input
Length Extrapolation" (ALiBi, ICLR 2022). For each positional encoding (arm) the
character-level LM of ``experiments/char_lm.py`` is trained with that script's defaults
(nanoGPT's CPU configuration: 4 layers, 4 heads, d_model 128, block 64, batch 12, 2000
iterations, lr 1e-3 -> 1e-4 cosine with 100 warmup steps, AdamW beta2 0.99, weight decay
0.1) and its recipe (``common.train_char_lm``) with ``--positional <arm>``. The trained parameters are then
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

Arms: the positional encodings ``learned sinusoidal rope alibi t5 none`` and the attention
variants that carry order themselves, trained without positional encoding as their papers do:
``forgetting`` (FoX, Lin et al. 2025) and ``stick_breaking`` (Tan et al. 2024); both papers
claim length extrapolation.
"""

import argparse
import dataclasses
import math
import pathlib
import sys
import time

import common  # experiments/common.py, beside this script
from flax import nnx

from attention_jax import train as T
from attention_jax.data import CharTokenizer, train_val_split
from attention_jax.nn import TransformerLM

DEFAULT_ARMS = ("sinusoidal", "learned", "rope", "alibi", "t5", "none")
# An arm is a positional encoding, or an attention variant that carries order itself
# (trained without positional encoding, as its paper does).
ARM_FLAGS = {
    **{arm: {"positional": arm} for arm in ("learned", "sinusoidal", "rope", "alibi", "t5")},
    "none": {"positional": "none"},
    "forgetting": {"positional": "none", "attention": "forgetting"},
    "stick_breaking": {"positional": "none", "attention": "stick_breaking"},
}
ARMS = tuple(ARM_FLAGS)

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


def make_parser():
    p = common.make_parser(__doc__)
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
    common.add_data_flags(p)
    p.add_argument("--steps", type=int, default=None, help="training steps (char_lm default)")
    p.add_argument("--out", default="out/lm_extrap")
    p.add_argument("--resume", action="store_true", help="continue/skip trained arms")
    p.add_argument("--no-progress", action="store_true")
    return p


def parse_args(argv=None, p=None):
    """The checked flags, with ``args.lm`` the char_lm settings every arm trains with; a
    bad flag ends in ``p.error`` (exit status 2) before any data is read."""
    p = p or make_parser()
    args, rest = common.parse_with_preset(p, argv, flag="quick", preset=QUICK, known=True)
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    bad = [a for a in args.arms if a not in ARMS]
    if bad:
        p.error(f"unknown arm(s) {bad}; choose from {ARMS}")
    try:
        args.eval_lengths = sorted({int(x) for x in args.eval_lengths.split(",") if x.strip()})
    except ValueError:
        p.error(f"--eval-lengths must be integers, got {args.eval_lengths!r}")
    if not args.eval_lengths or args.eval_lengths[0] < 1:
        p.error(f"--eval-lengths must be positive integers, got {args.eval_lengths}")
    for name in ("eval_tokens", "eval_batch_tokens", "steps"):
        common.check_int(p, args, name, 1)
    # Everything else configures the char_lm runs (its parser rejects unknown flags).
    lm_argv = ["--data", args.data, "--sample", "0", *(QUICK_CHAR_LM if args.quick else [])]
    lm_argv += [*rest, *(["--cache-dir", args.cache_dir] if args.cache_dir else [])]
    lm_argv += ["--download-url", args.download_url]
    lm_argv += [*(["--steps", str(args.steps)] if args.steps is not None else [])]
    lm_argv += [*(["--resume"] if args.resume else []), *(["--no-progress"] * args.no_progress)]
    for flag in ("--positional", "--attention", "--out"):
        if flag in rest:
            p.error(f"{flag} is set per arm by this script")
    args.lm = common.char_lm_parser(__doc__).parse_args(lm_argv)
    for arm in args.arms:  # every arm's flags, before any data is read
        common.check_char_lm_flags(p, arm_args(args.lm, arm, out=args.out))
    return args


def arm_args(lm: argparse.Namespace, arm: str, *, out) -> argparse.Namespace:
    """The char_lm settings of one arm: ``lm`` with the arm's flags (``--positional arm``, or
    ``--positional none --attention arm`` for a variant) and ``--out out/arm``."""
    flags = {"attention": "softmax", **ARM_FLAGS[arm]}
    return argparse.Namespace(**{**vars(lm), **flags, "out": str(pathlib.Path(out, arm))})


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
    plt = common.pyplot()
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
    common.save_figure(fig, path)


def main(argv=None):
    p = make_parser()
    args = parse_args(argv, p)
    t_start = time.perf_counter()
    lm = args.lm
    block, lengths = lm.block, args.eval_lengths

    text = common.read_text(p, lm)
    common.check_block(p, lm, len(text))
    _, val_ids = train_val_split(CharTokenizer.from_text(text).encode(text))  # as char_lm.py
    # One cut of the split shared by every length: all of them predict the same characters.
    usable = (
        len(val_ids) - 1 if args.eval_tokens is None else min(args.eval_tokens, len(val_ids) - 1)
    )
    batch_tokens = max(args.eval_batch_tokens, max(lengths))
    usable = usable // batch_tokens * batch_tokens
    if usable == 0:
        p.error(
            f"the validation split of --data {lm.data} ({len(val_ids):,} characters) is "
            f"shorter than one evaluation batch of {batch_tokens:,}; lower --eval-lengths / "
            "--eval-batch-tokens or pass --data PATH to a longer text"
        )
    out = common.output_dir(args.out)
    val_ids = val_ids[: usable + 1]
    print(
        f"arms {', '.join(args.arms)}; train block {block}, {lm.steps} steps; evaluation "
        f"lengths {lengths} on {usable:,} validation characters",
        file=sys.stderr,
    )

    results = {}
    for arm in args.arms:
        t0 = time.perf_counter()
        run = arm_args(lm, arm, out=out)
        metrics = common.train_char_lm(p, run, text)
        train_seconds = time.perf_counter() - t0
        trained = common.read_config(pathlib.Path(run.out, "config.json"))
        # Same weights, a longer max_len (positions past the block for all but the table).
        max_len = block if arm == "learned" else max(block, *lengths)
        model = TransformerLM(dataclasses.replace(trained, max_len=max_len), rngs=nnx.Rngs(0))
        T.load_params(model, pathlib.Path(run.out, "ckpt"), lm.steps)
        val_loss, tokens = {}, {}
        for n in lengths:
            if n > max_len:
                val_loss[str(n)], tokens[str(n)] = None, 0  # no table rows past the block
            else:
                rows = max(1, batch_tokens // n)
                val_loss[str(n)], tokens[str(n)] = common.window_loss(
                    model, val_ids, length=n, rows=rows
                )
        results[arm] = {
            "positional": run.positional,
            "attention": run.attention,
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
                        k: v
                        for k, v in vars(lm).items()
                        if k not in ("out", "positional", "attention")
                    },
                },
                "published": PUBLISHED,
                "environment": common.environment(),
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
