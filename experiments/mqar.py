"""Zoology's multi-query associative recall (MQAR) at CPU scale: attention vs linear mixers.

After Arora et al. 2023, "Zoology: Measuring and Improving Recall in Efficient Language
Models", Figure 2: for each sequence length (with its number of key-value pairs: 64/4,
128/8, 256/16), model width and mixer, a 2-layer model without MLPs (Zoology's setting) is
trained on freshly drawn MQAR batches (``attention_jax.data.mqar.multiquery_ar``, power-law
query gaps with ``power_a = 0.01``) and scored by the accuracy of its argmax at the query
positions of held-out sequences; the best of the learning rates counts. Mixers: softmax
attention (RoPE), and the linear family of ``attention_jax.linear`` through
``TransformerConfig(attention=...)``: ``linear`` (elu+1), ``based`` (Taylor), ``gla``,
``deltanet``, ``gated_deltanet`` (the delta-rule mixers with their short convolution). Heads
have ``--head-dim`` (16) dimensions, so a linear mixer's state grows with ``d_model``.

    python experiments/mqar.py --out out/mqar                   # the grid
    python experiments/mqar.py --quick --out out/mqar_quick     # seq 64, 4 pairs, d 64, 1 lr

Writes into ``--out``: ``results.json`` (every run), ``results.md`` (best accuracy per cell)
and ``mqar.png`` (accuracy vs d_model, one panel per sequence length, one line per mixer, as
Zoology's Figure 2).
"""

import sys
import time

import common  # experiments/common.py, beside this script
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from attention_jax import train as T
from attention_jax.data.mqar import multiquery_ar
from attention_jax.nn import TransformerConfig, TransformerLM

MIXERS = ("softmax", "linear", "based", "gla", "deltanet", "gated_deltanet")
CONV = {"deltanet": 4, "gated_deltanet": 4}  # the short convolution of their papers
GRID = dict(seq_lens=(64, 128, 256), d_models=(32, 64, 128), lrs=(1e-3, 3e-3, 1e-2))
QUICK = dict(seq_lens=(64,), d_models=(64,), lrs=(3e-3,))
QUICK_STEPS = 200


def make_parser():
    p = common.make_parser(__doc__)
    p.add_argument("--quick", action="store_true", help="smoke preset: " + str(QUICK))
    p.add_argument("--mixers", default=",".join(MIXERS), help="comma-separated mixers")
    p.add_argument("--seq-lens", default=None, help="comma-separated (pairs = seq_len / 16)")
    p.add_argument("--d-models", default=None, help="comma-separated widths")
    p.add_argument("--lrs", default=None, help="comma-separated peak learning rates")
    p.add_argument("--head-dim", type=int, default=16)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=512, help="Zoology: 8192")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--eval-size", type=int, default=512)
    common.add_run_flags(p, out="out/mqar", seed=0)
    return p


def _list(p, text, default, cast, flag):
    if text is None:
        return tuple(default)
    try:
        values = tuple(cast(x) for x in text.split(",") if x.strip())
    except ValueError:
        p.error(f"{flag} must be comma-separated numbers, got {text!r}")
    if not values or min(values) <= 0:
        p.error(f"{flag} must be positive, got {text!r}")
    return values


def parse_args(argv=None, p=None):
    p = p or make_parser()
    args = p.parse_args(argv)
    if args.quick:  # fewer steps too, unless given
        p.set_defaults(steps=QUICK_STEPS)
        args = p.parse_args(argv)
    grid = QUICK if args.quick else GRID
    args.mixers = [m.strip() for m in args.mixers.split(",") if m.strip()]
    bad = [m for m in args.mixers if m not in MIXERS]
    if bad or not args.mixers:
        p.error(f"unknown mixer(s) {bad or args.mixers}; choose from {MIXERS}")
    args.seq_lens = _list(p, args.seq_lens, grid["seq_lens"], int, "--seq-lens")
    args.d_models = _list(p, args.d_models, grid["d_models"], int, "--d-models")
    args.lrs = _list(p, args.lrs, grid["lrs"], float, "--lrs")
    for name in ("head_dim", "layers", "vocab", "steps", "batch", "eval_size"):
        common.check_int(p, args, name, 1)
    common.check_int(p, args, "warmup", 0)
    for n in args.seq_lens:
        if n % 16 or n >= args.vocab:
            p.error(f"--seq-lens {n}: must be a multiple of 16 (pairs = n / 16) below --vocab")
    for d in args.d_models:
        if d % args.head_dim:
            p.error(f"--d-models {d}: must be a multiple of --head-dim {args.head_dim}")
    return args


def model_config(mixer: str, *, d_model: int, seq_len: int, args) -> TransformerConfig:
    return TransformerConfig(
        vocab_size=args.vocab,
        d_model=d_model,
        num_layers=args.layers,
        num_heads=d_model // args.head_dim,
        max_len=seq_len,
        mlp="none",
        norm="rmsnorm",
        positional="rope" if mixer == "softmax" else "none",
        attention=mixer,
        conv_size=CONV.get(mixer),
    )


def run(mixer, *, seq_len, d_model, lr, args, key):
    pairs = seq_len // 16
    config = model_config(mixer, d_model=d_model, seq_len=seq_len, args=args)
    k_init, k_data, k_eval = jax.random.split(key, 3)
    model = TransformerLM(config, rngs=nnx.Rngs(k_init))
    warmup = min(args.warmup, args.steps - 1)  # short smoke runs: the cosine needs a step
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, args.steps, lr / 10)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.1))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    sizes = dict(seq_len=seq_len, num_kv_pairs=pairs, vocab_size=args.vocab)

    def batch_fn(step, data):
        del data
        return multiquery_ar(jax.random.fold_in(k_data, step), batch_size=args.batch, **sizes)

    heldout = multiquery_ar(k_eval, batch_size=args.eval_size, **sizes)

    @nnx.jit
    def accuracy(model, batch):
        pred = jnp.argmax(model(batch.inputs), axis=-1)
        return jnp.sum((pred == batch.targets) & batch.loss_mask) / jnp.sum(batch.loss_mask)

    result = T.train(
        model,
        optimizer,
        batch_fn,
        steps=args.steps,
        log_interval=max(args.steps // 10, 1),
        progress=not args.no_progress,
        desc=f"{mixer} L{seq_len} d{d_model} lr{lr:g}",
    )
    return {
        "mixer": mixer,
        "seq_len": seq_len,
        "num_kv_pairs": pairs,
        "d_model": d_model,
        "lr": lr,
        "accuracy": float(accuracy(model, heldout)),
        "final_loss": result.last("train/loss"),
        "num_params": T.count_params(model),
        "ms_per_step_median": result.median_step_ms,
    }


def best_table(runs: list[dict], args) -> tuple[dict, str]:
    best = {}
    for r in runs:
        cell = (r["mixer"], r["seq_len"], r["d_model"])
        if cell not in best or r["accuracy"] > best[cell]["accuracy"]:
            best[cell] = r
    head = " | ".join(f"L{n} d{d}" for n in args.seq_lens for d in args.d_models)
    lines = [
        "MQAR accuracy at the query positions (best learning rate), per sequence length L "
        "(L/16 key-value pairs) and d_model.",
        "",
        f"| mixer | {head} |",
        "|---|" + "---|" * (len(args.seq_lens) * len(args.d_models)),
    ]
    for m in args.mixers:
        cells = [
            f"{best[(m, n, d)]['accuracy']:.3f}" if (m, n, d) in best else "-"
            for n in args.seq_lens
            for d in args.d_models
        ]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return best, "\n".join(lines) + "\n"


def plot(best: dict, args, path) -> None:
    plt = common.pyplot()
    fig, axes = plt.subplots(
        1, len(args.seq_lens), figsize=(4.2 * len(args.seq_lens), 3.6), squeeze=False
    )
    for ax, n in zip(axes[0], args.seq_lens, strict=True):
        for m in args.mixers:
            pts = [(d, best[(m, n, d)]["accuracy"]) for d in args.d_models if (m, n, d) in best]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=m)
        ax.set_xscale("log", base=2)
        ax.set_xticks(args.d_models, [str(d) for d in args.d_models])
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"sequence length {n}, {n // 16} pairs")
        ax.set_xlabel("model dimension")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("MQAR accuracy")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle("Multi-query associative recall (after Zoology, Fig. 2)")
    common.save_figure(fig, path)


def main(argv=None):
    p = make_parser()
    args = parse_args(argv, p)
    t_start = time.perf_counter()
    out = common.output_dir(args.out)
    runs = []
    key = jax.random.key(args.seed)
    for n in args.seq_lens:
        for d in args.d_models:
            for m in args.mixers:
                for lr in args.lrs:
                    r = run(m, seq_len=n, d_model=d, lr=lr, args=args, key=key)
                    runs.append(r)
                    print(
                        f"{m} L{n} d{d} lr {lr:g}: accuracy {r['accuracy']:.3f} "
                        f"({r['num_params']:,} parameters)",
                        file=sys.stderr,
                    )
                    T.write_json(
                        out / "results.json",
                        {
                            "experiment": "mqar",
                            "settings": {k: v for k, v in vars(args).items() if k != "out"},
                            "environment": common.environment(),
                            "runs": runs,
                            "wall_seconds": time.perf_counter() - t_start,
                        },
                    )
    best, table = best_table(runs, args)
    (out / "results.md").write_text(table)
    plot(best, args, out / "mqar.png")
    print("\n" + table, file=sys.stderr)
    print(
        f"{(time.perf_counter() - t_start) / 60:.1f} min; wrote {out / 'results.json'}, "
        f"{out / 'results.md'}, {out / 'mqar.png'}",
        file=sys.stderr,
    )
    return runs


if __name__ == "__main__":
    main()
