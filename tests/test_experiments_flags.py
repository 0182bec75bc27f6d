"""Bad flags of the experiment and benchmark scripts end in one line and exit status 2
(argparse's ``parser.error``), before any data is downloaded and before JAX compiles
anything; never in a traceback. Each case runs the script as ``__main__`` as a new user
would, from a folder other than the repository, with the script's own folder first on
``sys.path``. The cases of one test share one fresh interpreter (importing JAX is most of a
case's time), each with its own ``stderr``."""

import json
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


# Runs each case of a JSON list [[script, arg, ...], ...] as ``__main__``; writes
# [[exit status, stderr], ...] to the file named by the last argument. stderr is redirected
# at the file-descriptor level, so JAX's compile log (a handler on the original stream) and
# argparse's message land in the case's own capture.
DRIVER = """
import json, os, runpy, sys, tempfile, traceback
cases, out, results = json.loads(sys.argv[1]), sys.argv[2], []
for script, *args in cases:
    sys.argv, sys.path[0] = [script, *args], os.path.dirname(script)
    with tempfile.TemporaryFile("w+") as capture:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            runpy.run_path(script, run_name="__main__")
            status = 0
        except SystemExit as e:
            status = e.code if isinstance(e.code, int) else int(e.code is not None)
        except BaseException:
            traceback.print_exc()
            status = 1
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        results.append([status, capture.read()])
with open(out, "w") as f:
    json.dump(results, f)
"""


def run_bad_cases(*cases, cwd) -> list[str]:
    """Runs each case ``(script, arg, ...)`` (``script`` relative to the repository) in one
    fresh interpreter; asserts exit status 2, no traceback and no compilation for each, and
    returns their error lines."""
    cases = [[str(REPO / script), *map(str, args)] for script, *args in cases]
    results = pathlib.Path(cwd) / "bad_flags_results.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_LOG_COMPILES="1")
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(cases), str(results)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120 + 30 * len(cases),
    )
    assert proc.returncode == 0 and results.exists(), proc.stderr[-3000:]
    lines = []
    for (script, *args), (status, stderr) in zip(
        cases, json.loads(results.read_text()), strict=True
    ):
        what = f"{pathlib.Path(script).name} {' '.join(args)}\n{stderr[-3000:]}"
        assert status == 2, what
        assert "Traceback" not in stderr and "Compiling" not in stderr, what
        last = stderr.strip().splitlines()[-1]
        assert last.startswith(f"{pathlib.Path(script).name}: error: "), what
        lines.append(last)
    results.unlink()
    return lines


def run_bad(script: str, *args, cwd) -> str:
    """:func:`run_bad_cases` of one case."""
    return run_bad_cases((script, *args), cwd=cwd)[0]


def check(line: str, pattern: str) -> None:
    assert re.search(pattern, line), line


def test_char_lm_missing_and_empty_data(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.touch()
    missing, empty = run_bad_cases(
        ("experiments/char_lm.py", "--data", "/nonexistent.txt"),
        ("experiments/char_lm.py", "--data", empty),
        cwd=tmp_path,
    )
    assert missing.endswith(
        "error: --data /nonexistent.txt: no such file; pass --data PATH to a UTF-8 text file"
    )
    check(empty, r"--data \S+empty.txt: the file is empty; pass --data PATH")


def test_char_lm_failed_download_says_pass_data(tmp_path):
    cache = tmp_path / "cache"
    url = (tmp_path / "nowhere" / "input.txt").as_uri()  # fails at once, no network
    line = run_bad(
        "experiments/char_lm.py", "--cache-dir", cache, "--download-url", url, cwd=tmp_path
    )
    check(line, rf"could not download Tiny Shakespeare from {re.escape(url)} \(.*No such file")
    assert line.endswith("; pass --data PATH to a local copy")
    assert list(cache.iterdir()) == []


CHAR_LM_BAD_RANGES = [
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
]


@pytest.fixture(scope="module")
def char_lm_range_errors(tmp_path_factory):
    """The error line of each of ``CHAR_LM_BAD_RANGES``, from one interpreter."""
    # --data names no file: the flags are checked before it is looked at.
    cases = [
        ("experiments/char_lm.py", "--data", "/nonexistent.txt", *flags)
        for flags, _ in CHAR_LM_BAD_RANGES
    ]
    lines = run_bad_cases(*cases, cwd=tmp_path_factory.mktemp("char_lm_ranges"))
    return {tuple(flags): line for (flags, _), line in zip(CHAR_LM_BAD_RANGES, lines, strict=True)}


@pytest.mark.parametrize("flags, pattern", CHAR_LM_BAD_RANGES)
def test_char_lm_bad_ranges_come_before_the_data(char_lm_range_errors, flags, pattern):
    check(char_lm_range_errors[tuple(flags)], pattern)


def test_char_lm_mesh_and_block_checked_against_the_job_and_text(tmp_path, text_file):
    mesh, block = run_bad_cases(
        ("experiments/char_lm.py", "--data", text_file, "--mesh", "2x4", "--context-parallel",
         "ring", "--block", "16"),
        ("experiments/char_lm.py", "--data", text_file, "--block", 2000),
        cwd=tmp_path,
    )  # fmt: skip
    check(mesh, r"--mesh 2x4 needs 8 devices, this job has 1 \(on one CPU: XLA_FLAGS=")
    check(
        block,
        r"--block 2000 must be below the length of each split of --data \S+ \(900 training "
        r"and 100 validation characters\); lower --block or pass --data PATH to a longer text",
    )


def test_synthetic_bad_flags(tmp_path):
    length, heads = run_bad_cases(
        ("experiments/synthetic.py", "--task", "mqar", "--length", 9, "--out", "x"),
        ("experiments/synthetic.py", "--demo", "--heads", 3),
        cwd=tmp_path,
    )
    check(length, r"--length must be <= 8 for --task mqar with --symbols 16 .* got 9$")
    check(heads, r"--d-model 64 must be divisible by --heads 3")
    assert not (tmp_path / "x").exists() and not (tmp_path / "out").exists()


def test_length_generalization_bad_flags(tmp_path):
    fraction, rotated = run_bad_cases(
        ("experiments/length_generalization.py", "--arms", "none,rope_2"),
        ("experiments/length_generalization.py", "--arms", "rope_0.1"),
        cwd=tmp_path,
    )
    check(fraction, r"--arms rope_2: bad arm 'rope_2': rope_<f> needs a fraction f in \(0, 1\]$")
    check(rotated, r"--arms rope_0.1: TransformerConfig: .*1.6 rotated dims")


def test_lm_extrapolation_bad_flags(tmp_path, text_file):
    script = "experiments/lm_extrapolation.py"
    missing, block, short = run_bad_cases(
        (script, "--data", "/nonexistent.txt"),
        # Flags for the char_lm runs are checked too, before any data is read.
        (script, "--data", "/nonexistent.txt", "--block", 0),
        (script, "--data", text_file, "--block", 16, "--eval-lengths", "16,512"),
        cwd=tmp_path,
    )
    check(missing, r"--data /nonexistent.txt: no such file; pass --data PATH")
    check(block, r"--block must be an int >= 1, got 0$")
    check(short, r"validation split of --data \S+ \(100 characters\) is shorter than one")


def test_benchmark_bad_flags(tmp_path):
    shapes, impls, run, data = run_bad_cases(
        ("benchmarks/attention.py", "--shapes", "1x2x3"),
        ("benchmarks/attention.py", "--impls", "flash,fast"),
        ("benchmarks/char_lm_eval_spread.py", "--run", tmp_path),
        ("benchmarks/minimal_char_lm.py", "--data", "/nonexistent.txt"),
        cwd=tmp_path,
    )
    check(shapes, r"--shapes takes BxTxNxH items of positive integers, got '1x2x3'$")
    check(impls, r"--impls: unknown \['fast'\]; choose from jax.nn,")
    check(run, r"--run \S+: no metrics.json; pass --run PATH to the --out folder")
    check(data, r"--data /nonexistent.txt: no such file; pass --data PATH")


def test_variants_bad_flags(tmp_path):
    script = "experiments/variants.py"
    variants, arms, attention, mla = run_bad_cases(
        (script, "--variants", "softmax,linear"),
        (script, "--extrapolation-arms", "rope,xpos"),
        (script, "--attention", "mla"),
        # The variant's config is checked before any data is read: MLA needs an even RoPE width.
        (script, "--variants", "mla", "--rope-head-dim", 3),
        cwd=tmp_path,
    )
    check(variants, r"unknown variant\(s\) \['linear'\]; choose from \('softmax', 'sinks'")
    check(arms, r"unknown extrapolation arm\(s\) \['xpos'\]")
    check(attention, r"--attention is set per run by this script$")
    check(mla, r"the model flags make no valid model: TransformerConfig: .*rope_head_dim|H=3")


def test_char_lm_variant_flags_are_checked(tmp_path):
    mla, forgetting = run_bad_cases(
        ("experiments/char_lm.py", "--attention", "mla"),
        ("experiments/char_lm.py", "--attention", "forgetting", "--sinks"),
        cwd=tmp_path,
    )
    check(mla, r"kv_latent_dim must be an int >= 1 with attention='mla'")
    check(forgetting, r"sinks must be False with attention='forgetting'")


def test_mqar_bad_flags(tmp_path):
    script = "experiments/mqar.py"
    (tmp_path / "other.json").write_text('{"runs": []}')
    mixers, seq_lens, d_models, chunk, missing, other = run_bad_cases(
        (script, "--mixers", "softmax,mamba"),
        (script, "--seq-lens", "64,100"),
        (script, "--d-models", "40"),
        (script, "--chunk-size", 0),
        (script, "--merge", "missing.json"),
        (script, "--merge", "other.json"),
        cwd=tmp_path,
    )
    check(mixers, r"unknown mixer\(s\) \['mamba'\]; choose from \('softmax', 'linear'")
    check(seq_lens, r"--seq-lens 100: must be a multiple of 16 \(pairs = n / 16\) below --vocab$")
    check(d_models, r"--d-models 40: must be a multiple of --head-dim 16$")
    check(chunk, r"--chunk-size must be an int >= 1, got 0$")
    check(missing, r"--merge missing.json: no such file$")
    check(other, r"--merge other.json: not a results.json of mqar.py with runs$")


def test_date_translation_bad_flags(tmp_path):
    script = "experiments/date_translation.py"
    models, sizes, hidden, heads = run_bad_cases(
        (script, "--models", "seq2seq,lstm"),
        (script, "--train-size", 30000, "--eval-size", 7000),
        (script, "--hidden-dim", 0),
        (script, "--d-model", 30, "--heads", 4),
        cwd=tmp_path,
    )
    check(models, r"--models: unknown model\(s\) \['lstm'\]; choose from \('seq2seq', 'trans")
    check(sizes, r"--train-size 30000 plus --eval-size 7000 must be at most 36525")
    check(hidden, r"--hidden-dim must be an int >= 1, got 0$")
    check(heads, r"--d-model 30 must be divisible by --heads 4")


def test_digits_bad_flags(tmp_path):
    script = "experiments/digits.py"
    models, seeds, vit = run_bad_cases(
        (script, "--models", "lstm_attention,cnn"),
        (script, "--seeds", 0),
        # Each ViT's constructor checks, traced before any data is read: 2-D RoPE rotates
        # pairs of rows and of columns, so a head needs a multiple of 4 dimensions.
        (script, "--models", "vit_rope_2d", "--d-model", 24),
        cwd=tmp_path,
    )
    check(models, r"--models: unknown model\(s\) \['cnn'\]; choose from \('lstm_attention', ")
    check(seeds, r"--seeds must be an int >= 1, got 0$")
    check(vit, r"the ViT flags make no valid model for vit_rope_2d: .*head_dim")
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
