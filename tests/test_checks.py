"""The shared argument checks: one rule, one message, wherever it is broken."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from attention_jax import _checks, dot_product_attention, flash_attention

X = jnp.ones((1, 4, 2, 8))


# ------------------------------------------------------------------- each message


@pytest.mark.parametrize(
    "call, error, message",
    [
        (
            lambda: _checks.check_int(0, "num_heads", fn="f"),
            ValueError,
            "f: num_heads must be an int >= 1, got 0.",
        ),
        (
            lambda: _checks.check_int(True, "q_len", fn="f", minimum=0),
            ValueError,
            "f: q_len must be an int >= 0, got True.",
        ),
        (
            lambda: _checks.check_int(2.0, "n", fn="f", minimum=None),
            ValueError,
            "f: n must be an int, got 2.0.",
        ),
        (
            lambda: _checks.check_int_in(9, "top_k", fn="f", low=1, high=8, why=" (vocab_size)"),
            ValueError,
            "f: top_k must be an int in [1, 8] (vocab_size), got 9.",
        ),
        (
            lambda: _checks.check_positive(float("nan"), "lr", fn="f"),
            ValueError,
            "f: lr must be a finite number > 0, got nan.",
        ),
        (
            lambda: _checks.check_positive(-1, "softcap", fn="f", allow_none=True),
            ValueError,
            "f: softcap must be None or a finite number > 0, got -1.",
        ),
        (
            lambda: _checks.check_rate(1.0, "dropout", fn="f"),
            ValueError,
            "f: dropout must be a number in [0, 1), got 1.0.",
        ),
        (
            lambda: _checks.check_choice("rms", "norm", ("layernorm", "rmsnorm"), fn="f"),
            ValueError,
            "f: norm must be one of ('layernorm', 'rmsnorm'), got 'rms'.",
        ),
        (
            lambda: _checks.check_choice("x", "normalizer", ("softmax",), fn="f", callable_ok=True),
            ValueError,
            "f: normalizer must be one of ('softmax',) or a callable, got 'x'.",
        ),
        (
            lambda: _checks.check_window((1, -2), fn="f"),
            ValueError,
            "f: local_window_size must be an int >= 0 or a (left, right) pair of them, "
            "got (1, -2).",
        ),
        (
            lambda: _checks.float_array(np.zeros((3, 4), np.int32), "x", fn="f"),
            TypeError,
            "f: x must be a floating-point array, got int32 array of shape (3, 4).",
        ),
        (
            lambda: _checks.int_array(np.zeros(2, np.float32), "lengths", fn="f"),
            TypeError,
            "f: lengths must be an integer array, got float32 array of shape (2,).",
        ),
        (
            lambda: _checks.int_array(np.zeros(3, np.int32), "lengths", fn="f", shape=(2,)),
            ValueError,
            "f: lengths must be of shape (2,), got int32 array of shape (3,).",
        ),
        (
            lambda: _checks.bool_array(np.zeros(2, np.int32), "mask", fn="f"),
            TypeError,
            "f: mask must be a boolean array, got int32 array of shape (2,).",
        ),
        (
            lambda: _checks.broadcastable(
                jnp.ones((2, 3)), "bias", (1, 2, 4, 3), fn="f", what="[B, N, T, S]"
            ),
            ValueError,
            "f: bias must be broadcastable to [B, N, T, S]=(1, 2, 4, 3), got float32 array of "
            "shape (2, 3).",
        ),
        (
            lambda: _checks.positions(np.arange(5), "query_positions", fn="f", batch=2, length=3),
            ValueError,
            "f: query_positions must be of shape [3] or [2, 3], got int32 array of shape (5,).",
        ),
        (
            lambda: _checks.check_softcap(np.ones(2, np.float32), fn="f"),
            ValueError,
            "f: softcap must be None or a scalar > 0, got float32 array of shape (2,).",
        ),
    ],
)
def test_message(call, error, message):
    with pytest.raises(error) as info:
        call()
    assert str(info.value) == message


def test_values_pass_through():
    assert _checks.check_int(np.int64(3), "n", fn="f") == 3
    assert _checks.check_window(4, fn="f") == (4, 4)
    assert _checks.check_window(None, fn="f") is None
    assert _checks.check_softcap(jnp.float32(2.5), fn="f") == 2.5
    assert _checks.check_rate(0, "p", fn="f") == 0.0
    assert _checks.compute_dtype(jnp.bfloat16) == jnp.float32
    assert _checks.compute_dtype(jnp.float64) == jnp.float64
    assert _checks.positions(None, "p", fn="f", batch=1, length=2) is None
    chex.assert_shape(_checks.broadcastable(jnp.ones(3), "b", (2, 4, 3), fn="f"), (1, 1, 3))


# ------------------------------------------- the same rule gives the same message everywhere


def _message(fn, *args, **kwargs):
    with pytest.raises((TypeError, ValueError)) as info:
        fn(*args, **kwargs)
    caller, message = str(info.value).split(": ", 1)
    return caller, message.split("\n")[0]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(softcap=-1.0),
        dict(local_window_size=(2,)),
        dict(query_seq_lengths=jnp.ones(2, jnp.int32)),
        dict(key_value_positions=jnp.arange(3)),
        dict(mask=jnp.ones((4, 5))),
        dict(block_q=0),
    ],
)
def test_flash_and_dot_product_attention_share_messages(kwargs):
    extra = {"implementation": "flash"} if "block_q" in kwargs else {}
    caller_a, a = _message(flash_attention, X, X, X, **kwargs)
    caller_b, b = _message(dot_product_attention, X, X, X, **kwargs, **extra)
    assert (caller_a, caller_b) == ("flash_attention", "dot_product_attention")
    assert a == b


class TracedSoftcapTest(parameterized.TestCase):
    """A softcap is static configuration in every path: a traced one is refused alike."""

    @parameterized.parameters("xla", "flash")
    def test_traced_softcap_is_refused_with_one_message(self, implementation):
        def f(cap):
            return dot_product_attention(X, X, X, softcap=cap, implementation=implementation)

        with pytest.raises(TypeError, match=r"dot_product_attention: softcap must be None or a "):
            jax.jit(f)(jnp.float32(5.0))

    def test_flash_attention_refuses_a_traced_softcap(self):
        with pytest.raises(TypeError, match=r"flash_attention: softcap .* got a traced"):
            jax.jit(functools.partial(flash_attention, X, X, X))(softcap=jnp.float32(5.0))

    @parameterized.parameters("xla", "flash")
    def test_concrete_array_softcap_equals_float(self, implementation):
        q = jax.random.normal(jax.random.key(0), (1, 6, 2, 4)) * 4
        a = dot_product_attention(q, q, q, softcap=jnp.float32(2.0), implementation=implementation)
        b = dot_product_attention(q, q, q, softcap=2.0, implementation=implementation)
        chex.assert_trees_all_close(a, b)
