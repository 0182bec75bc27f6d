"""benchmarks/gpu_check.sh without a GPU: the shell script parses, its CPU dry run (``--cpu``)
writes every section's table, and without ``--cpu`` it refuses a machine with no GPU."""

import json
import os
import pathlib
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


def run_check(*args, timeout=300):
    import sys

    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHON=sys.executable)
    return subprocess.run(
        ["bash", str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
        timeout=timeout,
    )


def test_shell_syntax():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


def test_cpu_dry_run_writes_the_sections(tmp_path):
    sections = "tests,dispatch"
    proc = run_check("--cpu", "--out", tmp_path, "--sections", sections)
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = (tmp_path / "gpu_check.md").read_text()
    assert "Dry run on the CPU" in md
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert set(data) == set(sections.split(","))
    assert "collected" in data["tests"]["summary"]
    assert all("error" not in data[name] for name in data if isinstance(data[name], dict))
    assert all(row["picked"] in ("xla", "flash") for row in data["dispatch"])


@pytest.mark.slow
def test_cpu_dry_run_all_sections(tmp_path):
    proc = run_check("--cpu", "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert set(data) == {"tests", "attention", "dispatch", "train_step", "context_parallel"}
    assert {row["strategy"] for row in data["context_parallel"]} == {
        "flash",
        "ring",
        "ulysses",
        "all_gather",
    }
    assert (tmp_path / "attention" / "attention.png").stat().st_size > 0


def test_refuses_without_gpu_or_cpu_flag(tmp_path):
    proc = run_check("--out", tmp_path)
    assert proc.returncode == 2
    assert "no GPU found" in proc.stderr and "--cpu" in proc.stderr


def test_unknown_section_is_an_error(tmp_path):
    proc = run_check("--cpu", "--out", tmp_path, "--sections", "tests,speed")
    assert proc.returncode == 2
    assert "--sections" in proc.stderr and "speed" in proc.stderr
