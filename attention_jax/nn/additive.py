"""Additive (Bahdanau) attention as an NNX module: the parameters of
:func:`attention_jax.additive_attention`.

Bahdanau, Cho & Bengio 2015, "Neural Machine Translation by Jointly Learning to Align and
Translate" (arXiv:1409.0473), eq. (6) and appendix A.1.2.

Shape letters: ``B`` batch, ``T`` queries, ``S`` keys, ``Dq`` / ``Dk`` / ``Dv`` query, key
and value features, ``A`` hidden (alignment) features.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from attention_jax._checks import bool_array, broadcastable, check_int
from attention_jax.attention import additive_attention
from attention_jax.nn.checks import check_features, check_leading

__all__ = ["AdditiveAttention"]


class AdditiveAttention(nnx.Module):
    r"""Additive attention: :math:`e_{j} = v^\top \tanh(W_q q + W_k k_j)`,
    :math:`\alpha = \mathrm{softmax}(e)` over the unmasked keys, context
    :math:`\sum_j \alpha_j v_j`.

    The module owns ``w_query [Dq, A]``, ``w_key [Dk, A]`` and ``v [A]`` (no biases, as in
    the paper) and calls :func:`attention_jax.additive_attention` with them, so scoring,
    masking and the float32 softmax are the functional core's.

    Args:
      query_features: ``Dq``.
      key_features: ``Dk``.
      hidden_features: ``A``, the width of the ``tanh`` layer.
      param_dtype: dtype of the parameters.
      rngs: ``nnx.Rngs`` (``params``).

    Attributes:
      w_query: ``[Dq, A]`` (the paper's ``W_a``).
      w_key: ``[Dk, A]`` (``U_a``).
      v: ``[A]`` (``v_a``).
    """

    def __init__(
        self,
        query_features: int,
        key_features: int,
        hidden_features: int,
        *,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        fn = "AdditiveAttention"
        self.query_features = check_int(query_features, "query_features", fn=fn)
        self.key_features = check_int(key_features, "key_features", fn=fn)
        self.hidden_features = check_int(hidden_features, "hidden_features", fn=fn)
        kernel = nnx.initializers.lecun_normal()
        # The paper starts v_a at zero (uniform weights); a small random v gives the
        # alignment a non-trivial start and keeps every parameter's gradient non-zero.
        v_init = nnx.initializers.normal(stddev=1.0 / math.sqrt(self.hidden_features))
        a = self.hidden_features
        self.w_query = nnx.Param(kernel(rngs.params(), (self.query_features, a), param_dtype))
        self.w_key = nnx.Param(kernel(rngs.params(), (self.key_features, a), param_dtype))
        self.v = nnx.Param(v_init(rngs.params(), (a,), param_dtype))

    def core_params(self) -> dict[str, jax.Array]:
        """The parameters as :func:`attention_jax.additive_attention` takes them."""
        return {"w_query": self.w_query[...], "w_key": self.w_key[...], "v": self.v[...]}

    def __call__(
        self,
        query: jax.Array,
        keys: jax.Array,
        values: jax.Array | None = None,
        mask: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """Attends from ``query`` over ``keys``.

        Args:
          query: ``[B, Dq]`` (one decoder state per example) or ``[B, T, Dq]``.
          keys: ``[B, S, Dk]``.
          values: ``[B, S, Dv]`` (default ``keys``).
          mask: optional bool, True = may attend: ``[B, S]`` key padding, or (3-D queries)
            broadcastable to ``[B, T, S]``. Masked keys get weight 0; a query with no
            allowed key gets zero weights and a zero context.

        Returns:
          ``(context, weights)``: ``[B, Dv]`` and ``[B, S]`` (``[B, T, Dv]`` and
          ``[B, T, S]`` for 3-D queries); the weights in float32.
        """
        fn = "AdditiveAttention"
        query = check_features(
            query,
            "query",
            fn=fn,
            shape="[B, Dq] or [B, T, Dq]",
            ndims=(2, 3),
            features=self.query_features,
            letter="Dq",
            why=" (query_features)",
        )
        keys = check_features(
            keys,
            "keys",
            fn=fn,
            shape="[B, S, Dk]",
            features=self.key_features,
            letter="Dk",
            why=" (key_features)",
        )
        check_leading(keys, "keys", query.shape[:1], fn=fn, what="[B] of query")
        if values is None:
            values = keys
        else:
            values = check_features(values, "values", fn=fn, shape="[B, S, Dv]")
            check_leading(values, "values", keys.shape[:2], fn=fn, what="[B, S] of keys")
        if mask is not None:
            mask = bool_array(mask, "mask", fn=fn, hint=" (True = may attend)")
            b, s = keys.shape[:2]
            if query.ndim == 2 or mask.ndim == 2:
                target, what = (b, s), "[B, S]"
            else:
                target, what = (b, query.shape[1], s), "[B, T, S]"
            broadcastable(mask, "mask", target, fn=fn, what=what)
        return additive_attention(
            query, keys, values, self.core_params(), mask=mask, return_weights=True
        )
