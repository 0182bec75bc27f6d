"""How fast flash attention could be on XLA:CPU: its matrix products alone, against PyTorch SDPA.

Times, in one run and at one shape (default (1, 4096, 8, 64), float32, non-causal):

- ``matmul``: a 2048x2048 float32 matmul, XLA's best-case product rate on this machine;
- ``products, forward``: flash's forward loops (query blocks of ``--block-q`` rows, key blocks
  of ``--block-k``, flash's internal ``[B, K, rows, H]`` layout) with the softmax removed:
  only the two products of each block, ``s = q k^T`` and ``o += s v``;
- ``products, forward+backward``: that forward, then the backward loops (key blocks outer,
  query blocks inner, as ``flash_attention``'s backward) with their five products per block
  (``s = q k^T``, ``dV^T += dO^T p``, ``dp = dO v^T``, ``dK^T += q^T dS``, ``dQ += dS k``) and
  no exponentials;
- ``flash``: ``attention_jax.flash_attention`` at the same blocks, forward and
  forward+backward (the gradient of ``sum(out * cotangent)``);
- ``PyTorch SDPA``: ``torch.nn.functional.scaled_dot_product_attention`` on the CPU (its
  flash kernel), when torch is installed (``--no-torch`` skips it).

Each figure is the median of ``--repeats`` runs after two warm-up runs, each point timed
alone (``attention.py``'s ``--schedule blocked``). The table gives the time, GFLOP/s
(FlashAttention's convention: forward ``4 B N T S H``, forward+backward 3.5 times that) and
the ratio to SDPA: the products-only rows bound from below what a pure-JAX flash built on
XLA:CPU's products can reach.

Usage::

  python benchmarks/flash_floor.py --out out/flash_floor
  python benchmarks/flash_floor.py --shape 1x512x2x32 --repeats 2 --no-torch --out out/ff

Writes ``flash_floor.json`` and ``flash_floor.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import attention  # the sibling benchmark: timing loop, inputs, environment


def products_only(b, t, n, h, block_q, block_k, mode):
    """Flash's block loops with only their matrix products: a jitted ``f(q, k, v)`` (forward)
    or ``f(q, k, v, d_out)`` (forward and backward), the inputs of :class:`attention.Point`."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    nq, nk = t // block_q, t // block_k
    dims = (((3,), (3,)), ((0, 1), (0, 1)))  # [B, N, rows, H] x [B, N, cols, H]

    def blocks(x, size, count):  # [B, T, N, H] -> [count, B, N, size, H]
        return x.reshape(b, count, size, n, h).transpose(1, 0, 3, 2, 4)

    def forward(q, k, v):
        def q_step(_, q_blk):
            def k_step(j, o):
                s = lax.dot_general(q_blk, k[j], dims)
                return o + lax.dot_general(s, v[j], (((3,), (2,)), ((0, 1), (0, 1))))

            return None, lax.fori_loop(0, nk, k_step, jnp.zeros_like(q_blk))

        return lax.scan(q_step, None, q)[1]

    def backward(q, k, v, d_out):
        def kv_step(dq, xs):
            k_blk, v_blk = xs

            def q_step(i, c):
                dk, dv, dq = c
                s = lax.dot_general(q[i], k_blk, dims)
                dv = dv + lax.dot_general(d_out[i], s, (((2,), (2,)), ((0, 1), (0, 1))))
                ds = lax.dot_general(d_out[i], v_blk, dims) + s  # stands in for p * (dp - D)
                dk = dk + lax.dot_general(q[i], ds, (((2,), (2,)), ((0, 1), (0, 1))))
                dq_i = lax.dot_general(ds, k_blk, (((3,), (2,)), ((0, 1), (0, 1))))
                return dk, dv, lax.dynamic_update_index_in_dim(dq, dq[i] + dq_i, i, 0)

            # dK and dV transposed, [B, N, H, bk], as flash accumulates them
            zeros = jnp.zeros((b, n, h, block_k), k_blk.dtype)
            dk, dv, dq = lax.fori_loop(0, nq, q_step, (zeros, zeros, dq))
            return dq, (dk, dv)

        return lax.scan(kv_step, jnp.zeros_like(q), (k, v))

    def f(q, k, v, d_out=None):
        q, k, v = blocks(q, block_q, nq), blocks(k, block_k, nk), blocks(v, block_k, nk)
        out = forward(q, k, v)
        if mode == "fwd":
            return out
        return out, backward(q, k, v, blocks(d_out, block_q, nq))

    return jax.jit(f)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="1x4096x8x64", help="BxTxNxH")
    p.add_argument("--block-q", type=int, default=None, help="default: flash's")
    p.add_argument("--block-k", type=int, default=None, help="default: flash's")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch SDPA peer")
    p.add_argument("--out", default="out/flash_floor")
    args = p.parse_args(argv)
    (shape,) = attention.parse_shapes(args.shape)
    b, t, n, h = shape
    attention.jax_setup("cpu")
    from attention_jax import flash

    bq = min(args.block_q or flash.DEFAULT_BLOCK_Q, t)
    bk = min(args.block_k or flash.DEFAULT_BLOCK_K, t)
    if args.repeats < 1 or t % bq or t % bk:
        p.error(f"--repeats must be >= 1 and T={t} a multiple of the blocks {bq}x{bk}")
    torch = not args.no_torch and importlib.util.find_spec("torch") is not None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = attention.environment("cpu")
    rate, rate_what = attention.matmul_rate("cpu", max(args.repeats, 5))
    print(f"matmul: {rate:.1f} GFLOP/s ({rate_what})", flush=True)
    fwd_flops = 4.0 * b * n * t * t * h
    rows = []
    for mode in ("fwd", "fwdbwd"):
        products_fn = products_only(b, t, n, h, bq, bk, mode)
        products = attention.Point("products", shape, False, mode, "float32", jax_fn=products_fn)
        points = [
            ("products only", products),
            ("flash", attention.Point("flash", shape, False, mode, "float32", bq, bk)),
        ]
        if torch:
            points.append(("PyTorch SDPA", attention.Point("torch", shape, False, mode, "float32")))
        times = attention.time_points([pt for _, pt in points], args.repeats, schedule="blocked")
        flops = fwd_flops * (1.0 if mode == "fwd" else 3.5)
        for (name, _), sec in zip(points, times, strict=True):
            rows.append({"mode": mode, "what": name, "ms": 1e3 * sec, "gflops": flops / sec / 1e9})
            print(f"{mode:6s} {name:14s} {1e3 * sec:8.1f} ms {flops / sec / 1e9:6.1f} GFLOP/s")
        del points
    sdpa = {r["mode"]: r["ms"] for r in rows if r["what"] == "PyTorch SDPA"}
    lines = [
        f"{env.get('cpu', 'cpu')}, {env['cpu_count']} cores; jax {env['jax']}, "
        f"jaxlib {env['jaxlib']}"
        + (f", torch {env['torch']}" if "torch" in env else "")
        + f"; {env['date']}; shape {shape}, blocks {bq}x{bk}, float32, non-causal; "
        f"matmul {rate:.0f} GFLOP/s ({rate_what})",
        "",
        "| mode | what | ms | GFLOP/s | % matmul | / SDPA |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = f"{r['ms'] / sdpa[r['mode']]:.2f}" if r["mode"] in sdpa else "-"
        lines.append(
            f"| {r['mode']} | {r['what']} | {r['ms']:.0f} | {r['gflops']:.0f} | "
            f"{100 * r['gflops'] / rate:.0f} | {ratio} |"
        )
    table = "\n".join(lines) + "\n"
    (out / "flash_floor.md").write_text(table)
    result = {
        "environment": env,
        "shape": shape,
        "blocks": [bq, bk],
        "matmul_gflops": rate,
        "matmul": rate_what,
        "rows": rows,
    }
    (out / "flash_floor.json").write_text(json.dumps(result, indent=1))
    print("\n" + table)
    return result


if __name__ == "__main__":
    main()
