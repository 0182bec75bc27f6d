"""A recurrent sequence classifier with attention pooling: embedding (or float features) ->
LSTM (optionally bidirectional) -> attention pooling with a learned query -> linear head.

The model of the Keras tutorials on text classification with a (bidirectional) LSTM and
attention: the LSTM states are pooled by attention instead of taking the last one. The pooling
is the feed-forward attention of Raffel & Ellis 2016, "Feed-Forward Networks with Attention
Can Solve Some Long-Term Memory Problems" (arXiv:1512.08756), with a learned query
(:func:`attention_jax.attention_pool`); the ``pooling="last"`` baseline classifies the last
valid state instead.

Shape letters: ``B`` batch, ``T`` length, ``D`` input features, ``H`` LSTM width, ``C``
classes.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from attention_jax._checks import check_choice, check_int
from attention_jax.attention import attention_pool
from attention_jax.nn.checks import check_features, check_tokens, padding_lengths

__all__ = ["RNNAttentionClassifier"]

POOLINGS = ("attention", "last")


class RNNAttentionClassifier(nnx.Module):
    """LSTM classifier with attention pooling.

    inputs -> ``nnx.Embed`` (token ids) or nothing (float features) -> ``nnx.RNN`` of an
    ``nnx.OptimizedLSTMCell`` (forward and backward ones merged by ``nnx.Bidirectional``,
    features concatenated, when ``bidirectional``) -> states ``[B, T, F]`` (``F = H`` or
    ``2H``) -> pooling -> ``nnx.Linear`` -> logits ``[B, C]``.

    Pooling:

    * ``"attention"``: :func:`attention_jax.attention_pool` with a learned query ``[F]``;
      padded positions get weight 0.
    * ``"last"``: the final LSTM state of each example: the state at its last valid
      position (and, bidirectional, the backward state at position 0), i.e. the final carry
      of each direction.

    Padding (``mask`` or ``lengths`` at call time) is right padding: the LSTMs get
    ``seq_lengths``, so valid states never see a padded step (the backward direction starts
    at each example's last valid token), and padding never changes the logits.

    Args:
      num_classes: ``C``.
      hidden_dim: ``H``, the LSTM width (per direction).
      vocab_size: token inputs ``[B, T]`` with ids in ``[0, vocab_size)``; or
      input_dim: float inputs ``[B, T, input_dim]`` (exactly one of the two).
      embed_dim: embedding width for token inputs (default ``hidden_dim``).
      bidirectional: a forward and a backward LSTM.
      pooling: ``"attention"`` or ``"last"``.
      rngs: ``nnx.Rngs`` (``params``).
    """

    def __init__(
        self,
        num_classes: int,
        hidden_dim: int,
        *,
        vocab_size: int | None = None,
        embed_dim: int | None = None,
        input_dim: int | None = None,
        bidirectional: bool = False,
        pooling: str = "attention",
        rngs: nnx.Rngs,
    ):
        fn = "RNNAttentionClassifier"
        self.num_classes = check_int(num_classes, "num_classes", fn=fn)
        self.hidden_dim = check_int(hidden_dim, "hidden_dim", fn=fn)
        self.pooling = check_choice(pooling, "pooling", POOLINGS, fn=fn)
        self.bidirectional = bool(
            check_choice(bidirectional, "bidirectional", (False, True), fn=fn)
        )
        if (vocab_size is None) == (input_dim is None):
            raise ValueError(
                f"{fn}: exactly one of vocab_size (token inputs) and input_dim (float inputs) "
                f"must be given, got vocab_size={vocab_size!r} and input_dim={input_dim!r}."
            )
        if vocab_size is not None:
            self.vocab_size = check_int(vocab_size, "vocab_size", fn=fn)
            embed_dim = self.hidden_dim if embed_dim is None else embed_dim
            self.embed_dim = check_int(embed_dim, "embed_dim", fn=fn)
            self.input_dim = None
            self.embed = nnx.Embed(self.vocab_size, self.embed_dim, rngs=rngs)
            features = self.embed_dim
        else:
            if embed_dim is not None:
                raise ValueError(
                    f"{fn}: embed_dim must be None with float inputs (input_dim="
                    f"{input_dim!r}; it is for token inputs), got {embed_dim!r}."
                )
            self.vocab_size = self.embed_dim = None
            self.input_dim = check_int(input_dim, "input_dim", fn=fn)
            self.embed = None
            features = self.input_dim

        def lstm() -> nnx.RNN:
            # rngs=False: the carry starts at zeros passed in, so the module holds no RNG state.
            return nnx.RNN(nnx.OptimizedLSTMCell(features, self.hidden_dim, rngs=rngs), rngs=False)

        if self.bidirectional:
            self.rnn = nnx.Bidirectional(lstm(), lstm(), rngs=False)
        else:
            self.rnn = lstm()
        self.state_dim = self.hidden_dim * (2 if self.bidirectional else 1)
        init = nnx.initializers.normal(stddev=1.0 / math.sqrt(self.state_dim))
        self.pool_query = (
            nnx.Param(init(rngs.params(), (self.state_dim,), jnp.float32))
            if self.pooling == "attention"
            else None
        )
        self.head = nnx.Linear(self.state_dim, self.num_classes, rngs=rngs)

    def _initial_carry(self, batch: int, dtype):
        zeros = jnp.zeros((batch, self.hidden_dim), dtype)
        carry = (zeros, zeros)  # (c, h) of an LSTM cell
        return (carry, carry) if self.bidirectional else carry

    def __call__(
        self,
        inputs: jax.Array,
        *,
        mask: jax.Array | None = None,
        lengths: jax.Array | None = None,
        return_weights: bool = False,
    ):
        """Classifies ``inputs``.

        Args:
          inputs: ``[B, T]`` int token ids (built with ``vocab_size``) or ``[B, T, D]``
            float features (built with ``input_dim``).
          mask: ``[B, T]`` bool, True = token; right padding (each row a prefix of True),
            reduced to its lengths. Or
          lengths: ``[B]`` int, the unpadded lengths.
          return_weights: also return the pooling weights ``[B, T]`` (``pooling="attention"``
            only).

        Returns:
          float32 logits ``[B, C]``, and the float32 weights ``[B, T]`` (0 at padded
          positions, rows summing to 1 for non-empty rows) when ``return_weights``.
        """
        fn = "RNNAttentionClassifier"
        if self.embed is not None:
            x = self.embed(check_tokens(inputs, "inputs", fn=fn))
        else:
            x = check_features(
                inputs,
                "inputs",
                fn=fn,
                shape="[B, T, D]",
                features=self.input_dim,
                why=" (input_dim)",
            )
        if return_weights and self.pooling != "attention":
            raise ValueError(
                f"{fn}: return_weights must be False with pooling={self.pooling!r} (there are "
                f"no attention weights), got {return_weights!r}."
            )
        batch, length = x.shape[:2]
        lengths, valid = padding_lengths(mask, lengths, fn=fn, batch=batch, length=length)
        carry0 = self._initial_carry(batch, x.dtype)
        if self.pooling == "last":
            carry, _ = self.rnn(x, initial_carry=carry0, seq_lengths=lengths, return_carry=True)
            if self.bidirectional:
                (_, h_forward), (_, h_backward) = carry
                pooled = jnp.concatenate([h_forward, h_backward], axis=-1)
            else:
                _, pooled = carry
            if lengths is not None:  # an empty row has no last state: zeros
                pooled = jnp.where(lengths[:, None] > 0, pooled, 0)
            weights = None
        else:
            states = self.rnn(x, initial_carry=carry0, seq_lengths=lengths)
            query = self.pool_query[...].astype(states.dtype)
            pooled, weights = attention_pool(states, query, mask=valid, return_weights=True)
        logits = self.head(pooled).astype(jnp.float32)
        return (logits, weights) if return_weights else logits
