"""Flax NNX modules: parameters and wiring only; the math lives in the functional core."""

from attention_jax.nn.positional import LearnedPositionalEmbedding, T5RelativeBias
