"""Real images at CPU scale: the UCI handwritten digits (8x8) with an LSTM + attention and
Vision Transformers, beside scikit-learn's classical models.

Data: ``sklearn.datasets.load_digits``, the 1,797 8x8 grey-level images (16 levels) of
digits 0-9 that scikit-learn ships (no download), pixel values scaled to ``[0, 1]``. One
fixed stratified split, ``train_test_split(test_size=0.25, stratify=y, random_state=0)``:
1,347 training and 450 test images, the same for every model and seed. Training uses the
training split only, without augmentation; the reported number is the accuracy on the test
split after the last step (no checkpoint is picked by it; the default recipes below were
set by a handful of runs scored on it, there being no separate validation split).

Models (``--models``, comma-separated):

* ``lstm_attention``: ``RNNAttentionClassifier`` reading the image row by row (8 steps of 8
  pixels): an LSTM whose states are pooled by attention with a learned query (the Keras
  tutorials' LSTM + attention).
* ``lstm_last``: the same LSTM classifying its last state (no attention).
* ``vit_learned``, ``vit_sinusoidal_2d``, ``vit_rope_2d``, ``vit_none``: a
  ``VisionTransformer`` on 2x2 patches (a 4x4 grid of 16 patches, plus a class token) with
  each positional option.
* ``svc`` (RBF kernel) and ``logreg`` (logistic regression): scikit-learn's defaults,
  deterministic (std 0).

Defaults: an LSTM of width 128; ViTs of 2 pre-norm blocks, width 64, 4 heads, MLP 2x, dropout
0.1. Each neural model is trained for ``--seeds`` seeds (initialization, batch order and
dropout differ, the split does not) with ``attention_jax.train.make_optimizer`` (AdamW,
warmup, cosine decay), the seeds one after another through the same compiled
``lax.fori_loop`` of steps (on 2 CPU cores, a ``jax.vmap`` over stacked seeds was slower
than that loop).

    pip install -e '.[experiments]'                           # scikit-learn
    python experiments/digits.py --out out/digits              # the table: ~9 min, 2 CPU cores
    python experiments/digits.py --quick --out out/digits_quick  # 1 seed, 300 steps: < 1 min
    python experiments/digits.py --models lstm_attention,vit_rope_2d,svc --seeds 5

Writes into ``--out``: ``results.json`` (settings, environment, per model: test accuracy
per seed, mean, std, parameters, training seconds), ``results.md`` (the table),
``accuracy.png`` (the table as bars), ``pooling_weights.png`` (the LSTM's attention
weights over the 8 image rows for a few test digits) and ``rollout.png`` (attention
rollout of the learned-position ViT: the class token's map over the 4x4 patches).
"""

import functools
import math
import statistics
import sys
import time

import common  # experiments/common.py, beside this script
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.std import tqdm

from attention_jax import attention_rollout
from attention_jax import train as T
from attention_jax.nn import RNNAttentionClassifier, VisionTransformer

INSTALL = "pip install -e '.[experiments]'"
TEST_SIZE = 0.25
SPLIT_SEED = 0
IMAGE = 8  # pixels per side
PATCH = 2  # ViT patch side: a 4x4 grid of patches
NUM_CLASSES = 10

LSTMS = {"lstm_attention": "attention", "lstm_last": "last"}
VITS = {f"vit_{p}": p for p in ("learned", "sinusoidal_2d", "rope_2d", "none")}
CLASSICAL = ("svc", "logreg")
MODELS = (*LSTMS, *VITS, *CLASSICAL)
LABELS = {
    "lstm_attention": "LSTM + attention pooling",
    "lstm_last": "LSTM, last state",
    "vit_learned": "ViT, learned positions",
    "vit_sinusoidal_2d": "ViT, 2-D sinusoidal",
    "vit_rope_2d": "ViT, 2-D RoPE",
    "vit_none": "ViT, no positions",
    "svc": "SVC (RBF kernel)",
    "logreg": "logistic regression",
}

# Optimization per model family; --steps --batch --lr --warmup --weight-decay override both.
RECIPES = {
    "lstm": dict(steps=1000, batch=64, lr=1e-2, warmup=100, weight_decay=0.1),
    "vit": dict(steps=2000, batch=32, lr=4e-3, warmup=100, weight_decay=0.1),
}
# `--quick`: one seed, few steps, the models of the two attention plots and the classical
# pair (flags still override).
QUICK = dict(seeds=1, steps=300, models="lstm_attention,vit_learned,svc,logreg")


def make_parser():
    p = common.make_parser(__doc__)
    p.add_argument("--quick", action="store_true", help="smoke preset: " + str(QUICK))
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated, of " + str(MODELS))
    p.add_argument("--seeds", type=int, default=3, help="runs per neural model (seeds 0, 1, ...)")
    g = p.add_argument_group("LSTM")
    g.add_argument("--hidden", type=int, default=128, help="LSTM width (per direction)")
    g.add_argument("--bidirectional", action="store_true", help="a forward and a backward LSTM")
    g = p.add_argument_group("ViT (2x2 patches)")
    g.add_argument("--d-model", type=int, default=64, help="residual width")
    g.add_argument("--layers", type=int, default=2, help="Transformer blocks")
    g.add_argument("--heads", type=int, default=4, help="attention heads (divide --d-model)")
    g.add_argument("--mlp-ratio", type=float, default=2.0, help="MLP width / d_model")
    g.add_argument("--dropout", type=float, default=0.1, help="embedding and residual dropout")
    g = p.add_argument_group(
        "optimization (AdamW, gradient norm clipped at 1, linear warmup, cosine decay to lr / 100)"
    )
    for name, kind, what in (
        ("steps", int, "training steps"),
        ("batch", int, "images per step"),
        ("lr", float, "peak learning rate"),
        ("warmup", int, "warmup steps"),
        ("weight_decay", float, "AdamW decay"),
    ):
        lstm, vit = RECIPES["lstm"][name], RECIPES["vit"][name]
        g.add_argument(
            "--" + name.replace("_", "-"),
            type=kind,
            default=None,
            help=f"{what} (default: LSTMs {lstm:g}, ViTs {vit:g})",
        )
    g.add_argument(
        "--eval-every",
        type=int,
        default=250,
        help="steps between the progress bar's test accuracies (they choose nothing)",
    )
    g = common.add_run_flags(p, out="out/digits")
    g.add_argument("--show", type=int, default=8, help="test digits in the two attention plots")
    return p


def parse_args(argv=None, p=None):
    """The checked flags; a bad one, or scikit-learn missing, ends in ``p.error``."""
    p = p or make_parser()
    args = common.parse_with_preset(p, argv, flag="quick", preset=QUICK)
    common.check_flags(p, args)
    for name in ("hidden", "eval_every", "show"):
        common.check_int(p, args, name, 1)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in args.models if m not in MODELS]
    if bad or not args.models:
        p.error(f"--models: unknown model(s) {bad or args.models}; choose from {MODELS}")
    args.models = list(dict.fromkeys(args.models))  # once each, in the given order
    for name in args.models:
        if name in VITS:
            try:  # every constructor check, traced only: nothing is computed or compiled
                nnx.eval_shape(lambda name=name: build(name, args, nnx.Rngs(0)))
            except ValueError as e:
                p.error(f"the ViT flags make no valid model for {name}: {e}")
    try:
        import sklearn  # noqa: F401
    except ImportError:
        p.error(f"this experiment needs scikit-learn (its digits data and baselines): {INSTALL}")
    return args


def recipe(name: str, args) -> dict:
    """The optimization settings of model ``name``: its family's, overridden by flags."""
    base = RECIPES["lstm" if name in LSTMS else "vit"]
    flags = {k: getattr(args, k) for k in base}
    return {k: base[k] if flags[k] is None else flags[k] for k in base}


# ----------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------


def load_split():
    """``(x_train, y_train, x_test, y_test)``: float32 images ``[N, 8, 8]`` in ``[0, 1]``
    and int32 labels, from the fixed stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)  # grey levels 0..16
    x_tr, x_te, y_tr, y_te = train_test_split(
        images,
        digits.target.astype(np.int32),
        test_size=TEST_SIZE,
        stratify=digits.target,
        random_state=SPLIT_SEED,
    )
    return x_tr, y_tr, x_te, y_te


def batch_order(seed: int, num_examples: int, *, steps: int, batch: int) -> np.ndarray:
    """Training indices ``[steps, batch]``: epochs of fresh permutations, back to back."""
    rng = np.random.default_rng(seed)
    epochs = math.ceil(steps * batch / num_examples)
    order = np.concatenate([rng.permutation(num_examples) for _ in range(epochs)])
    return order[: steps * batch].reshape(steps, batch).astype(np.int32)


# ----------------------------------------------------------------------------------------
# Models and training
# ----------------------------------------------------------------------------------------


def build(name: str, args, rngs: nnx.Rngs) -> nnx.Module:
    if name in LSTMS:
        return RNNAttentionClassifier(
            NUM_CLASSES,
            args.hidden,
            input_dim=IMAGE,
            bidirectional=args.bidirectional,
            pooling=LSTMS[name],
            rngs=rngs,
        )
    return VisionTransformer(
        NUM_CLASSES,
        IMAGE,
        PATCH,
        1,
        args.d_model,
        args.layers,
        args.heads,
        positional=VITS[name],
        pooling="cls",
        mlp_ratio=args.mlp_ratio,
        dropout=args.dropout,
        rngs=rngs,
    )


def forward(model, images, *, key=None):
    """Logits ``[B, 10]`` of ``images [B, 8, 8]``: rows as the LSTM's steps, or one channel
    for the ViT; ``key`` turns the ViT's dropout on."""
    if isinstance(model, RNNAttentionClassifier):
        return model(images)
    if key is None:
        return model(images[..., None])
    return model(images[..., None], deterministic=False, rngs=nnx.Rngs(dropout=key))


def train_seeds(name: str, args, data, seeds: list[int]) -> dict:
    """Trains model ``name`` once per seed and returns its test accuracies, parameter
    count, timings and the trained models (seed order).

    The seeds run one after another through the same compiled functions (their models
    differ only in parameter values): a ``lax.fori_loop`` of ``--eval-every`` steps per
    call, the test accuracy between calls for the progress bar.
    """
    x_tr, y_tr, x_te, y_te = map(jnp.asarray, data)
    opt = recipe(name, args)
    steps, batch = opt["steps"], opt["batch"]
    tx = T.make_optimizer(
        opt["lr"],
        warmup_steps=min(opt["warmup"], steps - 1),
        decay_steps=steps,
        end_lr=opt["lr"] / 100,
        weight_decay=opt["weight_decay"],
        b2=0.999,
    )
    use_dropout = name in VITS and args.dropout > 0
    graphdef = None  # the same for every seed's model

    def one_step(step, carry, rest, key, order, x_tr, y_tr):
        params, opt_state, _ = carry
        idx = order[step]

        def loss_fn(params):
            model = nnx.merge(graphdef, params, rest)
            k = jax.random.fold_in(key, step) if use_dropout else None
            return T.cross_entropy(forward(model, x_tr[idx], key=k), y_tr[idx])[0]

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train_steps(params, opt_state, rest, key, order, start, stop, x_tr, y_tr):
        body = functools.partial(one_step, rest=rest, key=key, order=order, x_tr=x_tr, y_tr=y_tr)
        return jax.lax.fori_loop(start, stop, body, (params, opt_state, jnp.float32(0)))

    @jax.jit
    def accuracy(params, rest, x, y):
        pred = jnp.argmax(forward(nnx.merge(graphdef, params, rest), x), axis=-1)
        return jnp.mean(pred == y)

    accuracies, losses, seconds, trained = [], [], [], []
    for seed in seeds:
        model = build(name, args, nnx.Rngs(params=seed, dropout=seed))
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        opt_state = tx.init(params)
        order = jnp.asarray(batch_order(seed, len(y_tr), steps=steps, batch=batch))
        key = jax.random.key(1000 + seed)
        t0 = time.perf_counter()
        step = 0
        with tqdm(total=steps, desc=f"{name} seed {seed}", disable=args.no_progress) as bar:
            while step < steps:
                stop = min(step + args.eval_every, steps)
                span = jnp.int32(step), jnp.int32(stop)
                params, opt_state, loss = train_steps(
                    params, opt_state, rest, key, order, *span, x_tr, y_tr
                )
                acc, loss = float(accuracy(params, rest, x_te, y_te)), float(loss)
                bar.update(stop - step)
                bar.set_postfix(loss=f"{loss:.3f}", test=f"{acc:.4f}")
                step = stop
        seconds.append(time.perf_counter() - t0)
        accuracies.append(acc)
        losses.append(loss)
        trained.append(nnx.merge(graphdef, params, rest))
    return {
        "accuracy": accuracies,
        "final_train_loss": losses,
        "num_params": T.count_params(trained[0]),
        "train_seconds": sum(seconds),
        "train_seconds_per_seed": seconds,
        "optimization": opt,
        "models": trained,
    }


def classical(name: str, data) -> dict:
    """Fits scikit-learn's ``SVC()`` or ``LogisticRegression()`` (defaults; more iterations
    for the solver to converge) on the flattened pixels; deterministic, one run."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import SVC

    x_tr, y_tr, x_te, y_te = data
    model = SVC() if name == "svc" else LogisticRegression(max_iter=5000)
    t0 = time.perf_counter()
    model.fit(x_tr.reshape(len(x_tr), -1), y_tr)
    seconds = time.perf_counter() - t0
    accuracy = float(model.score(x_te.reshape(len(x_te), -1), y_te))
    if name == "svc":
        num_params = int(
            model.support_vectors_.size + model.dual_coef_.size + model.intercept_.size
        )
    else:
        num_params = int(model.coef_.size + model.intercept_.size)
    return {
        "accuracy": [accuracy],
        "num_params": num_params,
        "train_seconds": seconds,
        "settings": repr(model),
    }


# ----------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------


def summarize(run: dict) -> dict:
    """``run`` with the mean and the sample standard deviation of its accuracies (0 for one
    run)."""
    acc = run["accuracy"]
    std = statistics.stdev(acc) if len(acc) > 1 else 0.0
    return {**run, "mean": statistics.fmean(acc), "std": std}


def markdown_table(results: dict, args, num_train: int, num_test: int) -> str:
    lines = [
        f"Test accuracy on the UCI digits (8x8; fixed stratified split, {num_train} training / "
        f"{num_test} test images): mean +- std over {args.seeds} seed(s) for the neural "
        "models (sample std), one deterministic run for scikit-learn's. Train seconds: all "
        "seeds together, compilation included. The SVC's parameters: its support vectors, "
        "dual coefficients and intercepts.",
        "",
        "| model | test accuracy (%) | seeds | parameters | steps | train seconds |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        steps = r["optimization"]["steps"] if "optimization" in r else "-"
        lines.append(
            f"| {LABELS[name]} (`{name}`) | {100 * r['mean']:.2f} +- {100 * r['std']:.2f} | "
            f"{len(r['accuracy'])} | {r['num_params']:,} | {steps} | {r['train_seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def plot_accuracy(results: dict, path) -> None:
    plt = common.pyplot()
    names = list(results)
    means = np.array([100 * results[n]["mean"] for n in names])
    stds = np.array([100 * results[n]["std"] for n in names])
    colors = ["C0" if n in LSTMS else "C1" if n in VITS else "C2" for n in names]
    fig, ax = plt.subplots(figsize=(1.1 * len(names) + 2.5, 3.8))
    ax.bar(range(len(names)), means, yerr=stds, capsize=4, color=colors)
    for i, m in enumerate(means):
        ax.text(i, m + stds[i] + 0.15, f"{m:.1f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(names)), [LABELS[n] for n in names], rotation=30, ha="right")
    low = max(0.0, math.floor(min(means - stds) - 2))
    ax.set_ylim(low, 100.5)
    ax.set_ylabel("test accuracy (%), mean +- std")
    ax.set_title("UCI digits (8x8): test accuracy")
    ax.grid(axis="y", alpha=0.3)
    common.save_figure(fig, path)


def digit_panels(images, labels, pred, *, row_height, extra_height=0.0, side_width=None):
    """A grid of up to 4 digits per row, each titled with its label and prediction and
    followed by an empty panel (``side_width`` times a digit's width, default the same) for
    what is drawn beside it; returns ``(figure, those panels)``, one per digit."""
    plt = common.pyplot()
    n = len(images)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    gridspec_kw = None if side_width is None else {"width_ratios": [1, side_width] * cols}
    fig, axes = plt.subplots(
        rows,
        2 * cols,
        figsize=(2.6 * cols, row_height * rows + extra_height),
        squeeze=False,
        gridspec_kw=gridspec_kw,
    )
    for ax in axes.ravel():
        ax.axis("off")
    side = []
    for i in range(n):
        ax_img = axes[i // cols, 2 * (i % cols)]
        ax_img.imshow(images[i], cmap="gray_r", vmin=0, vmax=1)
        ax_img.set_title(f"label {labels[i]}, pred {pred[i]}", fontsize=8)
        side.append(axes[i // cols, 2 * (i % cols) + 1])
    return fig, side


def plot_pooling_weights(model, images, labels, path) -> None:
    """Each digit beside the LSTM's attention weights over its 8 rows."""
    logits, weights = model(jnp.asarray(images), return_weights=True)
    pred, weights = np.asarray(jnp.argmax(logits, -1)), np.asarray(weights)
    fig, side_axes = digit_panels(images, labels, pred, row_height=1.9, side_width=0.8)
    for i, ax_w in enumerate(side_axes):
        ax_w.axis("on")
        ax_w.barh(np.arange(IMAGE), weights[i], color="C0")
        ax_w.set_ylim(IMAGE - 0.5, -0.5)  # row 0 at the top, as in the image
        ax_w.set_xlim(0, max(1e-6, weights[i].max()) * 1.1)
        ax_w.set_yticks(range(IMAGE))
        ax_w.tick_params(labelsize=6)
        ax_w.set_title("weight per row", fontsize=8)
    fig.suptitle("LSTM + attention: pooling weights over the image rows (test digits)")
    common.save_figure(fig, path)


def vit_rollout(model, images) -> tuple[np.ndarray, np.ndarray]:
    """``(predictions [B], class-token rollout over the patch grid [B, 4, 4])``."""
    logits, inter = nnx.capture(model, nnx.Intermediate)(
        jnp.asarray(images)[..., None], sow_weights=True
    )
    weights = jnp.stack(
        [
            inter["blocks"][i]["attention"]["attention_weights"].get_value()[0]
            for i in range(model.num_layers)
        ]
    )  # [L, B, N, T, T]
    rollout = attention_rollout(weights)  # [B, T, T]
    cls_map = rollout[:, 0, 1:].reshape(-1, *model.grid_size)
    return np.asarray(jnp.argmax(logits, -1)), np.asarray(cls_map)


def plot_rollout(model, images, labels, path) -> None:
    """Each digit beside the class token's attention rollout over the 4x4 patches
    (renormalized over the patches), each patch upsampled to its 2x2 pixels."""
    pred, maps = vit_rollout(model, images)
    maps = maps / maps.sum(axis=(1, 2), keepdims=True)  # the class token's own share left out
    fig, side_axes = digit_panels(images, labels, pred, row_height=1.6, extra_height=0.6)
    for i, ax_map in enumerate(side_axes):
        ax_map.imshow(np.kron(maps[i], np.ones((PATCH, PATCH))), cmap="viridis", vmin=0)
        ax_map.set_title(f"rollout (max {maps[i].max():.2f})", fontsize=8)
    fig.suptitle(
        "ViT (learned positions, class token): attention rollout of the class token over "
        "the 4x4 patches",
        fontsize=10,
    )
    common.save_figure(fig, path)


def main(argv=None):
    p = make_parser()
    args = parse_args(argv, p)
    t_start = time.perf_counter()
    out = common.output_dir(args.out)
    data = load_split()
    x_tr, y_tr, x_te, y_te = data
    seeds = list(range(args.seeds))
    print(
        f"UCI digits: {len(y_tr)} training / {len(y_te)} test images (stratified, test_size "
        f"{TEST_SIZE}, random_state {SPLIT_SEED}); models {', '.join(args.models)}; "
        f"{args.seeds} seed(s)",
        file=sys.stderr,
    )
    results, trained = {}, {}
    for name in args.models:
        if name in CLASSICAL:
            run = classical(name, data)
        else:
            run = train_seeds(name, args, data, seeds)
            trained[name] = run.pop("models")[0]
        results[name] = summarize(run)
        r = results[name]
        print(
            f"{name}: test accuracy {100 * r['mean']:.2f} +- {100 * r['std']:.2f}% "
            f"({', '.join(f'{100 * a:.2f}' for a in r['accuracy'])}); {r['num_params']:,} "
            f"parameters; {r['train_seconds']:.1f} s",
            file=sys.stderr,
        )
    table = markdown_table(results, args, len(y_tr), len(y_te))
    (out / "results.md").write_text(table)
    plot_accuracy(results, out / "accuracy.png")
    written = ["results.json", "results.md", "accuracy.png"]
    show = min(args.show, len(y_te))
    if "lstm_attention" in trained:
        plot_pooling_weights(
            trained["lstm_attention"], x_te[:show], y_te[:show], out / "pooling_weights.png"
        )
        written.append("pooling_weights.png")
    if "vit_learned" in trained:
        plot_rollout(trained["vit_learned"], x_te[:show], y_te[:show], out / "rollout.png")
        written.append("rollout.png")
    wall = time.perf_counter() - t_start
    T.write_json(
        out / "results.json",
        {
            "experiment": "digits",
            "settings": {
                **{k: v for k, v in vars(args).items() if k != "out"},
                "seed_values": seeds,
                "split": {
                    "method": "sklearn.model_selection.train_test_split",
                    "test_size": TEST_SIZE,
                    "stratify": "labels",
                    "random_state": SPLIT_SEED,
                    "num_train": len(y_tr),
                    "num_test": len(y_te),
                },
                "pixels": "grey levels / 16, in [0, 1]",
                "patch_size": PATCH,
            },
            "environment": common.environment(),
            "results": results,
            "wall_seconds": wall,
        },
    )
    print("\n" + table, file=sys.stderr)
    print(
        f"{wall / 60:.1f} min; wrote " + ", ".join(str(out / w) for w in written),
        file=sys.stderr,
    )
    return results


if __name__ == "__main__":
    main()
