"""Autoregressive generation with an explicit KV cache, compiled once per shape.

The model is split into a static graph and a state pytree (``nnx.split``) and merged back
inside one jitted function: a prefill call on the prompt fills the cache, then a
``lax.while_loop`` produces one token per iteration with the same attention call
(``key_value_seq_lengths`` = filled length, queries at ``length + arange(T)``). There is no
Python loop per token and no recompilation per step.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from attention_jax._checks import check_int, check_int_in, describe, is_real
from attention_jax.nn.checks import check_tokens, validate_tokens
from attention_jax.nn.encoder_decoder import EncoderDecoder
from attention_jax.nn.lm import TransformerLM
from attention_jax.normalizers import softmax

__all__ = ["generate", "sample_logits"]


def sample_logits(
    logits: jax.Array,
    rng: jax.Array | None,
    *,
    temperature: float | jax.Array = 1.0,
    top_k: int | None = None,
    top_p: float | jax.Array | None = None,
    greedy: bool = False,
) -> jax.Array:
    """Draws one token per row of ``logits [B, V]``.

    Args:
      logits: ``[B, V]`` float.
      rng: a ``jax.random`` key (unused when ``greedy``).
      temperature: positive divisor of the logits.
      top_k: keep the ``top_k`` largest logits (static int).
      top_p: nucleus sampling: keep the smallest set of most likely tokens whose probability
        reaches ``top_p`` (the most likely token is always kept).
      greedy: ``argmax`` instead of sampling.

    Returns:
      ``[B]`` int32 token ids.
    """
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    if top_k is not None:
        kth = lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p is not None:
        ordered = jnp.flip(jnp.sort(logits, axis=-1), axis=-1)
        probs = softmax(ordered, axis=-1)
        # A token is kept when the mass strictly before it is still below top_p.
        keep = (jnp.cumsum(probs, axis=-1) - probs) < top_p
        cutoff = jnp.min(jnp.where(keep, ordered, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


@functools.partial(
    jax.jit,
    static_argnames=("graphdef", "max_new_tokens", "greedy", "top_k", "use_top_p", "eos_id"),
)
def _generate(
    graphdef,
    state,
    prompt,
    rng,
    temperature,
    top_p,
    src_tokens,
    src_lengths,
    *,
    max_new_tokens: int,
    greedy: bool,
    top_k: int | None,
    use_top_p: bool,
    eos_id: int | None,
):
    model = nnx.merge(graphdef, state)
    batch, prompt_len = prompt.shape
    total = prompt_len + max_new_tokens
    if isinstance(model, EncoderDecoder):
        cache = model.init_cache(src_tokens, total, src_lengths=src_lengths)
        step = model.decode
    else:
        cache = model.init_cache(batch, total)
        step = model

    def sample(logits, i):
        return sample_logits(
            logits,
            jax.random.fold_in(rng, i),
            temperature=temperature,
            top_k=top_k,
            top_p=top_p if use_top_p else None,
            greedy=greedy,
        ).astype(prompt.dtype)

    def finish(token, done):
        if eos_id is None:
            return token, done
        token = jnp.where(done, eos_id, token)  # finished rows keep emitting eos
        return token, done | (token == eos_id)

    logits, cache = step(prompt, cache=cache)  # prefill
    token, done = finish(sample(logits[:, -1], 0), jnp.zeros((batch,), bool))
    # Slots a finished batch never reaches stay eos (the loop may stop early).
    fill = 0 if eos_id is None else eos_id
    tokens = jnp.full((batch, total), fill, prompt.dtype)
    tokens = tokens.at[:, :prompt_len].set(prompt).at[:, prompt_len].set(token)

    def cond(carry):
        i, _, _, _, done = carry
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        i, tokens, cache, token, done = carry
        logits, cache = step(token[:, None], cache=cache)
        token, done = finish(sample(logits[:, 0], i), done)
        tokens = lax.dynamic_update_slice(tokens, token[:, None], (0, prompt_len + i))
        return i + 1, tokens, cache, token, done

    carry = (jnp.int32(1), tokens, cache, token, done)
    return lax.while_loop(cond, body, carry)[1]


def generate(
    model: TransformerLM | EncoderDecoder,
    prompt: jax.Array,
    max_new_tokens: int,
    *,
    rng: jax.Array | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    src_tokens: jax.Array | None = None,
    src_lengths: jax.Array | None = None,
) -> jax.Array:
    """Extends ``prompt`` by ``max_new_tokens`` tokens with cached decoding.

    Runs eagerly as a whole (call it outside ``jit``): arguments are checked in Python, then
    one compiled function does the prefill and a ``lax.while_loop`` over steps. It compiles
    once per (model graph, prompt shape, ``max_new_tokens``, sampling mode) and never per
    step. The model runs deterministically (no dropout).

    Args:
      model: :class:`attention_jax.nn.TransformerLM`, or
        :class:`attention_jax.nn.EncoderDecoder` with ``src_tokens`` (the prompt is then the
        decoder's prefix, e.g. a BOS column).
      prompt: ``[B, T0]`` int ids in ``[0, vocab_size)``, ``T0 >= 1``; all rows have the
        same length (no left padding).
      max_new_tokens: number of tokens to append (``T0 + max_new_tokens <= max_len``).
      rng: ``jax.random`` key; required unless ``temperature == 0``.
      temperature: ``0`` is greedy (argmax); otherwise logits are divided by it.
      top_k: sample among the ``top_k`` most likely tokens.
      top_p: nucleus sampling threshold in ``(0, 1]``.
      eos_id: once a row emits ``eos_id`` it keeps emitting ``eos_id`` (the output stays
        rectangular); decoding stops early when every row is done.
      src_tokens: ``[B, S]`` source tokens (encoder-decoder only).
      src_lengths: ``[B]`` source lengths (encoder-decoder only).

    Returns:
      ``[B, T0 + max_new_tokens]`` tokens: the prompt followed by the generated ids.

    Raises:
      ValueError: prompt longer than ``max_len``, ``T0 + max_new_tokens > max_len`` (the
        cache capacity), ids outside the vocabulary, bad sampling options, a missing ``rng``.
      TypeError: an unsupported model or non-integer prompt.
    """
    fn = "generate"
    if not isinstance(model, TransformerLM | EncoderDecoder):
        raise TypeError(
            f"{fn}: model must be a TransformerLM or EncoderDecoder, got {type(model).__name__}."
        )
    cfg = model.config
    encdec = isinstance(model, EncoderDecoder)
    prompt = check_tokens(prompt, "prompt", fn=fn, max_len=cfg.max_len)
    prompt = validate_tokens(prompt, cfg.vocab_size, name="prompt", fn=fn)
    batch, prompt_len = prompt.shape
    if prompt_len < 1:
        raise ValueError(f"{fn}: prompt must have length T0 >= 1, got {describe(prompt)}.")
    max_new_tokens = check_int(max_new_tokens, "max_new_tokens", fn=fn, minimum=0)
    check_int_in(
        max_new_tokens,
        "max_new_tokens",
        fn=fn,
        low=0,
        high=cfg.max_len - prompt_len,
        why=f" (max_len={cfg.max_len} - prompt length {prompt_len}: the KV cache capacity)",
    )
    if encdec:
        if src_tokens is None:
            raise ValueError(f"{fn}: src_tokens must be given for an EncoderDecoder, got None.")
        src_tokens = check_tokens(src_tokens, "src_tokens", fn=fn, max_len=cfg.max_len)
        src_tokens = validate_tokens(src_tokens, cfg.vocab_size, name="src_tokens", fn=fn)
        if src_tokens.shape[0] != batch:
            raise ValueError(
                f"{fn}: src_tokens must be of shape [B, S] with the prompt's B={batch}, "
                f"got {describe(src_tokens)}."
            )
        if src_lengths is not None:
            src_lengths = jnp.asarray(src_lengths, jnp.int32)
    elif src_tokens is not None or src_lengths is not None:
        raise ValueError(
            f"{fn}: src_tokens and src_lengths must be None for a {type(model).__name__} "
            "(they are for an EncoderDecoder)."
        )
    if not is_real(temperature) or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"{fn}: temperature must be a finite number >= 0, got {temperature!r}.")
    greedy = temperature == 0
    if top_k is not None:
        check_int_in(top_k, "top_k", fn=fn, low=1, high=cfg.vocab_size, why=" (vocab_size)")
    if top_p is not None and (not is_real(top_p) or not 0 < top_p <= 1):
        raise ValueError(f"{fn}: top_p must be None or a number in (0, 1], got {top_p!r}.")
    if eos_id is not None:
        check_int_in(eos_id, "eos_id", fn=fn, low=0, high=cfg.vocab_size - 1, why=" (an id)")
    if rng is None:
        if not greedy:
            raise ValueError(
                f"{fn}: rng must be a jax.random key when sampling (temperature > 0), got None."
            )
        rng = jax.random.key(0)  # unused by greedy decoding
    if max_new_tokens == 0:
        return prompt

    graphdef, state = nnx.split(model)
    return _generate(
        graphdef,
        state,
        prompt,
        rng,
        jnp.float32(temperature if not greedy else 1.0),
        jnp.float32(1.0 if top_p is None else top_p),
        src_tokens,
        src_lengths,
        max_new_tokens=max_new_tokens,
        greedy=greedy,
        top_k=top_k,
        use_top_p=top_p is not None,
        eos_id=eos_id,
    )
