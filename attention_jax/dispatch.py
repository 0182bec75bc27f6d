"""Which attention implementation serves a call, and why.

``dot_product_attention(..., implementation=None)`` asks :func:`select_implementation`; a
forced implementation that cannot serve the requested options raises instead of silently
falling back to another path.
"""

from __future__ import annotations

from typing import NamedTuple

import jax

__all__ = ["IMPLEMENTATIONS", "Selection", "select_implementation"]

IMPLEMENTATIONS = ("xla",)


class Selection(NamedTuple):
    """The implementation chosen for an attention call.

    Attributes:
      name: one of :data:`IMPLEMENTATIONS`.
      reason: a short human-readable explanation of the choice.
    """

    name: str
    reason: str


def select_implementation(
    query: jax.Array,
    key: jax.Array,
    *,
    implementation: str | None = None,
    normalizer="softmax",
    dropout_rate: float = 0.0,
    return_weights: bool = False,
    **options,
) -> Selection:
    """Chooses the attention implementation for the given inputs and options.

    Args:
      query: ``[B, T, N, H]`` (or unbatched ``[T, N, H]``); only its shape and dtype are used.
      key: ``[B, S, K, H]``; only its shape and dtype are used.
      implementation: None to choose automatically, or a name from :data:`IMPLEMENTATIONS`.
      normalizer: the attention normalizer requested.
      dropout_rate: attention dropout requested.
      return_weights: whether the caller wants the ``[B, N, T, S]`` weights back.
      **options: the remaining attention options (masks, biases, ...), as passed to
        :func:`attention_jax.dot_product_attention`.

    Returns:
      A :class:`Selection` ``(name, reason)``.

    Raises:
      ValueError: an unknown implementation, or a forced one that cannot serve the options.
    """
    del query, key, normalizer, dropout_rate, return_weights, options
    if implementation is None:
        return Selection("xla", "default: the materialized path")
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"implementation must be None or one of {IMPLEMENTATIONS}, got {implementation!r}."
        )
    return Selection(implementation, "requested")
