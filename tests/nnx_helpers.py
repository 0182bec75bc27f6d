"""Helpers shared by the tests of the NNX modules (imported as ``nnx_helpers``: pytest puts
this folder on ``sys.path``)."""

import functools

import jax
import numpy as np
from flax import nnx


def fast_jit(fn):
    """``jit`` of ``fn(module, *arrays)`` at XLA backend optimization level 0.

    The modules are tiny, so compiling dominates the runtime of these tests; the cheaper
    backend pass changes no semantics.
    """

    @functools.partial(
        jax.jit, static_argnums=0, compiler_options={"xla_backend_optimization_level": 0}
    )
    def run(graphdef, state, *args):
        return fn(nnx.merge(graphdef, state), *args)

    def call(module, *args):
        return run(*nnx.split(module), *args)

    return call


def dense(layer: nnx.Linear, x) -> np.ndarray:
    """float64 NumPy ``x W (+ b)`` of an ``nnx.Linear``."""
    y = np.asarray(x, np.float64) @ np.asarray(layer.kernel[...], np.float64)
    if layer.bias is not None:
        y = y + np.asarray(layer.bias[...], np.float64)
    return y
