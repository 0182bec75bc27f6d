"""Spread of nanoGPT's validation estimate (20 random batches of 12 x 64) for one trained
``experiments/char_lm.py`` run: the estimate drawn with many evaluation keys, beside the
whole-split loss the run reports.

    python experiments/char_lm.py --out out/char_lm --data PATH
    python benchmarks/char_lm_eval_spread.py --run out/char_lm --data PATH --keys 100
"""

import argparse
import json
import pathlib
import statistics

import jax
import jax.numpy as jnp
from flax import nnx

from attention_jax import train as T
from attention_jax.data import CharTokenizer, load_tinyshakespeare, random_windows, train_val_split
from attention_jax.nn import TransformerConfig, TransformerLM


def check_args(p, args) -> None:
    """The run folder and the data file exist, the counts are positive; ``p.error`` (one
    line, exit status 2) otherwise, before anything is loaded."""
    run = pathlib.Path(args.run)
    for name in ("metrics.json", "config.json", "ckpt"):
        if not (run / name).exists():
            p.error(
                f"--run {run}: no {name}; pass --run PATH to the --out folder of a finished "
                "experiments/char_lm.py run"
            )
    if args.data != "tinyshakespeare":
        path = pathlib.Path(args.data)
        if not path.is_file() or path.stat().st_size == 0:
            why = "no such file" if not path.exists() else "not a non-empty file"
            p.error(f"--data {path}: {why}; pass --data PATH to the text the run trained on")
    if args.keys < 2:
        p.error(f"--keys must be an int >= 2 (a spread needs two estimates), got {args.keys}")
    if args.batches < 1:
        p.error(f"--batches must be an int >= 1, got {args.batches}")


def read_text(p, args) -> str:
    if args.data == "tinyshakespeare":
        try:
            return load_tinyshakespeare()
        except (OSError, ValueError) as e:
            p.error(f"could not load Tiny Shakespeare ({e}); pass --data PATH to a local copy")
    try:
        return pathlib.Path(args.data).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        p.error(f"--data {args.data}: cannot be read as UTF-8 text ({e})")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default="out/char_lm", help="char_lm.py --out folder")
    p.add_argument("--data", default="tinyshakespeare", help="as char_lm.py")
    p.add_argument("--keys", type=int, default=100, help="evaluation keys to draw")
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--threshold", type=float, default=1.88)
    args = p.parse_args(argv)
    check_args(p, args)
    run = pathlib.Path(args.run)
    metrics = json.loads((run / "metrics.json").read_text())
    cfg = TransformerConfig.from_json((run / "config.json").read_text())
    text = read_text(p, args)
    tokenizer = CharTokenizer.from_text(text)
    _, val = train_val_split(tokenizer.encode(text), 0.9)
    batch, block = metrics["args"]["batch"], metrics["args"]["block"]
    if tokenizer.vocab_size != cfg.vocab_size or len(val) <= block:
        p.error(
            f"--data {args.data} is not the text of --run {run} (vocabulary "
            f"{tokenizer.vocab_size} vs {cfg.vocab_size}, {len(val):,} validation characters "
            f"for block {block}); pass --data PATH to the text the run trained on"
        )
    model = TransformerLM(cfg, rngs=nnx.Rngs(0))
    T.load_params(model, run / "ckpt", metrics["steps"])
    val = jnp.asarray(val)
    estimates = []
    for i in range(args.keys):
        key = jax.random.key(10_000 + i)

        def eval_batch(j, data, key=key):
            return random_windows(
                jax.random.fold_in(key, j), data, batch_size=batch, block_size=block
            )

        estimates.append(float(T.make_eval_fn(eval_batch, num_batches=args.batches)(model, val)))
    below = sum(e <= args.threshold for e in estimates) / len(estimates)
    print(
        f"{args.batches}-batch validation estimate over {args.keys} keys: "
        f"mean {statistics.mean(estimates):.4f}, std {statistics.stdev(estimates):.4f}, "
        f"min {min(estimates):.4f}, max {max(estimates):.4f}; <= {args.threshold}: {below:.0%}. "
        f"The run's own estimate {metrics['val_loss']:.4f}, whole split "
        f"{metrics['val_loss_full']:.4f}."
    )


if __name__ == "__main__":
    main()
