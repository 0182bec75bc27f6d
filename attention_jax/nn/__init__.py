"""Flax NNX modules: parameters and wiring only; the math lives in the functional core."""

from attention_jax.nn.additive import AdditiveAttention
from attention_jax.nn.attention import MultiHeadAttention
from attention_jax.nn.block import TransformerBlock
from attention_jax.nn.cache import (
    AttentionCache,
    EncoderDecoderCache,
    KVCache,
    LatentCache,
    LayerCache,
    RecurrentCache,
    init_kv_cache,
)
from attention_jax.nn.checks import validate_tokens
from attention_jax.nn.config import (
    ATTENTION_GATES,
    ATTENTION_KINDS,
    LINEAR_ATTENTION,
    LINEAR_GATE_ACTIVATIONS,
    LINEAR_GATED,
    AttentionConfig,
    TransformerConfig,
)
from attention_jax.nn.dense import Dense
from attention_jax.nn.embedding import Embedder
from attention_jax.nn.encoder import TransformerClassifier, TransformerEncoder
from attention_jax.nn.encoder_decoder import EncoderDecoder
from attention_jax.nn.generation import generate, sample_logits
from attention_jax.nn.hf import HF_MODEL_TYPES, load_hf_checkpoint, save_hf_checkpoint
from attention_jax.nn.linear_attention import LinearAttention
from attention_jax.nn.lm import TransformerLM
from attention_jax.nn.mlp import MLP
from attention_jax.nn.positional import LearnedPositionalEmbedding, T5RelativeBias
from attention_jax.nn.rnn_classifier import RNNAttentionClassifier
from attention_jax.nn.seq2seq import Seq2SeqAttention
from attention_jax.nn.stack import DecoderStack
from attention_jax.nn.vision import VisionTransformer
