"""Context parallelism: layouts, load balance and errors here; the mesh tests (8 host devices)
in a subprocess, since the device count is fixed when jax starts."""

import os
import pathlib
import subprocess
import sys

import chex
import jax.numpy as jnp
import numpy as np
import pytest
import script_helpers

import attention_jax as aj

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_zigzag_round_trip_and_layout():
    x = jnp.arange(2 * 32 * 3).reshape(2, 32, 3)
    z = aj.zigzag_reorder(x, 4)
    chex.assert_trees_all_equal(aj.zigzag_restore(z, 4), x)
    # 8 chunks of 4 tokens; shard 0 (the first 8 tokens of z) holds chunks 0 and 7.
    np.testing.assert_array_equal(z[0, :8, 0] // 3, [0, 1, 2, 3, 28, 29, 30, 31])
    order = np.asarray(z[0, :, 0] // 3).reshape(4, 8)
    for i in range(4):
        np.testing.assert_array_equal(
            order[i], np.asarray(aj.shard_positions(i, 4, 8, load_balance=True))
        )
    np.testing.assert_array_equal(
        aj.shard_positions(2, 4, 8, load_balance=False), 16 + np.arange(8)
    )
    chex.assert_trees_all_equal(aj.zigzag_restore(aj.zigzag_reorder(x, 2, axis=1), 2, axis=1), x)


def test_load_balance_is_real():
    """Causal attention at T=8192 on 8 devices: blocks per device, zigzag vs contiguous."""
    balanced = aj.ring_block_counts(8192, 8, is_causal=True, load_balance=True)
    plain = aj.ring_block_counts(8192, 8, is_causal=True, load_balance=False)
    assert balanced.max() / balanced.min() <= 1.15, balanced
    assert plain.max() / plain.min() >= 2.0, plain
    # The visited blocks cover the causal triangle either way (no work lost or duplicated
    # beyond the diagonal blocks).
    full = aj.ring_block_counts(8192, 8, is_causal=False, load_balance=True)
    assert full.min() == full.max() == 8 * 2 * 4  # P shards x (1024 / 512) x (1024 / 256)


def test_errors():
    x = jnp.zeros((1, 30, 2, 4))
    with pytest.raises(ValueError, match=r"zigzag_reorder: the sequence length must be "
                       r"divisible by 2 \* num_shards = 8, got length 30"):  # fmt: skip
        aj.zigzag_reorder(x, 4)
    with pytest.raises(ValueError, match=r"zigzag_restore: num_shards must be"):
        aj.zigzag_restore(x, 0)
    with pytest.raises(ValueError, match=r"ring_block_counts: seq_len 100 must divide into 8"):
        aj.ring_block_counts(100, 8)
    import jax
    from jax.sharding import Mesh

    mesh = Mesh(np.array(jax.devices()[:1]), ("sequence",))
    with pytest.raises(ValueError, match=r"context_parallel_attention: strategy must be one of"):
        aj.context_parallel_attention(x, x, x, mesh=mesh, strategy="tree")
    with pytest.raises(ValueError, match=r"context_parallel_attention: axis must name an axis "
                       r"of the mesh \{'sequence': 1\}, got 'seq'"):  # fmt: skip
        aj.context_parallel_attention(x, x, x, mesh=mesh, axis="seq")
    with pytest.raises(TypeError, match=r"context_parallel_attention: mesh must be a"):
        aj.context_parallel_attention(x, x, x, mesh="sequence")
    y = jnp.zeros((1, 31, 2, 4))
    with pytest.raises(ValueError, match=r"T must be divisible by 2 \* mesh.shape\['sequence'\]"):
        aj.context_parallel_attention(y, y, y, mesh=mesh)


def test_single_device_mesh_equals_flash():
    import jax
    from jax.sharding import Mesh

    mesh = Mesh(np.array(jax.devices()[:1]), ("sequence",))
    q = jax.random.normal(jax.random.key(0), (2, 16, 4, 8))
    k = jax.random.normal(jax.random.key(1), (2, 16, 2, 8))
    ref = jax.jit(lambda q, k: aj.flash_attention(q, k, k, is_causal=True))(q, k)
    for strategy in ("ring", "all_gather"):
        # Jitted: an eager shard_map call dispatches op by op (seconds, for nothing).
        out = jax.jit(
            lambda q, k, s=strategy: aj.context_parallel_attention(
                q, k, k, mesh=mesh, strategy=s, is_causal=True
            )
        )(q, k)
        chex.assert_trees_all_close(out, ref, atol=1e-5)


def test_config_rules():
    from attention_jax.nn import AttentionConfig, TransformerConfig

    with pytest.raises(ValueError, match="context_parallel must be one of"):
        AttentionConfig(num_heads=2, head_dim=8, context_parallel="tree")
    bad = [
        (dict(normalizer="sparsemax"), "normalizer must be 'softmax'"),
        (dict(attention_dropout=0.1), "attention_dropout must be 0.0"),
        (dict(talking_heads=True), "talking_heads must be False"),
        (dict(attention="forgetting"), "attention must be 'softmax'"),
    ]
    for options, message in bad:
        with pytest.raises(ValueError, match=f"AttentionConfig: {message}.*context_parallel"):
            AttentionConfig(num_heads=2, head_dim=8, context_parallel="ring", **options)
    cfg = TransformerConfig(
        vocab_size=5, d_model=16, num_layers=1, num_heads=2, max_len=8, context_parallel="ulysses"
    )
    assert cfg.attention_config.context_parallel == "ulysses"
    assert TransformerConfig.from_json(cfg.to_json()) == cfg


def test_model_without_sequence_axis_is_unchanged():
    """context_parallel acts only under a mesh with a "sequence" axis of size > 1."""
    import jax
    from flax import nnx

    from attention_jax import train as T
    from attention_jax.nn import TransformerConfig, TransformerLM

    def logits(cp):
        cfg = TransformerConfig(
            vocab_size=11, d_model=16, num_layers=1, num_heads=2, max_len=16, context_parallel=cp
        )
        model = TransformerLM(cfg, rngs=nnx.Rngs(0))
        return nnx.jit(lambda m, x: m(x))(model, jnp.arange(16)[None] % 11)

    ref = logits(None)
    mesh = T.make_mesh(sequence=1, devices=jax.devices()[:1])
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        chex.assert_trees_all_close(logits("ring"), ref)


def test_make_mesh():
    import jax

    from attention_jax import train as T

    mesh = T.make_mesh(devices=jax.devices()[:1])
    assert mesh.axis_names == ("data", "sequence") and dict(mesh.shape) == {
        "data": 1,
        "sequence": 1,
    }
    assert T.sequence_size(mesh) == 1 and T.sequence_size(T.data_mesh()) == 1
    with pytest.raises(ValueError, match="make_mesh: sequence must be an int >= 1 dividing"):
        T.make_mesh(sequence=3, devices=jax.devices()[:1] * 2)
    with pytest.raises(ValueError, match="make_mesh: data \\* sequence must equal the 1"):
        T.make_mesh(data=2, devices=jax.devices()[:1])


def run_multidevice(*marker):
    # Small shapes: compilation dominates, so cheaper XLA optimization saves a fifth.
    flags = script_helpers.FAST_COMPILE_XLA_FLAGS
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count=8 {flags}",
        JAX_PLATFORMS="cpu",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
         *marker, str(REPO / "tests" / "multidevice")],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=1200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout[-2000:]


def test_on_8_host_devices():
    """tests/multidevice/ in a fresh interpreter with 8 host devices (its quick part)."""
    run_multidevice("-m", "not slow")


@pytest.mark.slow
def test_on_8_host_devices_slow_part():
    run_multidevice("-m", "slow")
