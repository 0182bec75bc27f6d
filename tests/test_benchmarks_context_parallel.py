"""benchmarks/context_parallel.py at tiny sizes, as a user runs it: a subprocess (it sets its
own host-device count before JAX starts), from another folder."""

import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "context_parallel.py"


def run(*args):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
        timeout=600,
    )


def test_tiny_run_writes_its_tables(tmp_path):
    proc = run(
        "--out", tmp_path, "--seq-len", 128, "--long-seq-len", 256, "--devices", "1,4",
        "--heads", 4, "--head-dim", 8,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "results.json").read_text())
    rows = {(r["P"], r["strategy"]): r for r in result["rows"]}
    assert set(rows) == {(1, "flash")} | {(4, s) for s in ("ring", "ulysses", "all_gather")}
    # Arguments per device shrink with P: the inputs are really split.
    assert rows[4, "ring"]["argument_mb"] * 4 == rows[1, "flash"]["argument_mb"]
    # Ring traffic per device: K, V forward and K, V, dK, dV backward, P steps of T/P
    # tokens (plus the int32 positions that travel with them).
    t, n, h = 128, 4, 8
    kv = 6 * t * n * h * 4 / 1e6
    assert kv <= rows[4, "ring"]["sent_mb"] <= 1.03 * kv
    assert {b["load_balance"] for b in result["balance"]} == {True, False}
    assert result["long"]["finite"] and result["long"]["P"] == 4
    assert (tmp_path / "context_parallel.png").stat().st_size > 0
    assert "| P | strategy |" in (tmp_path / "results.md").read_text()


def test_bad_flags():
    proc = run("--seq-len", 100, "--devices", "1,8")
    assert proc.returncode == 2
    assert "--seq-len 100 must be divisible by 2 x the largest P = 16" in proc.stderr
