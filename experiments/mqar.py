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

The output gate of GLA and Gated DeltaNet is ``sigmoid(x W_g)`` here by default, not their
papers' ``silu(x W_g)`` (``--linear-gate-activation silu``): at initialization ``silu`` has a
random sign per channel and token, which scrambles the value each query token recalls, and
within this CPU budget (hundreds of steps, not Zoology's tens of thousands) both gated mixers
then stay at chance at every learning rate (``benchmarks/RESULTS.md``, "MQAR").

    python experiments/mqar.py --out out/mqar                   # the grid
    python experiments/mqar.py --quick --out out/mqar_quick     # seq 64, 4 pairs, d 64, 1 lr
    python experiments/mqar.py --seq-lens 128 --out out/mqar_L128   # one row of the grid
    python experiments/mqar.py --merge out/mqar_L64/results.json,out/mqar_L128/results.json \
        --out out/mqar_all                                      # the rows together, no training

``--merge`` reads the runs of earlier ``results.json`` files (a grid run in pieces, a row
or a few mixers at a time; where two files hold the same cell and learning rate, the later
file's run counts) and writes the table and the figure of their union.

Writes into ``--out``: ``results.json`` (every run), ``results.md`` (best accuracy per cell)
and ``mqar.png`` (accuracy vs d_model, one panel per sequence length, one line per mixer, as
Zoology's Figure 2).
"""

import functools
import json
import pathlib
import sys
import time

import common  # experiments/common.py, beside this script
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from tqdm.std import tqdm

from attention_jax import train as T
from attention_jax.data.mqar import multiquery_ar
from attention_jax.nn import LINEAR_GATE_ACTIVATIONS, LINEAR_GATED, TransformerConfig, TransformerLM

MIXERS = ("softmax", "linear", "based", "gla", "deltanet", "gated_deltanet")
CONV = {"deltanet": 4, "gated_deltanet": 4}  # the short convolution of their papers
GRID = dict(seq_lens=(64, 128, 256), d_models=(32, 64, 128), lrs=(1e-3, 3e-3, 1e-2))
QUICK = dict(seq_lens=(64,), d_models=(64,), lrs=(1e-2,))  # the delta rule needs 1e-2
QUICK_STEPS = 200
DEFAULT_CHUNK = 16


def make_parser():
    p = common.make_parser(__doc__)
    p.add_argument("--quick", action="store_true", help="smoke preset: " + str(QUICK))
    p.add_argument("--mixers", default=",".join(MIXERS), help="comma-separated mixers")
    p.add_argument("--seq-lens", default=None, help="comma-separated (pairs = seq_len / 16)")
    p.add_argument("--d-models", default=None, help="comma-separated widths")
    p.add_argument("--lrs", default=None, help="comma-separated peak learning rates")
    p.add_argument("--head-dim", type=int, default=16)
    p.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help=f"chunk of the linear mixers' chunked form (default {DEFAULT_CHUNK}; based: the "
        "sequence length, its parallel form)",
    )
    p.add_argument("--layers", type=int, default=2)
    p.add_argument(
        "--merge",
        default=None,
        metavar="FILES",
        help="comma-separated results.json files of earlier runs: write their union's "
        "results, table and figure into --out without training",
    )
    p.add_argument(
        "--linear-gate-activation",
        default="sigmoid",
        choices=LINEAR_GATE_ACTIVATIONS,
        help="output gate of gla and gated_deltanet (their papers: silu; see the docstring)",
    )
    p.add_argument("--vocab", type=int, default=512, help="Zoology: 8192")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--eval-size", type=int, default=512)
    p.add_argument("--eval-every", type=int, default=100, help="steps between evaluations")
    p.add_argument(
        "--target", type=float, default=0.99, help="stop a cell once a learning rate reaches it"
    )
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
    # --quick: fewer steps too, unless given
    args = common.parse_with_preset(p, argv, flag="quick", preset=dict(steps=QUICK_STEPS))
    grid = QUICK if args.quick else GRID
    args.mixers = [m.strip() for m in args.mixers.split(",") if m.strip()]
    bad = [m for m in args.mixers if m not in MIXERS]
    if bad or not args.mixers:
        p.error(f"unknown mixer(s) {bad or args.mixers}; choose from {MIXERS}")
    args.seq_lens = _list(p, args.seq_lens, grid["seq_lens"], int, "--seq-lens")
    args.d_models = _list(p, args.d_models, grid["d_models"], int, "--d-models")
    args.lrs = _list(p, args.lrs, grid["lrs"], float, "--lrs")
    for name in (
        "head_dim",
        "chunk_size",
        "layers",
        "vocab",
        "steps",
        "batch",
        "eval_size",
        "eval_every",
    ):
        common.check_int(p, args, name, 1)
    common.check_int(p, args, "warmup", 0)
    args.eval_every = min(args.eval_every, args.steps)
    if args.steps % args.eval_every:  # one compiled chunk of steps serves the whole run
        p.error(f"--steps {args.steps} must be a multiple of --eval-every {args.eval_every}")
    for n in args.seq_lens:
        if n % 16 or n >= args.vocab:
            p.error(f"--seq-lens {n}: must be a multiple of 16 (pairs = n / 16) below --vocab")
    for d in args.d_models:
        if d % args.head_dim:
            p.error(f"--d-models {d}: must be a multiple of --head-dim {args.head_dim}")
    return args


def chunk_size(mixer: str, *, seq_len: int, args) -> int:
    """``--chunk-size``, or by default the fastest measured here (``benchmarks/RESULTS.md``,
    "MQAR"): Based in one chunk (its Taylor kernel scores a chunk from ``q . k``, 16 dims
    instead of its 153 features, which then only build the state), the others 16."""
    if args.chunk_size is not None:
        return args.chunk_size
    return seq_len if mixer == "based" else DEFAULT_CHUNK


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
        linear_chunk_size=chunk_size(mixer, seq_len=seq_len, args=args),
        linear_gate_activation=args.linear_gate_activation if mixer in LINEAR_GATED else "silu",
    )


def train_cell(mixer, *, seq_len, d_model, args, key) -> list[dict]:
    """Trains one model per learning rate of ``args.lrs`` for a cell of the grid, all at once.

    The models share their initialization and batches; ``jax.vmap`` over the stacked
    parameters, optimizer states and learning rates makes one compiled step train them all,
    and ``lax.scan`` runs ``--eval-every`` steps per call. Training stops early once one
    learning rate reaches ``--target`` held-out accuracy (the cell's best is then known).
    """
    pairs = seq_len // 16
    config = model_config(mixer, d_model=d_model, seq_len=seq_len, args=args)
    k_init, k_data, k_eval = jax.random.split(key, 3)
    model = TransformerLM(config, rngs=nnx.Rngs(k_init))
    num_params = T.count_params(model)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    num_lrs = len(args.lrs)
    lrs = jnp.asarray(args.lrs, jnp.float32)
    params = jax.tree.map(lambda x: jnp.broadcast_to(x, (num_lrs, *x.shape)), params)
    warmup = min(args.warmup, args.steps - 1)  # short smoke runs: the cosine needs a step
    # A peak-1 schedule; the learning rate scales the update, as adamw(lr * schedule) would.
    schedule = optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, args.steps, 0.1)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.1))
    opt_state = jax.vmap(tx.init)(params)
    sizes = dict(seq_len=seq_len, num_kv_pairs=pairs, vocab_size=args.vocab)
    heldout = multiquery_ar(k_eval, batch_size=args.eval_size, **sizes)

    def scored(batch):
        """The ``pairs`` query positions of each row ``[B, pairs]`` and their targets: only
        there are logits computed (the head over all positions would cost ``L / pairs``
        times more, for nothing)."""
        where = jnp.argsort(~batch.loss_mask, axis=1, stable=True)[:, :pairs]
        return where, jnp.take_along_axis(batch.targets, where, axis=1)

    def logits_fn(params, inputs, where):
        return nnx.merge(graphdef, params, rest)(inputs, logits_to_keep=where)

    def one_step(params, opt_state, lr, batch):
        where, targets = scored(batch)

        def loss_fn(params):
            return T.cross_entropy(logits_fn(params, batch.inputs, where), targets)[0]

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        updates = jax.tree.map(lambda u: lr * u, updates)
        return optax.apply_updates(params, updates), opt_state, loss

    @functools.partial(jax.jit, static_argnames="num_steps", donate_argnums=(0, 1))
    def train_steps(params, opt_state, start, *, num_steps):
        def body(carry, step):
            batch = multiquery_ar(jax.random.fold_in(k_data, step), batch_size=args.batch, **sizes)
            params, opt_state, loss = jax.vmap(one_step, in_axes=(0, 0, 0, None))(
                *carry, lrs, batch
            )
            return (params, opt_state), loss

        steps = start + jnp.arange(num_steps)
        (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), steps)
        return params, opt_state, losses[-1]

    held_where, held_targets = scored(heldout)

    @jax.jit
    def accuracy(params):
        def one(params):
            pred = jnp.argmax(logits_fn(params, heldout.inputs, held_where), axis=-1)
            return jnp.mean(pred == held_targets)

        return jax.vmap(one)(params)

    desc = f"{mixer} L{seq_len} d{d_model}"
    step, seconds, timed_steps = 0, 0.0, 0
    history = []
    with tqdm(total=args.steps, desc=desc, disable=args.no_progress) as bar:
        while step < args.steps:
            num_steps = args.eval_every
            t0 = time.perf_counter()
            params, opt_state, loss = train_steps(
                params, opt_state, jnp.int32(step), num_steps=num_steps
            )
            loss = jax.block_until_ready(loss)
            if step > 0:  # the first call compiles
                seconds += time.perf_counter() - t0
                timed_steps += num_steps
            step += num_steps
            acc = accuracy(params)
            history.append({"step": step, "accuracy": acc.tolist(), "loss": loss.tolist()})
            bar.update(num_steps)
            bar.set_postfix(best_accuracy=f"{float(acc.max()):.3f}")
            if float(acc.max()) >= args.target:
                break
    ms = 1e3 * seconds / timed_steps if timed_steps else None
    return [
        {
            "mixer": mixer,
            "seq_len": seq_len,
            "num_kv_pairs": pairs,
            "d_model": d_model,
            "lr": lr,
            "accuracy": history[-1]["accuracy"][i],
            "final_loss": history[-1]["loss"][i],
            "steps": step,
            "history": [
                {"step": h["step"], "accuracy": h["accuracy"][i], "loss": h["loss"][i]}
                for h in history
            ],
            "num_params": num_params,
            "chunk_size": config.linear_chunk_size,
            # the time of one step of all the learning rates together
            "ms_per_step_all_lrs": ms,
        }
        for i, lr in enumerate(args.lrs)
    ]


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
    width = max(4.2 * len(args.seq_lens), 6.0)  # room for the title with one panel
    fig, axes = plt.subplots(1, len(args.seq_lens), figsize=(width, 3.8), squeeze=False)
    for ax, n in zip(axes[0], args.seq_lens, strict=True):
        for m in args.mixers:
            pts = [(d, best[(m, n, d)]["accuracy"]) for d in args.d_models if (m, n, d) in best]
            if pts:  # one colour per mixer in every panel, whichever cells a panel has
                color = f"C{MIXERS.index(m)}"
                ax.plot(*zip(*pts, strict=True), marker="o", label=m, color=color)
        ax.set_xscale("log", base=2)
        ax.set_xticks(args.d_models, [str(d) for d in args.d_models])
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"sequence length {n}, {n // 16} pairs")
        ax.set_xlabel("model dimension")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("MQAR accuracy")
    labels = {}  # every mixer of the figure, in MIXERS order, whichever panel has it
    for ax in axes[0]:
        labels.update(zip(*reversed(ax.get_legend_handles_labels()), strict=True))
    order = [m for m in MIXERS if m in labels]
    axes[0][-1].legend([labels[m] for m in order], order, fontsize=8)
    fig.suptitle("Multi-query associative recall (after Zoology, Fig. 2)")
    common.save_figure(fig, path)


def merge_runs(paths: list[str], p) -> list[dict]:
    """The runs of the ``results.json`` files at ``paths``, one per (mixer, L, d, lr): a
    later file's run replaces an earlier one's."""
    cells: dict[tuple, dict] = {}
    for path in paths:
        file = pathlib.Path(path)
        if not file.is_file():
            p.error(f"--merge {path}: no such file")
        try:
            runs = json.loads(file.read_text())["runs"]
            found = {(r["mixer"], r["seq_len"], r["d_model"], r["lr"]): r for r in runs}
            complete = all("accuracy" in r for r in runs)  # the table ranks runs by it
        except (ValueError, KeyError, TypeError):
            found, complete = {}, False
        if not found or not complete:
            p.error(f"--merge {path}: not a results.json of mqar.py with runs")
        cells.update(found)
    return list(cells.values())


def write_merged(args, p) -> list[dict]:
    paths = [x.strip() for x in args.merge.split(",") if x.strip()]
    if not paths:
        p.error(f"--merge must name results.json files, got {args.merge!r}")
    runs = merge_runs(paths, p)
    found = {r["mixer"] for r in runs}
    args.mixers = [m for m in MIXERS if m in found]
    args.seq_lens = tuple(sorted({r["seq_len"] for r in runs}))
    args.d_models = tuple(sorted({r["d_model"] for r in runs}))
    out = common.output_dir(args.out)
    T.write_json(
        out / "results.json",
        {"experiment": "mqar", "merged_from": paths, "runs": runs},
    )
    best, table = best_table(runs, args)
    (out / "results.md").write_text(table)
    plot(best, args, out / "mqar.png")
    print(table, file=sys.stderr)
    print(f"merged {len(runs)} runs from {len(paths)} files into {out}", file=sys.stderr)
    return runs


def main(argv=None):
    p = make_parser()
    args = parse_args(argv, p)
    if args.merge is not None:
        return write_merged(args, p)
    T.tune_host_malloc()  # its own loop, not T.train: keep the step buffers out of mmap
    t_start = time.perf_counter()
    out = common.output_dir(args.out)
    runs = []
    key = jax.random.key(args.seed)
    for n in args.seq_lens:
        for d in args.d_models:
            for m in args.mixers:
                cell = train_cell(m, seq_len=n, d_model=d, args=args, key=key)
                runs.extend(cell)
                accs = ", ".join(f"lr {r['lr']:g}: {r['accuracy']:.3f}" for r in cell)
                print(
                    f"{m} L{n} d{d} ({cell[0]['num_params']:,} parameters, "
                    f"{cell[0]['steps']} steps): accuracy {accs}",
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
