"""Smoke runs of the experiment scripts (subprocesses, a few steps, tiny models); the full
runs are marked slow."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
import script_helpers

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fast_compile_env(tmp_path_factory):
    """Smoke runs check plumbing, not speed: a compilation cache shared by the runs of this
    module (a resumed run recompiles the same step). They inherit the suite's cheaper XLA
    optimization (``XLA_FLAGS``, set by conftest)."""
    return {
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax_cache")),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }


def run_script(script, *args, timeout=600, env=None, timed=False):
    """Runs ``experiments/script``; ``timed=True`` for a run whose time is asserted: it gets
    the caller's own XLA_FLAGS (full optimization), not the suite's."""
    base = script_helpers.user_env() if timed else dict(os.environ)
    env = dict(base, JAX_PLATFORMS="cpu", **(env or {}))
    proc = subprocess.run(
        [sys.executable, str(REPO / "experiments" / script), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def check_run_dir(out):
    for name in ("metrics.json", "metrics.jsonl", "loss.png", "config.json"):
        assert (out / name).stat().st_size > 0, name
    assert list(out.glob("events.out.tfevents.*"))
    return json.loads((out / "metrics.json").read_text())


def test_char_lm_smoke(tmp_path, tinyshakespeare_path, fast_compile_env):
    out = tmp_path / "char"
    tiny = ["--layers", 1, "--heads", 2, "--d-model", 16, "--block", 16, "--batch", 4]
    common = ["--data", tinyshakespeare_path, *tiny, "--eval-interval", 3, "--eval-iters", 2]
    common += ["--log-interval", 2, "--checkpoint-interval", 3, "--no-progress", "--out", out]
    proc = run_script("char_lm.py", *common, "--steps", 5, "--sample", 12, env=fast_compile_env)
    m = check_run_dir(out)
    for key in (
        "train_loss",
        "val_loss",
        "val_loss_full",
        "ms_per_step_median",
        "tokens_per_sec",
        "compile_seconds",
    ):
        assert isinstance(m[key], float) and m[key] > 0, key
    assert m["num_params"] > 0 and m["steps"] == 5 and len(m["sample"]) == 12
    assert m["sample"] in proc.stdout
    assert (out / "tokenizer.json").exists()
    assert sorted(p.name for p in (out / "ckpt").iterdir() if p.name.isdigit()) == ["3", "5"]
    # Resume to 7 steps: continues from checkpoint 5, the log reads as one run.
    run_script("char_lm.py", *common, "--steps", 7, "--sample", 0, "--resume", env=fast_compile_env)
    m = json.loads((out / "metrics.json").read_text())
    assert m["resumed_from"] == 5
    steps = [
        r["step"]
        for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
        if "train/loss" in r
    ]
    assert steps == list(range(7))


def test_synthetic_smoke(tmp_path, fast_compile_env):
    out = tmp_path / "syn"
    args = ["--task", "reverse", "--length", 4, "--layers", 1, "--d-model", 16, "--heads", 2]
    args += ["--steps", 5, "--batch", 8, "--eval-interval", 5, "--eval-size", 16, "--out", out]
    proc = run_script("synthetic.py", *args, "--no-progress", env=fast_compile_env)
    m = check_run_dir(out)
    assert 0.0 <= m["accuracy"] <= 1.0 and 0.0 <= m["greedy_accuracy_at_max_length"] <= 1.0
    assert m["steps"] == 5 and m["task"] == "reverse"
    assert (out / "ckpt" / "5").is_dir()
    assert "->" in proc.stdout and "expected" in proc.stdout


def test_synthetic_teacher_forced_task_smoke(tmp_path, fast_compile_env):
    task = "mqar"  # graded answers interleaved with fed queries (as induction)
    out = tmp_path / task
    args = ["--task", task, "--length", 4, "--layers", 1, "--d-model", 16, "--heads", 2]
    args += ["--steps", 3, "--batch", 8, "--eval-interval", 0, "--eval-size", 16, "--out", out]
    run_script("synthetic.py", *args, "--no-progress", env=fast_compile_env)
    m = json.loads((out / "metrics.json").read_text())
    assert "greedy_accuracy_at_max_length" not in m and 0.0 <= m["accuracy"] <= 1.0


def test_variants_smoke(tmp_path, tinyshakespeare_path, fast_compile_env):
    """Two variants with caches of their own and one extrapolation arm, on a tiny model (the
    whole --quick preset is the slow test below)."""
    out = tmp_path / "variants"
    tiny = ["--layers", 1, "--heads", 2, "--d-model", 16, "--block", 16, "--batch", 4]
    run_script(
        "variants.py", "--quick", "--variants", "softmax,forgetting", "--steps", 4,
        "--extrapolation-arms", "stick_breaking", "--data", tinyshakespeare_path,
        "--out", out, "--no-progress", *tiny, env=fast_compile_env,
    )  # fmt: skip
    r = json.loads((out / "results.json").read_text())
    assert set(r["summary"]) == {"softmax", "forgetting"}
    assert r["summary"]["forgetting"]["cache_floats_per_token"] == 2 * 16 + 2  # k, v, gates
    assert set(r["extrapolation"]) == {"stick_breaking"}
    assert (out / "variants.png").stat().st_size > 0
    assert "| forgetting |" in (out / "results.md").read_text()
    check_run_dir(out / "forgetting" / "seed1337")


def test_mqar_smoke(tmp_path, fast_compile_env):
    out = tmp_path / "mqar"
    run_script(
        "mqar.py", "--mixers", "softmax,gated_deltanet", "--seq-lens", 32, "--d-models", 32,
        "--lrs", "0.003", "--steps", 3, "--batch", 4, "--eval-size", 8, "--vocab", 64,
        "--out", out, "--no-progress", env=fast_compile_env,
    )  # fmt: skip
    r = json.loads((out / "results.json").read_text())
    assert [run["mixer"] for run in r["runs"]] == ["softmax", "gated_deltanet"]
    assert all(0.0 <= run["accuracy"] <= 1.0 for run in r["runs"])
    assert (out / "mqar.png").stat().st_size > 0 and "| gated_deltanet |" in (
        out / "results.md"
    ).read_text()
    # --merge: the runs of two files together (the second's run of a shared cell counts).
    second = json.loads((out / "results.json").read_text())
    for run in second["runs"]:
        run["seq_len"], run["accuracy"] = (48, 0.5) if run["mixer"] == "softmax" else (32, 0.25)
    (tmp_path / "second.json").write_text(json.dumps(second))
    merged = tmp_path / "merged"
    run_script(
        "mqar.py", "--merge", f"{out / 'results.json'},{tmp_path / 'second.json'}",
        "--out", merged,
    )  # fmt: skip
    runs = json.loads((merged / "results.json").read_text())["runs"]
    cells = {(r["mixer"], r["seq_len"]): r["accuracy"] for r in runs}
    assert len(runs) == 3 and cells[("softmax", 48)] == 0.5
    assert cells[("gated_deltanet", 32)] == 0.25
    table = (merged / "results.md").read_text()
    assert "L32 d32 | L48 d32" in table and "| softmax |" in table
    assert (merged / "mqar.png").stat().st_size > 0


@pytest.mark.slow
def test_mqar_quick_under_5_minutes(tmp_path):
    out = tmp_path / "mqar"
    run_script("mqar.py", "--quick", "--out", out, "--no-progress", timeout=900, timed=True)
    r = json.loads((out / "results.json").read_text())
    assert len(r["runs"]) == 6 and r["wall_seconds"] < 300, r["wall_seconds"]


@pytest.mark.slow
def test_variants_quick_under_5_minutes(tmp_path, tinyshakespeare_path):
    out = tmp_path / "variants"
    run_script("variants.py", "--quick", "--data", tinyshakespeare_path, "--out", out,
               "--no-progress", timeout=900, timed=True)  # fmt: skip
    r = json.loads((out / "results.json").read_text())
    assert len(r["summary"]) == 10 and r["wall_seconds"] < 300, r["wall_seconds"]


@pytest.mark.slow
def test_demo_reaches_99_percent_in_3_minutes(tmp_path):
    out = tmp_path / "demo"
    proc = run_script("synthetic.py", "--demo", "--out", out, timeout=900, timed=True)
    m = json.loads((out / "metrics.json").read_text())
    assert m["accuracy"] >= 0.99 and m["greedy_accuracy_at_max_length"] >= 0.99
    assert m["total_seconds"] < 180, m["total_seconds"]
    assert "plot:" in proc.stdout and "checkpoint:" in proc.stdout


@pytest.mark.slow
def test_char_lm_baby_gpt(tmp_path, tinyshakespeare_path):
    out = tmp_path / "baby"
    run_script(
        "char_lm.py", "--data", tinyshakespeare_path, "--out", out, "--no-progress", timeout=1800
    )
    m = json.loads((out / "metrics.json").read_text())
    # nanoGPT: 1.88 on 20 random batches; allow for that estimate's noise.
    assert m["val_loss_full"] < 1.95 and m["val_loss"] < 1.95, m


def test_date_translation_smoke(tmp_path, fast_compile_env):
    out = tmp_path / "dates"
    run_script(
        "date_translation.py", "--train-size", 64, "--eval-size", 32, "--steps", 3,
        "--batch", 8, "--eval-interval", 2, "--embed-dim", 8, "--hidden-dim", 8,
        "--layers", 1, "--d-model", 16, "--heads", 2, "--show", 2, "--out", out,
        "--no-progress", env=fast_compile_env,
    )  # fmt: skip
    r = json.loads((out / "results.json").read_text())
    for key in ("settings", "environment", "data", "models", "wall_seconds"):
        assert key in r, key
    assert set(r["models"]) == {"seq2seq", "transformer"}
    assert r["data"]["eval_size"] == 32 and 0 < r["data"]["uniform_year_mass"] < 1
    for m in r["models"].values():
        assert 0.0 <= m["exact_match"] <= 1.0 and 0.0 <= m["year_alignment_mass"] <= 1.0
        assert set(m["per_format_exact_match"]) == set(m["per_format_year_alignment_mass"])
        assert m["num_params"] > 0 and m["steps"] == 3 and m["train_seconds"] > 0
        assert "ms_per_step" in m and len(m["examples"]) == 2
        assert [h["step"] for h in m["exact_match_history"]] == [0, 2, 3]
    assert len(r["models"]["transformer"]["year_alignment_mass_per_layer"]) == 1
    for name in ("alignments.png", "alignments_transformer.png", "loss.png"):
        assert (out / name).stat().st_size > 0, name


@pytest.mark.slow
def test_date_translation_quick_under_2_minutes(tmp_path):
    out = tmp_path / "dates"
    run_script(
        "date_translation.py", "--quick", "--out", out, "--no-progress", timeout=600, timed=True
    )
    r = json.loads((out / "results.json").read_text())
    assert set(r["models"]) == {"seq2seq", "transformer"}
    assert r["wall_seconds"] < 120, r["wall_seconds"]


DIGITS_TINY = ["--d-model", 16, "--heads", 2, "--layers", 1, "--hidden", 8, "--batch", 16]


def test_digits_smoke(tmp_path, fast_compile_env):
    pytest.importorskip("sklearn")
    out = tmp_path / "digits"
    models = "lstm_attention,lstm_last,vit_learned,vit_rope_2d,svc,logreg"
    run_script(
        "digits.py", "--models", models, "--seeds", 2, "--steps", 3, "--eval-every", 2,
        "--show", 3, *DIGITS_TINY, "--out", out, "--no-progress", env=fast_compile_env,
    )  # fmt: skip
    r = json.loads((out / "results.json").read_text())
    assert list(r["results"]) == models.split(",")
    assert r["settings"]["split"]["num_train"] + r["settings"]["split"]["num_test"] == 1797
    assert {"jax", "devices", "python"} <= set(r["environment"])
    for name, m in r["results"].items():
        assert {"accuracy", "mean", "std", "num_params", "train_seconds"} <= set(m), name
        assert len(m["accuracy"]) == (1 if name in ("svc", "logreg") else 2), name
        assert all(0.0 <= a <= 1.0 for a in m["accuracy"]) and m["num_params"] > 0, name
    assert r["results"]["svc"]["mean"] > 0.95 and r["results"]["svc"]["std"] == 0.0
    for name in ("accuracy.png", "pooling_weights.png", "rollout.png", "results.md"):
        assert (out / name).stat().st_size > 0, name
    assert "| ViT, 2-D RoPE (`vit_rope_2d`) |" in (out / "results.md").read_text()


@pytest.mark.slow
def test_digits_quick_under_2_minutes(tmp_path):
    pytest.importorskip("sklearn")
    out = tmp_path / "digits"
    run_script("digits.py", "--quick", "--out", out, "--no-progress", timeout=600, timed=True)
    r = json.loads((out / "results.json").read_text())
    assert r["wall_seconds"] < 120, r["wall_seconds"]
    assert (out / "rollout.png").exists() and (out / "pooling_weights.png").exists()
