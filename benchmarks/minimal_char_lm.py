"""A plain JAX + Flax NNX + optax baby GPT, independent of attention_jax: the baseline
for the step time of ``experiments/char_lm.py``.

nanoGPT's model and recipe, written the straightforward way: N(0, 0.02) init (residual
projections 0.02 / sqrt(2 n_layer)), no biases, LayerNorm, exact GELU (PyTorch's
``nn.GELU()``), tied embeddings, materialized causal softmax attention, AdamW (beta2 0.99,
weight decay 0.1 on 2-D parameters), clip 1.0, warmup 100 + cosine 1e-3 -> 1e-4, one
``nnx.jit`` step per iteration and the loss read back every iteration (like nanoGPT's
``log_interval=1``).

    python benchmarks/minimal_char_lm.py --data ../shared/data/tinyshakespeare.txt --out out/minimal
"""

import argparse
import json
import math
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

p = argparse.ArgumentParser()
p.add_argument("--data", default="../shared/data/tinyshakespeare.txt")
p.add_argument("--steps", type=int, default=2000)
p.add_argument("--seed", type=int, default=1337)
p.add_argument("--gelu", default="exact", choices=["exact", "tanh"])
p.add_argument("--out", default="out/minimal_char_lm")
args = p.parse_args()
n_layer, n_head, n_embd, block, batch, eval_iters = 4, 4, 128, 64, 12, 20
lr, min_lr, warmup, beta2, wd = 1e-3, 1e-4, 100, 0.99, 0.1
# Bad flags end in one line (exit status 2) before anything is read or compiled.
data_path = pathlib.Path(args.data)
if not data_path.is_file() or data_path.stat().st_size == 0:
    why = "no such file" if not data_path.exists() else "not a non-empty file"
    p.error(f"--data {data_path}: {why}; pass --data PATH to a text file (Tiny Shakespeare)")
if args.steps < 2:
    p.error(f"--steps must be an int >= 2 (the first step compiles), got {args.steps}")

try:
    text = data_path.read_text(encoding="utf-8")
except (OSError, UnicodeDecodeError) as e:
    p.error(f"--data {data_path}: cannot be read as UTF-8 text ({e})")
if len(text) - int(0.9 * len(text)) <= block:
    p.error(f"--data {data_path}: too short for windows of {block}; pass a longer text")
chars = sorted(set(text))
lookup = {c: i for i, c in enumerate(chars)}
tokens = np.array([lookup[c] for c in text], dtype=np.int32)
n = int(0.9 * len(tokens))
train_data, val_data = jnp.asarray(tokens[:n]), jnp.asarray(tokens[n:])
vocab = len(chars)
init = nnx.initializers.normal(0.02)
proj_init = nnx.initializers.normal(0.02 / math.sqrt(2 * n_layer))


class Block(nnx.Module):
    def __init__(self, rngs):
        self.ln1 = nnx.LayerNorm(n_embd, use_bias=False, rngs=rngs)
        self.qkv = nnx.Linear(n_embd, 3 * n_embd, use_bias=False, kernel_init=init, rngs=rngs)
        self.proj = nnx.Linear(n_embd, n_embd, use_bias=False, kernel_init=proj_init, rngs=rngs)
        self.ln2 = nnx.LayerNorm(n_embd, use_bias=False, rngs=rngs)
        self.fc = nnx.Linear(n_embd, 4 * n_embd, use_bias=False, kernel_init=init, rngs=rngs)
        self.fc_proj = nnx.Linear(
            4 * n_embd, n_embd, use_bias=False, kernel_init=proj_init, rngs=rngs
        )

    def __call__(self, x):
        b, t, c = x.shape
        q, k, v = jnp.split(self.qkv(self.ln1(x)), 3, axis=-1)
        q, k, v = (z.reshape(b, t, n_head, c // n_head) for z in (q, k, v))
        att = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(c // n_head)
        att = jnp.where(jnp.tril(jnp.ones((t, t), bool)), att, -jnp.inf)
        y = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(att, axis=-1), v).reshape(b, t, c)
        x = x + self.proj(y)
        return x + self.fc_proj(jax.nn.gelu(self.fc(self.ln2(x)), approximate=args.gelu == "tanh"))


class GPT(nnx.Module):
    def __init__(self, rngs):
        self.wte = nnx.Embed(vocab, n_embd, embedding_init=init, rngs=rngs)
        self.wpe = nnx.Embed(block, n_embd, embedding_init=init, rngs=rngs)
        self.blocks = nnx.List([Block(rngs) for _ in range(n_layer)])
        self.ln_f = nnx.LayerNorm(n_embd, use_bias=False, rngs=rngs)

    def __call__(self, idx):
        x = self.wte(idx) + self.wpe(jnp.arange(idx.shape[1]))
        for blk in self.blocks:
            x = blk(x)
        return self.wte.attend(self.ln_f(x))


def get_lr(it):
    warm = lr * (it + 1) / (warmup + 1)
    ratio = jnp.clip((it - warmup) / (args.steps - warmup), 0.0, 1.0)
    return jnp.where(
        it < warmup, warm, min_lr + 0.5 * (1 + jnp.cos(math.pi * ratio)) * (lr - min_lr)
    )


model = GPT(nnx.Rngs(args.seed))
tx = optax.chain(
    optax.clip_by_global_norm(1.0),
    optax.adamw(
        get_lr,
        b1=0.9,
        b2=beta2,
        weight_decay=wd,
        mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p),
    ),
)
optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)


def get_batch(key, data):
    ix = jax.random.randint(key, (batch,), 0, len(data) - block)
    w = data[ix[:, None] + jnp.arange(block + 1)]
    return w[:, :-1], w[:, 1:]


def loss_fn(model, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


@nnx.jit
def train_step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def eval_loss(model, key, data):
    return jnp.mean(
        jnp.stack([loss_fn(model, *get_batch(k, data)) for k in jax.random.split(key, eval_iters)])
    )


batch_jit = jax.jit(get_batch)
key = jax.random.key(args.seed)
times, t_compile = [], None
for it in range(args.steps):
    x, y = batch_jit(jax.random.fold_in(key, it), train_data)
    t0 = time.perf_counter()
    loss = float(train_step(model, optimizer, x, y))  # host sync each iteration, as nanoGPT
    dt = time.perf_counter() - t0
    if it == 0:
        t_compile = dt
    else:
        times.append(dt)
    if it % 200 == 0:
        print(f"iter {it}: loss {loss:.4f}, time {dt * 1000:.1f} ms")
k_eval = jax.random.key(args.seed + 1)
res = {
    "train_loss": float(eval_loss(model, k_eval, train_data)),
    "val_loss": float(eval_loss(model, k_eval, val_data)),
    "ms_per_step_median": 1000 * statistics.median(times[10:] or times),
    "first_step_seconds": t_compile,
    "steps": args.steps,
    "gelu": args.gelu,
}
print(json.dumps(res))
out = pathlib.Path(args.out)
out.mkdir(parents=True, exist_ok=True)
(out / "metrics.json").write_text(json.dumps(res, indent=2))
