"""The configuration shared by the Transformer models: a frozen, validated dataclass."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp

from attention_jax.normalizers import NORMALIZERS
from attention_jax.positional import RopeScaling, rotary_dim

__all__ = ["TransformerConfig", "POSITIONALS", "NORMS", "MLPS", "POOLINGS"]

POSITIONALS = ("learned", "sinusoidal", "rope", "alibi", "t5", "none")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu", "relu")
POOLINGS = ("cls", "mean", "attention")


def _positive_int(value, name: str, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"TransformerConfig: {name} must be an int >= {minimum}, got {value!r}.")


def _choice(value, name: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ValueError(f"TransformerConfig: {name} must be one of {options}, got {value!r}.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TransformerConfig:
    """Hyperparameters of :class:`TransformerLM`, :class:`TransformerEncoder`,
    :class:`TransformerClassifier` and :class:`EncoderDecoder` (all keyword-only).

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
        layers), ``"none"`` (NoPE).
      rope_base, rope_fraction, rope_scaling: RoPE options (:func:`attention_jax.apply_rope`).
      t5_num_buckets, t5_max_distance: T5 bias options.
      norm: ``"layernorm"`` or ``"rmsnorm"``.
      mlp: ``"gelu"``, ``"swiglu"`` or ``"relu"`` (the 2017 architecture).
      prenorm: pre-norm blocks with a final norm (True) or post-norm blocks (2017).
      dropout: residual and embedding dropout rate.
      attention_dropout: attention-weight dropout rate.
      tie_embeddings: logits use the token embedding (``x @ E^T``) instead of a separate head.
      scale_embeddings: multiply token embeddings by ``sqrt(D)`` (2017).
      use_bias: biases in the attention and MLP projections.
      qk_norm: RMSNorm on q and k heads.
      normalizer: attention normalizer name or callable.
      softcap: optional attention-logit softcap.
      num_encoder_layers, num_decoder_layers: encoder-decoder depths (default ``num_layers``).
      num_classes: classes of :class:`TransformerClassifier`.
      pooling: classifier pooling, ``"cls"`` (a learned token prepended at position 0),
        ``"mean"`` (over unpadded tokens) or ``"attention"`` (:func:`attention_jax.attention_pool`
        with a learned query).
      dtype: computation dtype (``jnp.bfloat16`` for mixed precision; softmax stays float32).
      param_dtype: parameter dtype.
      implementation: attention implementation passed to the core (None = choose).

    Raises:
      ValueError: naming the offending field, e.g. ``d_model % num_heads != 0`` without
        ``head_dim``, ``num_heads % num_kv_heads != 0``, an unknown positional/norm/mlp.
    """

    vocab_size: int
    d_model: int
    num_layers: int
    num_heads: int
    max_len: int
    num_kv_heads: int | None = None
    head_dim: int | None = None
    mlp_ratio: float = 4
    positional: str = "rope"
    rope_base: float = 10000.0
    rope_fraction: float = 1.0
    rope_scaling: RopeScaling | None = None
    t5_num_buckets: int = 32
    t5_max_distance: int = 128
    norm: str = "layernorm"
    mlp: str = "gelu"
    prenorm: bool = True
    dropout: float = 0.0
    attention_dropout: float = 0.0
    tie_embeddings: bool = True
    scale_embeddings: bool = False
    use_bias: bool = False
    qk_norm: bool = False
    normalizer: str | Callable = "softmax"
    softcap: float | None = None
    num_encoder_layers: int | None = None
    num_decoder_layers: int | None = None
    num_classes: int | None = None
    pooling: str = "cls"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    implementation: str | None = None

    def __post_init__(self):
        # One spelling per dtype (jnp.bfloat16, "bfloat16" and dtype("bfloat16") compare and
        # serialize alike).
        for name in ("dtype", "param_dtype"):
            try:
                object.__setattr__(self, name, jnp.dtype(getattr(self, name)))
            except TypeError:
                raise ValueError(
                    f"TransformerConfig: {name} must be a dtype, got {getattr(self, name)!r}."
                ) from None
        for name in ("vocab_size", "d_model", "num_layers", "num_heads", "max_len"):
            _positive_int(getattr(self, name), name)
        if self.num_kv_heads is not None:
            _positive_int(self.num_kv_heads, "num_kv_heads")
            if self.num_heads % self.num_kv_heads:
                raise ValueError(
                    f"TransformerConfig: num_heads={self.num_heads} must be a multiple of "
                    f"num_kv_heads={self.num_kv_heads}."
                )
        if self.head_dim is not None:
            _positive_int(self.head_dim, "head_dim")
        elif self.d_model % self.num_heads:
            raise ValueError(
                f"TransformerConfig: d_model={self.d_model} is not divisible by "
                f"num_heads={self.num_heads}; set head_dim explicitly."
            )
        if not self.mlp_ratio > 0 or int(self.mlp_ratio * self.d_model) < 1:
            raise ValueError(f"TransformerConfig: mlp_ratio must be > 0, got {self.mlp_ratio!r}.")
        _choice(self.positional, "positional", POSITIONALS)
        _choice(self.norm, "norm", NORMS)
        _choice(self.mlp, "mlp", MLPS)
        _choice(self.pooling, "pooling", POOLINGS)
        if self.positional == "sinusoidal" and self.d_model % 2:
            raise ValueError(
                f"TransformerConfig: positional='sinusoidal' needs an even d_model, "
                f"got {self.d_model}."
            )
        if self.positional == "rope":
            rotary_dim(self.head_size, self.rope_fraction, "TransformerConfig")
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, RopeScaling):
            raise ValueError(
                f"TransformerConfig: rope_scaling must be a RopeScaling or None, "
                f"got {self.rope_scaling!r}."
            )
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(
                    f"TransformerConfig: {name} must be in [0, 1), got {getattr(self, name)!r}."
                )
        if not callable(self.normalizer) and self.normalizer not in NORMALIZERS:
            raise ValueError(
                f"TransformerConfig: normalizer must be one of {sorted(NORMALIZERS)} or a "
                f"callable, got {self.normalizer!r}."
            )
        if self.softcap is not None and not self.softcap > 0:
            raise ValueError(f"TransformerConfig: softcap must be None or > 0, got {self.softcap}.")
        for name in ("num_encoder_layers", "num_decoder_layers", "num_classes"):
            if getattr(self, name) is not None:
                _positive_int(getattr(self, name), name)

    def to_dict(self) -> dict[str, Any]:
        """Every field as a JSON-ready value: dtypes by name (``"bfloat16"``) and
        ``rope_scaling`` as a dict. A callable ``normalizer`` has no JSON form: ValueError."""
        if callable(self.normalizer):
            raise ValueError(
                "TransformerConfig.to_dict: normalizer must be a name to be serialized, got "
                f"the callable {self.normalizer!r}."
            )
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["dtype"] = jnp.dtype(self.dtype).name
        out["param_dtype"] = jnp.dtype(self.param_dtype).name
        if self.rope_scaling is not None:
            out["rope_scaling"] = dataclasses.asdict(self.rope_scaling)
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
        for name in ("dtype", "param_dtype"):
            if name in d:
                d[name] = jnp.dtype(d[name])
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
    def kv_heads(self) -> int:
        """``K``: ``num_kv_heads`` or ``num_heads``."""
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

    @property
    def head_size(self) -> int:
        """``H``: ``head_dim`` or ``d_model // num_heads``."""
        return self.d_model // self.num_heads if self.head_dim is None else self.head_dim

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
