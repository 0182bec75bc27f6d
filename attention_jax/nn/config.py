"""The configurations of the NNX layer: frozen, validated dataclasses.

* :class:`AttentionConfig`: every option of one attention layer, declared once. It is what
  :class:`attention_jax.nn.MultiHeadAttention` and :class:`attention_jax.nn.TransformerBlock`
  take.
* :class:`TransformerConfig`: the flat hyperparameters of the Transformer models. Every
  attention option is one of its keyword fields under the same name; its
  :attr:`TransformerConfig.attention_config` is derived from those fields by name, so a new
  attention option is one :class:`AttentionConfig` field (plus its use) and reaches the
  models without being listed again.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp

from attention_jax._checks import (
    check_choice,
    check_int,
    check_positive,
    check_rate,
    check_softcap,
    check_window,
    describe,
)
from attention_jax.dispatch import IMPLEMENTATIONS
from attention_jax.nn.mlp import MLP_KINDS
from attention_jax.normalizers import get_normalizer
from attention_jax.parallel import CONTEXT_PARALLEL_STRATEGIES
from attention_jax.positional import RopeScaling, check_t5_config, rotary_dim

__all__ = [
    "ATTENTION_GATES",
    "ATTENTION_KINDS",
    "CAUSAL_ONLY_ATTENTION",
    "GRID_POSITIONALS",
    "LINEAR_ATTENTION",
    "LINEAR_GATED",
    "LINEAR_GATE_ACTIVATIONS",
    "AttentionConfig",
    "AttentionOptions",
    "NORMS",
    "POOLINGS",
    "POSITIONALS",
    "POSITIONAL_IN_ATTENTION",
    "TransformerConfig",
]

POSITIONALS = ("learned", "sinusoidal", "rope", "alibi", "t5", "none")
POSITIONAL_IN_ATTENTION = ("none", "rope", "alibi", "t5", "rope_2d")
# Positions on a 2-D grid of image patches: attention_jax.nn.VisionTransformer's kinds.
GRID_POSITIONALS = ("sinusoidal_2d", "rope_2d")
NORMS = ("layernorm", "rmsnorm")
POOLINGS = ("cls", "mean", "attention")
# What computes a layer's attention (each kind is one paper; see AttentionConfig.attention).
LINEAR_ATTENTION = ("linear", "based", "gla", "deltanet", "gated_deltanet")
ATTENTION_KINDS = (
    "softmax",
    "differential",
    "forgetting",
    "stick_breaking",
    "mla",
    *LINEAR_ATTENTION,
)
# Defined by their causal order (the linear mixers are recurrences over time).
CAUSAL_ONLY_ATTENTION = ("forgetting", "stick_breaking", *LINEAR_ATTENTION)
ATTENTION_GATES = ("headwise", "elementwise")

# The output gate of the gated linear mixers (GLA, Gated DeltaNet): its activation.
LINEAR_GATE_ACTIVATIONS = ("silu", "sigmoid")
LINEAR_GATED = ("gla", "gated_deltanet")

# Options a kind's core function does not have, with the value they must keep there (the
# kinds other than softmax and mla call their own function of attention_jax.variants).
_SOFTMAX_ONLY = {
    "normalizer": "softmax",
    "softcap": None,
    "sinks": False,
    "talking_heads": False,
    "attention_dropout": 0.0,
}
_LINEAR_UNSUPPORTED = {
    **_SOFTMAX_ONLY,
    "positional": "none",  # a model's linear layers get "none" whatever its positional
    "local_window_size": None,
    "implementation": None,
    "qk_norm": False,
    "qkv_bias": False,
    "attention_gate": None,
    "value_residual": False,
}
_UNSUPPORTED = {
    "differential": _SOFTMAX_ONLY,
    "forgetting": {**_SOFTMAX_ONLY, "local_window_size": None},
    "stick_breaking": {**_SOFTMAX_ONLY, "local_window_size": None, "implementation": None},
    "mla": {"qk_norm": False, "value_residual": False, "qkv_bias": False},
    **{kind: _LINEAR_UNSUPPORTED for kind in LINEAR_ATTENTION},
}


def _check_dtype(value, name: str, *, fn: str, allow_none: bool):
    """One spelling per dtype: ``jnp.bfloat16``, ``"bfloat16"`` and ``dtype("bfloat16")``
    become the same ``numpy.dtype`` (so configs compare and serialize alike)."""
    if value is None and allow_none:
        return None
    try:
        if value is not None:
            return jnp.dtype(value)
    except TypeError:
        pass
    rule = "None or a dtype" if allow_none else "a dtype"
    raise ValueError(f"{fn}: {name} must be {rule}, got {describe(value)}.")


def _check_bool(value, name: str, *, fn: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{fn}: {name} must be a bool, got {describe(value)}.")
    return value


def _check_attention(values: dict[str, Any], fn: str) -> dict[str, Any]:
    """Validates the fields of an :class:`AttentionConfig` (errors name ``fn``, the class or
    function the user called) and returns them in canonical form."""
    v = dict(values)
    v["num_heads"] = check_int(v["num_heads"], "num_heads", fn=fn)
    v["head_dim"] = check_int(v["head_dim"], "head_dim", fn=fn)
    if v["num_kv_heads"] is None:
        v["num_kv_heads"] = v["num_heads"]
    v["num_kv_heads"] = check_int(v["num_kv_heads"], "num_kv_heads", fn=fn)
    if v["num_heads"] % v["num_kv_heads"]:
        raise ValueError(
            f"{fn}: num_heads must be a multiple of num_kv_heads={v['num_kv_heads']}, "
            f"got {v['num_heads']}."
        )
    check_choice(v["positional"], "positional", POSITIONAL_IN_ATTENTION, fn=fn)
    v["rope_base"] = check_positive(v["rope_base"], "rope_base", fn=fn)
    if v["rope_scaling"] is not None and not isinstance(v["rope_scaling"], RopeScaling):
        raise ValueError(
            f"{fn}: rope_scaling must be None or a RopeScaling, got {describe(v['rope_scaling'])}."
        )
    if v["positional"] == "rope":
        rotary_dim(v["head_dim"], v["rope_fraction"], fn)
    v["t5_bidirectional"] = _check_bool(v["t5_bidirectional"], "t5_bidirectional", fn=fn)
    if v["positional"] == "t5":
        check_t5_config(v["t5_num_buckets"], v["t5_max_distance"], v["t5_bidirectional"], fn)
    for name in ("qk_norm", "use_bias", "qkv_bias"):
        v[name] = _check_bool(v[name], name, fn=fn)
    get_normalizer(v["normalizer"], fn=fn)
    v["softcap"] = check_softcap(v["softcap"], fn=fn)
    v["local_window_size"] = check_window(v["local_window_size"], fn=fn)
    v["attention_dropout"] = check_rate(v["attention_dropout"], "attention_dropout", fn=fn)
    check_choice(v["implementation"], "implementation", (None, *IMPLEMENTATIONS), fn=fn)
    _check_variant(v, fn)
    _check_context_parallel(v, fn)
    if v["positional"] == "rope_2d":
        _check_rope_2d(v, fn)
    v["dtype"] = _check_dtype(v["dtype"], "dtype", fn=fn, allow_none=True)
    v["param_dtype"] = _check_dtype(v["param_dtype"], "param_dtype", fn=fn, allow_none=False)
    return v


def _check_context_parallel(v: dict[str, Any], fn: str) -> None:
    """``context_parallel`` runs self-attention through
    :func:`attention_jax.context_parallel_attention`, which is flash softmax attention with
    the options it can shard (no weights, dropout, other normalizers or head mixing)."""
    mode = check_choice(
        v["context_parallel"], "context_parallel", (None, *CONTEXT_PARALLEL_STRATEGIES), fn=fn
    )
    if mode is None:
        return
    rules = {
        "attention": "softmax",
        "normalizer": "softmax",
        "attention_dropout": 0.0,
        "talking_heads": False,
    }
    for name, want in rules.items():
        if v[name] != want:
            raise ValueError(
                f"{fn}: {name} must be {want!r} with context_parallel={mode!r} (the sharded "
                f"path is flash softmax attention), got {describe(v[name])}."
            )
    if v["positional"] in ("rope_2d",):
        raise ValueError(
            f"{fn}: positional must be 1-D with context_parallel={mode!r}, got 'rope_2d'."
        )


def _check_rope_2d(v: dict[str, Any], fn: str) -> None:
    """The rules of ``positional="rope_2d"``: :func:`attention_jax.apply_rope_2d` rotates
    whole heads (no fraction, no scaling) of a width that splits into row and column pairs,
    and the 1-D notions of position (a window over positions) do not apply."""
    if v["head_dim"] % 4:
        raise ValueError(
            f"{fn}: head_dim must be a multiple of 4 with positional='rope_2d' (half of the "
            f"rotated pairs turn with the row, half with the column), got {v['head_dim']}."
        )
    fixed = {"rope_fraction": 1.0, "rope_scaling": None, "local_window_size": None}
    for name, default in fixed.items():
        if v[name] != default:
            raise ValueError(
                f"{fn}: {name} must be {default!r} with positional='rope_2d' (axial 2-D RoPE "
                f"rotates whole heads at (row, col) positions), got {describe(v[name])}."
            )
    if v["attention"] != "softmax":
        raise ValueError(
            f"{fn}: attention must be 'softmax' with positional='rope_2d' (the variants "
            f"place tokens at 1-D positions), got {v['attention']!r}."
        )


def _check_variant(v: dict[str, Any], fn: str) -> None:
    """The rules of the attention variants (kind, MLA dims, sinks, gates, value residual,
    talking heads): each option valid alone, and only in combinations that are defined."""
    kind = check_choice(v["attention"], "attention", ATTENTION_KINDS, fn=fn)
    for name in ("sinks", "value_residual", "talking_heads"):
        v[name] = _check_bool(v[name], name, fn=fn)
    check_choice(v["attention_gate"], "attention_gate", (None, *ATTENTION_GATES), fn=fn)
    for name in ("kv_latent_dim", "rope_head_dim"):
        if v[name] is not None:
            v[name] = check_int(v[name], name, fn=fn)
    v["linear_chunk_size"] = check_int(v["linear_chunk_size"], "linear_chunk_size", fn=fn)
    if v["conv_size"] is not None:
        v["conv_size"] = check_int(v["conv_size"], "conv_size", fn=fn, minimum=2)
        if kind not in LINEAR_ATTENTION:
            raise ValueError(
                f"{fn}: conv_size must be None unless attention is a linear mixer "
                f"{LINEAR_ATTENTION}, got {v['conv_size']!r}."
            )
    check_choice(
        v["linear_gate_activation"], "linear_gate_activation", LINEAR_GATE_ACTIVATIONS, fn=fn
    )
    if v["linear_gate_activation"] != "silu" and kind not in LINEAR_GATED:
        raise ValueError(
            f"{fn}: linear_gate_activation must be 'silu' unless attention is one of the "
            f"gated linear mixers {LINEAR_GATED}, got {v['linear_gate_activation']!r} with "
            f"attention={kind!r}."
        )
    for name, default in _UNSUPPORTED.get(kind, {}).items():
        if v[name] != default and not (name == "implementation" and v[name] == "xla"):
            raise ValueError(
                f"{fn}: {name} must be {default!r} with attention={kind!r} (its core function "
                f"has no such option), got {describe(v[name])}."
            )
    if kind in ("differential", "forgetting", "stick_breaking") and v["positional"] not in (
        "none",
        "rope",
    ):
        raise ValueError(
            f"{fn}: positional must be 'none' or 'rope' with attention={kind!r} (its core "
            f"function takes no bias), got {v['positional']!r}."
        )
    if kind == "differential" and v["head_dim"] % 2:
        raise ValueError(
            f"{fn}: head_dim must be even with attention='differential' (each head splits "
            f"into two query/key halves), got {v['head_dim']}."
        )
    if kind == "mla":
        if v["kv_latent_dim"] is None:
            raise ValueError(
                f"{fn}: kv_latent_dim must be an int >= 1 with attention='mla' (the width of "
                "the shared key/value latent), got None."
            )
        if v["num_kv_heads"] != v["num_heads"]:
            raise ValueError(
                f"{fn}: num_kv_heads must equal num_heads={v['num_heads']} with "
                "attention='mla' (every head has its own keys and values, up-projected from "
                f"the shared latent), got {v['num_kv_heads']}."
            )
        if v["positional"] == "rope" and v["rope_head_dim"] is None:
            raise ValueError(
                f"{fn}: rope_head_dim must be an int >= 1 with attention='mla' and "
                "positional='rope' (the decoupled RoPE key shared by the heads), got None."
            )
        if v["positional"] == "rope":
            rotary_dim(v["rope_head_dim"], v["rope_fraction"], fn)
        elif v["rope_head_dim"] is not None:
            raise ValueError(
                f"{fn}: rope_head_dim must be None with positional={v['positional']!r} (it "
                f"is MLA's RoPE key), got {v['rope_head_dim']!r}."
            )
    else:
        for name in ("kv_latent_dim", "rope_head_dim"):
            if v[name] is not None:
                raise ValueError(
                    f"{fn}: {name} must be None unless attention='mla', got {v[name]!r}."
                )
    if v["talking_heads"] and v["implementation"] not in (None, "xla"):
        raise ValueError(
            f"{fn}: implementation must be None or 'xla' with talking_heads=True (the heads "
            f"mix whole rows of logits), got {v['implementation']!r}."
        )
    if v["sinks"] and v["normalizer"] != "softmax":
        raise ValueError(
            f"{fn}: normalizer must be 'softmax' with sinks=True (the sink joins the softmax "
            f"denominator), got {v['normalizer']!r}."
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class AttentionOptions:
    """The options of an attention layer that a model config also carries, each declared once.

    :class:`AttentionConfig` (one layer) and :class:`TransformerConfig` (the flat model config)
    both inherit these fields, so a new attention option is one line here (plus its use) and
    becomes a keyword of both. See :class:`AttentionConfig` for what each field means.
    """

    num_kv_heads: int | None = None
    head_dim: int | None = None
    positional: str = "none"
    rope_base: float = 10000.0
    rope_fraction: float = 1.0
    rope_scaling: RopeScaling | None = None
    t5_num_buckets: int = 32
    t5_max_distance: int = 128
    qk_norm: bool = False
    normalizer: str | Callable = "softmax"
    softcap: float | None = None
    local_window_size: int | tuple[int, int] | None = None
    attention_dropout: float = 0.0
    use_bias: bool = False
    qkv_bias: bool = False
    implementation: str | None = None
    dtype: Any = None
    param_dtype: Any = jnp.float32
    attention: str = "softmax"
    kv_latent_dim: int | None = None
    rope_head_dim: int | None = None
    sinks: bool = False
    attention_gate: str | None = None
    value_residual: bool = False
    talking_heads: bool = False
    linear_chunk_size: int = 64
    conv_size: int | None = None
    linear_gate_activation: str = "silu"
    context_parallel: str | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class AttentionConfig(AttentionOptions):
    """Every option of one attention layer (all keyword-only; validated, frozen, hashable).

    Shape letters: ``N`` query heads, ``K`` key/value heads, ``H`` head dim.

    Attributes:
      num_heads: ``N``.
      head_dim: ``H``.
      num_kv_heads: ``K``; None means ``N`` and is resolved to it (``N % K == 0``; ``K == 1``
        is multi-query attention).
      positional: position information inside attention: ``"none"`` (absolute encodings
        live in the embedding, or NoPE), ``"rope"`` (:func:`attention_jax.apply_rope` on q
        and k), ``"alibi"`` (:func:`attention_jax.alibi_bias`), ``"t5"`` (a learned
        :class:`attention_jax.nn.T5RelativeBias` table owned by the layer) or ``"rope_2d"``
        (axial 2-D RoPE, Heo et al. 2024: :func:`attention_jax.apply_rope_2d` on q and k at
        ``(row, col)`` positions of a patch grid; softmax attention, bidirectional and
        uncached only, ``head_dim`` a multiple of 4, no window, fraction or scaling).
      rope_base, rope_fraction, rope_scaling: RoPE options (:func:`attention_jax.apply_rope`;
        ``"rope_2d"`` uses ``rope_base`` only).
      t5_num_buckets, t5_max_distance, t5_bidirectional: the T5 table's options
        (:func:`attention_jax.t5_relative_bias`).
      qk_norm: RMSNorm over ``H`` on every q and k head (before RoPE).
      normalizer: ``"softmax"``, ``"softmax_one"``, ``"sparsemax"``, ``"sigmoid"`` or a
        callable (see :data:`attention_jax.NORMALIZERS`).
      softcap: optional attention-logit softcap (a number > 0).
      local_window_size: optional sliding window, an int or ``(left, right)``: the query at
        position ``i`` sees keys at positions ``[i - left, i + right]``; canonicalized to a
        pair.
      attention_dropout: attention-weight dropout rate in ``[0, 1)``.
      use_bias: biases in the q, k, v and output projections.
      qkv_bias: biases in the q, k and v projections only (Qwen2); ``use_bias`` adds them
        everywhere.
      implementation: the core's attention path (None = choose; see
        :func:`attention_jax.select_implementation`).
      dtype: computation dtype of the projections (None: from inputs and params). With
        ``bfloat16`` the logits and the normalizer still run in float32 in the core.
      param_dtype: dtype of the parameters.
      attention: what computes the attention (the variants of
        :mod:`attention_jax.variants`, each wired as its paper does):

        * ``"softmax"``: :func:`attention_jax.dot_product_attention`.
        * ``"differential"`` (Ye et al. 2024): each head's q and k split into two halves of
          ``H / 2`` (:func:`attention_jax.differential_attention`), ``lambda = exp(lq1 . lk1)
          - exp(lq2 . lk2) + lambda_init`` from four learned ``[H / 2]`` vectors,
          ``lambda_init = 0.8 - 0.6 exp(-0.3 layer_index)``, then a per-head RMSNorm and the
          factor ``1 - lambda_init``. Same parameter count as softmax.
        * ``"forgetting"`` (FoX, Lin et al. 2025): a forget gate per token and head,
          ``log f_t = log_sigmoid(x_t W_f + b_f)`` from the layer input
          (:func:`attention_jax.forgetting_attention`; usually with ``positional="none"``).
          Causal only.
        * ``"stick_breaking"`` (Tan et al. 2024): :func:`attention_jax.stick_breaking_attention`
          (materialized; usually with ``positional="none"``). Causal only.
        * ``"mla"`` (DeepSeek-V2 multi-head latent attention): keys and values up-projected
          from a shared, RMS-normed latent ``c_kv = x W_dkv`` of ``kv_latent_dim``, with a
          decoupled RoPE key of ``rope_head_dim`` shared by the heads (needed with
          ``positional="rope"``); the cache holds ``kv_latent_dim + rope_head_dim`` floats
          per token, and cached decoding absorbs the up-projections into the query and the
          output (multi-query attention over the latent).
      kv_latent_dim, rope_head_dim: MLA's latent width and RoPE key width.
      sinks: a learned sink logit per head (``[N]``, init 0) in the softmax denominator
        (``dot_product_attention(..., sinks=)``).
      attention_gate: None, ``"headwise"`` or ``"elementwise"`` (Qiu et al. 2025, "Gated
        Attention for LLMs"): the attention output of each head is multiplied by
        ``sigmoid(x W_g)`` (one gate per head, or per head and channel) computed from the
        layer input ``x`` before the output projection.
      value_residual: (Zhou et al. 2024, "Value Residual Learning") the values of every
        layer after the first become ``lambda_1 v + lambda_2 v_first`` (learned scalars, init
        0.5 each), ``v_first`` the first layer's values, passed along the stack.
      talking_heads: (Shazeer et al. 2020) learned ``[N, N]`` mixes of the logits and of the
        weights across heads (init identity); materialized path only.
      linear_chunk_size: chunk of the chunkwise-parallel form of the linear mixers.
      conv_size: a short causal depthwise convolution (kernel ``conv_size``, then SiLU) on q, k
        and v of a linear mixer, as DeltaNet / Gated DeltaNet use (None: none).
      linear_gate_activation: the activation of the output gate of ``"gla"`` and
        ``"gated_deltanet"``: ``"silu"`` (their papers) or ``"sigmoid"``. At initialization
        ``silu(x W_g)`` has a random sign per channel and token, which scrambles the recalled
        value of each query token until the gate has learned; ``sigmoid`` starts near 0.5
        everywhere (``experiments/mqar.py`` measures both).
      context_parallel: None, ``"ring"``, ``"ulysses"`` or ``"all_gather"``: when the call
        runs under a mesh (``jax.set_mesh``; :class:`attention_jax.train.TrainStep` sets its
        own) whose axis ``"sequence"`` has more than one device, uncached self-attention goes
        through :func:`attention_jax.context_parallel_attention` with that strategy (the
        batch over ``"data"`` when the mesh has it); elsewhere it changes nothing. Softmax
        attention only, without dense masks, sequence lengths or custom positions.

    The linear mixers (:class:`attention_jax.nn.LinearAttention`, :mod:`attention_jax.linear`;
    causal only; their cache is a fixed-size recurrent state):

    * ``"linear"`` (Katharopoulos et al. 2020): elu+1 features, normalized.
    * ``"based"`` (Arora et al. 2024): the 2nd-order Taylor features of ``exp``, normalized.
    * ``"gla"`` (Yang et al. 2024): a per-key-dimension decay
      ``log_sigmoid(x W_1 W_2) / 16`` (rank-16 gate), per-head RMSNorm, output gate
      ``silu(x W_g)``.
    * ``"deltanet"`` (Yang et al. 2024): SiLU + L2-normalized q and k, writing strength
      ``beta = sigmoid(x W_b)``, per-head RMSNorm.
    * ``"gated_deltanet"`` (Yang, Kautz & Hatamizadeh 2024): DeltaNet with a Mamba-2 decay
      ``-exp(A) softplus(x W_a + dt_bias)`` per head and the output gate ``silu(x W_g)``.

    They take no positional encoding (order lives in the recurrence), softmax options, window,
    QK-norm, gate or value residual.

    Combinations without a definition are rejected: the variants that call their own core
    function (differential, forgetting, stick-breaking) take no normalizer, softcap, sinks,
    talking heads, attention dropout or bias (ALiBi/T5); forgetting and stick-breaking have no
    sliding window; MLA needs ``kv_latent_dim`` (and ``rope_head_dim`` with RoPE), has as
    many key/value heads as heads, no QK-norm and no value residual.

    Raises:
      ValueError: naming the offending field, e.g.
        ``"AttentionConfig: num_heads must be a multiple of num_kv_heads=3, got 4."``
    """

    num_heads: int
    head_dim: int  # required here: a layer needs its head size
    t5_bidirectional: bool = True  # per stack in the models (encoder True, decoder False)

    def __post_init__(self):
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name, value in _check_attention(values, type(self).__name__).items():
            object.__setattr__(self, name, value)

    @classmethod
    def checked(cls, fn: str, **options) -> AttentionConfig:
        """``AttentionConfig(**options)`` with errors naming ``fn``, the function the user
        called (e.g. ``"MultiHeadAttention.create"``); unknown options raise a ValueError
        that lists the known ones."""
        fields = dataclasses.fields(cls)
        unknown = sorted(set(options) - {f.name for f in fields})
        if unknown:
            raise ValueError(
                f"{fn}: unknown attention options {unknown}; the options are the fields of "
                f"AttentionConfig: {sorted(f.name for f in fields)}."
            )
        for f in fields:
            if f.default is dataclasses.MISSING and f.name not in options:
                raise ValueError(f"{fn}: {f.name} is required.")
        values = {f.name: options.get(f.name, f.default) for f in fields}
        return cls(**_check_attention(values, fn))


@dataclasses.dataclass(frozen=True, kw_only=True)
class TransformerConfig(AttentionOptions):
    """Hyperparameters of :class:`TransformerLM`, :class:`TransformerEncoder`,
    :class:`TransformerClassifier` and :class:`EncoderDecoder` (all keyword-only, flat).

    The attention options are inherited from :class:`AttentionOptions` (``num_kv_heads``,
    ``head_dim``, ``rope_*``, ``t5_num_buckets``, ``t5_max_distance``, ``qk_norm``,
    ``normalizer``, ``softcap``, ``local_window_size``, ``attention_dropout``, ``use_bias``,
    ``implementation``, ``dtype``, ``param_dtype``); with ``num_heads`` and ``positional``
    they are validated by :class:`AttentionConfig`'s rules and collected in
    :attr:`attention_config`.

    Attributes:
      vocab_size: ``V``.
      d_model: ``D``, the residual width.
      num_layers: blocks of the LM / encoder, and the default for the encoder-decoder stacks.
      num_heads: query heads ``N``.
      max_len: longest sequence (and KV cache) the model accepts; the size of a learned
        position table.
      num_kv_heads: key/value heads ``K`` (default ``N``; ``N % K == 0``).
      head_dim: ``H`` (default ``D // N``, which must divide evenly).
      mlp_ratio: MLP hidden width is ``mlp_ratio * D`` (for SwiGLU too, which then has 1.5x
        the MLP parameters of GELU).
      positional: ``"learned"``/``"sinusoidal"`` (added to the embeddings), ``"rope"`` (on q
        and k), ``"alibi"``/``"t5"`` (attention bias; one T5 table per stack, shared by its
        layers), ``"none"`` (NoPE). The 2-D kinds of image patch grids (``"sinusoidal_2d"``,
        ``"rope_2d"``) are :class:`attention_jax.nn.VisionTransformer`'s.
      rope_base, rope_fraction, rope_scaling: RoPE options (:func:`attention_jax.apply_rope`).
      t5_num_buckets, t5_max_distance: T5 bias options (valid for both directions: encoders
        use a bidirectional table, decoders a causal one).
      norm: ``"layernorm"`` or ``"rmsnorm"``.
      norm_eps: epsilon of every norm (flax's 1e-6 by default; GPT-2 and BERT use 1e-5 and
        1e-12, Llama 1e-5 or 1e-6: set it when loading their weights).
      embedding_norm: a norm (of ``norm``'s kind) on the embeddings, after positions are
        added (BERT's embedding LayerNorm).
      type_vocab_size: > 0 adds a learned token-type embedding (BERT's segments A/B), read
        from ``token_types [B, T]`` (0 when not given).
      mlp: ``"gelu"`` (tanh), ``"gelu_exact"`` (erf), ``"swiglu"``, ``"relu"`` (the 2017 architecture) or ``"none"``
        (attention-only blocks, as Zoology's MQAR models).
      prenorm: pre-norm blocks with a final norm (True) or post-norm blocks (2017).
      dropout: residual and embedding dropout rate.
      attention_dropout: attention-weight dropout rate.
      tie_embeddings: logits use the token embedding (``x @ E^T``) instead of a separate head.
      scale_embeddings: multiply token embeddings by ``sqrt(D)`` (2017).
      use_bias: biases in the attention and MLP projections.
      qkv_bias: biases in the q, k, v projections only (Qwen2).
      qk_norm: RMSNorm on q and k heads.
      normalizer: attention normalizer name or callable.
      softcap: optional attention-logit softcap.
      local_window_size: optional sliding window of every self-attention layer, an int or
        ``(left, right)`` (a causal model needs only ``left``; canonicalized to a pair).
      num_encoder_layers, num_decoder_layers: encoder-decoder depths (default ``num_layers``).
      layer_attention: None, or one attention kind per layer (``num_layers`` entries) for
        hybrids such as ``("gated_deltanet", "gated_deltanet", "gated_deltanet", "softmax")``;
        each layer takes the model's other attention options (linear layers without
        positional encoding, softmax layers without ``conv_size``). ``attention`` is then the kind of any further layer.
      num_classes: classes of :class:`TransformerClassifier`.
      pooling: classifier pooling, ``"cls"`` (a learned token prepended at position 0),
        ``"mean"`` (over unpadded tokens) or ``"attention"`` (:func:`attention_jax.attention_pool`
        with a learned query).
      dtype: computation dtype (``jnp.bfloat16`` for mixed precision; softmax stays float32).
      param_dtype: parameter dtype.
      implementation: attention implementation passed to the core (None = choose).
      context_parallel: None, ``"ring"``, ``"ulysses"`` or ``"all_gather"``: the strategy of
        self-attention when the sequence is split over a mesh axis ``"sequence"`` (see
        :class:`AttentionConfig`; :class:`attention_jax.train.TrainStep` on a mesh from
        :func:`attention_jax.train.make_mesh`). Positions stay global.
      attention, kv_latent_dim, rope_head_dim, sinks, attention_gate, value_residual,
        talking_heads: the attention variant of every self-attention layer and its options
        (see :class:`AttentionConfig`); cross-attention layers stay plain softmax, and the
        causal-only variants (``"forgetting"``, ``"stick_breaking"``) are for decoders.

    Raises:
      ValueError: naming the offending field in the shared style, e.g.
        ``"TransformerConfig: num_heads must be an int >= 1, got 0."``
    """

    vocab_size: int
    d_model: int
    num_layers: int
    num_heads: int
    max_len: int
    positional: str = "rope"  # a wider choice than a layer's: also "learned", "sinusoidal"
    dtype: Any = jnp.float32
    mlp_ratio: float = 4
    norm: str = "layernorm"
    norm_eps: float = 1e-6
    embedding_norm: bool = False
    type_vocab_size: int = 0
    mlp: str = "gelu"
    prenorm: bool = True
    dropout: float = 0.0
    tie_embeddings: bool = True
    scale_embeddings: bool = False
    num_encoder_layers: int | None = None
    num_decoder_layers: int | None = None
    num_classes: int | None = None
    pooling: str = "cls"
    layer_attention: tuple[str, ...] | None = None

    def __post_init__(self):
        fn = type(self).__name__
        for name in ("vocab_size", "d_model", "num_layers", "num_heads", "max_len"):
            check_int(getattr(self, name), name, fn=fn)
        if self.head_dim is None and self.d_model % self.num_heads:
            raise ValueError(
                f"{fn}: d_model must be divisible by num_heads={self.num_heads} when "
                f"head_dim is None, got {self.d_model}."
            )
        check_positive(self.mlp_ratio, "mlp_ratio", fn=fn)
        check_positive(self.norm_eps, "norm_eps", fn=fn)
        _check_bool(self.embedding_norm, "embedding_norm", fn=fn)
        check_int(self.type_vocab_size, "type_vocab_size", fn=fn, minimum=0)
        if int(self.mlp_ratio * self.d_model) < 1:
            raise ValueError(
                f"{fn}: mlp_ratio must give an MLP width int(mlp_ratio * d_model) >= 1, "
                f"got {self.mlp_ratio!r}."
            )
        if self.positional in GRID_POSITIONALS:
            raise ValueError(
                f"{fn}: positional must be one of {POSITIONALS} (token positions are 1-D; "
                f"{self.positional!r} places image patches on a 2-D grid: VisionTransformer), "
                f"got {self.positional!r}."
            )
        check_choice(self.positional, "positional", POSITIONALS, fn=fn)
        check_choice(self.norm, "norm", NORMS, fn=fn)
        check_choice(self.mlp, "mlp", (*MLP_KINDS, "none"), fn=fn)
        check_choice(self.pooling, "pooling", POOLINGS, fn=fn)
        if self.positional == "sinusoidal" and self.d_model % 2:
            raise ValueError(
                f"{fn}: d_model must be even for positional='sinusoidal', got {self.d_model}."
            )
        for name in ("prenorm", "tie_embeddings", "scale_embeddings"):
            _check_bool(getattr(self, name), name, fn=fn)
        object.__setattr__(self, "dropout", check_rate(self.dropout, "dropout", fn=fn))
        for name in ("num_encoder_layers", "num_decoder_layers", "num_classes"):
            if getattr(self, name) is not None:
                check_int(getattr(self, name), name, fn=fn)

        # The attention options: the AttentionConfig fields this config has, by name.
        values = {name: getattr(self, name) for name in _SHARED_FIELDS}
        if self.head_dim is None:
            values["head_dim"] = self.d_model // self.num_heads
        values["positional"] = (
            self.positional if self.positional in POSITIONAL_IN_ATTENTION else "none"
        )

        hybrid = self.layer_attention is not None

        def layer_config(kind: str) -> AttentionConfig:
            # Linear mixers carry order in their recurrence: their layers get no positional
            # encoding (the softmax layers of a hybrid keep the model's), and the short
            # convolution of a hybrid's linear layers is theirs alone.
            linear = kind in LINEAR_ATTENTION
            pos = "none" if linear else values["positional"]
            conv = values["conv_size"] if linear or not hybrid else None
            gate = values["linear_gate_activation"]
            gate = gate if kind in LINEAR_GATED or not hybrid else "silu"
            return AttentionConfig.checked(
                fn,
                **{
                    **values,
                    "attention": kind,
                    "positional": pos,
                    "conv_size": conv,
                    "linear_gate_activation": gate,
                },
            )

        attention = layer_config(self.attention)
        if self.positional == "t5":  # decoders use a causal table
            check_t5_config(self.t5_num_buckets, self.t5_max_distance, False, fn)
        for name in _SHARED_FIELDS - {"num_kv_heads", "head_dim", "positional"}:
            object.__setattr__(self, name, getattr(attention, name))  # canonical form
        object.__setattr__(self, "_attention_config", attention)
        layers = self.layer_attention
        if layers is not None:
            if isinstance(layers, str) or not isinstance(layers, tuple | list):
                raise ValueError(
                    f"{fn}: layer_attention must be None or a tuple of attention kinds (one "
                    f"per layer), got {describe(layers)}."
                )
            layers = tuple(layers)
            if len(layers) != self.num_layers:
                raise ValueError(
                    f"{fn}: layer_attention must have num_layers={self.num_layers} entries, "
                    f"got {len(layers)}: {layers!r}."
                )
            for kind in layers:
                check_choice(kind, "layer_attention entries", ATTENTION_KINDS, fn=fn)
            object.__setattr__(self, "layer_attention", layers)
            configs = {kind: layer_config(kind) for kind in set(layers)}
            object.__setattr__(self, "_layer_configs", tuple(configs[k] for k in layers))
        else:
            object.__setattr__(self, "_layer_configs", None)

    def layer_attention_config(self, layer_index: int) -> AttentionConfig:
        """The :class:`AttentionConfig` of self-attention layer ``layer_index``:
        :attr:`attention_config`, or the kind ``layer_attention[layer_index]`` of a hybrid
        (linear layers without positional encoding)."""
        if self._layer_configs is None or layer_index >= len(self._layer_configs):
            return self._attention_config
        return self._layer_configs[layer_index]

    @property
    def attention_config(self) -> AttentionConfig:
        """The :class:`AttentionConfig` of the models' self-attention layers, built from the
        fields of the same names, with ``num_kv_heads`` and ``head_dim`` resolved to ints and
        ``positional`` mapped to where it acts in attention (``"learned"``/``"sinusoidal"``
        -> ``"none"``; the models build their layers with ``"none"`` for ``"t5"`` too and pass
        one table per stack as ``bias_fn``)."""
        return self._attention_config

    def to_dict(self) -> dict[str, Any]:
        """Every field as a JSON-ready value: dtypes by name (``"bfloat16"``), ``rope_scaling``
        as a dict. A callable ``normalizer`` has no JSON form: ValueError."""
        if callable(self.normalizer):
            raise ValueError(
                "TransformerConfig.to_dict: normalizer must be a name to be serialized, got "
                f"the callable {self.normalizer!r}."
            )
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in ("dtype", "param_dtype"):
            out[name] = None if out[name] is None else out[name].name
        if self.rope_scaling is not None:
            out["rope_scaling"] = dataclasses.asdict(self.rope_scaling)
        if self.local_window_size is not None:
            out["local_window_size"] = list(self.local_window_size)
        if self.layer_attention is not None:
            out["layer_attention"] = list(self.layer_attention)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TransformerConfig:
        """The inverse of :meth:`to_dict`; unknown keys raise a ValueError naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"TransformerConfig.from_dict: unknown fields {unknown}; known: {sorted(known)}."
            )
        d = dict(d)
        if isinstance(d.get("rope_scaling"), dict):
            d["rope_scaling"] = RopeScaling(**d["rope_scaling"])
        return cls(**d)

    def to_json(self, **kwargs) -> str:
        """Every field as a JSON string (``kwargs`` go to ``json.dumps``, e.g. ``indent=2``);
        ``TransformerConfig.from_json(cfg.to_json()) == cfg``."""
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, s: str) -> TransformerConfig:
        """The config written by :meth:`to_json`."""
        return cls.from_dict(json.loads(s))

    @property
    def mlp_hidden(self) -> int:
        """MLP hidden width ``int(mlp_ratio * d_model)``."""
        return int(self.mlp_ratio * self.d_model)

    @property
    def encoder_layers(self) -> int:
        return self.num_layers if self.num_encoder_layers is None else self.num_encoder_layers

    @property
    def decoder_layers(self) -> int:
        return self.num_layers if self.num_decoder_layers is None else self.num_decoder_layers


# The attention options TransformerConfig has: the inherited ones and the head count.
_SHARED_FIELDS = frozenset(f.name for f in dataclasses.fields(AttentionOptions)) | {"num_heads"}
