"""GPU check: the library's tests and figures on one NVIDIA GPU, in one short run.

Run by ``benchmarks/gpu_check.sh`` (which sets the environment); sections, each written to
``--out`` as it finishes so that a run cut short still leaves what it measured:

1. ``tests``: the dispatch, flash and attention tests on the GPU (float32 matmuls at
   ``highest`` precision, since the tests compare with float64 references at float32
   tolerances and TF32 would fail them by design).
2. ``attention``: ``benchmarks/attention.py`` in bfloat16 at T=4096, H=128 (xla, ours
   materialized, flash, cudnn, tokamax when importable, PyTorch SDPA as the peer), forward
   and forward+backward, causal and not, with TFLOP/s against a bf16 matmul of the same run.
3. ``dispatch``: for a few shapes, dtypes and options, what ``implementation=None`` picks
   and the forward+backward time of every path that can serve the call, so that the
   choice can be checked against the fastest.
4. ``train_step``: the char-LM ``TrainStep`` (fwd + bwd + AdamW) at nanoGPT's CPU size
   (batch 12 x 64, 4 layers, d 128) and its GPU size (batch 64 x 256, 6 layers, d 384),
   steps per second; with ``--nanogpt PATH`` nanoGPT's ``model.py`` at the same sizes in
   the same run (float32, no ``torch.compile``).
5. ``context_parallel``: ``context_parallel_attention`` on a one-device mesh at T=32768
   (B=1, N=8, H=64, bf16, causal, fwd+bwd) beside plain ``flash_attention``: the
   overhead of each strategy's machinery where no communication happens.

``--cpu`` is the dry run the test suite makes on machines without a GPU: tiny shapes,
float32, the tests only collected, a few repeats; its figures mean nothing.

    bash benchmarks/gpu_check.sh --out "$OUT"           # on the GPU machine
    python benchmarks/gpu_check.py --cpu --out out/gpu  # the dry run

Writes ``gpu_check.md`` (all tables) and ``gpu_check.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

TEST_FILES = ["tests/test_dispatch.py", "tests/test_flash.py", "tests/test_attention.py"]


def median_seconds(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


class Report:
    """Collects the sections' tables; rewrites the output files after each section."""

    def __init__(self, out: Path, header: str):
        self.out, self.parts, self.data = out, [header], {}
        out.mkdir(parents=True, exist_ok=True)

    def add(self, name: str, markdown: str, data) -> None:
        self.parts.append(f"## {name}\n\n{markdown}\n")
        self.data[name] = data
        (self.out / "gpu_check.md").write_text("\n".join(self.parts))
        (self.out / "gpu_check.json").write_text(json.dumps(self.data, indent=1, default=str))
        print(f"\n## {name}\n\n{markdown}\n", flush=True)


def table(rows: list[dict], cols: list[str]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------


def run_tests(cpu: bool, timeout: float) -> tuple[str, dict]:
    env = dict(os.environ, JAX_DEFAULT_MATMUL_PRECISION="highest")
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        *TEST_FILES,
        "-m",
        "not slow",
        "-q",
        "-p",
        "no:cacheprovider",
    ]
    if cpu:
        cmd.append("--collect-only")
    else:
        cmd += ["-n", "6"]  # compilation is CPU-bound; the GPU is shared by the workers
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
        )
        tail = (proc.stdout + proc.stderr).strip().splitlines()
        counts = [ln for ln in tail if " in " in ln and ("passed" in ln or "failed" in ln)]
        summary, rc = (counts[-1] if counts else (tail[-1] if tail else "")), proc.returncode
        failures = [ln for ln in tail if ln.startswith(("FAILED", "ERROR"))][:30]
    except subprocess.TimeoutExpired:
        summary, rc, failures = f"timed out after {timeout:.0f} s", -1, []
    seconds = time.perf_counter() - t0
    md = f"`{' '.join(cmd[1:])}` (JAX_DEFAULT_MATMUL_PRECISION=highest): **{summary}** (rc {rc}, {seconds:.0f} s)"
    if failures:
        md += "\n\n" + "\n".join(f"- {f}" for f in failures)
    return md, {"summary": summary, "rc": rc, "seconds": seconds, "failures": failures}


def run_attention(cpu: bool, out: Path, repeats: int) -> tuple[str, dict]:
    import attention as bench  # benchmarks/attention.py

    shapes = "1x256x2x32" if cpu else "2x4096x16x128"
    sub = out / "attention"
    argv = [
        "--out", str(sub), "--shapes", shapes, "--no-memory", "--repeats", str(repeats),
        "--device", "cpu" if cpu else "gpu", "--dtype", "float32" if cpu else "bfloat16",
        "--schedule", "blocked",
    ]  # fmt: skip
    bench.main(argv)
    res = json.loads((sub / "results.json").read_text())
    rate = res["matmul_gflops"]
    rows = []
    for r in res["rows"]:
        for mode in ("fwd", "fwdbwd"):
            if f"{mode}_ms" not in r:
                if f"{mode}_error" in r:
                    rows.append(
                        {
                            "impl": r["impl"],
                            "causal": r["causal"],
                            "mode": mode,
                            "ms": r[f"{mode}_error"][:80],
                        }
                    )
                continue
            tf = r[f"{mode}_gflops"] / 1e3
            rows.append(
                {
                    "impl": r["impl"],
                    "causal": r["causal"],
                    "mode": mode,
                    "ms": f"{r[f'{mode}_ms']:.3f}",
                    "TFLOP/s": f"{tf:.1f}",
                    "of matmul": f"{100 * r[f'{mode}_gflops'] / rate:.0f}%",
                }
            )
    md = (
        f"Shape (B, T, N, H) = {shapes.replace('x', ', ')}, {'float32' if cpu else 'bfloat16'}, "
        f"median of {repeats}; matmul {rate / 1e3:.1f} TFLOP/s ({res['matmul']}).\n\n"
        + table(rows, ["impl", "causal", "mode", "ms", "TFLOP/s", "of matmul"])
    )
    return md, res


def run_dispatch(cpu: bool, repeats: int) -> tuple[str, dict]:
    import jax
    import jax.numpy as jnp

    import attention_jax as aj
    from attention_jax.dispatch import FLASH_MIN_LOGITS, FLASH_MIN_LOGITS_ACCELERATOR

    if cpu:
        shapes = [(2, 64, 2, 32), (1, 256, 2, 32)]
        dtypes = ["float32"]
    else:
        shapes = [(8, 256, 8, 64), (4, 1024, 8, 64), (1, 4096, 8, 64), (2, 4096, 16, 128)]
        dtypes = ["float32", "bfloat16"]
    option_sets = {"causal": {"is_causal": True}}
    if not cpu:
        option_sets["causal + segment_ids"] = {"is_causal": True, "segment_ids": True}
    rows = []
    for shape in shapes:
        b, t, n, h = shape
        for dtype in dtypes:
            for opt_name, opts in option_sets.items():
                if opt_name != "causal" and dtype != "bfloat16":
                    continue
                ks = jax.random.split(jax.random.key(0), 3)
                q, k, v = (jax.random.normal(kk, shape, jnp.dtype(dtype)) for kk in ks)
                kw = {"is_causal": opts.get("is_causal", False)}
                if opts.get("segment_ids"):
                    seg = (jnp.arange(t)[None] >= t // 2).astype(jnp.int32).repeat(b, 0)
                    kw["segment_ids"] = seg
                inputs = aj.canonicalize_attention_inputs(q, k, v, **kw)
                sel = aj.select_implementation(inputs)
                row = {"shape": shape, "dtype": dtype, "options": opt_name, "picked": sel.name}
                best = None
                for impl in ("xla", "flash", "cudnn"):

                    def loss(q, k, v, impl=impl, kw=kw):
                        out = aj.dot_product_attention(q, k, v, implementation=impl, **kw)
                        return out.astype(jnp.float32).sum()

                    try:
                        f = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, k, v).compile()
                    except Exception as e:  # the path cannot serve this call
                        row[impl] = "-" if "cannot serve" in str(e) else type(e).__name__
                        continue
                    args = (q, k, v)
                    sec = median_seconds(lambda f=f, a=args: jax.block_until_ready(f(*a)), repeats)
                    row[impl] = f"{1e3 * sec:.3f}"
                    if best is None or sec < best[1]:
                        best = (impl, sec)
                row["fastest"] = best[0] if best else ""
                rows.append(row)
                print(row, flush=True)
    md = (
        "Forward+backward ms of each path that serves the call ('-': cannot serve); "
        "'picked' is `implementation=None`'s choice (FLASH_MIN_LOGITS = "
        f"{FLASH_MIN_LOGITS} on CPU, FLASH_MIN_LOGITS_ACCELERATOR = "
        f"{FLASH_MIN_LOGITS_ACCELERATOR} on GPU).\n\n"
        + table(rows, ["shape", "dtype", "options", "picked", "fastest", "xla", "flash", "cudnn"])
    )
    return md, rows


def _jax_train_step_rate(size: dict, repeats: int) -> float:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from attention_jax import train as T
    from attention_jax.nn import TransformerConfig, TransformerLM

    cfg = TransformerConfig(
        vocab_size=65,
        d_model=size["d"],
        num_layers=size["layers"],
        num_heads=size["heads"],
        max_len=size["block"],
        positional="learned",
    )
    model = TransformerLM(cfg, rngs=nnx.Rngs(0))
    tx = T.make_optimizer(1e-3, warmup_steps=100, decay_steps=5000, end_lr=1e-4)
    step = T.TrainStep(model, nnx.Optimizer(model, tx, wrt=nnx.Param))
    x = jax.random.randint(jax.random.key(1), (size["batch"], size["block"]), 0, 65)
    batch = (x, jnp.roll(x, -1, axis=1))
    step.compile(0, batch)
    i = [0]

    def one():
        i[0] += 1
        jax.block_until_ready(step(i[0], batch)["loss"])

    return 1.0 / median_seconds(one, repeats, warmup=3)


def _torch_train_step_rate(nanogpt: Path, size: dict, repeats: int, cpu: bool) -> float:
    import torch

    sys.path.insert(0, str(nanogpt))
    from model import GPT, GPTConfig  # nanoGPT's model.py

    dev = "cpu" if cpu else "cuda"
    conf = GPTConfig(
        block_size=size["block"],
        vocab_size=65,
        n_layer=size["layers"],
        n_head=size["heads"],
        n_embd=size["d"],
        dropout=0.0,
        bias=False,
    )
    torch.manual_seed(0)
    model = GPT(conf).to(dev)
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu" if cpu else "cuda")
    x = torch.randint(0, 65, (size["batch"], size["block"]), device=dev)
    y = torch.roll(x, -1, dims=1)
    sync = (lambda: None) if cpu else torch.cuda.synchronize

    def one():
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()

    return 1.0 / median_seconds(one, repeats, warmup=3)


def run_train_step(cpu: bool, nanogpt: Path | None, repeats: int) -> tuple[str, dict]:
    sizes = {
        "nanoGPT CPU size (12 x 64, 4 layers, d 128)": dict(
            batch=12, block=64, layers=4, heads=4, d=128
        ),
    }
    if not cpu:
        sizes["nanoGPT GPU size (64 x 256, 6 layers, d 384)"] = dict(
            batch=64, block=256, layers=6, heads=6, d=384
        )
    rows = []
    for name, size in sizes.items():
        row = {"model": name, "attention_jax steps/s": f"{_jax_train_step_rate(size, repeats):.1f}"}
        if nanogpt is not None:
            try:
                row["nanoGPT steps/s"] = (
                    f"{_torch_train_step_rate(nanogpt, size, repeats, cpu):.1f}"
                )
            except Exception as e:
                row["nanoGPT steps/s"] = f"{type(e).__name__}: {e}"[:80]
        rows.append(row)
        print(row, flush=True)
    md = (
        "`TrainStep` (forward, backward, clip, AdamW; float32, learned positions, tied "
        f"embeddings), median of {repeats} steps; nanoGPT's `model.py` with the same sizes, "
        "float32, no `torch.compile`, fused AdamW where available.\n\n"
        + table(rows, ["model", "attention_jax steps/s", "nanoGPT steps/s"])
    )
    return md, rows


def run_context_parallel(cpu: bool, repeats: int) -> tuple[str, dict]:
    import jax
    import jax.numpy as jnp

    import attention_jax as aj

    b, t, n, h = (1, 256, 2, 32) if cpu else (1, 32768, 8, 64)
    dtype = jnp.float32 if cpu else jnp.bfloat16
    mesh = jax.make_mesh((1,), ("sequence",), devices=jax.devices()[:1])
    ks = jax.random.split(jax.random.key(0), 3)
    q, k, v = (jax.random.normal(kk, (b, t, n, h), dtype) for kk in ks)

    def make(strategy):
        def attn(q, k, v):
            if strategy == "flash":
                return aj.flash_attention(q, k, v, is_causal=True)
            return aj.context_parallel_attention(
                q, k, v, mesh=mesh, strategy=strategy, is_causal=True
            )

        def loss(q, k, v):
            return attn(q, k, v).astype(jnp.float32).sum()

        return jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, k, v).compile()

    rows = []
    for strategy in ("flash", "ring", "ulysses", "all_gather"):
        f = make(strategy)
        sec = median_seconds(lambda f=f: jax.block_until_ready(f(q, k, v)), repeats)
        rows.append({"strategy": strategy, "fwd+bwd ms": f"{1e3 * sec:.2f}"})
        print(rows[-1], flush=True)
    md = (
        f"(B, T, N, H) = ({b}, {t}, {n}, {h}), {jnp.dtype(dtype).name}, causal, forward+backward, "
        f"a one-device mesh (P = 1), median of {repeats}.\n\n"
        + table(rows, ["strategy", "fwd+bwd ms"])
    )
    return md, rows


SECTIONS = ("tests", "attention", "dispatch", "train_step", "context_parallel")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="out/gpu_check", help="output folder")
    parser.add_argument("--cpu", action="store_true", help="dry run on the CPU (tiny shapes)")
    parser.add_argument("--nanogpt", type=Path, help="a nanoGPT checkout (its model.py) as peer")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset")
    parser.add_argument("--test-timeout", type=float, default=240.0, help="seconds for the tests")
    args = parser.parse_args(argv)
    sections = args.sections.split(",")
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"--sections: unknown {unknown}; choose from {list(SECTIONS)}")
    if args.nanogpt is not None and not (args.nanogpt / "model.py").exists():
        print(f"--nanogpt {args.nanogpt}: no model.py there; the nanoGPT peer is skipped")
        args.nanogpt = None
    if args.cpu:
        os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    if not args.cpu and jax.default_backend() not in ("gpu", "cuda"):
        parser.error(f"no GPU found (backend {jax.default_backend()!r}); use --cpu for a dry run")
    import jaxlib

    devices = jax.devices()
    header = (
        f"# GPU check\n\n{devices[0].device_kind} ({jax.default_backend()}), "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; python "
        f"{sys.version.split()[0]}, jax {jax.__version__}, jaxlib {jaxlib.__version__}"
    )
    try:
        import torch

        header += f", torch {torch.__version__}"
    except ImportError:
        pass
    header += f"; command `{' '.join([os.path.basename(sys.executable), *sys.argv])}`" + (
        "\n\n**Dry run on the CPU (`--cpu`): the figures mean nothing.**" if args.cpu else ""
    )
    report = Report(Path(args.out), header + "\n")
    repeats = 3 if args.cpu else 20
    t_start = time.perf_counter()
    for name in sections:
        t0 = time.perf_counter()
        try:
            if name == "tests":
                md, data = run_tests(args.cpu, args.test_timeout)
            elif name == "attention":
                md, data = run_attention(args.cpu, Path(args.out), repeats)
            elif name == "dispatch":
                md, data = run_dispatch(args.cpu, repeats)
            elif name == "train_step":
                md, data = run_train_step(args.cpu, args.nanogpt, repeats)
            else:
                md, data = run_context_parallel(args.cpu, repeats)
        except Exception as e:  # keep the other sections' figures
            md, data = f"failed: `{type(e).__name__}: {str(e)[:300]}`", {"error": repr(e)}
        report.add(name, md + f"\n\n({time.perf_counter() - t0:.0f} s)", data)
    print(f"gpu_check: {time.perf_counter() - t_start:.0f} s in all", flush=True)


if __name__ == "__main__":
    main()
