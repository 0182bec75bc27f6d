"""Helpers for the tests that run a script as a user does (imported as ``script_helpers``:
pytest puts this folder on ``sys.path``)."""

import os
import subprocess
import sys

# Most tests compile many small programs and run each once: cheaper LLVM optimization saves
# about a fifth of their time (tests/conftest.py adds these flags to XLA_FLAGS for the whole
# suite). Code that is timed or trains for long (the notebooks that train, the timed slow
# tests) runs with the caller's own XLA_FLAGS instead: see :func:`user_env`.
FAST_COMPILE_XLA_FLAGS = (
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
)
# Where conftest keeps the XLA_FLAGS the suite was started with.
USER_XLA_FLAGS = "ATTENTION_JAX_TESTS_USER_XLA_FLAGS"


def user_env(**env) -> dict:
    """``os.environ`` with the XLA_FLAGS the suite was started with (full optimization),
    plus ``env``."""
    return {**os.environ, "XLA_FLAGS": os.environ.get(USER_XLA_FLAGS, ""), **env}


def run_script(script, *args, cwd, timeout=300, **env):
    """``python script args...`` in ``cwd`` on the CPU backend, with ``env`` added to the
    environment; the completed process (text output captured)."""
    return subprocess.run(
        [sys.executable, str(script), *map(str, args)],
        capture_output=True,
        text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu", **env),
        cwd=cwd,
        timeout=timeout,
    )
