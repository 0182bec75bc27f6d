"""Attention variants of 2020-2025 on Tiny Shakespeare: one character LM per variant and seed.

Every run is ``char_lm.py`` with its defaults (nanoGPT's CPU "baby GPT": 4 layers, 4 heads,
d_model 128, block 64, batch 12, 2000 iterations, lr 1e-3 -> 1e-4 cosine, 100 warmup steps,
AdamW beta2 0.99, weight decay 0.1, tied embeddings, no biases) plus the variant's flags:

==================  ===============================================================  =========
variant             flags                                                             paper
==================  ===============================================================  =========
softmax             ``--positional rope`` (the baseline every other row is beside)    Vaswani 2017, Su 2021
sinks               ``--sinks``                                                       gpt-oss 2025; Xiao 2023
gate_headwise       ``--attention-gate headwise``                                     Qiu 2025
gate_elementwise    ``--attention-gate elementwise --mlp-ratio 3.5`` (gate's D^2 from the MLP)  Qiu 2025
differential        ``--attention differential``                                      Ye 2024
forgetting          ``--attention forgetting --positional none``                      Lin 2025
stick_breaking      ``--attention stick_breaking --positional none``                  Tan 2024
mla                 ``--attention mla --kv-latent-dim 64 --rope-head-dim 16``           DeepSeek-V2 2024
value_residual      ``--value-residual``                                              Zhou 2024
talking_heads       ``--talking-heads``                                               Shazeer 2020
gated_deltanet      ``--attention gated_deltanet --positional none --conv-size 4       Yang 2024
                    --mlp-ratio 3.5``
hybrid_3to1         ``--layer-attention gated_deltanet,gated_deltanet,gated_deltanet,   Yang 2024
                    softmax --conv-size 4 --mlp-ratio 3.625``
==================  ===============================================================  =========

(all with ``--positional rope`` unless shown otherwise). Parameter counts are matched: the
variants add at most a few hundred parameters (gates, lambdas, sinks, head mixes), except the
elementwise gate (``D^2`` per layer, taken back from the MLP by ``--mlp-ratio 3.5``) and MLA,
whose latent width 64 and RoPE width 16 give within 3% of the baseline's attention
parameters; the table states each count.

Validation loss is measured on the whole validation split (each character once, windows of
the training block); ms/step is the median step time of the run (compile excluded). Then
``lm_extrapolation.py`` trains one model per arm of ``--extrapolation-arms`` (default the two
variants whose papers claim length extrapolation, forgetting and stick-breaking, beside ALiBi
and RoPE) at block 64 and evaluates them at 64-512 characters.

    python experiments/variants.py --data /work/shared/data/tinyshakespeare.txt --out out/variants
    python experiments/variants.py --quick --out out/variants_quick      # < 5 minutes
    python experiments/variants.py --variants softmax,mla --seeds 1 --steps 500 ...

Flags not listed below go to ``char_lm.py`` (``--layers``, ``--d-model``, ``--block``,
``--batch``, ``--lr``, ...). Writes into ``--out``: ``results.json``, ``results.md`` (the
table), ``variants.png`` (validation loss and ms/step per variant), per run the ``char_lm.py``
folder ``<variant>/seed<k>/``, and ``extrapolation/`` (``lm_extrapolation.py``'s outputs).
"""

import argparse
import json
import pathlib
import statistics
import sys
import time

import common  # experiments/common.py, beside this script
import lm_extrapolation
from flax import nnx

from attention_jax import train as T
from attention_jax.nn import TransformerLM

ROPE = ["--positional", "rope"]
NOPE = ["--positional", "none"]
VARIANTS = {
    "softmax": ROPE,
    "sinks": [*ROPE, "--sinks"],
    "gate_headwise": [*ROPE, "--attention-gate", "headwise"],
    "gate_elementwise": [*ROPE, "--attention-gate", "elementwise", "--mlp-ratio", "3.5"],
    "differential": [*ROPE, "--attention", "differential"],
    "forgetting": [*NOPE, "--attention", "forgetting"],
    "stick_breaking": [*NOPE, "--attention", "stick_breaking"],
    "mla": [*ROPE, "--attention", "mla", "--kv-latent-dim", "64", "--rope-head-dim", "16"],
    "value_residual": [*ROPE, "--value-residual"],
    "talking_heads": [*ROPE, "--talking-heads"],
    # Linear attention (attention_jax.linear): Gated DeltaNet, and a 3:1 hybrid with one
    # softmax layer on top. Their output gate (D^2 per linear layer) is taken back from the
    # MLPs, as for the elementwise gate.
    "gated_deltanet": [
        *NOPE,
        "--attention",
        "gated_deltanet",
        "--conv-size",
        "4",
        "--mlp-ratio",
        "3.5",
    ],
    "hybrid_3to1": [
        *ROPE,
        "--layer-attention",
        "gated_deltanet,gated_deltanet,gated_deltanet,softmax",
        "--conv-size",
        "4",
        "--mlp-ratio",
        "3.625",
    ],
}
PAPERS = {
    "softmax": "Vaswani et al. 2017 + RoPE (Su et al. 2021)",
    "sinks": "learned sinks (gpt-oss 2025; Xiao et al. 2023)",
    "gate_headwise": "Qiu et al. 2025, headwise gate",
    "gate_elementwise": "Qiu et al. 2025, elementwise gate",
    "differential": "Ye et al. 2024, Differential Transformer",
    "forgetting": "Lin et al. 2025, Forgetting Transformer (NoPE)",
    "stick_breaking": "Tan et al. 2024, stick-breaking (NoPE)",
    "mla": "DeepSeek-V2 2024, multi-head latent attention",
    "value_residual": "Zhou et al. 2024, value residual",
    "talking_heads": "Shazeer et al. 2020, talking heads",
    "gated_deltanet": "Yang, Kautz & Hatamizadeh 2024, Gated DeltaNet (NoPE)",
    "hybrid_3to1": "3 Gated DeltaNet layers + 1 softmax layer (RoPE)",
}
EXTRAPOLATION_ARMS = "rope,alibi,forgetting,stick_breaking"

# `--quick`: one seed, a few steps, a smaller evaluation (flags still override).
QUICK = dict(seeds=1, steps=40)
QUICK_CHAR_LM = ["--eval-interval", "20", "--eval-iters", "2"]
QUICK_EXTRAPOLATION = ["--eval-tokens", "4096", "--eval-lengths", "64,128,256"]


def make_parser():
    p = common.make_parser(__doc__)
    p.add_argument("--quick", action="store_true", help="smoke preset: " + str(QUICK))
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated variants")
    p.add_argument("--seeds", type=int, default=3, help="runs per variant (seeds 1337, ...)")
    p.add_argument("--steps", type=int, default=None, help="training steps (char_lm default)")
    p.add_argument(
        "--extrapolation-arms",
        default=EXTRAPOLATION_ARMS,
        help="arms of lm_extrapolation.py ('' to skip)",
    )
    common.add_data_flags(p)
    p.add_argument("--out", default="out/variants")
    p.add_argument("--resume", action="store_true", help="skip runs that finished")
    p.add_argument("--no-progress", action="store_true")
    return p


def parse_args(argv=None, p=None):
    """The checked flags; ``args.runs`` maps each variant to its char_lm flags. A bad flag
    ends in ``p.error`` (exit status 2) before any data is read."""
    p = p or make_parser()
    args, rest = common.parse_with_preset(p, argv, flag="quick", preset=QUICK, known=True)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad or not args.variants:
        p.error(f"unknown variant(s) {bad or args.variants}; choose from {tuple(VARIANTS)}")
    common.check_int(p, args, "seeds", 1)
    common.check_int(p, args, "steps", 1)
    arms = [a.strip() for a in args.extrapolation_arms.split(",") if a.strip()]
    bad = [a for a in arms if a not in lm_extrapolation.ARMS]
    if bad:
        p.error(f"unknown extrapolation arm(s) {bad}; choose from {lm_extrapolation.ARMS}")
    args.extrapolation_arms = arms
    for flag in ("--positional", "--attention", "--out", "--seed"):
        if flag in rest:
            p.error(f"{flag} is set per run by this script")
    shared = ["--data", args.data, "--sample", "0", "--checkpoint-interval", "0"]
    shared += [*(["--cache-dir", args.cache_dir] if args.cache_dir else [])]
    shared += ["--download-url", args.download_url]
    shared += [*(["--steps", str(args.steps)] if args.steps is not None else [])]
    shared += [*(QUICK_CHAR_LM if args.quick else []), *(["--no-progress"] * args.no_progress)]
    args.rest, args.shared = rest, shared
    args.runs = {}
    for variant in args.variants:
        # The variant's flags first, so that flags given here (e.g. --mlp-ratio) override.
        lm_argv = [*VARIANTS[variant], *shared, *rest]
        lm_parser = common.char_lm_parser(__doc__)
        lm = lm_parser.parse_args(lm_argv)
        common.check_char_lm_flags(p, lm)
        args.runs[variant] = lm
    return args


def run_args(lm: argparse.Namespace, out: pathlib.Path, seed: int) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(lm), "seed": seed, "out": str(out)})


def cache_floats_per_token_per_layer(config) -> int:
    """What one layer caches per token in decoding (keys + values, or MLA's latent)."""
    model = nnx.eval_shape(lambda: TransformerLM(config, rngs=nnx.Rngs(0)))
    return model.blocks[0].attention.init_cache(1, 1).floats_per_token


def summarize(runs: list[dict]) -> dict:
    losses = [r["val_loss_full"] for r in runs]
    ms = [r["ms_per_step_median"] for r in runs if r["ms_per_step_median"] is not None]
    return {
        "val_loss_mean": statistics.fmean(losses),
        "val_loss_std": statistics.stdev(losses) if len(losses) > 1 else 0.0,
        "ms_per_step": statistics.median(ms) if ms else None,
        "num_params": runs[0]["num_params"],
        "seeds": [r["seed"] for r in runs],
        "val_loss": losses,
    }


def markdown_table(summary: dict, steps: int) -> str:
    base = summary.get("softmax")
    lines = [
        f"Validation loss (nats/char, whole split; mean +- std over seeds) after {steps} steps, "
        "median ms/step, parameters, and cached floats per token per layer.",
        "",
        "| variant | paper | params | val loss | vs softmax | ms/step | cache floats/token/layer |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        delta = "" if base is None else f"{s['val_loss_mean'] - base['val_loss_mean']:+.4f}"
        ms = "n/a" if s["ms_per_step"] is None else f"{s['ms_per_step']:.1f}"
        lines.append(
            f"| {name} | {PAPERS[name]} | {s['num_params']:,} | {s['val_loss_mean']:.4f} +- "
            f"{s['val_loss_std']:.4f} | {delta} | {ms} | {s['cache_floats_per_token']} |"
        )
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: pathlib.Path) -> None:
    plt = common.pyplot()
    names = list(summary)
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4.5))
    loss = [summary[n]["val_loss_mean"] for n in names]
    err = [summary[n]["val_loss_std"] for n in names]
    ax0.barh(names, loss, xerr=err, color="tab:blue", alpha=0.8)
    lo = min(loss) - 3 * max(err + [0.005])
    ax0.set_xlim(lo, max(loss) + 3 * max(err + [0.005]))
    ax0.invert_yaxis()
    ax0.set_xlabel("validation loss (nats/char), mean +- std over seeds")
    ax0.grid(axis="x", alpha=0.3)
    ms = [summary[n]["ms_per_step"] or 0.0 for n in names]
    ax1.barh(names, ms, color="tab:orange", alpha=0.8)
    ax1.invert_yaxis()
    ax1.set_xlabel("ms per training step (median)")
    ax1.grid(axis="x", alpha=0.3)
    fig.suptitle("Attention variants, char-level Tiny Shakespeare (nanoGPT CPU config)")
    common.save_figure(fig, path)


def write_results(out, args, lm, summary, runs, *, t_start, extrapolation=None) -> None:
    """``results.json``: settings, environment, the summary per variant and every run."""
    T.write_json(
        out / "results.json",
        {
            "experiment": "variants",
            "settings": {
                "variants": args.variants,
                "seeds": args.seeds,
                "steps": lm.steps,
                "extra_flags": args.rest,
                "extrapolation_arms": args.extrapolation_arms,
            },
            "environment": common.environment(),
            "summary": summary,
            "runs": runs,
            "extrapolation": extrapolation,
            "wall_seconds": time.perf_counter() - t_start,
        },
    )


def main(argv=None):
    p = make_parser()
    args = parse_args(argv, p)
    t_start = time.perf_counter()
    first = next(iter(args.runs.values()))
    text = common.read_text(p, first)
    out = common.output_dir(args.out)
    print(
        f"variants {', '.join(args.variants)}; {args.seeds} seed(s); {first.steps} steps",
        file=sys.stderr,
    )
    results, summary = {}, {}
    for variant, lm in args.runs.items():
        runs = []
        for k in range(args.seeds):
            seed = lm.seed + k
            run_out = out / variant / f"seed{seed}"
            done = run_out / "metrics.json"
            if args.resume and done.exists():
                metrics = json.loads(done.read_text())
            else:
                metrics = common.train_char_lm(p, run_args(lm, run_out, seed), text)
            runs.append({
                "seed": seed,
                "val_loss_full": metrics["val_loss_full"],
                "val_loss": metrics["val_loss"],
                "ms_per_step_median": metrics["ms_per_step_median"],
                "num_params": metrics["num_params"],
                "wall_seconds": metrics["wall_seconds"],
            })  # fmt: skip
            print(
                f"{variant} seed {seed}: val loss {metrics['val_loss_full']:.4f}, "
                f"{metrics['ms_per_step_median'] or float('nan'):.1f} ms/step",
                file=sys.stderr,
            )
        config = common.read_config(out / variant / f"seed{lm.seed}" / "config.json")
        summary[variant] = summarize(runs)
        summary[variant]["cache_floats_per_token"] = cache_floats_per_token_per_layer(config)
        summary[variant]["flags"] = VARIANTS[variant]
        results[variant] = runs
        write_results(out, args, first, summary, results, t_start=t_start)
    table = markdown_table(summary, first.steps)
    plot(summary, out / "variants.png")

    extrapolation = None
    if args.extrapolation_arms:
        argv_x = ["--arms", ",".join(args.extrapolation_arms), "--out", str(out / "extrapolation")]
        argv_x += ["--data", args.data, "--download-url", args.download_url]
        argv_x += [*(["--cache-dir", args.cache_dir] if args.cache_dir else [])]
        argv_x += [*(["--steps", str(args.steps)] if args.steps is not None else [])]
        argv_x += [*(["--quick", *QUICK_EXTRAPOLATION] if args.quick else [])]
        argv_x += [*(["--resume"] if args.resume else []), *(["--no-progress"] * args.no_progress)]
        extrapolation = lm_extrapolation.main([*argv_x, *args.rest])
        table += "\nLength extrapolation (train 64, test longer; lm_extrapolation.py):\n\n"
        table += (out / "extrapolation" / "results.md").read_text()
    (out / "results.md").write_text(table)
    write_results(out, args, first, summary, results, t_start=t_start, extrapolation=extrapolation)
    print("\n" + table, file=sys.stderr)
    print(
        f"{(time.perf_counter() - t_start) / 60:.1f} min; wrote {out / 'results.json'}, "
        f"{out / 'results.md'}, {out / 'variants.png'}",
        file=sys.stderr,
    )
    return summary


if __name__ == "__main__":
    main()
