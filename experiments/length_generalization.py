"""Length generalization of positional encodings on synthetic tasks (train short, test long).

After Kazemnejad et al. 2023, "The Impact of Positional Encoding on Length Generalization in
Transformers" (NeurIPS 2023): one small decoder-only Transformer per positional encoding
(arm) and seed is trained on ``<bos> x <sep> y`` examples (``attention_jax.data``'s
``copy``, ``reverse`` or ``sort``; loss on ``y`` only) with content lengths drawn from
U(1, L), then tested at every length 1..2L by greedy decoding with the model's KV cache
and sequence exact match (``exact_match``). Lengths 1..L are in distribution (ID),
L+1..2L out of distribution (OOD). The decoder (:func:`greedy_decode`) gives the tokens of
``attention_jax.generate(..., temperature=0)`` (a test checks it) but compiles once for
every length instead of once per prompt shape.

Arms: ``none`` (NoPE: the causal mask alone carries order), ``sinusoidal`` and
``learned`` (absolute, added to the embeddings), ``rope`` (all dimensions rotated),
``rope_<f>`` (only a fraction ``f`` of each head's dimensions rotated, e.g. ``rope_0.25``),
``alibi`` and ``t5`` (biases on the attention logits). Every model has
``max_len = seq_len(2L)`` so it accepts the longest test sequence; the rows of the learned
position table past the training sequences are never trained, which is what the
experiment exposes.

    python experiments/length_generalization.py --out out/lengthgen_copy           # ~45 min, 2 cores
    python experiments/length_generalization.py --quick --out out/lengthgen_quick  # ~5 min
    python experiments/length_generalization.py --task reverse --seeds 1 --out out/lengthgen_reverse
    python experiments/length_generalization.py --arms none,rope,rope_0.5 --train-length 8 ...

Writes into ``--out``: ``results.json`` (every run and length, rewritten after each run, so
``--resume`` continues an interrupted grid), ``results.md`` (arms x ID/OOD accuracy, mean
+/- std over seeds), ``accuracy_vs_length.png``, and per run ``runs/<arm>_seed<s>/``
(``metrics.jsonl``, ``loss.png``).
"""

import functools
import json
import pathlib
import statistics
import sys
import time

import common  # experiments/common.py, beside this script
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from attention_jax import train as T
from attention_jax.data import SyntheticTask, exact_match
from attention_jax.nn import TransformerLM

DEFAULT_ARMS = ("none", "sinusoidal", "learned", "rope", "rope_{f}", "alibi", "t5")
# Tasks whose answer is produced token by token by the model (mqar and induction interleave
# ungraded query tokens in y, which a decoder would have to be fed).
DECODABLE_TASKS = ("copy", "reverse", "sort")

# `--quick`: one seed, fewer steps and evaluation examples (explicit flags still override).
QUICK = dict(seeds=1, steps=500, eval_size=64)

# Mean OOD exact match (lengths L+1..2L, L = 20) of the 107M-parameter decoder-only models of
# Kazemnejad et al. 2023, from their released results. Their APE is the sinusoidal table.
PUBLISHED = {
    "source": "Kazemnejad et al. 2023, released results; 107M parameters, L = 20",
    "copy": {"none": 0.31, "t5": 0.42, "alibi": 0.33, "rope": 0.01, "sinusoidal": 0.03},
    "reverse": {"none": 0.23, "t5": 0.24, "alibi": 0.17, "rope": 0.08, "sinusoidal": 0.02},
}
PUBLISHED_NAMES = {
    "none": "NoPE",
    "t5": "T5",
    "alibi": "ALiBi",
    "rope": "RoPE",
    "sinusoidal": "APE",
}


def make_parser():
    p = common.make_parser(__doc__)
    p.add_argument("--quick", action="store_true", help="smoke preset: " + str(QUICK))
    p.add_argument("--task", default="copy", choices=DECODABLE_TASKS)
    p.add_argument(
        "--arms",
        default=None,
        help="comma-separated arms (default: "
        + ",".join(DEFAULT_ARMS).replace("{f}", "<rope-fraction>")
        + "); rope_<f> rotates a fraction f of each head",
    )
    p.add_argument(
        "--rope-fraction",
        type=float,
        default=0.25,
        help="fraction of the partial-RoPE arm in the default arms",
    )
    p.add_argument("--seeds", type=int, default=3, help="seeds per arm (0, 1, ...)")
    p.add_argument("--train-length", type=int, default=16, help="L: train on U(1, L)")
    p.add_argument("--test-length", type=int, default=None, help="test 1..this (default 2L)")
    p.add_argument("--symbols", type=int, default=16, help="content symbols")
    common.add_model_flags(p, layers=2, d_model=64, heads=4, positional=None, norm=False)
    common.add_optimizer_flags(p, steps=2000, batch=64, lr=3e-3, warmup=100, weight_decay=0.01)
    g = common.add_run_flags(p, out="out/lengthgen")
    g.add_argument("--eval-size", type=int, default=256, help="test examples per length")
    g.add_argument("--eval-seed", type=int, default=1234, help="key of the test examples")
    g.add_argument("--resume", action="store_true", help="skip runs already in results.json")
    return p


def parse_args(argv=None, p=None):
    """The checked flags; a bad one ends in ``p.error`` (exit status 2) before anything
    is trained."""
    p = p or make_parser()
    args = common.parse_with_preset(p, argv, flag="quick", preset=QUICK)
    common.check_flags(p, args)
    common.check_int(p, args, "train_length", 1)
    common.check_int(p, args, "symbols", 2)
    if not 0 < args.rope_fraction <= 1:
        p.error(f"--rope-fraction must be a number in (0, 1], got {args.rope_fraction}")
    if args.test_length is None:
        args.test_length = 2 * args.train_length
    if args.test_length < args.train_length:
        p.error(
            f"--test-length must be >= --train-length {args.train_length}, got {args.test_length}"
        )
    if args.arms is None:
        args.arms = ",".join(DEFAULT_ARMS).replace("{f}", f"{args.rope_fraction:g}")
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if not args.arms:
        p.error("--arms must name at least one arm")
    task = SyntheticTask(args.task, num_symbols=args.symbols)
    for arm in args.arms:  # a bad name or model fails before training anything
        try:
            arm_config(args, task, *arm_positional(arm))
        except ValueError as e:
            p.error(f"--arms {arm}: {e}")
    return args


def arm_config(args, task, positional: str, fraction: float):
    """The model of one arm: ``max_len = seq_len(test length)``, so it reads every test."""
    return common.model_config(
        args,
        vocab_size=task.vocab_size,
        max_len=task.seq_len(args.test_length),
        positional=positional,
        rope_fraction=fraction,
    )


def arm_positional(arm: str) -> tuple[str, float]:
    """``(positional, rope_fraction)`` of an arm name such as ``"alibi"`` or ``"rope_0.25"``.

    Raises:
      ValueError: an unknown arm, or a rope fraction outside ``(0, 1]``.
    """
    if arm.startswith("rope_"):
        try:
            fraction = float(arm[len("rope_") :])
        except ValueError:
            fraction = None
        if fraction is None or not 0 < fraction <= 1:
            raise ValueError(f"bad arm {arm!r}: rope_<f> needs a fraction f in (0, 1]")
        return "rope", fraction
    if arm not in ("none", "sinusoidal", "learned", "rope", "alibi", "t5"):
        raise ValueError(
            f"unknown arm {arm!r}: none, sinusoidal, learned, rope, rope_<f>, alibi or t5"
        )
    return arm, 1.0


@functools.partial(jax.jit, static_argnames=("graphdef",))
def greedy_decode(graphdef, state, tokens, prompt_len, total_len):
    """Greedy decoding with the KV cache, one compilation for every prompt length.

    ``tokens [B, S]`` holds the prompts in ``[:, :prompt_len]`` (the rest is overwritten).
    The tokens go through the model's cached decode one at a time from position 0: the
    prompt is fed as given (a token-by-token prefill) and from ``prompt_len`` on each
    position receives the argmax of the previous step, up to ``total_len`` tokens.
    ``prompt_len`` and ``total_len`` are traced scalars, so the test lengths share one
    compiled loop (``attention_jax.generate`` compiles once per prompt shape).

    Returns:
      ``[B, S]``: the prompts followed by the greedy continuation in ``[prompt_len,
      total_len)``.
    """
    model = nnx.merge(graphdef, state)
    cache = model.init_cache(tokens.shape[0], tokens.shape[1])

    def body(t, carry):
        tokens, cache = carry
        logits, cache = model(lax.dynamic_slice_in_dim(tokens, t, 1, axis=1), cache=cache)
        pred = jnp.argmax(logits[:, 0], axis=-1).astype(tokens.dtype)
        given = lax.dynamic_index_in_dim(tokens, t + 1, axis=1, keepdims=False)
        token = jnp.where(t + 1 < prompt_len, given, pred)
        return lax.dynamic_update_slice_in_dim(tokens, token[:, None], t + 1, axis=1), cache

    return lax.fori_loop(0, total_len - 1, body, (tokens, cache))[0]


def make_test_sets(task: SyntheticTask, args) -> dict:
    """``{n: (buffer [B, max_len] with the prompts, EvalBatch)}`` for n = 1..test length,
    drawn from ``--eval-seed`` alone (the same examples for every arm and seed)."""
    k_eval = jax.random.key(args.eval_seed)
    width = task.seq_len(args.test_length)
    sets = {}
    for n in range(1, args.test_length + 1):
        ex = task.sample_eval(jax.random.fold_in(k_eval, n), batch_size=args.eval_size, length=n)
        buffer = jnp.zeros((args.eval_size, width), jnp.int32)
        buffer = buffer.at[:, : ex.prompt.shape[1]].set(ex.prompt)
        sets[n] = (buffer, ex)
    return sets


def run_one(args, task: SyntheticTask, test_sets: dict, arm: str, seed: int, out) -> dict:
    """Trains one model and evaluates it at every test length; returns its results record."""
    t0 = time.perf_counter()
    positional, fraction = arm_positional(arm)
    config = arm_config(args, task, positional, fraction)
    # The data stream depends on the seed only: every arm of a seed sees the same batches.
    k_init, k_data = jax.random.split(jax.random.key(seed))
    model = TransformerLM(config, rngs=nnx.Rngs(k_init))
    num_params = T.count_params(model)
    optimizer, schedule = common.make_optimizer(model, args, end_lr=args.lr / 10)
    batch_fn = common.task_batches(
        task, k_data, batch_size=args.batch, max_length=args.train_length
    )

    run_dir = out / "runs" / f"{arm}_seed{seed}"
    result = T.train(
        model,
        optimizer,
        batch_fn,
        steps=args.steps,
        log_interval=50,
        log_dir=str(run_dir),
        lr_schedule=schedule,
        progress=not args.no_progress,
        desc=f"{arm} seed {seed}",
    )
    train_seconds = time.perf_counter() - t0

    # Greedy decoding with the KV cache; the same test examples for every arm and seed.
    t_eval = time.perf_counter()
    graphdef, state = nnx.split(model)
    per_length = {}
    for n, (buffer, ex) in test_sets.items():
        p_len, a_len = ex.prompt.shape[1], ex.answer.shape[1]
        decoded = greedy_decode(graphdef, state, buffer, p_len, p_len + a_len)
        correct = exact_match(decoded[:, p_len : p_len + a_len], ex.answer, ex.answer_mask)
        per_length[str(n)] = float(jnp.mean(correct))
    eval_seconds = time.perf_counter() - t_eval
    L = args.train_length
    acc = [per_length[str(n)] for n in range(1, args.test_length + 1)]
    record = {
        "arm": arm,
        "positional": positional,
        "rope_fraction": fraction if positional == "rope" else None,
        "seed": seed,
        "task": args.task,
        "train_length": L,
        "test_length": args.test_length,
        "per_length_accuracy": per_length,
        "id_accuracy": float(np.mean(acc[:L])),
        "ood_accuracy": float(np.mean(acc[L:])) if args.test_length > L else None,
        "final_loss": result.last("train/loss"),
        "steps": args.steps,
        "batch": args.batch,
        "num_params": num_params,
        "ms_per_step_median": result.median_step_ms,
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "seconds": time.perf_counter() - t0,
    }
    return record


def _mean_std(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarize(runs: list[dict], arms: list[str]) -> dict:
    """Per arm: mean and std over seeds of ID and OOD accuracy, and of each length."""
    summary = {}
    for arm in arms:
        rs = [r for r in runs if r["arm"] == arm]
        if not rs:
            continue
        lengths = sorted({int(n) for r in rs for n in r["per_length_accuracy"]})
        id_mean, id_std = _mean_std([r["id_accuracy"] for r in rs])
        ood_mean, ood_std = _mean_std([r["ood_accuracy"] for r in rs])
        per_length = {
            str(n): _mean_std([r["per_length_accuracy"].get(str(n)) for r in rs]) for n in lengths
        }
        summary[arm] = {
            "seeds": sorted(r["seed"] for r in rs),
            "id_accuracy_mean": id_mean,
            "id_accuracy_std": id_std,
            "ood_accuracy_mean": ood_mean,
            "ood_accuracy_std": ood_std,
            "per_length_mean": {n: m for n, (m, _) in per_length.items()},
            "per_length_std": {n: s for n, (_, s) in per_length.items()},
        }
    return summary


def markdown_table(summary: dict, task: str, train_length: int, test_length: int) -> str:
    published = PUBLISHED.get(task, {})
    lines = [
        f"Task `{task}`, trained on lengths U(1, {train_length}), tested on 1..{test_length}; "
        "sequence exact match with greedy decoding, mean +/- std over seeds.",
        "",
        f"| arm | seeds | ID accuracy (1..{train_length}) | OOD accuracy "
        f"({train_length + 1}..{test_length}) | published OOD (L = 20) |",
        "|---|---|---|---|---|",
    ]

    def pct(m, s):
        return "n/a" if m is None else f"{100 * m:.1f} +/- {100 * s:.1f}%"

    for arm, s in summary.items():
        pub = published.get(arm) if arm in PUBLISHED_NAMES else None
        pub_txt = "" if pub is None else f"{pub:.2f} ({PUBLISHED_NAMES[arm]})"
        lines.append(
            f"| {arm} | {len(s['seeds'])} | {pct(s['id_accuracy_mean'], s['id_accuracy_std'])} "
            f"| {pct(s['ood_accuracy_mean'], s['ood_accuracy_std'])} | {pub_txt} |"
        )
    if published:
        lines += ["", f"Published: {PUBLISHED['source']} (their APE is sinusoidal)."]
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: pathlib.Path, *, task: str, train_length: int) -> None:
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for arm, s in summary.items():
        ns = sorted(int(n) for n in s["per_length_mean"])
        m = np.array([s["per_length_mean"][str(n)] for n in ns])
        sd = np.array([s["per_length_std"][str(n)] for n in ns])
        (line,) = ax.plot(ns, m, marker="o", ms=2.5, lw=1.5, label=f"{arm} ({len(s['seeds'])})")
        ax.fill_between(ns, np.clip(m - sd, 0, 1), np.clip(m + sd, 0, 1), alpha=0.15, lw=0,
                        color=line.get_color())  # fmt: skip
    ax.axvline(train_length + 0.5, color="k", ls="--", lw=1)
    ax.text(train_length + 0.7, 0.02, f"train length L = {train_length}", fontsize=8)
    ax.set_xlabel("test length n")
    ax.set_ylabel("exact-match accuracy")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(f"{task}: accuracy vs length, mean +/- std over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="arm (seeds)")
    common.save_figure(fig, path)


def main(argv=None):
    args = parse_args(argv)
    t_start = time.perf_counter()
    out = common.output_dir(args.out)
    task = SyntheticTask(args.task, num_symbols=args.symbols)
    results_path = out / "results.json"

    settings = {k: v for k, v in vars(args).items() if k not in ("out", "resume", "no_progress")}
    runs: list[dict] = []
    if args.resume and results_path.exists():
        old = json.loads(results_path.read_text())
        same = ("task", "train_length", "test_length", "steps", "batch", "symbols", "lr")
        runs = [
            r
            for r in old.get("runs", [])
            if all(old["settings"].get(k) == settings[k] for k in same)
            and r["arm"] in args.arms
            and r["seed"] < args.seeds
        ]
    done = {(r["arm"], r["seed"]) for r in runs}
    test_sets = make_test_sets(task, args)
    print(
        f"{args.task}: train lengths U(1, {args.train_length}), test 1..{args.test_length} "
        f"(sequences up to {task.seq_len(args.test_length)} tokens); arms {', '.join(args.arms)}; "
        f"{args.seeds} seed(s); {args.steps} steps of {args.batch}"
        + (f"; {len(done)} run(s) already done" if done else ""),
        file=sys.stderr,
    )

    def write():
        summary = summarize(runs, args.arms)
        T.write_json(
            results_path,
            {
                "experiment": "length_generalization",
                "settings": settings,
                "published_ood_accuracy": PUBLISHED,
                "environment": common.environment(),
                "wall_seconds": time.perf_counter() - t_start,
                "runs": runs,
                "summary": summary,
            },
        )
        return summary

    for seed in range(args.seeds):
        for arm in args.arms:
            if (arm, seed) in done:
                continue
            r = run_one(args, task, test_sets, arm, seed, out)
            runs.append(r)
            write()
            ood = "" if r["ood_accuracy"] is None else f", OOD {100 * r['ood_accuracy']:.1f}%"
            print(
                f"{arm} seed {seed}: ID {100 * r['id_accuracy']:.1f}%{ood} ({r['seconds']:.0f} s)",
                file=sys.stderr,
            )

    summary = write()
    table = markdown_table(summary, args.task, args.train_length, args.test_length)
    (out / "results.md").write_text(table)
    plot(summary, out / "accuracy_vs_length.png", task=args.task, train_length=args.train_length)
    wall = time.perf_counter() - t_start
    print("\n" + table, file=sys.stderr)
    print(
        f"{len(runs)} runs; {wall / 60:.1f} min; wrote {results_path}, {out / 'results.md'}, "
        f"{out / 'accuracy_vs_length.png'}",
        file=sys.stderr,
    )
    return {"runs": runs, "summary": summary}


if __name__ == "__main__":
    main()
