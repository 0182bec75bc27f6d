"""Bad flags of the experiment and benchmark scripts end in one line and exit status 2
(argparse's ``parser.error``), before any data is downloaded and before JAX compiles
anything; never in a traceback. Each case runs the script as a new user would: a
subprocess, from a folder other than the repository."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def text_file(tmp_path):
    """A short UTF-8 text: 1,000 characters, so 100 validation characters."""
    path = tmp_path / "short.txt"
    path.write_text(("to be or not to be, that is the question\n" * 30)[:1000])
    return path


def run_bad(script: str, *args, cwd) -> str:
    """Runs ``script`` with ``args``; asserts exit status 2, no traceback and no compilation,
    and returns the error line."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_LOG_COMPILES="1")
    proc = subprocess.run(
        [sys.executable, str(REPO / script), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "Compiling" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith(f"{pathlib.Path(script).name}: error: "), proc.stderr[-3000:]
    return lines[-1]


def check(line: str, pattern: str) -> None:
    assert re.search(pattern, line), line


def test_char_lm_missing_and_empty_data(tmp_path):
    line = run_bad("experiments/char_lm.py", "--data", "/nonexistent.txt", cwd=tmp_path)
    assert line.endswith(
        "error: --data /nonexistent.txt: no such file; pass --data PATH to a UTF-8 text file"
    )
    empty = tmp_path / "empty.txt"
    empty.touch()
    line = run_bad("experiments/char_lm.py", "--data", empty, cwd=tmp_path)
    check(line, r"--data \S+empty.txt: the file is empty; pass --data PATH")


def test_char_lm_failed_download_says_pass_data(tmp_path):
    cache = tmp_path / "cache"
    url = (tmp_path / "nowhere" / "input.txt").as_uri()  # fails at once, no network
    line = run_bad(
        "experiments/char_lm.py", "--cache-dir", cache, "--download-url", url, cwd=tmp_path
    )
    check(line, rf"could not download Tiny Shakespeare from {re.escape(url)} \(.*No such file")
    assert line.endswith("; pass --data PATH to a local copy")
    assert list(cache.iterdir()) == []


@pytest.mark.parametrize(
    "flags, pattern",
    [
        (["--steps", "-3"], r"--steps must be an int >= 1, got -3$"),
        (["--lr", "-1"], r"--lr must be a finite number > 0, got -1.0$"),
        (["--batch", "0"], r"--batch must be an int >= 1, got 0$"),
        (["--d-model", "130"], r"--d-model 130 must be divisible by --heads 4"),
        (["--kv-heads", "3"], r"--heads 4 must be divisible by --kv-heads 3"),
        (["--dropout", "1"], r"--dropout must be a number in \[0, 1\), got 1.0$"),
        (["--context-parallel", "ring"], r"--context-parallel needs --mesh DATAxSEQUENCE"),
        (["--mesh", "2by4"], r"--mesh must be DATAxSEQUENCE with positive sizes"),
        (["--mesh", "1x4"], r"--mesh 1x4 splits sequences: choose --context-parallel$"),
        (
            ["--mesh", "2x4", "--context-parallel", "ring", "--block", "20"],
            r"--block 20 must be divisible by 2 x the sequence axis = 8",
        ),
    ],
)
def test_char_lm_bad_ranges_come_before_the_data(tmp_path, flags, pattern):
    # --data names no file: the flags are checked before it is looked at.
    line = run_bad("experiments/char_lm.py", "--data", "/nonexistent.txt", *flags, cwd=tmp_path)
    check(line, pattern)


def test_char_lm_mesh_larger_than_the_job(tmp_path, text_file):
    flags = ["--mesh", "2x4", "--context-parallel", "ring", "--block", "16"]
    line = run_bad("experiments/char_lm.py", "--data", text_file, *flags, cwd=tmp_path)
    check(line, r"--mesh 2x4 needs 8 devices, this job has 1 \(on one CPU: XLA_FLAGS=")


def test_char_lm_block_longer_than_the_text(tmp_path, text_file):
    line = run_bad("experiments/char_lm.py", "--data", text_file, "--block", 2000, cwd=tmp_path)
    check(
        line,
        r"--block 2000 must be below the length of each split of --data \S+ \(900 training "
        r"and 100 validation characters\); lower --block or pass --data PATH to a longer text",
    )


def test_synthetic_bad_flags(tmp_path):
    line = run_bad(
        "experiments/synthetic.py", "--task", "mqar", "--length", 9, "--out", "x", cwd=tmp_path
    )
    check(line, r"--length must be <= 8 for --task mqar with --symbols 16 .* got 9$")
    line = run_bad("experiments/synthetic.py", "--demo", "--heads", 3, cwd=tmp_path)
    check(line, r"--d-model 64 must be divisible by --heads 3")
    assert not (tmp_path / "x").exists() and not (tmp_path / "out").exists()


def test_length_generalization_bad_flags(tmp_path):
    line = run_bad("experiments/length_generalization.py", "--arms", "none,rope_2", cwd=tmp_path)
    check(line, r"--arms rope_2: bad arm 'rope_2': rope_<f> needs a fraction f in \(0, 1\]$")
    line = run_bad("experiments/length_generalization.py", "--arms", "rope_0.1", cwd=tmp_path)
    check(line, r"--arms rope_0.1: TransformerConfig: .*1.6 rotated dims")


def test_lm_extrapolation_bad_flags(tmp_path, text_file):
    script = "experiments/lm_extrapolation.py"
    line = run_bad(script, "--data", "/nonexistent.txt", cwd=tmp_path)
    check(line, r"--data /nonexistent.txt: no such file; pass --data PATH")
    # Flags for the char_lm runs are checked too, before any data is read.
    line = run_bad(script, "--data", "/nonexistent.txt", "--block", 0, cwd=tmp_path)
    check(line, r"--block must be an int >= 1, got 0$")
    line = run_bad(
        script, "--data", text_file, "--block", 16, "--eval-lengths", "16,512", cwd=tmp_path
    )
    check(line, r"validation split of --data \S+ \(100 characters\) is shorter than one")


def test_benchmark_bad_flags(tmp_path):
    line = run_bad("benchmarks/attention.py", "--shapes", "1x2x3", cwd=tmp_path)
    check(line, r"--shapes takes BxTxNxH items of positive integers, got '1x2x3'$")
    line = run_bad("benchmarks/attention.py", "--impls", "flash,fast", cwd=tmp_path)
    check(line, r"--impls: unknown \['fast'\]; choose from jax.nn,")
    line = run_bad("benchmarks/char_lm_eval_spread.py", "--run", tmp_path, cwd=tmp_path)
    check(line, r"--run \S+: no metrics.json; pass --run PATH to the --out folder")
    line = run_bad("benchmarks/minimal_char_lm.py", "--data", "/nonexistent.txt", cwd=tmp_path)
    check(line, r"--data /nonexistent.txt: no such file; pass --data PATH")


def test_variants_bad_flags(tmp_path):
    script = "experiments/variants.py"
    line = run_bad(script, "--variants", "softmax,linear", cwd=tmp_path)
    check(line, r"unknown variant\(s\) \['linear'\]; choose from \('softmax', 'sinks'")
    line = run_bad(script, "--extrapolation-arms", "rope,xpos", cwd=tmp_path)
    check(line, r"unknown extrapolation arm\(s\) \['xpos'\]")
    line = run_bad(script, "--attention", "mla", cwd=tmp_path)
    check(line, r"--attention is set per run by this script$")
    # The variant's config is checked before any data is read: MLA needs an even RoPE width.
    line = run_bad(script, "--variants", "mla", "--rope-head-dim", 3, cwd=tmp_path)
    check(line, r"the model flags make no valid model: TransformerConfig: .*rope_head_dim|H=3")


def test_char_lm_variant_flags_are_checked(tmp_path):
    line = run_bad("experiments/char_lm.py", "--attention", "mla", cwd=tmp_path)
    check(line, r"kv_latent_dim must be an int >= 1 with attention='mla'")
    line = run_bad("experiments/char_lm.py", "--attention", "forgetting", "--sinks", cwd=tmp_path)
    check(line, r"sinks must be False with attention='forgetting'")


def test_mqar_bad_flags(tmp_path):
    script = "experiments/mqar.py"
    line = run_bad(script, "--mixers", "softmax,mamba", cwd=tmp_path)
    check(line, r"unknown mixer\(s\) \['mamba'\]; choose from \('softmax', 'linear'")
    line = run_bad(script, "--seq-lens", "64,100", cwd=tmp_path)
    check(line, r"--seq-lens 100: must be a multiple of 16 \(pairs = n / 16\) below --vocab$")
    line = run_bad(script, "--d-models", "40", cwd=tmp_path)
    check(line, r"--d-models 40: must be a multiple of --head-dim 16$")
    line = run_bad(script, "--chunk-size", 0, cwd=tmp_path)
    check(line, r"--chunk-size must be an int >= 1, got 0$")
    line = run_bad(script, "--merge", "missing.json", cwd=tmp_path)
    check(line, r"--merge missing.json: no such file$")
    (tmp_path / "other.json").write_text('{"runs": []}')
    line = run_bad(script, "--merge", "other.json", cwd=tmp_path)
    check(line, r"--merge other.json: not a results.json of mqar.py with runs$")


def test_date_translation_bad_flags(tmp_path):
    script = "experiments/date_translation.py"
    line = run_bad(script, "--models", "seq2seq,lstm", cwd=tmp_path)
    check(line, r"--models: unknown model\(s\) \['lstm'\]; choose from \('seq2seq', 'trans")
    line = run_bad(script, "--train-size", 30000, "--eval-size", 7000, cwd=tmp_path)
    check(line, r"--train-size 30000 plus --eval-size 7000 must be at most 36525")
    line = run_bad(script, "--hidden-dim", 0, cwd=tmp_path)
    check(line, r"--hidden-dim must be an int >= 1, got 0$")
    line = run_bad(script, "--d-model", 30, "--heads", 4, cwd=tmp_path)
    check(line, r"--d-model 30 must be divisible by --heads 4")


def test_digits_bad_flags(tmp_path):
    script = "experiments/digits.py"
    line = run_bad(script, "--models", "lstm_attention,cnn", cwd=tmp_path)
    check(line, r"--models: unknown model\(s\) \['cnn'\]; choose from \('lstm_attention', ")
    line = run_bad(script, "--seeds", 0, cwd=tmp_path)
    check(line, r"--seeds must be an int >= 1, got 0$")
    # Each ViT's constructor checks, traced before any data is read: 2-D RoPE rotates
    # pairs of rows and of columns, so a head needs a multiple of 4 dimensions.
    line = run_bad(script, "--models", "vit_rope_2d", "--d-model", 24, cwd=tmp_path)
    check(line, r"the ViT flags make no valid model for vit_rope_2d: .*head_dim")
    assert not (tmp_path / "out").exists()


def test_digits_without_scikit_learn_says_how_to_install(tmp_path, monkeypatch):
    # A stand-in package, first on the path, that fails to import as a missing one would.
    fake = tmp_path / "fake"
    (fake / "sklearn").mkdir(parents=True)
    (fake / "sklearn" / "__init__.py").write_text("raise ImportError('no scikit-learn here')\n")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(fake), os.environ.get("PYTHONPATH")]))
    )
    line = run_bad("experiments/digits.py", "--quick", cwd=tmp_path)
    check(line, r"needs scikit-learn .*: pip install -e '\.\[experiments\]'$")
