"""Every notebook under notebooks/ runs top to bottom in a fresh kernel without errors."""

import os
import pathlib
import sys

import nbformat
import pytest
import script_helpers
from nbclient import NotebookClient

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
# Notebooks whose training loops run long enough for XLA's full optimization to pay for
# itself (about 1.5x faster in all here). The others compile many small programs and run each
# a few times: the suite's cheaper optimization saves them a quarter.
FULL_OPTIMIZATION = {"05_train_tiny_transformer.ipynb", "07_classic_attention.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch):
    # The kernel inherits this environment: the checkout under test comes first on the
    # path (whether or not the package is installed), and plots render off-screen.
    pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    monkeypatch.setenv("PYTHONPATH", pythonpath)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    if path.name in FULL_OPTIMIZATION:  # the caller's XLA_FLAGS, as a reader runs them
        monkeypatch.setenv("XLA_FLAGS", script_helpers.user_env()["XLA_FLAGS"])
    nb = nbformat.read(path, as_version=4)
    # Checks that the kernel runs this interpreter (jupyter_client swaps a "python" argv
    # for sys.executable) and imports the checkout; appended, so the file is untouched.
    nb.cells.append(
        nbformat.v4.new_code_cell(
            "import sys, attention_jax\n"
            f"assert sys.executable == {sys.executable!r}, sys.executable\n"
            f"assert attention_jax.__file__.startswith({str(REPO_ROOT)!r}), attention_jax.__file__"
        )
    )
    client = NotebookClient(
        nb,
        kernel_name="python3",
        timeout=300,
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error
