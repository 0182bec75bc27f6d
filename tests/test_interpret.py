"""attention_jax.interpret.attention_rollout against a float64 NumPy loop over the formula

    A_l = normalize_rows(alpha I + (1 - alpha) reduce_heads(W_l)),  rollout = A_L ... A_1

(Abnar & Zuidema 2020, Sec. 3).
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from attention_jax.interpret import attention_rollout

variants = chex.variants(with_jit=True, without_jit=True)
TOL = dict(atol=1e-5, rtol=1e-5)


def softmax_weights(rng, shape):
    logits = rng.normal(size=shape) * 2.0
    w = np.exp(logits - logits.max(-1, keepdims=True))
    return (w / w.sum(-1, keepdims=True)).astype(np.float32)


def ref_rollout(weights, head_reduce, alpha):
    weights = np.asarray(weights, np.float64)
    num_layers, batch, heads, t, _ = weights.shape
    out = np.zeros((batch, t, t))
    for b in range(batch):
        rollout = np.eye(t)
        for layer in range(num_layers):
            a = np.zeros((t, t))
            for i in range(t):
                for j in range(t):
                    per_head = [weights[layer, b, h, i, j] for h in range(heads)]
                    reduced = {"mean": np.mean, "max": np.max, "min": np.min}[head_reduce](per_head)
                    a[i, j] = alpha * (i == j) + (1 - alpha) * reduced
                total = a[i].sum()
                a[i] = a[i] / total if total else 0.0
            rollout = a @ rollout
        out[b] = rollout
    return out


class RolloutTest(chex.TestCase):
    @variants
    @parameterized.parameters(("mean", 0.5), ("max", 0.3), ("min", 0.0))
    def test_matches_reference(self, head_reduce, residual_weight):
        weights = softmax_weights(np.random.default_rng(0), (3, 2, 2, 5, 5))
        fn = functools.partial(
            attention_rollout, head_reduce=head_reduce, residual_weight=residual_weight
        )
        out = self.variant(fn)(weights)
        chex.assert_shape(out, (2, 5, 5))
        self.assertEqual(out.dtype, jnp.float32)
        chex.assert_trees_all_close(out, ref_rollout(weights, head_reduce, residual_weight), **TOL)
        np.testing.assert_allclose(np.asarray(out).sum(-1), 1.0, atol=1e-5)

    def test_list_and_tuple_equal_stacked(self):
        weights = softmax_weights(np.random.default_rng(1), (3, 2, 2, 4, 4))
        stacked = attention_rollout(weights, head_reduce="max")
        as_list = attention_rollout([w for w in weights], head_reduce="max")
        as_tuple = attention_rollout(tuple(jnp.asarray(w) for w in weights), head_reduce="max")
        chex.assert_trees_all_close(as_list, stacked, atol=0)
        chex.assert_trees_all_close(as_tuple, stacked, atol=0)

    def test_limits(self):
        weights = softmax_weights(np.random.default_rng(2), (2, 1, 3, 4, 4))
        # One layer without residual: the head mean itself (already row-stochastic).
        chex.assert_trees_all_close(
            attention_rollout(weights[:1], residual_weight=0.0), weights[0].mean(1), **TOL
        )
        # Only the residual stream: every token stays itself.
        chex.assert_trees_all_close(
            attention_rollout(weights, residual_weight=1.0), np.eye(4)[None], atol=0
        )

    def test_rows_that_attend_to_nothing_stay_zero(self):
        weights = softmax_weights(np.random.default_rng(3), (2, 1, 2, 3, 3))
        weights[-1, :, :, 1] = 0.0  # query 1 of the last layer fully masked: zero weights
        out = np.asarray(attention_rollout(weights, residual_weight=0.0))
        self.assertTrue(np.all(np.isfinite(out)))
        np.testing.assert_allclose(out, ref_rollout(weights, "mean", 0.0), atol=1e-5)
        np.testing.assert_array_equal(out[:, 1], 0.0)
        np.testing.assert_allclose(out[:, [0, 2]].sum(-1), 1.0, atol=1e-5)

    def test_half_precision_in_float32_out(self):
        weights = softmax_weights(np.random.default_rng(4), (2, 1, 2, 4, 4))
        out = attention_rollout(jnp.asarray(weights, jnp.bfloat16))
        self.assertEqual(out.dtype, jnp.float32)
        rounded = np.asarray(jnp.asarray(weights, jnp.bfloat16).astype(jnp.float32))
        chex.assert_trees_all_close(out, ref_rollout(rounded, "mean", 0.5), **TOL)

    def test_vmap_and_grad(self):
        weights = softmax_weights(np.random.default_rng(5), (2, 2, 1, 2, 3, 3))
        batched = jax.vmap(attention_rollout)(weights)
        for i in range(2):
            chex.assert_trees_all_close(batched[i], ref_rollout(weights[i], "mean", 0.5), **TOL)
        grad = jax.jit(jax.grad(lambda w: attention_rollout(w)[0, 0, 1]))(weights[0])
        chex.assert_shape(grad, weights.shape[1:])
        grad = np.asarray(grad)
        self.assertTrue(np.all(np.isfinite(grad)) and np.abs(grad).sum() > 0)


class BadInputTest(chex.TestCase):
    def test_rank(self):
        with pytest.raises(
            ValueError,
            match=r"attention_rollout: weights must be of shape \[L, B, N, T, T\] \(or a "
            r"sequence of L arrays \[B, N, T, T\]\), got float32 array of shape \(2, 3, 4, 4\)\.",
        ):
            attention_rollout(jnp.zeros((2, 3, 4, 4)))

    def test_not_square(self):
        with pytest.raises(
            ValueError,
            match=r"attention_rollout: weights must be square in their last two axes \[T, T\] "
            r"\(self-attention\), got float32 array of shape \(1, 1, 1, 4, 5\)\.",
        ):
            attention_rollout(jnp.zeros((1, 1, 1, 4, 5)))

    def test_empty_list(self):
        with pytest.raises(ValueError, match=r"attention_rollout: .*got an empty sequence\."):
            attention_rollout([])

    def test_list_shapes(self):
        with pytest.raises(
            ValueError,
            match=r"attention_rollout: weights\[1\] must be of shape \(1, 2, 3, 3\) like "
            r"weights\[0\], got float32 array of shape \(1, 1, 3, 3\)\.",
        ):
            attention_rollout([jnp.zeros((1, 2, 3, 3)), jnp.zeros((1, 1, 3, 3))])
        with pytest.raises(
            ValueError, match=r"attention_rollout: weights\[0\] must be of shape \[B, N, T, T\]"
        ):
            attention_rollout([jnp.zeros((2, 3, 3))])

    def test_head_reduce(self):
        with pytest.raises(
            ValueError,
            match=r"attention_rollout: head_reduce must be one of \('mean', 'max', 'min'\), "
            r"got 'sum'\.",
        ):
            attention_rollout(jnp.zeros((1, 1, 1, 2, 2)), head_reduce="sum")

    def test_residual_weight(self):
        for value in (1.5, -0.1, float("nan"), "0.5"):
            with pytest.raises(
                ValueError,
                match=r"attention_rollout: residual_weight must be a number in \[0, 1\], got",
            ):
                attention_rollout(jnp.zeros((1, 1, 1, 2, 2)), residual_weight=value)

    def test_integer_weights(self):
        with pytest.raises(
            TypeError, match=r"attention_rollout: weights must be a floating-point array"
        ):
            attention_rollout(jnp.zeros((1, 1, 1, 2, 2), jnp.int32))
