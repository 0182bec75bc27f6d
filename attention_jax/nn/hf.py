"""Hugging Face checkpoints in and out: ``config.json`` + ``model.safetensors`` directories.

:func:`load_hf_checkpoint` builds a :class:`TransformerLM` from what ``save_pretrained``
writes, for the Llama family (``LlamaForCausalLM``; ``"mistral"`` with its sliding window and
``"qwen2"`` with its q/k/v biases too) and GPT-2 (``GPT2LMHeadModel``), and a
:class:`TransformerEncoder` for BERT (``BertModel`` / ``BertForMaskedLM``: post-norm,
token-type embeddings, embedding LayerNorm, exact GELU); :func:`save_hf_checkpoint` writes
Llama- and GPT-2-shaped models back. Only ``safetensors``' numpy API is used: no torch.

Every field of ``config.json`` that changes the function the model computes is mapped to a
:class:`TransformerConfig` field or refused with a ``ValueError`` naming it: nothing is
silently approximated. Both generations of RoPE settings are read: ``rope_parameters``
(transformers >= 5: ``rope_type``, ``rope_theta``, ``factor``,
``original_max_position_embeddings``) and the older ``rope_theta`` + ``rope_scaling``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from attention_jax.nn.config import TransformerConfig
from attention_jax.nn.encoder import TransformerEncoder
from attention_jax.nn.lm import TransformerLM
from attention_jax.positional import RopeScaling

__all__ = ["HF_MODEL_TYPES", "load_hf_checkpoint", "save_hf_checkpoint"]

HF_MODEL_TYPES = ("llama", "mistral", "qwen2", "gpt2", "bert")

_LLAMA_ACTS = ("silu", "swish")
_GPT2_ACTS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
_BERT_ACTS = {"gelu": "gelu_exact", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu"}


def _error(field: str, value: Any, why: str) -> ValueError:
    return ValueError(f"load_hf_checkpoint: config.json {field}={value!r}: {why}.")


def _read_config(path: Path) -> dict:
    file = path / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"load_hf_checkpoint: no config.json in {str(path)!r}.")
    return json.loads(file.read_text())


def _read_tensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of ``model.safetensors`` or of the shards its index names."""
    from safetensors.numpy import load_file

    single, index = path / "model.safetensors", path / "model.safetensors.index.json"
    if single.is_file():
        return dict(load_file(str(single)))
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        tensors: dict[str, np.ndarray] = {}
        for shard in shards:
            tensors.update(load_file(str(path / shard)))
        return tensors
    raise FileNotFoundError(
        f"load_hf_checkpoint: no model.safetensors or model.safetensors.index.json in "
        f"{str(path)!r} (PyTorch .bin checkpoints are not read)."
    )


def _rope_scaling(cfg: dict) -> tuple[float, RopeScaling | None]:
    """``(rope_base, RopeScaling | None)`` from either generation of the RoPE fields."""
    params = cfg.get("rope_parameters")
    if params is None:
        params = dict(cfg.get("rope_scaling") or {})
        params.setdefault("rope_theta", cfg.get("rope_theta", 10000.0))
        field = "rope_scaling"
    else:
        field = "rope_parameters"
    base = float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind in ("default", None):
        return base, None
    factor = float(params.get("factor", 1.0))
    if kind == "linear":
        return base, RopeScaling("linear", factor)
    if kind == "yarn":
        for name, default in (("beta_fast", 32), ("beta_slow", 1), ("mscale", None)):
            if params.get(name, default) not in (default, None):
                raise _error(f"{field}.{name}", params[name], f"only {default} is supported")
        if params.get("attention_factor") is not None:
            raise _error(
                f"{field}.attention_factor",
                params["attention_factor"],
                "YaRN's temperature is fixed at 0.1 ln(factor) + 1 here",
            )
        original = params.get("original_max_position_embeddings")
        if original is None:
            raise _error(f"{field}.original_max_position_embeddings", None, "YaRN needs it")
        return base, RopeScaling("yarn", factor, int(original))
    raise _error(f"{field}.rope_type", kind, "supported kinds are default, linear and yarn")


def _llama_config(cfg: dict, dtype, max_len: int | None) -> TransformerConfig:
    act = cfg.get("hidden_act", "silu")
    if act not in _LLAMA_ACTS:
        raise _error("hidden_act", act, f"the Llama MLP here is SwiGLU with one of {_LLAMA_ACTS}")
    for name in ("attention_bias", "mlp_bias"):
        if cfg.get(name):
            raise _error(name, cfg[name], "biases in a Llama-family model are not supported")
    d, n = cfg["hidden_size"], cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or d // n
    base, scaling = _rope_scaling(cfg)
    params = cfg.get("rope_parameters") or {}
    fraction = float(params.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0)))
    kind = cfg.get("model_type")
    window = cfg.get("sliding_window") if kind == "mistral" else None
    if kind == "qwen2" and cfg.get("use_sliding_window"):
        # Qwen2 windows only the layers from max_window_layers on.
        raise _error("use_sliding_window", True, "per-layer sliding windows are not supported")
    ratio = cfg["intermediate_size"] / d
    if int(ratio * d) != cfg["intermediate_size"]:
        raise _error("intermediate_size", cfg["intermediate_size"], "not expressible as a ratio")
    return TransformerConfig(
        vocab_size=cfg["vocab_size"],
        d_model=d,
        num_layers=cfg["num_hidden_layers"],
        num_heads=n,
        num_kv_heads=cfg.get("num_key_value_heads") or n,
        head_dim=head_dim,
        max_len=max_len or cfg.get("max_position_embeddings", 2048),
        positional="rope",
        rope_base=base,
        rope_fraction=fraction,
        rope_scaling=scaling,
        norm="rmsnorm",
        norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        mlp="swiglu",
        mlp_ratio=ratio,
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        use_bias=False,
        qkv_bias=kind == "qwen2",  # Qwen2: q, k, v projections with biases, o without
        # Mistral's window: a query sees itself and the sliding_window - 1 tokens before it.
        local_window_size=None if window is None else (int(window) - 1, 0),
        dtype=dtype or jnp.float32,
    )


def _learned_positions(positions: int, max_len: int | None, model: str) -> int:
    """The model's ``max_len``: the checkpoint's learned position table, or fewer rows."""
    if max_len is not None and max_len > positions:
        raise ValueError(
            f"load_hf_checkpoint: max_len={max_len} exceeds the {positions} learned positions "
            f"of this {model} checkpoint."
        )
    return max_len or positions


def _gpt2_config(cfg: dict, dtype, max_len: int | None) -> TransformerConfig:
    act = cfg.get("activation_function", "gelu_new")
    if act not in _GPT2_ACTS:
        raise _error("activation_function", act, f"the MLP here is tanh-GELU, one of {_GPT2_ACTS}")
    for name in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if cfg.get(name):
            raise _error(name, cfg[name], "not supported")
    if cfg.get("scale_attn_weights", True) is False:
        raise _error("scale_attn_weights", False, "attention logits are always scaled here")
    d = cfg["n_embd"]
    inner = cfg.get("n_inner") or 4 * d
    positions = _learned_positions(cfg["n_positions"], max_len, "GPT-2")
    return TransformerConfig(
        vocab_size=cfg["vocab_size"],
        d_model=d,
        num_layers=cfg["n_layer"],
        num_heads=cfg["n_head"],
        max_len=positions,
        positional="learned",
        norm="layernorm",
        norm_eps=float(cfg.get("layer_norm_epsilon", 1e-5)),
        mlp="gelu",
        mlp_ratio=inner / d,
        tie_embeddings=True,
        use_bias=True,
        dtype=dtype or jnp.float32,
    )


def _bert_config(cfg: dict, dtype, max_len: int | None) -> TransformerConfig:
    act = cfg.get("hidden_act", "gelu")
    if act not in _BERT_ACTS:
        raise _error("hidden_act", act, f"supported activations are {tuple(_BERT_ACTS)}")
    kind = cfg.get("position_embedding_type", "absolute")
    if kind != "absolute":
        raise _error("position_embedding_type", kind, "only 'absolute' is supported")
    if cfg.get("is_decoder") or cfg.get("add_cross_attention"):
        raise _error("is_decoder", True, "BERT loads as an encoder only")
    d = cfg["hidden_size"]
    positions = _learned_positions(cfg["max_position_embeddings"], max_len, "BERT")
    return TransformerConfig(
        vocab_size=cfg["vocab_size"],
        d_model=d,
        num_layers=cfg["num_hidden_layers"],
        num_heads=cfg["num_attention_heads"],
        max_len=positions,
        positional="learned",
        norm="layernorm",
        norm_eps=float(cfg.get("layer_norm_eps", 1e-12)),
        prenorm=False,
        embedding_norm=True,
        type_vocab_size=int(cfg.get("type_vocab_size", 2)),
        mlp=_BERT_ACTS[act],
        mlp_ratio=cfg["intermediate_size"] / d,
        use_bias=True,
        dtype=dtype or jnp.float32,
    )


def _bert_params(config: TransformerConfig, tensors: dict, get) -> dict[str, np.ndarray]:
    pre = "bert." if any(k.startswith("bert.") for k in tensors) else ""
    e = f"{pre}embeddings."
    p = {
        "embedder.token.embedding": get(f"{e}word_embeddings.weight"),
        "embedder.position.embedding": get(f"{e}position_embeddings.weight")[: config.max_len],
        "embedder.token_type.embedding": get(f"{e}token_type_embeddings.weight"),
        "embedder.norm.scale": get(f"{e}LayerNorm.weight"),
        "embedder.norm.bias": get(f"{e}LayerNorm.bias"),
    }
    for i in range(config.num_layers):
        ours, hf = f"blocks.{i}.", f"{pre}encoder.layer.{i}."
        linears = {
            "attention.query": "attention.self.query",
            "attention.key": "attention.self.key",
            "attention.value": "attention.self.value",
            "attention.out": "attention.output.dense",
            "mlp.up": "intermediate.dense",
            "mlp.down": "output.dense",
        }
        for a, h in linears.items():
            p[f"{ours}{a}.kernel"] = get(f"{hf}{h}.weight").T  # torch Linear: [out, in]
            p[f"{ours}{a}.bias"] = get(f"{hf}{h}.bias")
        for a, h in (
            ("attention_norm", "attention.output.LayerNorm"),
            ("mlp_norm", "output.LayerNorm"),
        ):
            p[f"{ours}{a}.scale"] = get(f"{hf}{h}.weight")
            p[f"{ours}{a}.bias"] = get(f"{hf}{h}.bias")
    return p


def _llama_names(config: TransformerConfig) -> dict[str, tuple[str, bool]]:
    """Our parameter path -> (HF tensor name, transposed)."""
    names = {"embedder.token.embedding": ("model.embed_tokens.weight", False)}
    names["final_norm.scale"] = ("model.norm.weight", False)
    if not config.tie_embeddings:
        names["head.kernel"] = ("lm_head.weight", True)
    for i in range(config.num_layers):
        ours, hf = f"blocks.{i}.", f"model.layers.{i}."
        for a, b in (
            ("query", "q_proj"),
            ("key", "k_proj"),
            ("value", "v_proj"),
            ("out", "o_proj"),
        ):
            names[f"{ours}attention.{a}.kernel"] = (f"{hf}self_attn.{b}.weight", True)
        if config.qkv_bias:
            for a, b in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
                names[f"{ours}attention.{a}.bias"] = (f"{hf}self_attn.{b}.bias", False)
        for a in ("gate", "up", "down"):
            names[f"{ours}mlp.{a}.kernel"] = (f"{hf}mlp.{a}_proj.weight", True)
        names[f"{ours}attention_norm.scale"] = (f"{hf}input_layernorm.weight", False)
        names[f"{ours}mlp_norm.scale"] = (f"{hf}post_attention_layernorm.weight", False)
    return names


_QKV = ("query", "key", "value")


def _gpt2_names(config: TransformerConfig, prefix: str) -> dict[str, str]:
    """Our parameter path -> GPT-2 tensor name, for all but the fused q/k/v ``c_attn``
    (Conv1D weights are ``[in, out]``, as our kernels: nothing is transposed)."""
    names = {
        "embedder.token.embedding": f"{prefix}wte.weight",
        "embedder.position.embedding": f"{prefix}wpe.weight",
        "final_norm.scale": f"{prefix}ln_f.weight",
        "final_norm.bias": f"{prefix}ln_f.bias",
    }
    pairs = {
        "attention.out": "attn.c_proj",
        "mlp.up": "mlp.c_fc",
        "mlp.down": "mlp.c_proj",
        "attention_norm": "ln_1",
        "mlp_norm": "ln_2",
    }
    for i in range(config.num_layers):
        ours, hf = f"blocks.{i}.", f"{prefix}h.{i}."
        for a, h in pairs.items():
            weight = "scale" if a.endswith("norm") else "kernel"
            names[f"{ours}{a}.{weight}"] = f"{hf}{h}.weight"
            names[f"{ours}{a}.bias"] = f"{hf}{h}.bias"
    return names


def _load_params(
    config: TransformerConfig, model_type: str, tensors: dict
) -> dict[str, np.ndarray]:
    """Our parameter path -> array, from the HF tensors."""
    prefix = "transformer." if any(k.startswith("transformer.") for k in tensors) else ""

    def get(name: str) -> np.ndarray:
        if name not in tensors:
            raise ValueError(f"load_hf_checkpoint: the checkpoint has no tensor {name!r}.")
        return np.asarray(tensors[name])

    if model_type == "bert":
        return _bert_params(config, tensors, get)
    if model_type != "gpt2":
        return {k: (get(n).T if t else get(n)) for k, (n, t) in _llama_names(config).items()}
    p = {k: get(n) for k, n in _gpt2_names(config, prefix).items()}
    p["embedder.position.embedding"] = p["embedder.position.embedding"][: config.max_len]
    d = config.d_model
    for i in range(config.num_layers):
        # GPT-2 keeps q, k and v in one Conv1D, [in, out] as our kernels.
        ours, hf = f"blocks.{i}.", f"{prefix}h.{i}."
        w, b = get(f"{hf}attn.c_attn.weight"), get(f"{hf}attn.c_attn.bias")
        for j, name in enumerate(_QKV):
            p[f"{ours}attention.{name}.kernel"] = w[:, j * d : (j + 1) * d]
            p[f"{ours}attention.{name}.bias"] = b[j * d : (j + 1) * d]
    return p


def _model_type(cfg: dict) -> str:
    kind = cfg.get("model_type")
    if kind not in HF_MODEL_TYPES:
        raise _error("model_type", kind, f"supported types are {HF_MODEL_TYPES}")
    return kind


def load_hf_checkpoint(
    path: str | os.PathLike, *, dtype=None, max_len: int | None = None
) -> TransformerLM | TransformerEncoder:
    """A model with the weights of a Hugging Face checkpoint directory: a
    :class:`TransformerLM` for ``model_type`` ``"llama"``, ``"mistral"``, ``"qwen2"`` and
    ``"gpt2"``, a
    :class:`TransformerEncoder` for ``"bert"`` (``BertModel`` or ``BertForMaskedLM``
    weights; its output is BERT's last hidden state, the pooler and MLM head are not read).

    Args:
      path: a directory with ``config.json`` and ``model.safetensors`` (or a sharded
        ``model.safetensors.index.json`` with its shards), as ``save_pretrained`` writes.
      dtype: computation dtype (e.g. ``jnp.bfloat16``; softmax and accumulation stay
        float32). None: float32. Parameters keep float32.
      max_len: the longest sequence (and KV cache) the model accepts (default the
        checkpoint's ``max_position_embeddings`` / ``n_positions``).

    Returns:
      The model: ``model(tokens [B, T]) -> logits [B, T, V]``, the logits of
      ``transformers``' model of the checkpoint (float32 within 1e-4); for BERT
      ``model(tokens, padding_mask=attention_mask, token_types=token_type_ids) ->
      [B, T, D]``, its last hidden state.

    Raises:
      FileNotFoundError: no ``config.json`` or weights in ``path``.
      ValueError: a ``model_type`` or a setting this library does not compute (naming the
        ``config.json`` field and its value), a missing tensor or one of the wrong shape
        (naming the tensor and both shapes).
    """
    path = Path(path)
    cfg = _read_config(path)
    model_type = _model_type(cfg)
    build = {"gpt2": _gpt2_config, "bert": _bert_config}.get(model_type, _llama_config)
    config = build(cfg, dtype, max_len)
    tensors = _read_tensors(path)
    cls = TransformerEncoder if model_type == "bert" else TransformerLM
    model = nnx.eval_shape(lambda: cls(config, rngs=nnx.Rngs(0)))
    arrays = _load_params(config, model_type, tensors)
    state = nnx.state(model, nnx.Param)
    flat = dict(nnx.to_flat_state(state))
    ours = {".".join(map(str, k)): k for k in flat}
    missing = sorted(set(ours) - set(arrays))
    if missing:
        raise ValueError(f"load_hf_checkpoint: no weights mapped for parameters {missing}.")
    for name, key in ours.items():
        want = flat[key].get_value().shape
        got = arrays[name]
        if got.shape != want:
            raise ValueError(
                f"load_hf_checkpoint: tensor for {name} has shape {got.shape}, the model "
                f"expects {want}."
            )
        flat[key].set_value(jnp.asarray(got, dtype=config.param_dtype))
    nnx.update(model, nnx.from_flat_state(flat))
    return model


def _hf_llama_config(config: TransformerConfig) -> dict:
    scaling = config.rope_scaling
    rope = {"rope_type": "default", "rope_theta": config.rope_base}
    if scaling is not None:
        rope = {"rope_type": scaling.kind, "rope_theta": config.rope_base, "factor": scaling.factor}
        if scaling.kind == "yarn":
            rope["original_max_position_embeddings"] = scaling.original_max_len
        elif scaling.kind != "linear":
            raise ValueError(
                f"save_hf_checkpoint: rope_scaling kind {scaling.kind!r} has no Llama config "
                "field (linear and yarn do)."
            )
    out = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.mlp_hidden,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads or config.num_heads,
        "head_dim": config.attention_config.head_dim,
        "max_position_embeddings": config.max_len,
        "rms_norm_eps": config.norm_eps,
        "hidden_act": "silu",
        "tie_word_embeddings": config.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "rope_theta": config.rope_base,
        "rope_scaling": None if scaling is None else rope,
        "partial_rotary_factor": config.rope_fraction,
        "torch_dtype": "float32",
    }
    return out


def _hf_gpt2_config(config: TransformerConfig) -> dict:
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_embd": config.d_model,
        "n_layer": config.num_layers,
        "n_head": config.num_heads,
        "n_positions": config.max_len,
        "n_inner": config.mlp_hidden,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": config.norm_eps,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
    }


def _check_saveable(config: TransformerConfig, model_type: str) -> None:
    want = {
        "llama": dict(
            positional="rope", norm="rmsnorm", mlp="swiglu", use_bias=False, prenorm=True
        ),
        "gpt2": dict(
            positional="learned",
            norm="layernorm",
            mlp="gelu",
            use_bias=True,
            prenorm=True,
            tie_embeddings=True,
        ),
    }[model_type]
    # Options neither format writes: a model using one would be saved as another function.
    want.update(
        attention="softmax",
        qk_norm=False,
        qkv_bias=False,
        embedding_norm=False,
        type_vocab_size=0,
        softcap=None,
        local_window_size=None,
        scale_embeddings=False,
        layer_attention=None,
        sinks=False,
        attention_gate=None,
        value_residual=False,
        talking_heads=False,
        normalizer="softmax",
    )
    for name, value in want.items():
        got = getattr(config, name)
        if got != value:
            raise ValueError(
                f"save_hf_checkpoint: model_type={model_type!r} needs {name}={value!r}, the "
                f"model has {got!r}."
            )
    if model_type == "gpt2" and config.num_kv_heads not in (None, config.num_heads):
        raise ValueError(
            f"save_hf_checkpoint: model_type='gpt2' needs num_kv_heads=None (as many as "
            f"num_heads={config.num_heads}), the model has {config.num_kv_heads!r}."
        )


def save_hf_checkpoint(model: TransformerLM, path: str | os.PathLike, *, model_type: str) -> None:
    """Writes ``config.json`` and ``model.safetensors`` that ``transformers``'
    ``from_pretrained`` loads to the same logits (and :func:`load_hf_checkpoint` to the same
    parameters).

    Args:
      model: a :class:`TransformerLM` shaped as the ``model_type``: ``"llama"`` (RoPE,
        RMSNorm, SwiGLU, no biases, pre-norm; GQA and tied or untied head) or ``"gpt2"``
        (learned positions, LayerNorm, tanh-GELU, biases, tied head).
      path: the directory (created if missing).
      model_type: ``"llama"`` or ``"gpt2"``.

    Raises:
      ValueError: an unknown ``model_type``, or a model option the format cannot express
        (naming the option and both values).
    """
    from safetensors.numpy import save_file

    if model_type not in ("llama", "gpt2"):
        raise ValueError(
            f"save_hf_checkpoint: model_type must be 'llama' or 'gpt2', got {model_type!r}."
        )
    config = model.config
    _check_saveable(config, model_type)
    params = {
        ".".join(map(str, k)): np.asarray(v.get_value(), np.float32)
        for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
    }
    tensors: dict[str, np.ndarray] = {}
    if model_type == "llama":
        hf_config = _hf_llama_config(config)
        for ours, (name, transposed) in _llama_names(config).items():
            tensors[name] = params[ours].T if transposed else params[ours]
    else:
        hf_config = _hf_gpt2_config(config)
        tensors = {n: params[k] for k, n in _gpt2_names(config, "transformer.").items()}
        for i in range(config.num_layers):
            ours, hf = f"blocks.{i}.", f"transformer.h.{i}."
            tensors[f"{hf}attn.c_attn.weight"] = np.concatenate(
                [params[f"{ours}attention.{n}.kernel"] for n in _QKV], axis=1
            )
            tensors[f"{hf}attn.c_attn.bias"] = np.concatenate(
                [params[f"{ours}attention.{n}.bias"] for n in _QKV]
            )
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
