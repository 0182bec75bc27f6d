"""attention_jax: attention as pure, jit-able JAX functions, with Flax NNX modules on top.

The functional API lives at the top level; modules are in :mod:`attention_jax.nn`.
"""

__version__ = "0.1.0"

# --- functional core (each line re-exports one module's public names) ---
from attention_jax.attention import additive_attention, attention_pool, dot_product_attention
from attention_jax.dispatch import select_implementation
from attention_jax.flash import flash_attention, merge_attention
from attention_jax.masks import (
    attention_mask,
    causal_mask,
    combine_masks,
    padding_mask,
    segment_mask,
    sliding_window_mask,
)
from attention_jax.positional import (
    RopeScaling,
    alibi_bias,
    alibi_slopes,
    apply_rope,
    relative_positions,
    rope_frequencies,
    sinusoidal_encoding,
    t5_relative_bias,
    t5_relative_position_bucket,
)
from attention_jax.softmax import log_softmax, softcap, softmax, softmax_one, sparsemax

# --- generation (the NNX modules themselves live in attention_jax.nn) ---
# isort: split
from attention_jax.nn.checks import validate_tokens
from attention_jax.nn.generate import generate
