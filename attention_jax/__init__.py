"""attention_jax: attention as pure, jit-able JAX functions, with Flax NNX modules on top.

The functional API (jax and numpy only) lives at the top level; the Flax NNX modules, caches
and ``generate`` are in :mod:`attention_jax.nn`, training in :mod:`attention_jax.train`.
"""

__version__ = "0.1.0"

# --- functional core (each line re-exports one module's public names) ---
from attention_jax import flex  # score_mod / mask_mod helpers
from attention_jax._inputs import AttentionInputs, canonicalize_attention_inputs
from attention_jax.attention import additive_attention, attention_pool, dot_product_attention
from attention_jax.dispatch import select_implementation
from attention_jax.flash import flash_attention, merge_attention
from attention_jax.flex import BlockMask, create_block_mask
from attention_jax.interpret import attention_rollout
from attention_jax.linear import (
    FEATURE_MAPS as LINEAR_FEATURE_MAPS,
)
from attention_jax.linear import (
    delta_rule_attention,
    favor_projection,
    gated_linear_attention,
    linear_attention,
    short_convolution,
)
from attention_jax.masks import (
    attention_mask,
    causal_mask,
    combine_masks,
    padding_mask,
    segment_mask,
    sliding_window_mask,
)
from attention_jax.normalizers import (
    NORMALIZERS,
    get_normalizer,
    log_softmax,
    sigmoid,
    softcap,
    softmax,
    softmax_one,
    sparsemax,
)
from attention_jax.parallel import (
    CONTEXT_PARALLEL_STRATEGIES,
    all_gather_attention,
    context_parallel_attention,
    ring_attention,
    ring_block_counts,
    shard_positions,
    ulysses_attention,
    zigzag_reorder,
    zigzag_restore,
)
from attention_jax.positional import (
    RopeScaling,
    alibi_bias,
    alibi_slopes,
    apply_rope,
    apply_rope_2d,
    grid_positions,
    relative_positions,
    rope_frequencies,
    sinusoidal_encoding,
    sinusoidal_encoding_2d,
    t5_relative_bias,
    t5_relative_position_bucket,
)
from attention_jax.variants import (
    differential_attention,
    forgetting_attention,
    stick_breaking_attention,
)
from attention_jax.vision import patchify, unpatchify


def __getattr__(name: str):
    # `generate` and `validate_tokens` belong to the NNX layer; they stay reachable here for
    # existing code, but only on first use, so `import attention_jax` never imports flax.
    if name in ("generate", "validate_tokens"):
        from attention_jax import nn

        return getattr(nn, name)
    raise AttributeError(f"module 'attention_jax' has no attribute {name!r}")
