"""Hugging Face checkpoints: the tiny random checkpoints under tests/fixtures/hf/ (made by
tests/fixtures/make_hf_fixtures.py with torch + transformers) load to transformers' logits
and greedy tokens with numpy and safetensors alone; saving and loading round-trips."""

import json
import pathlib
import shutil

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from attention_jax.nn import (
    TransformerConfig,
    TransformerEncoder,
    TransformerLM,
    generate,
    load_hf_checkpoint,
    save_hf_checkpoint,
)

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures" / "hf"
NAMES = [
    "llama_tiny",
    "llama_tied_linear_rope",
    "llama_yarn_head_dim",
    "mistral_window",  # sliding window of 4 over 12 tokens
    "qwen2_tiny",  # q/k/v biases, tied head
    "gpt2_tiny",
]


def expected(name):
    return np.load(FIXTURES / name / "expected.npz")


@pytest.mark.parametrize("name", NAMES)
def test_logits_and_greedy_tokens_equal_transformers(name):
    model = load_hf_checkpoint(FIXTURES / name)
    e = expected(name)
    logits = model(jnp.asarray(e["tokens"]))
    chex.assert_trees_all_close(logits, e["logits"], atol=1e-4, rtol=1e-4)
    if name in ("llama_tiny", "mistral_window", "qwen2_tiny", "gpt2_tiny"):
        out = generate(model, jnp.asarray(e["tokens"][:1, :5]), 8, temperature=0.0)
        np.testing.assert_array_equal(np.asarray(out[:, 5:]), e["greedy"])


def test_bert_last_hidden_state_equals_transformers():
    model = load_hf_checkpoint(FIXTURES / "bert_tiny")
    assert isinstance(model, TransformerEncoder)
    cfg = model.config
    assert (cfg.prenorm, cfg.embedding_norm, cfg.type_vocab_size, cfg.mlp, cfg.norm_eps) == (
        False,
        True,
        2,
        "gelu_exact",
        1e-12,
    )
    e = expected("bert_tiny")
    hidden = model(
        jnp.asarray(e["tokens"]),
        padding_mask=jnp.asarray(e["mask"], bool),
        token_types=jnp.asarray(e["token_types"]),
    )
    valid = e["mask"].astype(bool)  # padded rows are not defined by either side
    chex.assert_trees_all_close(np.asarray(hidden)[valid], e["hidden"][valid], atol=1e-4)


def test_config_fields_are_mapped():
    model = load_hf_checkpoint(FIXTURES / "llama_yarn_head_dim")
    cfg = model.config
    assert (cfg.num_kv_heads, cfg.head_dim, cfg.norm, cfg.mlp) == (2, 16, "rmsnorm", "swiglu")
    assert cfg.rope_scaling.kind == "yarn" and cfg.rope_scaling.original_max_len == 16
    assert cfg.norm_eps == 1e-5 and not cfg.tie_embeddings
    gpt2 = load_hf_checkpoint(FIXTURES / "gpt2_tiny", max_len=32).config
    assert (gpt2.positional, gpt2.use_bias, gpt2.tie_embeddings, gpt2.max_len) == (
        "learned",
        True,
        True,
        32,
    )


def test_old_rope_scaling_field_is_read(tmp_path):
    """Checkpoints written before transformers 5 carry rope_theta + rope_scaling."""
    d = tmp_path / "old"
    shutil.copytree(FIXTURES / "llama_tied_linear_rope", d)
    cfg = json.loads((d / "config.json").read_text())
    params = cfg.pop("rope_parameters")
    cfg["rope_theta"] = params["rope_theta"]
    cfg["rope_scaling"] = {"type": "linear", "factor": params["factor"]}
    (d / "config.json").write_text(json.dumps(cfg))
    e = expected("llama_tied_linear_rope")
    logits = load_hf_checkpoint(d)(jnp.asarray(e["tokens"]))
    chex.assert_trees_all_close(logits, e["logits"], atol=1e-4, rtol=1e-4)


def test_sharded_checkpoint_loads(tmp_path):
    from safetensors.numpy import load_file, save_file

    d = tmp_path / "sharded"
    d.mkdir()
    shutil.copy(FIXTURES / "llama_tiny" / "config.json", d)
    tensors = load_file(str(FIXTURES / "llama_tiny" / "model.safetensors"))
    names = sorted(tensors)
    shards = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    weight_map = {}
    for file, part in shards.items():
        save_file({k: tensors[k] for k in part}, str(d / file))
        weight_map.update(dict.fromkeys(part, file))
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    e = expected("llama_tiny")
    chex.assert_trees_all_close(
        load_hf_checkpoint(d)(jnp.asarray(e["tokens"])), e["logits"], atol=1e-4, rtol=1e-4
    )


def test_bfloat16_compute_stays_close():
    model = load_hf_checkpoint(FIXTURES / "llama_tiny", dtype=jnp.bfloat16)
    e = expected("llama_tiny")
    logits = model(jnp.asarray(e["tokens"]))
    err = np.abs(np.asarray(logits, np.float32) - e["logits"])
    assert np.isfinite(err).all()
    # bf16 rounding (8 bits of mantissa) through 2 layers; softmax and sums stay float32.
    assert err.mean() < 0.05 and err.max() < 0.3, (err.mean(), err.max())


@pytest.mark.parametrize(
    "model_type, config",
    [
        (
            "llama",
            TransformerConfig(
                vocab_size=19, d_model=16, num_layers=2, num_heads=4, num_kv_heads=2,
                max_len=24, positional="rope", norm="rmsnorm", mlp="swiglu",
                tie_embeddings=False, norm_eps=1e-5,
            ),
        ),
        (
            "gpt2",
            TransformerConfig(
                vocab_size=19, d_model=16, num_layers=2, num_heads=4, max_len=24,
                positional="learned", use_bias=True, norm_eps=1e-5,
            ),
        ),
    ],
)  # fmt: skip
def test_save_then_load_round_trips(tmp_path, model_type, config):
    model = TransformerLM(config, rngs=nnx.Rngs(3))
    save_hf_checkpoint(model, tmp_path, model_type=model_type)
    loaded = load_hf_checkpoint(tmp_path)
    chex.assert_trees_all_equal(nnx.state(loaded, nnx.Param), nnx.state(model, nnx.Param))
    tokens = jnp.arange(10)[None] % 19
    chex.assert_trees_all_close(loaded(tokens), model(tokens), atol=1e-6)
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        ref = hf(torch.tensor(np.asarray(tokens))).logits.numpy()
    chex.assert_trees_all_close(model(tokens), ref, atol=1e-4, rtol=1e-4)


def edited(tmp_path, name, **changes):
    d = tmp_path / name
    shutil.copytree(FIXTURES / name, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def test_errors(tmp_path):
    with pytest.raises(ValueError, match=r"config.json model_type='t5'.*supported types"):
        load_hf_checkpoint(edited(tmp_path, "gpt2_tiny", model_type="t5"))
    with pytest.raises(ValueError, match=r"position_embedding_type='relative_key'"):
        load_hf_checkpoint(
            edited(tmp_path / "e", "bert_tiny", position_embedding_type="relative_key")
        )
    bad_rope = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}
    with pytest.raises(ValueError, match=r"rope_parameters.rope_type='dynamic'"):
        load_hf_checkpoint(edited(tmp_path, "llama_tiny", rope_parameters=bad_rope))
    with pytest.raises(ValueError, match=r"hidden_act='gelu'"):
        load_hf_checkpoint(edited(tmp_path / "a", "llama_tiny", hidden_act="gelu"))
    with pytest.raises(ValueError, match=r"use_sliding_window=True: per-layer"):
        load_hf_checkpoint(edited(tmp_path / "f", "qwen2_tiny", use_sliding_window=True))
    with pytest.raises(ValueError, match=r"attention_bias=True"):
        load_hf_checkpoint(edited(tmp_path / "b", "llama_tiny", attention_bias=True))
    with pytest.raises(
        ValueError,
        match=r"tensor for embedder.token.embedding has shape \(97, 32\), the model expects \(98, 32\)",
    ):
        load_hf_checkpoint(edited(tmp_path / "c", "llama_tiny", vocab_size=98))
    with pytest.raises(ValueError, match=r"no tensor 'lm_head.weight'"):
        load_hf_checkpoint(
            edited(tmp_path / "d", "llama_tied_linear_rope", tie_word_embeddings=False)
        )
    with pytest.raises(ValueError, match=r"max_len=100 exceeds the 64 learned positions"):
        load_hf_checkpoint(FIXTURES / "gpt2_tiny", max_len=100)
    encoder = TransformerEncoder(
        TransformerConfig(vocab_size=7, d_model=8, num_layers=1, num_heads=2, max_len=8),
        rngs=nnx.Rngs(0),
    )
    with pytest.raises(ValueError, match=r"token_types needs config.type_vocab_size > 0"):
        encoder(jnp.zeros((1, 4), int), token_types=jnp.zeros((1, 4), int))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_hf_checkpoint(tmp_path / "nowhere")
    model = TransformerLM(
        TransformerConfig(
            vocab_size=7, d_model=8, num_layers=1, num_heads=2, max_len=8, qk_norm=True
        ),
        rngs=nnx.Rngs(0),
    )
    with pytest.raises(
        ValueError, match=r"save_hf_checkpoint: model_type='llama' needs norm='rmsnorm'"
    ):
        save_hf_checkpoint(model, tmp_path / "out", model_type="llama")
    biased = TransformerLM(
        TransformerConfig(
            vocab_size=7, d_model=8, num_layers=1, num_heads=2, max_len=8, positional="rope",
            norm="rmsnorm", mlp="swiglu", qkv_bias=True,
        ),
        rngs=nnx.Rngs(0),
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"model_type='llama' needs qkv_bias=False"):
        save_hf_checkpoint(biased, tmp_path / "out", model_type="llama")
    gqa = TransformerLM(
        TransformerConfig(
            vocab_size=7, d_model=8, num_layers=1, num_heads=2, num_kv_heads=1, max_len=8,
            positional="learned", use_bias=True,
        ),
        rngs=nnx.Rngs(0),
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"model_type='gpt2' needs num_kv_heads=None"):
        save_hf_checkpoint(gqa, tmp_path / "out", model_type="gpt2")
    with pytest.raises(ValueError, match=r"model_type must be 'llama' or 'gpt2', got 'bert'"):
        save_hf_checkpoint(model, tmp_path / "out", model_type="bert")
