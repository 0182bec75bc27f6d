"""benchmarks/linear.py: each timed function is the library call it names (the gradients of
``based`` are those of ``linear_attention`` with the Taylor map), Based only when asked, and
the script runs as a user runs it at a tiny shape."""

import json
import pathlib
import sys

import chex
import jax
import jax.numpy as jnp
import script_helpers

from attention_jax import linear_attention

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "linear.py"
sys.path.insert(0, str(SCRIPT.parent))

import linear  # noqa: E402


def test_based_times_the_taylor_map():
    q, k, v, ct = linear.make_inputs("based", 1, 10, 2, 4, "float32")
    got = linear.make_fn("based", 4)(q, k, v, ct)

    def loss(q, k, v):
        out = linear_attention(q, k, v, feature_map="taylor", chunk_size=4)
        return jnp.sum(out * ct)

    chex.assert_trees_all_close(
        got, jax.grad(loss, argnums=(0, 1, 2))(q, k, v), rtol=1e-4, atol=1e-6
    )
    assert "based" not in linear.DEFAULT_IMPLS and "based" in linear.ALL_IMPLS


def test_script_runs(tmp_path):
    out = tmp_path / "out"
    proc = script_helpers.run_script(
        SCRIPT,
        "--impls", "linear,based", "--lengths", "16", "--batch", "1", "--heads", "2",
        "--head-dim", "4", "--chunk", "8", "--repeats", "1", "--no-memory", "--out", str(out),
        cwd=tmp_path,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "linear_cpu.json").read_text())
    assert [(r["impl"], r["T"]) for r in result["rows"]] == [("linear", 16), ("based", 16)]
    assert all(r["fwdbwd_ms"] > 0 for r in result["rows"])
