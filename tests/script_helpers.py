"""Helpers for the tests that run a script as a user does (imported as ``script_helpers``:
pytest puts this folder on ``sys.path``)."""

import os
import subprocess
import sys


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
