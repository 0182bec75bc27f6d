"""``Dense``: ``nnx.Linear`` computed as one 2-D product; same parameters, same values."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attention_jax.nn import Dense


@pytest.mark.parametrize("shape", [(5,), (3, 5), (2, 3, 5), (2, 1, 3, 5)])
@pytest.mark.parametrize("use_bias", [True, False])
def test_dense_equals_the_float64_product_and_nnx_linear(shape, use_bias):
    dense = Dense(5, 7, use_bias=use_bias, rngs=nnx.Rngs(0))
    linear = nnx.Linear(5, 7, use_bias=use_bias, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), shape)
    y = dense(x)
    chex.assert_shape(y, (*shape[:-1], 7))
    w = np.asarray(dense.kernel[...], np.float64)
    want = np.asarray(x, np.float64) @ w
    if use_bias:
        want = want + np.asarray(dense.bias[...], np.float64)
    chex.assert_trees_all_close(y, want.astype(np.float32), atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(y, linear(x), atol=1e-6, rtol=1e-6)


def test_dense_has_the_parameters_and_gradients_of_nnx_linear():
    dense = Dense(6, 4, rngs=nnx.Rngs(0))
    linear = nnx.Linear(6, 4, rngs=nnx.Rngs(0))
    # The same parameter tree (names, shapes, values): checkpoints of either load into the other.
    chex.assert_trees_all_equal(nnx.state(dense, nnx.Param), nnx.state(linear, nnx.Param))
    x = jax.random.normal(jax.random.key(2), (3, 5, 6))

    def loss(module, x):
        return jnp.sum(jnp.sin(module(x)))

    got = jax.jit(nnx.grad(loss, argnums=(0, 1)))(dense, x)
    want = nnx.grad(loss, argnums=(0, 1))(linear, x)
    chex.assert_trees_all_close(
        (nnx.state(got[0], nnx.Param), got[1]),
        (nnx.state(want[0], nnx.Param), want[1]),
        atol=1e-5,
        rtol=1e-5,
    )


def test_dense_keeps_the_compute_dtype():
    dense = Dense(4, 3, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    y = dense(jnp.ones((2, 5, 4), jnp.float32))
    assert y.dtype == jnp.bfloat16
    chex.assert_shape(y, (2, 5, 3))
