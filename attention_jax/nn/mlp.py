"""The position-wise feed-forward network of a Transformer block."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from attention_jax._checks import check_choice
from attention_jax.nn.dense import Dense

__all__ = ["MLP", "MLP_KINDS"]

MLP_KINDS = ("gelu", "gelu_exact", "swiglu", "relu")


class MLP(nnx.Module):
    """``D -> F -> D`` feed-forward network.

    * ``"gelu"`` / ``"relu"``: ``down(act(up(x)))``.
    * ``"swiglu"``: ``down(silu(gate(x)) * up(x))`` (Shazeer 2020).

    Args:
      features: ``D``.
      hidden_features: ``F``.
      kind: ``"gelu"`` (tanh approximation, GPT-2's), ``"gelu_exact"`` (the erf form,
        BERT's), ``"swiglu"`` or ``"relu"``.
      use_bias: biases in the projections.
      dtype, param_dtype: computation and parameter dtypes.
      rngs: ``nnx.Rngs``.
    """

    def __init__(
        self,
        features: int,
        hidden_features: int,
        *,
        kind: str = "gelu",
        use_bias: bool = False,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_choice(kind, "kind", MLP_KINDS, fn="MLP")
        self.kind = kind
        kw = dict(use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.up = Dense(features, hidden_features, **kw)
        self.gate = Dense(features, hidden_features, **kw) if kind == "swiglu" else None
        self.down = Dense(hidden_features, features, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x [..., D]`` -> ``[..., D]``."""
        if self.kind == "swiglu":
            h = jax.nn.silu(self.gate(x)) * self.up(x)
        elif self.kind in ("gelu", "gelu_exact"):
            h = jax.nn.gelu(self.up(x), approximate=self.kind == "gelu")
        else:
            h = jax.nn.relu(self.up(x))
        return self.down(h)
