"""Argument validation shared by every layer: one rule, one message.

Every check raises at trace time (it looks only at Python values, shapes and dtypes, never
at traced values) with one message style::

    "<function>: <argument> must be <rule>, got <value and shape>."

``fn`` is the public function, method or class the user called (``"dot_product_attention"``,
``"TransformerConfig"``), ``name`` the argument as the user spelled it. Functions return the
validated value (converted to an array or a canonical Python value) so callers can write
``x = float_array(x, "query", fn=...)``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "bool_array",
    "broadcastable",
    "check_choice",
    "check_int",
    "check_int_in",
    "check_positive",
    "check_rate",
    "check_real_in",
    "check_softcap",
    "check_window",
    "compute_dtype",
    "describe",
    "float_array",
    "int_array",
    "is_int",
    "is_real",
    "positions",
]


def describe(value) -> str:
    """How a message shows a value: ``int32 array of shape (3, 4)`` for arrays, else repr."""
    if isinstance(value, jax.Array | np.ndarray | jax.ShapeDtypeStruct) or hasattr(value, "aval"):
        return f"{value.dtype} array of shape {tuple(value.shape)}"
    return repr(value)


def _error(fn: str, name: str, rule: str, value) -> str:
    return f"{fn}: {name} must be {rule}, got {describe(value)}."


def compute_dtype(dtype) -> jnp.dtype:
    """The dtype attention computes in: float32 for half-precision inputs (bfloat16,
    float16), the input dtype otherwise (float32, float64)."""
    return jnp.promote_types(dtype, jnp.float32)


# ----------------------------------------------------------------------- Python values


def is_int(value) -> bool:
    """A Python or NumPy integer, not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value) -> bool:
    """A Python or NumPy real number, not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_int(value, name: str, *, fn: str, minimum: int | None = 1) -> int:
    """An int ``>= minimum`` (``minimum=None``: any int); returns it as a Python int.

    Raises:
      ValueError: ``"<fn>: <name> must be an int >= <minimum>, got <value>."``
    """
    if not is_int(value) or (minimum is not None and value < minimum):
        rule = "an int" if minimum is None else f"an int >= {minimum}"
        raise ValueError(_error(fn, name, rule, value))
    return int(value)


def check_int_in(value, name: str, *, fn: str, low: int, high: int, why: str = "") -> int:
    """An int in ``[low, high]`` (``why`` explains the bound in the message, e.g.
    ``" (vocab_size)"``); returns it as a Python int."""
    if not is_int(value) or not low <= value <= high:
        raise ValueError(_error(fn, name, f"an int in [{low}, {high}]{why}", value))
    return int(value)


def check_positive(value, name: str, *, fn: str, allow_none: bool = False) -> float | None:
    """A finite real number ``> 0`` (or None when ``allow_none``); returns a Python float."""
    if value is None and allow_none:
        return None
    if not is_real(value) or not math.isfinite(value) or not value > 0:
        rule = "None or a finite number > 0" if allow_none else "a finite number > 0"
        raise ValueError(_error(fn, name, rule, value))
    return float(value)


def check_rate(value, name: str, *, fn: str) -> float:
    """A probability in ``[0, 1)`` (a dropout rate); returns a Python float."""
    if not is_real(value) or not 0.0 <= value < 1.0:
        raise ValueError(_error(fn, name, "a number in [0, 1)", value))
    return float(value)


def check_real_in(value, name: str, *, fn: str, low: float, high: float) -> float:
    """A real number in the closed interval ``[low, high]``; returns a Python float."""
    if not is_real(value) or not low <= value <= high:
        raise ValueError(_error(fn, name, f"a number in [{low:g}, {high:g}]", value))
    return float(value)


def check_choice(value, name: str, options: Sequence, *, fn: str, callable_ok: bool = False):
    """One of ``options`` (or, with ``callable_ok``, any callable)."""
    if callable_ok and callable(value):
        return value
    if isinstance(value, str | None | bool | int | float) and value in options:
        return value
    rule = f"one of {tuple(options)}" + (" or a callable" if callable_ok else "")
    raise ValueError(_error(fn, name, rule, value))


def check_softcap(softcap, *, fn: str) -> float | None:
    """A logit softcap: None or a positive number known at trace time.

    Every attention path treats the cap as static configuration (the flash path compiles it
    into its loops), so a traced array is refused here, with the same message everywhere.
    A concrete ``jax.Array`` scalar is accepted and converted to a Python float.
    """
    if softcap is None:
        return None
    if isinstance(softcap, jax.Array | np.ndarray):
        if softcap.ndim != 0:
            raise ValueError(_error(fn, "softcap", "None or a scalar > 0", softcap))
        try:
            softcap = float(softcap)
        except jax.errors.ConcretizationTypeError:
            raise TypeError(
                f"{fn}: softcap must be None or a Python float > 0 (static, not traced), got "
                f"a traced {describe(softcap)}; close over a constant instead of passing it "
                "through jit."
            ) from None
    return check_positive(softcap, "softcap", fn=fn, allow_none=True)


def check_window(local_window_size, *, fn: str) -> tuple[int, int] | None:
    """``local_window_size``: None, an int, or a ``(left, right)`` pair of ints >= 0."""
    if local_window_size is None:
        return None
    if is_int(local_window_size):
        pair = (local_window_size, local_window_size)
    else:
        try:
            pair = tuple(local_window_size)
        except TypeError:
            pair = ()
    if len(pair) != 2 or not all(is_int(w) and w >= 0 for w in pair):
        raise ValueError(
            _error(
                fn,
                "local_window_size",
                "an int >= 0 or a (left, right) pair of them",
                local_window_size,
            )
        )
    return int(pair[0]), int(pair[1])


# ---------------------------------------------------------------------------- arrays


def float_array(x, name: str, *, fn: str) -> jax.Array:
    """``x`` as a floating-point array (TypeError otherwise)."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(_error(fn, name, "a floating-point array", x))
    return x


def int_array(x, name: str, *, fn: str, shape: tuple[int, ...] | None = None) -> jax.Array:
    """``x`` as an integer array (TypeError), of ``shape`` when given (ValueError)."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(_error(fn, name, "an integer array", x))
    if shape is not None and x.shape != tuple(shape):
        raise ValueError(_error(fn, name, f"of shape {tuple(shape)}", x))
    return x


def bool_array(x, name: str, *, fn: str, hint: str = "") -> jax.Array:
    """``x`` as a boolean array (TypeError otherwise); ``hint`` is appended to the rule."""
    x = jnp.asarray(x)
    if x.dtype != jnp.bool_:
        raise TypeError(_error(fn, name, "a boolean array" + hint, x))
    return x


def broadcastable(x: jax.Array, name: str, target: tuple[int, ...], *, fn: str, what: str = ""):
    """Checks that ``x`` broadcasts to ``target`` (NumPy rules) and returns ``x`` left-padded
    with size-1 axes to ``len(target)`` dims. ``what`` names the target's axes in the message,
    e.g. ``"[B, N, T, S]"``."""
    try:
        ok = x.ndim <= len(target) and np.broadcast_shapes(x.shape, target) == tuple(target)
    except ValueError:
        ok = False
    if not ok:
        shown = f"{what}={tuple(target)}" if what else f"{tuple(target)}"
        raise ValueError(_error(fn, name, f"broadcastable to {shown}", x))
    return x.reshape((1,) * (len(target) - x.ndim) + tuple(x.shape))


def positions(x, name: str, *, fn: str, batch: int | None, length: int) -> jax.Array | None:
    """Integer positions of shape ``[length]`` or ``[batch, length]`` (None passes through).

    ``batch=None`` accepts any leading batch size.
    """
    if x is None:
        return None
    x = int_array(x, name, fn=fn)
    ok = x.shape == (length,) or (
        x.ndim == 2 and x.shape[1] == length and (batch is None or x.shape[0] == batch)
    )
    if not ok:
        b = "B" if batch is None else batch
        raise ValueError(_error(fn, name, f"of shape [{length}] or [{b}, {length}]", x))
    return x
