"""Smoke runs of the positional-encoding experiments (subprocesses, tiny settings), and
their two helpers that are not plumbing: the one-compilation greedy decoder of
length_generalization.py against ``attention_jax.generate``, and lm_extrapolation.py's
parameter loading into a model with a longer ``max_len``."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import attention_jax
from attention_jax import train as T
from attention_jax.data import SyntheticTask
from attention_jax.nn import TransformerConfig, TransformerLM

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "experiments"))

import length_generalization  # noqa: E402
import lm_extrapolation  # noqa: E402


@pytest.fixture(scope="module")
def fast_env(tmp_path_factory):
    """A compilation cache for the smoke runs (the suite's cheaper XLA optimization comes
    with ``os.environ``: conftest sets it)."""
    return {
        "JAX_PLATFORMS": "cpu",
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax_cache")),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }


def run_script(script, *args, env):
    proc = subprocess.run(
        [sys.executable, str(REPO / "experiments" / script), *map(str, args)],
        capture_output=True,
        text=True,
        env=dict(os.environ, **env),
        cwd=REPO,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_length_generalization_smoke(tmp_path, fast_env):
    out = tmp_path / "lg"
    tiny = ["--layers", 1, "--d-model", 16, "--heads", 2, "--batch", 8, "--eval-size", 8]
    arms = ["none", "rope_0.5"]
    common = ["--quick", "--steps", 20, "--train-length", 3, *tiny, "--no-progress", "--out", out]
    run_script("length_generalization.py", *common, "--arms", ",".join(arms), env=fast_env)
    res = json.loads((out / "results.json").read_text())
    assert res["settings"]["seeds"] == 1 and res["settings"]["test_length"] == 6
    assert [r["arm"] for r in res["runs"]] == arms
    for r in res["runs"]:
        assert r["task"] == "copy" and r["seed"] == 0 and r["train_length"] == 3
        assert r["steps"] == 20
        assert sorted(r["per_length_accuracy"], key=int) == [str(n) for n in range(1, 7)]
        assert all(0.0 <= a <= 1.0 for a in r["per_length_accuracy"].values())
        acc = [r["per_length_accuracy"][str(n)] for n in range(1, 7)]
        assert r["id_accuracy"] == pytest.approx(np.mean(acc[:3]))
        assert r["ood_accuracy"] == pytest.approx(np.mean(acc[3:]))
        assert r["seconds"] > 0
    assert res["runs"][1]["positional"] == "rope" and res["runs"][1]["rope_fraction"] == 0.5
    assert set(res["summary"]) == set(arms)
    assert res["summary"]["none"]["ood_accuracy_std"] == 0.0  # one seed
    md = (out / "results.md").read_text()
    assert all(f"| {a} |" in md for a in arms)
    assert (out / "accuracy_vs_length.png").stat().st_size > 0
    assert (out / "runs" / "none_seed0" / "metrics.jsonl").exists()

    # --resume with one more arm trains only that arm.
    run_script(
        "length_generalization.py",
        *common,
        "--arms",
        ",".join([*arms, "learned"]),
        "--resume",
        env=fast_env,
    )
    res2 = json.loads((out / "results.json").read_text())
    assert [r["arm"] for r in res2["runs"]] == [*arms, "learned"]
    assert res2["runs"][:2] == res["runs"]


def test_length_generalization_rejects_bad_arm():
    with pytest.raises(SystemExit):
        length_generalization.parse_args(["--arms", "rope_2"])
    with pytest.raises(SystemExit):
        length_generalization.parse_args(["--arms", "xpos"])
    args = length_generalization.parse_args(["--rope-fraction", "0.5"])
    assert args.arms == ["none", "sinusoidal", "learned", "rope", "rope_0.5", "alibi", "t5"]
    assert args.test_length == 32


@pytest.mark.parametrize("positional", ["learned", "alibi"])
def test_greedy_decode_matches_generate(positional):
    task = SyntheticTask("reverse", num_symbols=6)
    cfg = TransformerConfig(
        vocab_size=task.vocab_size,
        d_model=16,
        num_layers=2,
        num_heads=2,
        max_len=task.seq_len(5),
        positional=positional,
    )
    model = TransformerLM(cfg, rngs=nnx.Rngs(3))
    graphdef, state = nnx.split(model)
    for n in (2, 5):
        ex = task.sample_eval(jax.random.key(n), batch_size=4, length=n)
        p = ex.prompt.shape[1]
        buffer = jnp.zeros((4, cfg.max_len), jnp.int32).at[:, :p].set(ex.prompt)
        ours = length_generalization.greedy_decode(graphdef, state, buffer, p, p + n)
        ref = attention_jax.generate(model, ex.prompt, n, temperature=0.0)
        np.testing.assert_array_equal(np.asarray(ours[:, : p + n]), np.asarray(ref))


def test_load_params_into_longer_model(tmp_path):
    cfg = TransformerConfig(
        vocab_size=11, d_model=16, num_layers=1, num_heads=2, max_len=8, positional="t5"
    )
    model = TransformerLM(cfg, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adamw(1e-3), wrt=nnx.Param)
    with T.Checkpointer(tmp_path / "ckpt") as ckpt:
        ckpt.save(7, nnx.state((model, optimizer)), {"note": "test"})
    longer = TransformerLM(dataclasses.replace(cfg, max_len=32), rngs=nnx.Rngs(1))
    T.load_params(longer, tmp_path / "ckpt", 7)
    for a, b in zip(
        jax.tree.leaves(nnx.state(model, nnx.Param)),
        jax.tree.leaves(nnx.state(longer, nnx.Param)),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    tokens = jnp.arange(8)[None] % 11
    np.testing.assert_allclose(longer(tokens), model(tokens), rtol=1e-6, atol=1e-6)
    # A learned table of another size does not fit.
    learned = dataclasses.replace(cfg, positional="learned")
    small = TransformerLM(learned, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(small, optax.adamw(1e-3), wrt=nnx.Param)
    with T.Checkpointer(tmp_path / "ckpt2") as ckpt:
        ckpt.save(1, nnx.state((small, opt)))
    big = TransformerLM(dataclasses.replace(learned, max_len=32), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="shape"):
        T.load_params(big, tmp_path / "ckpt2", 1)


def test_lm_extrapolation_smoke(tmp_path, fast_env):
    rng = np.random.default_rng(0)
    words = "to be or not that is the question whether tis nobler in mind".split()
    text = "\n".join(" ".join(rng.choice(words, 10)) for _ in range(600))
    data = tmp_path / "text.txt"
    data.write_text(text)
    out = tmp_path / "lmx"
    tiny = ["--layers", 1, "--heads", 2, "--d-model", 16, "--block", 16, "--batch", 4]
    tiny += ["--eval-interval", 10, "--eval-iters", 2, "--checkpoint-interval", 0]
    run_script(
        "lm_extrapolation.py",
        "--quick",
        "--steps",
        20,
        "--arms",
        "alibi,learned",
        "--data",
        data,
        "--eval-lengths",
        "16,32",
        "--eval-tokens",
        1024,
        "--eval-batch-tokens",
        256,
        *tiny,
        "--no-progress",
        "--out",
        out,
        env=fast_env,
    )
    res = json.loads((out / "results.json").read_text())
    assert res["settings"]["eval_lengths"] == [16, 32] and res["settings"]["eval_tokens"] == 1024
    assert res["settings"]["char_lm_args"]["steps"] == 20
    alibi, learned = res["results"]["alibi"], res["results"]["learned"]
    assert alibi["train_block"] == 16 and alibi["max_len"] == 32 and learned["max_len"] == 16
    assert all(isinstance(alibi["val_loss"][n], float) for n in ("16", "32"))
    assert alibi["tokens_evaluated"] == {"16": 1024, "32": 1024}
    assert isinstance(learned["val_loss"]["16"], float) and learned["val_loss"]["32"] is None
    assert learned["perplexity"]["32"] is None
    for r in (alibi, learned):
        assert r["steps"] == 20 and r["char_lm"]["num_params"] > 0
        # The loaded model at the training block scores like the trained one did.
        assert r["val_loss"]["16"] == pytest.approx(r["char_lm"]["val_loss_full"], abs=0.1)
    md = (out / "results.md").read_text()
    assert "| learned |" in md and "n/a" in md and "Press et al." in md
    assert (out / "val_loss_vs_length.png").stat().st_size > 0
    assert (out / "alibi" / "metrics.json").exists()


def test_lm_extrapolation_passes_model_flags_to_char_lm():
    args = lm_extrapolation.parse_args(["--t5-max-distance", "64", "--t5-buckets", "16"])
    assert (args.lm.t5_max_distance, args.lm.t5_buckets) == (64, 16)
    assert lm_extrapolation.parse_args([]).lm.t5_max_distance == 128
