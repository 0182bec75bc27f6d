"""benchmarks/flex.py at tiny shapes, run as a user runs it: a subprocess, from another folder.
Checks that it finishes, writes its outputs with the documented keys, and ends bad flags in
one line with exit status 2 before JAX compiles anything."""

import importlib.util
import json
import pathlib
import re

import pytest
import script_helpers

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "flex.py"


def run_script(*args, cwd, timeout=300):
    return script_helpers.run_script(SCRIPT, *args, cwd=cwd, timeout=timeout, JAX_LOG_COMPILES="1")


def check_outputs(out: pathlib.Path, cases: list[str], *, torch: bool, memory: bool) -> dict:
    assert (out / "flex.png").stat().st_size > 0
    assert "| case | ours-mod fwd ms |" in (out / "flex.md").read_text()
    result = json.loads((out / "flex.json").read_text())
    assert set(result) >= {
        "environment",
        "config",
        "targets",
        "rows",
        "full",
        "memory",
        "timings",
        "agreement_ok",
        "agreement_failures",
    }
    env = result["environment"]
    assert {"date", "python", "jax", "jaxlib", "cpu_count", "command", "machine"} <= set(env)
    assert result["agreement_ok"] is True, result["agreement_failures"]
    assert [r["case"] for r in result["rows"]] == cases
    for r in result["rows"]:
        for key in (
            "mod_fwd_ms",
            "mod_fwd_cpu_ms",
            "builtin_fwd_ms",
            "mod_fwdbwd_ms",
            "builtin_fwdbwd_ms",
            "mod_block_mask_ms",
            "mod_over_builtin_fwd",
            "mod_over_builtin_fwdbwd",
            "block_mask_sparsity",
        ):
            assert r[key] > 0 or key == "block_mask_sparsity", (r["case"], key)
        agree = r["agreement"]
        assert agree["ok"] and agree["mod_vs_builtin_out"] <= agree["out_tol"]
        assert agree["mod_vs_builtin_grads"] <= agree["grads_tol"]
        if torch:
            assert r["torch_fwd_ms"] > 0 and r["mod_over_torch_fwd"] > 0
            assert agree["mod_vs_torch_out"] <= agree["out_tol"]
            assert "torch_fwdbwd" in r
        if memory:
            assert r["mod_fwdbwd_peak_mb"] > 0 and r["builtin_fwdbwd_peak_mb"] > 0
    assert result["full"]["ours_fwd_ms"] > 0
    if "document" in cases:
        doc = next(r for r in result["rows"] if r["case"] == "document")
        assert doc["document_over_full_fwd"] > 0
    for t in result["timings"]:
        assert {"case", "impl", "mode", "wall_ms", "cpu_ms", "wall_ms_runs", "cpu_ms_runs"} <= set(
            t
        )
        assert len(t["wall_ms_runs"]) == result["config"]["repeats"]
    return result


def test_flex_benchmark_smoke(tmp_path):
    """The document case (and the full reference) at T=1024: 2 x 4 query x key blocks, so
    blocks are skipped; no torch, no memory, one repeat. All cases: the slow test below."""
    out = tmp_path / "out"
    proc = run_script(
        "--shape=1x1024x1x16",
        "--cases=document",
        "--repeats=1",
        "--warmup=0",
        "--no-torch",
        "--no-memory",
        f"--out={out}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| document |" in proc.stdout and "| full non-causal (reference) |" in proc.stdout
    result = check_outputs(out, ["document"], torch=False, memory=False)
    assert result["memory"] is None and result["config"]["torch"] is False


@pytest.mark.slow
def test_flex_benchmark_all_cases_torch_memory(tmp_path):
    """Every case, with the PyTorch peer (when installed) and the memory subprocesses."""
    torch = importlib.util.find_spec("torch") is not None
    out = tmp_path / "out"
    proc = run_script(
        "--shape=1x1024x2x16",
        "--memory-shape=1x1024x2x16",
        "--repeats=1",
        "--warmup=1",
        "--window=100",
        "--prefix=300",
        f"--out={out}",
        cwd=tmp_path,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    cases = ["causal", "alibi", "document", "sliding_window", "prefix_lm"]
    result = check_outputs(out, cases, torch=torch, memory=True)
    assert result["config"]["torch"] is torch


@pytest.mark.parametrize(
    "args, pattern",
    [
        (["--shape", "1x4096x8"], "--shape takes one BxTxNxH"),
        (["--shape", "1x4096x8x64,1x1024x8x64"], "--shape takes one BxTxNxH"),
        (["--memory-shape", "0x16384x8x64"], "--memory-shape takes one BxTxNxH"),
        (["--cases", "causal,nope"], r"--cases: unknown \['nope'\]"),
        (["--repeats", "0"], "--repeats must be an int >= 1"),
        (["--warmup", "-1"], "--warmup must be an int >= 0"),
        (["--schedule", "random"], "--schedule: invalid choice"),
        (["--documents", "0"], r"--documents must be an int in \[1, T"),
        (["--window", "-1"], "--window must be an int >= 0"),
    ],
)
def test_flex_benchmark_bad_flags(tmp_path, args, pattern):
    proc = run_script(*args, "--out", tmp_path / "out", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Compiling" not in proc.stderr, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("flex.py: error: ") and re.search(pattern, line), line
    assert not (tmp_path / "out").exists()
