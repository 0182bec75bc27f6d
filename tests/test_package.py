"""Package boundaries: what `import attention_jax` loads, and every submodule by its name."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
import types

import attention_jax

HEAVY = ("flax", "optax", "orbax", "tensorboardX", "matplotlib", "tqdm")


def test_core_import_loads_no_heavy_dependency():
    # A fresh interpreter: this test process has imported flax already.
    code = (
        "import sys, attention_jax\n"
        f"heavy = {HEAVY!r}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]", out.stdout


def test_generate_is_reachable_lazily():
    from attention_jax import nn

    assert attention_jax.generate is nn.generate
    assert attention_jax.validate_tokens is nn.validate_tokens


def _submodules():
    for info in pkgutil.walk_packages(attention_jax.__path__, "attention_jax."):
        yield info.name


def test_every_submodule_is_importable_under_its_own_name():
    names = list(_submodules())
    assert "attention_jax.normalizers" in names and "attention_jax.nn.generation" in names
    for name in names:
        module = importlib.import_module(name)
        assert isinstance(module, types.ModuleType), name
        assert module.__name__ == name


def test_no_submodule_is_shadowed_by_a_function():
    # `import attention_jax.x as m` must give the module, not a same-named attribute.
    for name in _submodules():
        parent, _, leaf = name.rpartition(".")
        attr = getattr(importlib.import_module(parent), leaf)
        assert isinstance(attr, types.ModuleType), f"{parent}.{leaf} is {attr!r}"
