"""Shared test configuration: float64 references, hypothesis profile, data location."""

import os
import pathlib

import jax
import pytest
import script_helpers
from hypothesis import HealthCheck, settings

# Cheaper XLA optimization for the whole suite (set before any backend starts; xdist
# workers inherit it), keeping the caller's own flags for what must run at full speed.
os.environ.setdefault(script_helpers.USER_XLA_FLAGS, os.environ.get("XLA_FLAGS", ""))
if script_helpers.FAST_COMPILE_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = " ".join(
        filter(None, [os.environ.get("XLA_FLAGS"), script_helpers.FAST_COMPILE_XLA_FLAGS])
    )

# References are computed in float64 NumPy; the library itself runs in float32.
jax.config.update("jax_enable_x64", False)

settings.register_profile(
    "ci",
    max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "8")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,
)
settings.load_profile("ci")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture
def tinyshakespeare_path():
    """Path to the shared Tiny Shakespeare corpus; skips the test when it is absent."""
    path = SHARED_DATA / "tinyshakespeare.txt"
    if not path.exists():
        pytest.skip(f"{path} not found")
    return path
