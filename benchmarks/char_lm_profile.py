"""Where the time of a char_lm.py training step goes (its default baby GPT, batch 12 x 64).

Times, each jitted and the median of 50 runs: the model's forward loss, forward+backward,
the whole ``TrainStep`` (AdamW update included), the attention of the 4 layers alone, and
the pieces of one layer (MLP, LayerNorm, embedding lookup, tied logits + cross-entropy)
forward and with gradients.

    python benchmarks/char_lm_profile.py
    python benchmarks/char_lm_profile.py --no-tune-malloc   # glibc's default allocator settings

Like ``attention_jax.train.train``, it calls ``tune_host_malloc()`` first (see
``attention_jax/train/host_memory.py``). The MLP piece is timed both as ``nnx.Linear``
applies it to ``[B, T, D]`` (a 3-D product) and as ``Dense`` does (``[B*T, D]``).
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import attention_jax as aj
from attention_jax import train as T
from attention_jax.nn import TransformerConfig, TransformerLM

B, L, V, D = 12, 64, 65, 128


def median_ms(fn, repeats=50):
    for _ in range(3):
        jax.block_until_ready(fn())
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(ts)


def layer_norm(x, g):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) * jax.lax.rsqrt(v + 1e-5) * g


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-tune-malloc", action="store_true", help="leave glibc's defaults")
    args = parser.parse_args()
    if not args.no_tune_malloc:
        T.tune_host_malloc()
    cfg = TransformerConfig(
        vocab_size=V, d_model=D, num_layers=4, num_heads=4, max_len=L, positional="learned"
    )
    model = TransformerLM(cfg, rngs=nnx.Rngs(0))
    ks = jax.random.split(jax.random.key(1), 8)
    x = jax.random.randint(ks[0], (B, L), 0, V)
    y = jnp.roll(x, -1, axis=1)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params, rest = jax.tree.map(jnp.copy, (params, rest))  # TrainStep donates the model's

    def loss(p):
        logits = nnx.merge(graphdef, p, rest)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    fwd, fwd_bwd = jax.jit(loss), jax.jit(jax.value_and_grad(loss))
    tx = T.make_optimizer(1e-3, warmup_steps=100, decay_steps=2000, end_lr=1e-4)
    step = T.TrainStep(model, nnx.Optimizer(model, tx, wrt=nnx.Param))
    q = jax.random.normal(ks[1], (B, L, 4, D // 4))

    def attention(q):
        return aj.dot_product_attention(q, q, q, is_causal=True).sum()

    att, att_grad = jax.jit(attention), jax.jit(jax.grad(attention))
    rows = [
        ("model forward (loss)", median_ms(lambda: fwd(params))),
        ("model forward+backward", median_ms(lambda: fwd_bwd(params))),
        ("TrainStep (fwd+bwd+AdamW)", median_ms(lambda: step(0, (x, y))["loss"])),
        ("attention, 4 layers, fwd", 4 * median_ms(lambda: att(q))),
        ("attention, 4 layers, fwd+bwd", 4 * median_ms(lambda: att_grad(q))),
    ]
    h = jax.random.normal(ks[2], (B, L, D))
    w1 = 0.02 * jax.random.normal(ks[3], (D, 4 * D))
    w2 = 0.02 * jax.random.normal(ks[4], (4 * D, D))
    emb = 0.02 * jax.random.normal(ks[5], (V, D))
    pieces = {
        "MLP (gelu), one layer, 3-D products": (
            lambda h, w1, w2: (jax.nn.gelu(h @ w1) @ w2).sum(),
            (h, w1, w2),
        ),
        "MLP (gelu), one layer, 2-D products (Dense)": (
            lambda h, w1, w2: (jax.nn.gelu(h.reshape(-1, D) @ w1) @ w2).sum(),
            (h, w1, w2),
        ),
        "LayerNorm, one": (lambda h, g: layer_norm(h, g).sum(), (h, jnp.ones(D))),
        "embedding lookup": (lambda e: e[x].sum(), (emb,)),
        "tied logits + cross-entropy": (
            lambda h, e: optax.softmax_cross_entropy_with_integer_labels(h @ e.T, y).mean(),
            (h, emb),
        ),
    }
    for name, (f, args) in pieces.items():
        g = jax.jit(jax.grad(f, argnums=tuple(range(len(args)))))
        f = jax.jit(f)
        rows.append((f"{name}, fwd", median_ms(lambda f=f, a=args: f(*a))))
        rows.append((f"{name}, fwd+bwd", median_ms(lambda g=g, a=args: g(*a))))
    print(f"jax {jax.__version__}, devices {jax.devices()}")
    print("| what | ms |\n|---|---:|")
    for name, ms in rows:
        print(f"| {name} | {ms:.2f} |")


if __name__ == "__main__":
    main()
