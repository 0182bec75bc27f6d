"""benchmarks/flash_floor.py: its products-only loops visit every block once (checked against
a float64 NumPy product), and the script runs as a user runs it at a tiny shape."""

import json
import pathlib
import sys

import chex
import jax
import numpy as np
import script_helpers

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "flash_floor.py"
sys.path.insert(0, str(SCRIPT.parent))

import flash_floor  # noqa: E402


def test_products_only_covers_every_block():
    b, t, n, h = 2, 12, 3, 4
    keys = jax.random.split(jax.random.key(0), 4)
    q, k, v, d_out = (jax.random.normal(kk, (b, t, n, h)) for kk in keys)
    out, (dq, (dk, dv)) = flash_floor.products_only(b, t, n, h, 4, 3, "fwdbwd")(q, k, v, d_out)
    q64, k64, v64, do64 = (
        np.asarray(x, np.float64).transpose(0, 2, 1, 3) for x in (q, k, v, d_out)
    )
    s = q64 @ k64.swapaxes(-1, -2)  # [B, N, T, S], no softmax
    ds = do64 @ v64.swapaxes(-1, -2) + s
    expected = {
        "out": s @ v64,
        "dq": ds @ k64,
        "dk": ds.swapaxes(-1, -2) @ q64,
        "dv": s.swapaxes(-1, -2) @ do64,
    }
    # The loops' layouts: [nq, B, N, bq, H] for rows, [nk, B, N, H, bk] for the accumulators.
    got = {
        "out": np.asarray(out).transpose(1, 2, 0, 3, 4).reshape(b, n, t, h),
        "dq": np.asarray(dq).transpose(1, 2, 0, 3, 4).reshape(b, n, t, h),
        "dk": np.asarray(dk).transpose(1, 2, 0, 4, 3).reshape(b, n, t, h),
        "dv": np.asarray(dv).transpose(1, 2, 0, 4, 3).reshape(b, n, t, h),
    }
    chex.assert_trees_all_close(got, expected, rtol=1e-4, atol=1e-4)


def test_script_runs(tmp_path):
    out = tmp_path / "out"
    proc = script_helpers.run_script(
        SCRIPT,
        "--shape",
        "1x64x2x8",
        "--block-q",
        "32",
        "--block-k",
        "16",
        "--repeats",
        "1",
        "--no-torch",
        "--out",
        str(out),
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "flash_floor.json").read_text())
    assert result["blocks"] == [32, 16]
    assert [(r["mode"], r["what"]) for r in result["rows"]] == [
        ("fwd", "products only"),
        ("fwd", "flash"),
        ("fwdbwd", "products only"),
        ("fwdbwd", "flash"),
    ]
    assert all(r["ms"] > 0 for r in result["rows"])
    assert "| fwd | flash |" in (out / "flash_floor.md").read_text()
