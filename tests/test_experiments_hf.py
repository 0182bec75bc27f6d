"""experiments/hf_attention_maps.py on the tiny checkpoints of tests/fixtures/hf/, run as a
user runs it (a subprocess, from another folder); bad flags end in one line, exit status 2."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "experiments" / "hf_attention_maps.py"
FIXTURES = REPO / "tests" / "fixtures" / "hf"


def run(*args, cwd):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=300,
    )  # fmt: skip


@pytest.mark.parametrize("name", ["gpt2_tiny", "bert_tiny"])
def test_maps_of_a_tiny_checkpoint(tmp_path, name):
    out = tmp_path / "maps"
    proc = run(
        "--checkpoint", FIXTURES / name, "--tokens", "3,14,15,92,65,35", "--out", out, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads((out / "results.json").read_text())
    assert r["model"] == ("encoder" if name.startswith("bert") else "decoder")
    sinks = r["sink_share"]
    assert len(sinks) == 2 and all(len(row) == 4 for row in sinks)
    assert all(0.0 <= s <= 1.0 for row in sinks for s in row)
    for png in ("attention_maps.png", "rollout.png", "sinks.png"):
        assert (out / png).stat().st_size > 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--checkpoint", "/nowhere", "--tokens", "1"], "--checkpoint /nowhere: no config.json there"),
        (["--checkpoint", FIXTURES / "gpt2_tiny", "--tokens", "1,x"], "--tokens must be comma-separated ints"),
        (["--checkpoint", FIXTURES / "gpt2_tiny", "--tokens", "1,500"], "token id 500 is outside the vocabulary of 97"),
        (["--checkpoint", FIXTURES / "gpt2_tiny", "--prompt", "hi"], "--prompt"),
    ],
)  # fmt: skip
def test_bad_flags(tmp_path, args, message):
    proc = run(*args, "--out", tmp_path / "o", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("hf_attention_maps.py: error: ") and message in last, last
