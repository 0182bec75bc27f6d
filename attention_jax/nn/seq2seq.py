"""RNNsearch: the attention-based GRU encoder-decoder of Bahdanau, Cho & Bengio 2015,
"Neural Machine Translation by Jointly Learning to Align and Translate" (arXiv:1409.0473).

Shape letters: ``B`` batch, ``S`` source length, ``T`` target length, ``E`` embedding width,
``H`` GRU width, ``V`` target vocabulary.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from attention_jax._checks import check_int, check_int_in
from attention_jax.nn.additive import AdditiveAttention
from attention_jax.nn.checks import check_leading, check_tokens, padding_lengths

__all__ = ["Seq2SeqAttention"]


class Seq2SeqAttention(nnx.Module):
    r"""Bahdanau et al.'s RNNsearch (appendix A of the paper).

    * Encoder: embedded source ``[B, S, E]`` -> bidirectional GRU (``nnx.Bidirectional`` of
      two ``nnx.RNN(nnx.GRUCell)``, given ``src_lengths`` as ``seq_lengths``) ->
      annotations :math:`h_j = [\overrightarrow{h}_j; \overleftarrow{h}_j]` ``[B, S, 2H]``.
    * Initial decoder state :math:`s_0 = \tanh(W_s \overleftarrow{h}_1)` (the backward
      state at the first source position).
    * Decoder step :math:`i` (one function, :meth:`step`, shared by teacher forcing and
      greedy decoding): context :math:`c_i` = :class:`AdditiveAttention` from
      :math:`s_{i-1}` over the annotations (padded source positions masked);
      :math:`s_i = \mathrm{GRU}(s_{i-1}, [E y_{i-1}; c_i])`; logits from the deep output of
      eq. (4) / A.2.2: :math:`W_o\, \mathrm{maxout}(W_t [s_i; c_i; E y_{i-1}])` with pairs
      of units pooled (maxout width ``H``).

    Args:
      src_vocab: source vocabulary size.
      tgt_vocab: target vocabulary size ``V``.
      embed_dim: ``E``, the width of both embeddings.
      hidden_dim: ``H``, the GRU width (per encoder direction, and the decoder's).
      attention_dim: width of the alignment model's ``tanh`` layer (default ``H``).
      rngs: ``nnx.Rngs`` (``params``).
    """

    def __init__(
        self,
        src_vocab: int,
        tgt_vocab: int,
        embed_dim: int,
        hidden_dim: int,
        *,
        attention_dim: int | None = None,
        rngs: nnx.Rngs,
    ):
        fn = "Seq2SeqAttention"
        self.src_vocab = check_int(src_vocab, "src_vocab", fn=fn)
        self.tgt_vocab = check_int(tgt_vocab, "tgt_vocab", fn=fn)
        self.embed_dim = e = check_int(embed_dim, "embed_dim", fn=fn)
        self.hidden_dim = h = check_int(hidden_dim, "hidden_dim", fn=fn)
        attention_dim = h if attention_dim is None else attention_dim
        self.attention_dim = check_int(attention_dim, "attention_dim", fn=fn)

        self.src_embed = nnx.Embed(self.src_vocab, e, rngs=rngs)
        self.tgt_embed = nnx.Embed(self.tgt_vocab, e, rngs=rngs)

        def gru() -> nnx.RNN:
            # rngs=False: carries start at zeros passed in, so the module holds no RNG state.
            return nnx.RNN(nnx.GRUCell(e, h, rngs=rngs), rngs=False)

        self.encoder = nnx.Bidirectional(gru(), gru(), rngs=False)
        self.init_state = nnx.Linear(h, h, use_bias=False, rngs=rngs)  # W_s
        self.attention = AdditiveAttention(h, 2 * h, self.attention_dim, rngs=rngs)
        self.decoder_cell = nnx.GRUCell(e + 2 * h, h, rngs=rngs)
        self.readout = nnx.Linear(h + 2 * h + e, 2 * h, rngs=rngs)  # W_t before maxout
        self.output = nnx.Linear(h, self.tgt_vocab, rngs=rngs)  # W_o

    # ------------------------------------------------------------------------- pieces

    def encode(
        self, src: jax.Array, *, src_lengths: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Encodes ``src [B, S]`` (``src_lengths [B]``).

        Returns:
          ``(annotations [B, S, 2H], s_0 [B, H], src_mask [B, S] bool)``; annotations at
          padded positions are computed but masked out of the attention.
        """
        fn = "Seq2SeqAttention.encode"
        src = check_tokens(src, "src", fn=fn)
        return self._encode(src, src_lengths, fn=fn)

    def _encode(self, src, src_lengths, *, fn: str):
        batch, length = src.shape
        src_lengths, valid = padding_lengths(
            None, src_lengths, fn=fn, batch=batch, length=length, lengths_name="src_lengths"
        )
        if valid is None:
            valid = jnp.ones((batch, length), bool)
        x = self.src_embed(src)
        zeros = jnp.zeros((batch, self.hidden_dim), x.dtype)
        (_, backward), annotations = self.encoder(
            x, initial_carry=(zeros, zeros), seq_lengths=src_lengths, return_carry=True
        )
        # The backward GRU's final carry is its state at position 0 (it starts at each
        # example's last valid token); an empty source has none and starts from zeros.
        if src_lengths is not None:
            backward = jnp.where(src_lengths[:, None] > 0, backward, 0)
        s0 = jnp.tanh(self.init_state(backward))
        return annotations, s0, valid

    def step(
        self,
        state: jax.Array,
        prev_tokens: jax.Array,
        annotations: jax.Array,
        src_mask: jax.Array,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """One decoder step.

        Args:
          state: ``s_{i-1}`` ``[B, H]``.
          prev_tokens: ``y_{i-1}`` ``[B]`` int.
          annotations: ``[B, S, 2H]`` from :meth:`encode`.
          src_mask: ``[B, S]`` bool, True = source token.

        Returns:
          ``(s_i [B, H], logits [B, V] float32, alignment [B, S] float32)``.
        """
        embedded = self.tgt_embed(prev_tokens)
        context, alignment = self.attention(state, annotations, mask=src_mask)
        state, _ = self.decoder_cell(state, jnp.concatenate([embedded, context], axis=-1))
        t = self.readout(jnp.concatenate([state, context, embedded], axis=-1))
        t = jnp.max(t.reshape(*t.shape[:-1], self.hidden_dim, 2), axis=-1)  # maxout
        return state, self.output(t).astype(jnp.float32), alignment

    # --------------------------------------------------------------------- public API

    def __call__(
        self,
        src: jax.Array,
        tgt_in: jax.Array,
        src_lengths: jax.Array | None = None,
        *,
        return_alignments: bool = False,
    ):
        """Teacher forcing: logits for every target position.

        Args:
          src: ``[B, S]`` int source tokens.
          tgt_in: ``[B, T]`` int decoder inputs (``bos`` then the target shifted right).
          src_lengths: ``[B]`` int unpadded source lengths (right padding; default ``S``).
          return_alignments: also return the attention weights ``[B, T, S]``.

        Returns:
          float32 logits ``[B, T, V]`` (with the alignments when ``return_alignments``).
        """
        fn = "Seq2SeqAttention"
        src = check_tokens(src, "src", fn=fn)
        tgt_in = check_tokens(tgt_in, "tgt_in", fn=fn)
        check_leading(tgt_in, "tgt_in", src.shape[:1], fn=fn, what="[B] of src")
        annotations, s0, src_mask = self._encode(src, src_lengths, fn=fn)

        def body(state, tokens):
            state, logits, alignment = self.step(state, tokens, annotations, src_mask)
            return state, (logits, alignment)

        _, (logits, alignments) = lax.scan(body, s0, tgt_in.T)
        logits, alignments = logits.swapaxes(0, 1), alignments.swapaxes(0, 1)
        return (logits, alignments) if return_alignments else logits

    def decode(
        self,
        src: jax.Array,
        *,
        max_len: int,
        bos_id: int,
        eos_id: int,
        src_lengths: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """Greedy decoding in one ``lax.scan`` of :meth:`step`.

        Feeds ``bos_id``, then each step's argmax; once an example emits ``eos_id`` it keeps
        emitting ``eos_id`` (its state keeps running on ``eos`` inputs).

        Args:
          src: ``[B, S]`` int source tokens.
          max_len: number of tokens to produce (static int).
          bos_id, eos_id: target token ids in ``[0, tgt_vocab)``.
          src_lengths: ``[B]`` int unpadded source lengths.

        Returns:
          ``(tokens [B, max_len] int32, alignments [B, max_len, S] float32)``, where
          ``alignments[:, i]`` is the attention that produced ``tokens[:, i]``.
        """
        fn = "Seq2SeqAttention.decode"
        max_len = check_int(max_len, "max_len", fn=fn)
        top, why = self.tgt_vocab - 1, " (tgt_vocab - 1)"
        bos_id = check_int_in(bos_id, "bos_id", fn=fn, low=0, high=top, why=why)
        eos_id = check_int_in(eos_id, "eos_id", fn=fn, low=0, high=top, why=why)
        src = check_tokens(src, "src", fn=fn)
        annotations, s0, src_mask = self._encode(src, src_lengths, fn=fn)
        batch = src.shape[0]

        def body(carry, _):
            state, prev, done = carry
            state, logits, alignment = self.step(state, prev, annotations, src_mask)
            tokens = jnp.where(done, eos_id, jnp.argmax(logits, axis=-1).astype(jnp.int32))
            return (state, tokens, done | (tokens == eos_id)), (tokens, alignment)

        start = (s0, jnp.full((batch,), bos_id, jnp.int32), jnp.zeros((batch,), bool))
        _, (tokens, alignments) = lax.scan(body, start, None, length=max_len)
        return tokens.swapaxes(0, 1), alignments.swapaxes(0, 1)
