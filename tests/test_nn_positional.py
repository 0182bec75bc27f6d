"""attention_jax.nn positional modules: parameter shapes, and outputs equal to the functional
core called with the module's own parameters."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from flax import nnx

import attention_jax as aj
from attention_jax.nn import LearnedPositionalEmbedding, T5RelativeBias


class LearnedPositionalEmbeddingTest(chex.TestCase):
    def test_param_shape_and_dtype(self):
        module = LearnedPositionalEmbedding(16, 8, rngs=nnx.Rngs(0), param_dtype=jnp.bfloat16)
        chex.assert_shape(module.embedding[...], (16, 8))
        self.assertEqual(module.embedding[...].dtype, jnp.bfloat16)
        params = nnx.state(module, nnx.Param)
        self.assertEqual(jax.tree.leaves(params)[0].shape, (16, 8))

    @parameterized.parameters(False, True)
    def test_lookup_matches_table(self, jit):
        module = LearnedPositionalEmbedding(16, 8, rngs=nnx.Rngs(1))
        positions = np.array([[0, 3, 15], [7, 7, 2]])
        call = nnx.jit(lambda m, p: m(p)) if jit else (lambda m, p: m(p))
        out = call(module, jnp.asarray(positions))
        chex.assert_shape(out, (2, 3, 8))
        table = np.asarray(module.embedding[...])
        chex.assert_trees_all_close(out, table[positions])

    def test_out_of_range_positions_are_clamped(self):
        module = LearnedPositionalEmbedding(4, 2, rngs=nnx.Rngs(2))
        table = np.asarray(module.embedding[...])
        out = nnx.jit(lambda m, p: m(p))(module, jnp.array([-3, 4, 100]))
        chex.assert_trees_all_close(out, table[[0, 3, 3]])

    def test_add_to_sinusoidal_shape(self):
        module = LearnedPositionalEmbedding(32, 6, rngs=nnx.Rngs(3))
        positions = jnp.arange(5)
        out = module(positions) + aj.sinusoidal_encoding(positions, 6)
        chex.assert_shape(out, (5, 6))

    def test_grad_reaches_looked_up_rows_only(self):
        module = LearnedPositionalEmbedding(6, 3, rngs=nnx.Rngs(4))
        grads = nnx.grad(lambda m: jnp.sum(m(jnp.array([1, 1, 4]))))(module)
        expected = np.zeros((6, 3))
        expected[1], expected[4] = 2.0, 1.0
        chex.assert_trees_all_close(grads.embedding[...], expected)

    def test_float_positions_raise(self):
        module = LearnedPositionalEmbedding(4, 2, rngs=nnx.Rngs(0))
        with pytest.raises(
            TypeError,
            match=r"^LearnedPositionalEmbedding: positions must be an integer array, got float32 "
            r"array of shape \(3,\)\.$",
        ):
            module(jnp.arange(3.0))

    def test_bad_max_len_raises(self):
        with pytest.raises(
            ValueError, match=r"^LearnedPositionalEmbedding: max_len must be an int >= 1, got 0\.$"
        ):
            LearnedPositionalEmbedding(0, 2, rngs=nnx.Rngs(0))


class T5RelativeBiasTest(chex.TestCase):
    @parameterized.parameters((True, 32, 128), (False, 16, 40))
    def test_matches_functional_with_own_table(self, bidirectional, num_buckets, max_distance):
        module = T5RelativeBias(3, num_buckets, max_distance, bidirectional, rngs=nnx.Rngs(5))
        chex.assert_shape(module.table[...], (num_buckets, 3))
        q, k = jnp.arange(4) + 60, jnp.arange(0, 80, 7)
        out = nnx.jit(lambda m, q, k: m(q, k))(module, q, k)
        chex.assert_shape(out, (3, 4, k.shape[0]))
        expected = aj.t5_relative_bias(
            module.table[...], q, k, bidirectional=bidirectional, max_distance=max_distance
        )
        chex.assert_trees_all_close(out, expected)

    def test_bound_method_is_a_bias_fn(self):
        module = T5RelativeBias(2, rngs=nnx.Rngs(6))
        bias_fn = module.__call__
        positions = jnp.arange(8)
        full = bias_fn(positions, positions)
        chex.assert_trees_all_close(bias_fn(positions[4:], positions[:4]), full[:, 4:, :4])
        partial_fn = functools.partial(aj.t5_relative_bias, module.table[...])
        chex.assert_trees_all_close(partial_fn(positions, positions), full)

    def test_batched_positions_give_a_bias_per_example(self):
        module = T5RelativeBias(2, 8, 16, bidirectional=False, rngs=nnx.Rngs(8))
        q = jnp.array([[3, 4, 5], [0, 1, 2]])
        k = jnp.array([[0, 1, 2, 3, 4, 5], [0, 0, 1, 1, 2, 2]])
        out = module(q, k)
        chex.assert_shape(out, (2, 2, 3, 6))
        for b in range(2):
            chex.assert_trees_all_close(out[b], module(q[b], k[b]))

    def test_grad_flows_to_table(self):
        module = T5RelativeBias(2, 8, 16, rngs=nnx.Rngs(7))
        grads = nnx.grad(lambda m: jnp.sum(m(jnp.arange(3), jnp.arange(3))))(module)
        chex.assert_shape(grads.table[...], (8, 2))
        # 9 (query, key) pairs per head, each adding 1 to its bucket's row.
        chex.assert_trees_all_close(jnp.sum(grads.table[...], axis=0), jnp.full((2,), 9.0))

    def test_bad_num_heads_raises(self):
        with pytest.raises(
            ValueError, match=r"^T5RelativeBias: num_heads must be an int >= 1, got 0\.$"
        ):
            T5RelativeBias(0, rngs=nnx.Rngs(0))

    def test_bad_bucket_config_raises_at_construction(self):
        with pytest.raises(ValueError, match="T5RelativeBias: max_distance must be an int >"):
            T5RelativeBias(2, 32, -1, rngs=nnx.Rngs(0))
