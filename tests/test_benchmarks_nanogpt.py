"""benchmarks/nanogpt_compare.py, run as a user runs it (a subprocess, from another folder):
without a nanoGPT checkout it says so and exits 0; with the pinned one (``../shared/peers``)
and PyTorch it runs both programs for a few iterations and writes its results."""

import importlib.util
import json
import pathlib

import pytest
import script_helpers

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "nanogpt_compare.py"
NANOGPT = REPO.parent / "shared" / "peers" / "nanogpt"
DATA = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"


def run_script(*args, cwd, timeout=600):
    return script_helpers.run_script(SCRIPT, *args, cwd=cwd, timeout=timeout)


def test_without_nanogpt_it_says_so_and_exits_0(tmp_path):
    out = run_script("--nanogpt", tmp_path / "missing", "--out", tmp_path / "o", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "no nanoGPT checkout there" in out.stdout
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "flags, message",
    [(("--iters", "1"), "--iters must be >= 2"), (("--parts", "speed"), "--parts must name")],
)
def test_bad_flags_are_one_line_and_exit_2(tmp_path, flags, message):
    out = run_script(*flags, cwd=tmp_path)
    assert out.returncode == 2
    assert message in out.stderr.strip().splitlines()[-1]


@pytest.mark.slow
@pytest.mark.skipif(not (NANOGPT / "train.py").exists(), reason="no ../shared/peers/nanogpt")
@pytest.mark.skipif(not DATA.exists(), reason="no ../shared/data/tinyshakespeare.txt")
@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch not installed")
def test_a_short_comparison_writes_its_results(tmp_path):
    out = run_script(
        "--nanogpt", NANOGPT, "--data", DATA, "--iters", 3, "--repeats", 1, "--parts", "train",
        "--out", tmp_path / "o", cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "o" / "results.json").read_text())
    assert set(result) == {"environment", "summary", "runs"}
    (run,) = result["runs"]
    for who in ("nanogpt", "ours"):
        assert run[who]["ms_per_step"] > 0
    assert "| repeat | nanoGPT ms/iter |" in (tmp_path / "o" / "results.md").read_text()
