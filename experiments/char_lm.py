"""Character-level language model on Tiny Shakespeare (or any text file).

Defaults reproduce nanoGPT's CPU "baby GPT" (README, "I only have a macbook"):
4 layers, 4 heads, d_model 128, block 64, batch 12, 2000 iterations, lr 1e-3 with 100
warmup steps and cosine decay to 1e-4, AdamW beta2 0.99, weight decay 0.1, gradient
clip 1.0, no dropout, learned positions, LayerNorm, GELU MLP 4x, tied embeddings, no
biases in the linear layers; validation loss on 20 random batches (nanoGPT reports 1.88).

    python experiments/char_lm.py --out out/char_lm              # ~2-3 minutes on 2 cores
    python experiments/char_lm.py --out out/char_lm --resume     # continue a stopped run
    python experiments/char_lm.py --data my.txt --steps 5000 --layers 6 --d-model 384 ...

Writes into ``--out``: ``metrics.json`` (final losses, ms/step, tokens/s, compile time,
parameter count, flags), ``metrics.jsonl`` + TensorBoard events, ``loss.png``,
``tokenizer.json``, ``config.json`` and checkpoints in ``ckpt/``.
"""

import argparse
import dataclasses
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import attention_jax
from attention_jax import train as T
from attention_jax.data import (
    CharTokenizer,
    load_tinyshakespeare,
    random_windows,
    sequential_windows,
    train_val_split,
)
from attention_jax.nn import TransformerConfig, TransformerLM


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    g = p.add_argument_group("data")
    g.add_argument(
        "--data",
        default="tinyshakespeare",
        help="'tinyshakespeare' (downloaded once) or a UTF-8 text file",
    )
    g.add_argument("--cache-dir", default=None, help="download cache for tinyshakespeare")
    g = p.add_argument_group("model")
    g.add_argument("--layers", type=int, default=4)
    g.add_argument("--heads", type=int, default=4)
    g.add_argument("--kv-heads", type=int, default=None)
    g.add_argument("--d-model", type=int, default=128)
    g.add_argument("--mlp-ratio", type=float, default=4.0)
    g.add_argument(
        "--positional",
        default="learned",
        choices=["learned", "sinusoidal", "rope", "alibi", "t5", "none"],
    )
    g.add_argument("--t5-buckets", type=int, default=32, help="T5 bias: number of buckets")
    g.add_argument(
        "--t5-max-distance",
        type=int,
        default=128,
        help="T5 bias: distances from this on share the last bucket",
    )
    g.add_argument("--norm", default="layernorm", choices=["layernorm", "rmsnorm"])
    g.add_argument("--mlp", default="gelu", choices=["gelu", "swiglu", "relu"])
    g.add_argument(
        "--implementation", default=None, help="attention implementation (default: automatic)"
    )
    g.add_argument("--dropout", type=float, default=0.0)
    g.add_argument("--bias", action="store_true", help="biases in the linear layers")
    g = p.add_argument_group("optimization")
    g.add_argument("--steps", type=int, default=2000)
    g.add_argument("--batch", type=int, default=12)
    g.add_argument("--block", type=int, default=64)
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--min-lr", type=float, default=1e-4)
    g.add_argument("--warmup", type=int, default=100)
    g.add_argument(
        "--decay-steps", type=int, default=None, help="end of the cosine (default: --steps)"
    )
    g.add_argument("--weight-decay", type=float, default=0.1)
    g.add_argument("--clip", type=float, default=1.0)
    g.add_argument("--beta1", type=float, default=0.9)
    g.add_argument("--beta2", type=float, default=0.99)
    g.add_argument("--accumulate", type=int, default=1, help="gradient accumulation micro-steps")
    g = p.add_argument_group("run")
    g.add_argument("--eval-interval", type=int, default=250)
    g.add_argument("--eval-iters", type=int, default=20)
    g.add_argument("--log-interval", type=int, default=10)
    g.add_argument("--checkpoint-interval", type=int, default=500)
    g.add_argument("--keep", type=int, default=3, help="checkpoints kept")
    g.add_argument("--out", default="out/char_lm")
    g.add_argument("--resume", action="store_true")
    g.add_argument("--seed", type=int, default=1337)
    g.add_argument("--sample", type=int, default=300, help="characters to generate at the end")
    g.add_argument("--temperature", type=float, default=0.8)
    g.add_argument("--shard-params", action="store_true", help="FSDP-style parameter sharding")
    g.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def sample_text(model, tokenizer, *, num_chars, block, key, temperature, prompt="\n"):
    """``num_chars`` characters from ``attention_jax.generate``, sliding the context window
    by half a block when the model's ``max_len`` is reached (as nanoGPT crops to block)."""
    ids = list(tokenizer.encode(prompt))
    keep = max(block // 2, 1)
    while len(ids) - len(prompt) < num_chars:
        context = ids[-keep:]
        n = min(block - len(context), num_chars - (len(ids) - len(prompt)))
        key, sub = jax.random.split(key)
        out = attention_jax.generate(
            model, jnp.asarray([context], jnp.int32), n, rng=sub, temperature=temperature
        )
        ids += [int(t) for t in np.asarray(out[0, len(context) :])]
    return tokenizer.decode(np.asarray(ids[len(prompt) :]))


def main(argv=None):
    args = parse_args(argv)
    T.maybe_initialize_distributed()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    if args.data == "tinyshakespeare":
        text = load_tinyshakespeare(args.cache_dir)
    else:
        text = pathlib.Path(args.data).read_text(encoding="utf-8")
    tokenizer = CharTokenizer.from_text(text)
    train_ids, val_ids = train_val_split(tokenizer.encode(text), 0.9)
    train_data, val_data = jnp.asarray(train_ids), jnp.asarray(val_ids)
    tokenizer.save(out / "tokenizer.json")

    config = TransformerConfig(
        vocab_size=tokenizer.vocab_size,
        d_model=args.d_model,
        num_layers=args.layers,
        num_heads=args.heads,
        num_kv_heads=args.kv_heads,
        mlp_ratio=args.mlp_ratio,
        max_len=args.block,
        positional=args.positional,
        t5_num_buckets=args.t5_buckets,
        t5_max_distance=args.t5_max_distance,
        norm=args.norm,
        mlp=args.mlp,
        dropout=args.dropout,
        tie_embeddings=True,
        use_bias=args.bias,
        implementation=args.implementation,
    )
    config_json = {
        k: v
        for k, v in dataclasses.asdict(config).items()
        if isinstance(v, int | float | str | bool | type(None))
    }
    T.write_json(out / "config.json", config_json)
    key = jax.random.key(args.seed)
    k_init, k_data, k_eval, k_drop, k_sample = jax.random.split(key, 5)
    model = TransformerLM(config, rngs=nnx.Rngs(params=k_init, dropout=k_drop))
    num_params = T.count_params(model)

    decay_steps = args.steps if args.decay_steps is None else args.decay_steps
    schedule_kw = dict(warmup_steps=args.warmup, decay_steps=decay_steps, end_lr=args.min_lr)
    tx = T.make_optimizer(
        args.lr,
        **schedule_kw,
        b1=args.beta1,
        b2=args.beta2,
        weight_decay=args.weight_decay,
        clip_norm=args.clip,
        accumulate_steps=args.accumulate,
    )
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    def batch_fn(step, data):
        return random_windows(
            jax.random.fold_in(k_data, step), data, batch_size=args.batch, block_size=args.block
        )

    def eval_batch(i, data):
        return random_windows(
            jax.random.fold_in(k_eval, i), data, batch_size=args.batch, block_size=args.block
        )

    eval_loss = T.make_eval_fn(eval_batch, num_batches=args.eval_iters)

    def eval_fn(model, step):
        return {
            "eval/train_loss": eval_loss(model, train_data),
            "eval/val_loss": eval_loss(model, val_data),
        }

    metadata = {"config": config_json, "tokenizer": tokenizer.to_json(), "args": vars(args)}
    print(
        f"{num_params:,} parameters; {len(train_ids):,} train / {len(val_ids):,} val characters; "
        f"vocab {tokenizer.vocab_size}; devices {jax.devices()}",
        file=sys.stderr,
    )
    t0 = time.perf_counter()
    result = T.train(
        model,
        optimizer,
        batch_fn,
        data=train_data,
        steps=args.steps,
        rng=k_drop if args.dropout > 0 else None,
        eval_fn=eval_fn,
        eval_interval=args.eval_interval,
        log_interval=args.log_interval,
        log_dir=str(out),
        checkpoint_dir=str(out / "ckpt"),
        checkpoint_interval=args.checkpoint_interval,
        max_to_keep=args.keep,
        resume=args.resume,
        metadata=metadata,
        lr_schedule=T.make_schedule(args.lr, **schedule_kw),
        accumulate_steps=args.accumulate,
        shard_params=args.shard_params,
        progress=not args.no_progress,
        desc="char_lm",
    )
    wall = time.perf_counter() - t0

    # The whole validation split, each character predicted once (a low-variance number
    # beside nanoGPT's 20 random batches).
    windows = jnp.asarray(sequential_windows(val_ids, block_size=args.block))
    full_batch = 64
    num_full = windows.shape[0] // full_batch

    def full_val_batch(i, w):
        rows = jax.lax.dynamic_slice_in_dim(w, i * full_batch, full_batch)
        return rows[:, :-1], rows[:, 1:]

    val_full = float(T.make_eval_fn(full_val_batch, num_batches=num_full)(model, windows))

    sample = ""
    if args.sample > 0:
        sample = sample_text(
            model,
            tokenizer,
            num_chars=args.sample,
            block=args.block,
            key=k_sample,
            temperature=args.temperature,
        )
        print(sample)
    metrics = {
        "steps": args.steps,
        "train_loss": result.last("eval/train_loss"),
        "val_loss": result.last("eval/val_loss"),
        "val_loss_full": val_full,
        "last_step_loss": result.last("train/loss"),
        "ms_per_step_median": result.median_step_ms,
        "tokens_per_sec": result.tokens_per_second,
        "compile_seconds": result.compile_seconds,
        "wall_seconds": wall,
        "num_params": num_params,
        "resumed_from": result.start_step,
        "devices": [str(d) for d in jax.devices()],
        "jax_version": jax.__version__,
        "config": config_json,
        "args": vars(args),
        "sample": sample,
    }
    T.write_json(out / "metrics.json", metrics)
    ms = metrics["ms_per_step_median"]
    print(
        f"val loss {metrics['val_loss']:.4f} ({args.eval_iters} batches), {val_full:.4f} (whole split); "
        f"train loss {metrics['train_loss']:.4f}; "
        + (f"{ms:.1f} ms/step, {metrics['tokens_per_sec']:,.0f} tokens/s; " if ms else "")
        + f"compile {result.compile_seconds:.1f} s; wrote {out}/metrics.json, {out}/loss.png, {out}/ckpt",
        file=sys.stderr,
    )
    return metrics


if __name__ == "__main__":
    main()
