"""Date translation with attention: Bahdanau's RNNsearch beside a Transformer.

The task of the attention tutorials (``attention_jax.data.dates``): human-written dates
("3rd of March 1999", "Tue, Mar 3, 1999", "03.03.99", ... 14 formats) to ``1999-03-03``,
character by character. A training set and a held-out set of dates disjoint from it are
drawn with fixed seeds (``--seed`` and ``--seed + 1``); the held-out set holds only dates
that never occur in training, in every format.

Two models, both trained with teacher forcing (cross-entropy of ``tgt[:, 1:]`` given
``tgt[:, :-1]``, AdamW with warmup and cosine decay, gradients clipped to norm 1) and scored
by greedy decoding, exact match of the whole ``YYYY-MM-DD<eos>`` on the held-out dates:

* ``seq2seq``: :class:`attention_jax.nn.Seq2SeqAttention` (RNNsearch, Bahdanau et al. 2014:
  bi-GRU encoder, GRU decoder with additive attention), decoded by its ``decode`` (one
  ``lax.scan``). Its alignments are the picture of the paper's Fig. 3.
* ``transformer``: :class:`attention_jax.nn.EncoderDecoder` (``--layers`` encoder and decoder
  blocks each; source and target share one vocabulary, the target characters being source
  characters), decoded by ``attention_jax.nn.generate`` (KV cache, one compiled loop); its
  "alignments" are the cross-attention weights of each decoder layer, averaged over heads.

Alignment, quantified: the year of a source is found where its format puts it (the 4-digit
year, or the last 2-digit number for the ``yy`` formats); the *year alignment mass* is the
fraction of the attention of the 4 output year digits that lies on those source characters,
averaged over the digits and the held-out examples (1.0: the year digits look only at the
year; ``results.json`` also gives what attention spread uniformly over the source would
score, ``data.uniform_year_mass``).

With the defaults (600 steps of 64 pairs from 20,000, 2,000 held-out dates, seed 0)
RNNsearch passes 99% held-out exact match by step 300 and ends at 100% (seed 2: 99.95%),
the Transformer at 99.6%; the whole run takes about 4.5 minutes on 2 CPU cores.

    python experiments/date_translation.py --out out/date_translation           # full run
    python experiments/date_translation.py --quick --out out/date_translation_quick
    python experiments/date_translation.py --models seq2seq --steps 1000 --out out/dates_s2s

Writes into ``--out``: ``results.json`` (settings, environment, per model: exact match
overall and per format, year alignment mass overall and per format, parameters, training
time, ms/step, histories, example predictions), ``loss.png`` (training loss and held-out
exact match during training) and, for the models that ran, ``alignments.png`` (RNNsearch
alignments of held-out examples in different formats) and ``alignments_transformer.png``
(the Transformer's last-layer cross-attention on the same examples).
"""

import sys
import time

import common  # experiments/common.py, beside this script
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from attention_jax import train as T
from attention_jax.data.dates import (
    BOS,
    DATE_FORMATS,
    EOS,
    NUM_SPECIAL_TOKENS,
    PAD,
    SOURCE_CHARS,
    SOURCE_VOCAB_SIZE,
    TARGET_CHARS,
    TARGET_LENGTH,
    TARGET_VOCAB_SIZE,
    date_pairs,
    decode_target,
    encode_dates,
)
from attention_jax.nn import EncoderDecoder, Seq2SeqAttention, generate

MODELS = ("seq2seq", "transformer")
NUM_DAYS = 36525  # 1950-01-01 .. 2049-12-31, the dates date_pairs draws from
OUTPUT_LENGTH = TARGET_LENGTH + 1  # YYYY-MM-DD <eos>
YEAR_DIGITS = 4  # output positions 0..3
# Formats shown in the alignment figures, in this order (those present in the held-out set).
SHOWN_FORMATS = (
    "nth_of_month_year",
    "dy_mon_d_year",
    "dd.mm.yy",
    "yyyy/mm/dd",
    "the_nth_lower",
    "d_mon_yy",
)
QUICK = dict(
    train_size=2000, eval_size=300, steps=150, transformer_steps=150, batch=32, eval_interval=75
)

# Target ids -> ids of the same characters in the source vocabulary (the Transformer's one
# shared vocabulary), and back (source characters that are no target character -> PAD).
TGT_TO_SRC = np.array(
    [PAD, BOS, EOS] + [NUM_SPECIAL_TOKENS + SOURCE_CHARS.index(c) for c in TARGET_CHARS],
    np.int32,
)
SRC_TO_TGT = np.zeros(SOURCE_VOCAB_SIZE, np.int32)
SRC_TO_TGT[TGT_TO_SRC] = np.arange(TARGET_VOCAB_SIZE)


def make_parser():
    p = common.make_parser(__doc__)
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke preset: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()),
    )
    p.add_argument(
        "--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}"
    )
    g = p.add_argument_group("data")
    g.add_argument("--train-size", type=int, default=20000, help="training pairs")
    g.add_argument("--eval-size", type=int, default=2000, help="held-out pairs (unseen dates)")
    g = p.add_argument_group("seq2seq (RNNsearch)")
    g.add_argument("--embed-dim", type=int, default=32, help="character embedding width")
    g.add_argument("--hidden-dim", type=int, default=64, help="GRU width")
    g.add_argument(
        "--attention-dim", type=int, default=None, help="alignment model width (default: GRU's)"
    )
    common.add_model_flags(p, layers=2, d_model=64, heads=4, positional="rope", norm=False)
    g = common.add_optimizer_flags(p, steps=600, batch=64, lr=3e-3, warmup=100, weight_decay=0.0)
    g.add_argument(
        "--transformer-steps", type=int, default=None, help="Transformer steps (default --steps)"
    )
    g.add_argument("--transformer-lr", type=float, default=3e-3, help="Transformer peak lr")
    g = common.add_run_flags(p, out="out/date_translation", seed=0)
    g.add_argument(
        "--eval-interval", type=int, default=100, help="steps between held-out evaluations"
    )
    g.add_argument("--show", type=int, default=8, help="held-out predictions printed per model")
    return p


def parse_args(argv=None, p=None):
    """The checked flags; a bad one ends in ``p.error`` (exit status 2)."""
    p = p or make_parser()
    args = common.parse_with_preset(p, argv, flag="quick", preset=QUICK)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in names if m not in MODELS]
    if bad or not names:
        p.error(f"--models: unknown model(s) {bad or names}; choose from {MODELS}")
    args.models = [m for m in MODELS if m in names]
    common.check_flags(p, args)
    for name in ("train_size", "embed_dim", "hidden_dim", "attention_dim", "transformer_steps"):
        common.check_int(p, args, name, 1)
    common.check_int(p, args, "show", 0)
    common.check_number(p, args, "transformer_lr", open_low=True)
    if args.train_size + args.eval_size > NUM_DAYS:
        p.error(
            f"--train-size {args.train_size} plus --eval-size {args.eval_size} must be at most "
            f"{NUM_DAYS} (the days of 1950-2049: held-out dates are unseen ones)"
        )
    if args.transformer_steps is None:
        args.transformer_steps = args.steps
    if "transformer" in args.models:  # the model flags make a valid config (any max_len)
        transformer_config(args, max_len=32, parser=p)
    return args


def transformer_config(args, *, max_len: int, parser=None):
    return common.model_config(
        args, parser=parser, vocab_size=SOURCE_VOCAB_SIZE, max_len=max_len, dropout=0.0
    )


# ----------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------


def year_span(source: str, target: str, fmt: str) -> tuple[int, int]:
    """``(start, stop)`` of the year in ``source``: the 4-digit year (the only 4-digit run of
    a source), or for the ``yy`` formats the last occurrence of the 2-digit year (the year
    ends each of them)."""
    template = DATE_FORMATS[fmt].partition("|")[0]
    if "{yyyy}" in template:
        start = source.find(target[:4])
        return start, start + 4
    start = source.rfind(target[2:4])
    return start, start + 2


def make_data(args) -> dict:
    """Training and held-out pairs (disjoint dates), their ids and the held-out year masks."""
    train = date_pairs(args.train_size, seed=args.seed)
    heldout = date_pairs(args.eval_size, seed=args.seed + 1, exclude=set(train.targets))
    source_length = max(len(s) for s in train.sources + heldout.sources)
    src, lengths, tgt = encode_dates(train, source_length=source_length)
    h_src, h_lengths, h_tgt = encode_dates(heldout, source_length=source_length)
    year = np.zeros(h_src.shape, bool)
    fields = zip(heldout.sources, heldout.targets, heldout.formats, strict=True)
    for i, (source, target, fmt) in enumerate(fields):
        start, stop = year_span(source, target, fmt)
        year[i, start:stop] = True
    return {
        "train": {"src": src, "src_lengths": lengths, "tgt": tgt},
        "heldout": {"src": h_src, "src_lengths": h_lengths, "tgt": h_tgt},
        "heldout_pairs": heldout,
        "year_mask": year,
        "uniform_year_mass": float(np.mean(year.sum(axis=1) / h_lengths)),
        "source_length": source_length,
        "train_unique_dates": len(set(train.targets)),
    }


def sample_batches(key, batch_size: int):
    """``batch_fn(step, data)``: ``batch_size`` training pairs drawn uniformly (with
    replacement) with ``fold_in(key, step)``."""

    def batch_fn(step, data):
        n = data["src"].shape[0]
        idx = jax.random.randint(jax.random.fold_in(key, step), (batch_size,), 0, n)
        return jax.tree.map(lambda x: x[idx], data)

    return batch_fn


# ----------------------------------------------------------------------------------------
# Models: loss and greedy prediction
# ----------------------------------------------------------------------------------------


def seq2seq_loss(model, batch, rng=None):
    del rng
    tgt = batch["tgt"]
    logits = model(batch["src"], tgt[:, :-1], batch["src_lengths"])
    loss, n = T.cross_entropy(logits, tgt[:, 1:])
    return loss, {"tokens": n}


def transformer_loss(model, batch, rng=None):
    del rng
    tgt = jnp.asarray(TGT_TO_SRC)[batch["tgt"]]
    logits = model(batch["src"], tgt[:, :-1], src_lengths=batch["src_lengths"])
    loss, n = T.cross_entropy(logits, tgt[:, 1:])
    return loss, {"tokens": n}


@nnx.jit
def seq2seq_decode(model, src, src_lengths):
    """Greedy ``tokens [B, 11]`` (target ids) and alignments ``[B, 1, 11, S]``."""
    tokens, alignments = model.decode(
        src, max_len=OUTPUT_LENGTH, bos_id=BOS, eos_id=EOS, src_lengths=src_lengths
    )
    return tokens, alignments[:, None]


@nnx.jit
def transformer_alignments(model, src, src_lengths, tokens):
    """Cross-attention weights ``[B, L, 11, S]`` (mean over heads) of the decoder reading
    ``<bos> tokens[:, :-1]`` (source ids): what produced each of ``tokens``."""
    tgt_in = jnp.concatenate([jnp.full_like(tokens[:, :1], BOS), tokens[:, :-1]], axis=1)
    _, inter = nnx.capture(model, nnx.Intermediate)(
        src, tgt_in, src_lengths=src_lengths, sow_weights=True
    )
    blocks = inter["decoder"]["blocks"]
    weights = [
        blocks[i]["cross_attention"]["attention_weights"].get_value()[0]
        for i in range(len(model.decoder.blocks))
    ]
    return jnp.stack([w.mean(axis=1) for w in weights], axis=1)


def predict(name: str, model, heldout: dict, *, alignments: bool):
    """Greedy decoding of the held-out sources: ``(tokens [B, 11] target ids, alignments
    [B, L, 11, S] or None)``."""
    src, lengths = jnp.asarray(heldout["src"]), jnp.asarray(heldout["src_lengths"])
    if name == "seq2seq":
        tokens, align = seq2seq_decode(model, src, lengths)
        return np.asarray(tokens), (np.asarray(align) if alignments else None)
    prompt = jnp.full((src.shape[0], 1), BOS, jnp.int32)
    out = generate(
        model,
        prompt,
        OUTPUT_LENGTH,
        temperature=0.0,
        eos_id=EOS,
        src_tokens=src,
        src_lengths=lengths,
    )[:, 1:]
    align = transformer_alignments(model, src, lengths, out) if alignments else None
    return SRC_TO_TGT[np.asarray(out)], (None if align is None else np.asarray(align))


def exact_match(tokens, tgt) -> np.ndarray:
    """``[B]`` bool: the 11 decoded tokens equal ``YYYY-MM-DD<eos>``."""
    return np.all(tokens == tgt[:, 1:], axis=1)


def year_mass(alignments, year_mask) -> np.ndarray:
    """``[B, L]``: the fraction of the attention of the output year digits on the source
    year, averaged over the 4 digits."""
    on_year = np.sum(alignments[:, :, :YEAR_DIGITS] * year_mask[:, None, None, :], axis=-1)
    return on_year.mean(axis=-1)


def by_format(values, formats) -> dict:
    formats = np.asarray(formats)
    return {f: float(np.mean(values[formats == f])) for f in DATE_FORMATS if np.any(formats == f)}


# ----------------------------------------------------------------------------------------
# One model: train, evaluate
# ----------------------------------------------------------------------------------------


def build(name: str, args, data, key):
    rngs = nnx.Rngs(key)
    if name == "seq2seq":
        model = Seq2SeqAttention(
            SOURCE_VOCAB_SIZE,
            TARGET_VOCAB_SIZE,
            args.embed_dim,
            args.hidden_dim,
            attention_dim=args.attention_dim,
            rngs=rngs,
        )
        return model, seq2seq_loss, args.steps, args.lr
    config = transformer_config(args, max_len=max(data["source_length"], OUTPUT_LENGTH + 1))
    model = EncoderDecoder(config, rngs=rngs)
    return model, transformer_loss, args.transformer_steps, args.transformer_lr


def run_model(name: str, args, data, key) -> tuple[dict, np.ndarray, np.ndarray]:
    """Trains and evaluates model ``name``; returns ``(result, tokens, alignments)`` (the
    held-out predictions)."""
    k_init, k_data = jax.random.split(key)
    model, loss_fn, steps, lr = build(name, args, data, k_init)
    num_params = T.count_params(model)
    tx = T.make_optimizer(
        lr,
        warmup_steps=min(args.warmup, steps - 1),
        decay_steps=steps,
        end_lr=lr / 10,
        weight_decay=args.weight_decay,
    )
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    heldout, tgt = data["heldout"], data["heldout"]["tgt"]

    def eval_fn(model, step):
        tokens, _ = predict(name, model, heldout, alignments=False)
        return {"eval/exact_match": float(np.mean(exact_match(tokens, tgt)))}

    print(f"{name}: {num_params:,} parameters, {steps} steps, lr {lr:g}", file=sys.stderr)
    t0 = time.perf_counter()
    result = T.train(
        model,
        optimizer,
        sample_batches(k_data, args.batch),
        data=jax.tree.map(jnp.asarray, data["train"]),
        steps=steps,
        loss_fn=loss_fn,
        eval_fn=eval_fn,
        eval_interval=args.eval_interval,
        progress=not args.no_progress,
        desc=name,
    )
    train_seconds = time.perf_counter() - t0

    tokens, align = predict(name, model, heldout, alignments=True)
    correct = exact_match(tokens, tgt)
    mass = year_mass(align, data["year_mask"])  # [B, L]
    formats = data["heldout_pairs"].formats
    loss_steps, losses = result.series("train/loss")
    every = max(1, len(losses) // 500)
    out = {
        "model": name,
        "exact_match": float(np.mean(correct)),
        "per_format_exact_match": by_format(correct, formats),
        "year_alignment_mass": float(np.mean(mass)),
        "per_format_year_alignment_mass": by_format(mass.mean(axis=1), formats),
        "num_params": num_params,
        "steps": steps,
        "lr": lr,
        "train_seconds": train_seconds,
        "compile_seconds": result.compile_seconds,
        "ms_per_step": result.median_step_ms,
        "final_loss": result.last("train/loss"),
        "exact_match_history": [
            {"step": s, "exact_match": v}
            for s, v in zip(*result.series("eval/exact_match"), strict=True)
        ],
        "loss_history": [
            {"step": s, "loss": v}
            for s, v in zip(loss_steps[::every], losses[::every], strict=True)
        ],
    }
    if name == "transformer":
        out["year_alignment_mass_per_layer"] = [float(m) for m in mass.mean(axis=0)]
        out["alignment_source"] = "decoder cross-attention, mean over heads (and layers)"
    pairs = data["heldout_pairs"]
    out["examples"] = [
        {
            "source": pairs.sources[i],
            "format": pairs.formats[i],
            "target": pairs.targets[i],
            "prediction": decode_target(tokens[i]),
            "correct": bool(correct[i]),
        }
        for i in range(min(args.show, len(correct)))
    ]
    return out, tokens, align


# ----------------------------------------------------------------------------------------
# Figures and report
# ----------------------------------------------------------------------------------------


def shown_examples(formats) -> list[int]:
    """One held-out example per :data:`SHOWN_FORMATS` entry present (the first of each)."""
    picks = []
    for f in SHOWN_FORMATS:
        idx = [i for i, g in enumerate(formats) if g == f]
        if idx:
            picks.append(idx[0])
    return picks


def plot_alignments(path, title: str, data, tokens, weights, picks) -> None:
    """Heatmaps ``weights[i] [11, S]`` of the held-out examples ``picks``: output characters
    (rows) against source characters (columns), white = all attention; the source year is
    marked in red."""
    plt = common.pyplot()
    pairs = data["heldout_pairs"]
    cols = 3
    rows = max(1, -(-len(picks) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.0 * rows), squeeze=False)
    for ax in axes.ravel()[len(picks) :]:
        ax.axis("off")
    for ax, i in zip(axes.ravel(), picks, strict=False):
        source = pairs.sources[i]
        n = len(source)
        out_chars = [
            "<eos>"
            if t == EOS
            else TARGET_CHARS[t - NUM_SPECIAL_TOKENS]
            if t >= NUM_SPECIAL_TOKENS
            else "_"
            for t in tokens[i]
        ]
        rows_shown = out_chars.index("<eos>") + 1 if "<eos>" in out_chars else len(out_chars)
        ax.imshow(weights[i, :rows_shown, :n], cmap="gray", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(n), list(source), fontsize=7)
        ax.set_yticks(range(rows_shown), out_chars[:rows_shown], fontsize=7)
        for j in np.flatnonzero(data["year_mask"][i, :n]):
            ax.get_xticklabels()[j].set_color("red")
        mass = weights[i, :YEAR_DIGITS, :n][:, data["year_mask"][i, :n]].sum(axis=-1).mean()
        ok = "ok" if decode_target(tokens[i]) == pairs.targets[i] else "WRONG"
        ax.set_title(f"{pairs.formats[i]} ({ok}; year mass {mass:.2f})", fontsize=8)
    fig.suptitle(title)
    common.save_figure(fig, path)


def plot_training(path, results: dict) -> None:
    plt = common.pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, r in results.items():
        ax_loss.plot(
            [h["step"] for h in r["loss_history"]], [h["loss"] for h in r["loss_history"]],
            label=name, lw=0.8,
        )  # fmt: skip
        hist = r["exact_match_history"] or [{"step": r["steps"], "exact_match": r["exact_match"]}]
        ax_acc.plot(
            [h["step"] for h in hist], [h["exact_match"] for h in hist], marker="o", label=name
        )
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("training cross-entropy (nats/char)")
    ax_acc.set_xlabel("step")
    ax_acc.set_ylabel("held-out exact match (greedy)")
    ax_acc.set_ylim(-0.02, 1.02)
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Date translation: teacher-forced training, greedy evaluation")
    common.save_figure(fig, path)


def report(results: dict) -> str:
    names = list(results)
    formats = [f for f in DATE_FORMATS if f in results[names[0]]["per_format_exact_match"]]
    lines = [
        "| format | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for f in formats:
        cells = [f"{100 * results[n]['per_format_exact_match'][f]:.1f}%" for n in names]
        lines.append(f"| {f} | " + " | ".join(cells) + " |")
    lines.append(
        "| **all** | "
        + " | ".join(f"**{100 * results[n]['exact_match']:.2f}%**" for n in names)
        + " |"
    )
    lines.append(
        "| year alignment mass | "
        + " | ".join(f"{results[n]['year_alignment_mass']:.3f}" for n in names)
        + " |"
    )
    lines.append(
        "| parameters | " + " | ".join(f"{results[n]['num_params']:,}" for n in names) + " |"
    )
    lines.append(
        "| training s (steps) | "
        + " | ".join(f"{results[n]['train_seconds']:.0f} ({results[n]['steps']})" for n in names)
        + " |"
    )
    ms = [results[n]["ms_per_step"] for n in names]
    lines.append("| ms/step | " + " | ".join("-" if m is None else f"{m:.1f}" for m in ms) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = make_parser()
    args = parse_args(argv, p)
    t_start = time.perf_counter()
    out = common.output_dir(args.out)
    data = make_data(args)
    print(
        f"{args.train_size:,} training pairs ({data['train_unique_dates']:,} dates), "
        f"{args.eval_size:,} held-out pairs of other dates; sources up to "
        f"{data['source_length']} characters; devices {jax.devices()}",
        file=sys.stderr,
    )
    keys = dict(zip(MODELS, jax.random.split(jax.random.key(args.seed), len(MODELS)), strict=True))
    results, predictions = {}, {}
    summary = {
        "experiment": "date_translation",
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "environment": common.environment(),
        "data": {
            "train_size": args.train_size,
            "train_unique_dates": data["train_unique_dates"],
            "eval_size": args.eval_size,
            "source_length": data["source_length"],
            "uniform_year_mass": data["uniform_year_mass"],
            "seeds": {"train": args.seed, "heldout": args.seed + 1},
            "formats": list(DATE_FORMATS),
        },
        "models": results,
    }
    for name in args.models:
        results[name], tokens, align = run_model(name, args, data, keys[name])
        predictions[name] = tokens, align
        r = results[name]
        print(
            f"{name}: exact match {100 * r['exact_match']:.2f}% on {args.eval_size} held-out "
            f"dates; year alignment mass {r['year_alignment_mass']:.3f}; "
            f"{r['train_seconds']:.0f} s training",
            file=sys.stderr,
        )
        summary["wall_seconds"] = time.perf_counter() - t_start
        T.write_json(out / "results.json", summary)

    picks = shown_examples(data["heldout_pairs"].formats)
    figures = []
    if "seq2seq" in predictions:
        tokens, align = predictions["seq2seq"]
        plot_alignments(
            out / "alignments.png",
            "RNNsearch alignments on held-out dates (after Bahdanau et al. 2014, Fig. 3)",
            data, tokens, align[:, 0], picks,
        )  # fmt: skip
        figures.append(out / "alignments.png")
    if "transformer" in predictions:
        tokens, align = predictions["transformer"]
        plot_alignments(
            out / "alignments_transformer.png",
            "Transformer cross-attention, last decoder layer, mean over heads",
            data, tokens, align[:, -1], picks,
        )  # fmt: skip
        figures.append(out / "alignments_transformer.png")
    plot_training(out / "loss.png", results)
    figures.append(out / "loss.png")
    summary["wall_seconds"] = time.perf_counter() - t_start
    T.write_json(out / "results.json", summary)

    for name, r in results.items():
        print(f"\n{name}: held-out predictions (greedy)")
        for e in r["examples"]:
            mark = "ok" if e["correct"] else f"WRONG (expected {e['target']})"
            print(f"  {e['source']!r:34} -> {e['prediction']}  {mark}")
    print("\nExact match on held-out dates (greedy decoding), per format:\n")
    print(report(results))
    print(
        f"(attention spread uniformly over the source would put {data['uniform_year_mass']:.3f} "
        "of the year digits' attention on the year)"
    )
    print(
        f"{summary['wall_seconds']:.0f} s from start to end; wrote {out / 'results.json'}, "
        + ", ".join(str(f) for f in figures)
    )
    return summary


if __name__ == "__main__":
    main()
