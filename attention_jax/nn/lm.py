"""The decoder-only causal language model."""

from __future__ import annotations

import jax
from flax import nnx

from attention_jax.nn.cache import KVCache
from attention_jax.nn.config import TransformerConfig
from attention_jax.nn.embedding import Embedder
from attention_jax.nn.stack import DecoderStack

__all__ = ["TransformerLM"]


class TransformerLM(DecoderStack):
    """Decoder-only causal language model (GPT-style), logits tied to the token embedding
    by default: a :class:`attention_jax.nn.DecoderStack` with its own :class:`Embedder`.

    tokens ``[B, T]`` -> embedding (+ learned/sinusoidal encoding at ``positions``) ->
    ``num_layers`` causal :class:`TransformerBlock` (RoPE/ALiBi inside attention, a T5 table
    shared by the layers, ``config.local_window_size`` as a sliding window) -> final norm
    (pre-norm) -> logits ``[B, T, V]`` (float32).

    Args:
      config: :class:`TransformerConfig`.
      rngs: ``nnx.Rngs`` (``params``; ``dropout`` when ``config.dropout > 0``).

    Attributes:
      embedder: :class:`Embedder`; and those of :class:`DecoderStack` (``relative_bias``,
        ``blocks``, ``final_norm``, ``head``).
    """

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        self.embedder = Embedder(config, rngs=rngs)
        super().__init__(config, config.num_layers, rngs=rngs)

    def __call__(
        self,
        tokens: jax.Array,
        *,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        query_seq_lengths: jax.Array | None = None,
        key_value_seq_lengths: jax.Array | None = None,
        cache: KVCache | None = None,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
        sow_weights: bool = False,
        logits_to_keep: jax.Array | None = None,
    ):
        """Causal forward pass, full or incremental.

        Args:
          tokens: ``[B, T]`` int token ids (``T <= max_len``; see
            :func:`attention_jax.nn.validate_tokens` to check ids).
          positions: ``[T]`` or ``[B, T]`` int positions (default ``arange(T)``, or
            ``cache.length + arange(T)`` with a cache). Packed sequences restart them per
            segment.
          segment_ids: ``[B, T]`` int: packed sequences attend within their segment only
            (not with a cache).
          query_seq_lengths: ``[B]`` int: query rows at index ``>= length`` are padding; their
            attention outputs zeros.
          key_value_seq_lengths: ``[B]`` int: keys at index ``>= length`` are masked (not
            with a cache).
          cache: optional :class:`KVCache` from :meth:`init_cache`. The ``T`` tokens are
            processed at positions ``cache.length ..`` against everything cached (a prefill
            when ``T > 1``, one decoding step when ``T == 1``).
          deterministic: disable dropout (default). Training passes ``False``.
          rngs: dropout randomness (default: the modules' own ``dropout`` streams).
          sow_weights: sow every layer's attention weights (``nnx.Intermediate``
            ``"attention_weights"``; collect with ``nnx.capture(model, nnx.Intermediate)``).
          logits_to_keep: ``[B, P]`` int indices along ``T``: only the logits at those
            positions are computed (as Hugging Face's ``logits_to_keep`` with indices), for
            losses scored at a few positions; indices are clipped to ``[0, T)``.

        Returns:
          Without a cache: float32 logits ``[B, T, V]`` (``[B, P, V]`` with
          ``logits_to_keep``). With a cache: ``(logits, new_cache)``,
          ``new_cache.length == cache.length + T``.

        Raises:
          TypeError: non-integer ``logits_to_keep``.
          ValueError: ``T > max_len``, tokens that do not fit in the cache (checked when the
            cache length is concrete), segment ids or key lengths with a cache, lengths,
            positions or ``logits_to_keep`` of the wrong shape.
        """
        return self.forward(
            self.embedder,
            tokens,
            positions=positions,
            segment_ids=segment_ids,
            query_seq_lengths=query_seq_lengths,
            key_value_seq_lengths=key_value_seq_lengths,
            cache=cache,
            deterministic=deterministic,
            rngs=rngs,
            sow_weights=sow_weights,
            logits_to_keep=logits_to_keep,
            fn="TransformerLM",
        )
