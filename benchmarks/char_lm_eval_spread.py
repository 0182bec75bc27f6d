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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default="out/char_lm", help="char_lm.py --out folder")
    p.add_argument("--data", default="tinyshakespeare", help="as char_lm.py")
    p.add_argument("--keys", type=int, default=100, help="evaluation keys to draw")
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--threshold", type=float, default=1.88)
    args = p.parse_args(argv)
    run = pathlib.Path(args.run)
    metrics = json.loads((run / "metrics.json").read_text())
    cfg = TransformerConfig(**json.loads((run / "config.json").read_text()))
    model = TransformerLM(cfg, rngs=nnx.Rngs(0))
    T.load_params(model, run / "ckpt", metrics["steps"])
    if args.data == "tinyshakespeare":
        text = load_tinyshakespeare()
    else:
        text = pathlib.Path(args.data).read_text(encoding="utf-8")
    tokenizer = CharTokenizer.from_text(text)
    _, val = train_val_split(tokenizer.encode(text), 0.9)
    val = jnp.asarray(val)
    batch, block = metrics["args"]["batch"], metrics["args"]["block"]
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
