"""Context parallelism on 8 host devices: every strategy equals single-device flash attention.

Needs ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` before jax starts, so the main
suite runs this file in a subprocess (``tests/test_context_parallel.py``); run directly it
skips unless the flag is set.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

import attention_jax as aj
from attention_jax import flex

pytestmark = pytest.mark.skipif(
    jax.device_count() < 8, reason="needs XLA_FLAGS=--xla_force_host_platform_device_count=8"
)

B, T, N, K, H = 2, 64, 4, 2, 8
BLOCKS = dict(block_q=4, block_k=4)


def mesh_2x4():
    return Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "sequence"))


def inputs(num_kv_heads=K, seed=0):
    ks = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(ks[0], (B, T, N, H))
    k = jax.random.normal(ks[1], (B, T, num_kv_heads, H))
    v = jax.random.normal(ks[2], (B, T, num_kv_heads, H))
    return q, k, v


def check(strategy, load_balance, *, num_kv_heads=K, segment_ids=None, table=None, **opts):
    """Forward and gradients (to q, k, v and a captured table) equal single-device flash."""
    q, k, v = inputs(num_kv_heads)
    mesh = mesh_2x4()

    def with_table(tab):
        if table is None:
            return {}
        return {"bias_fn": lambda qp, kp: tab[:, None, None] * (kp[None, :] - qp[:, None])}

    def f_ref(q, k, v, tab):
        return aj.flash_attention(
            q, k, v, segment_ids=segment_ids, **with_table(tab), **BLOCKS, **opts
        )

    def f_cp(q, k, v, tab):
        return aj.context_parallel_attention(
            q, k, v, mesh=mesh, batch_axis="data", strategy=strategy,
            load_balance=load_balance, segment_ids=segment_ids, **with_table(tab), **BLOCKS,
            **opts,
        )  # fmt: skip

    tab = jnp.zeros((N,)) if table is None else table
    chex.assert_trees_all_close(jax.jit(f_cp)(q, k, v, tab), f_ref(q, k, v, tab), atol=1e-5)

    def loss(f):
        return lambda *a: jnp.sum(jnp.sin(f(*a)))

    g_ref = jax.grad(loss(f_ref), argnums=(0, 1, 2, 3))(q, k, v, tab)
    g_cp = jax.jit(jax.grad(loss(f_cp), argnums=(0, 1, 2, 3)))(q, k, v, tab)
    chex.assert_trees_all_close(g_cp, g_ref, atol=1e-4)


@pytest.mark.parametrize(
    "strategy, load_balance, is_causal",
    [
        ("ring", False, False),
        ("ring", False, True),
        ("ring", True, True),
        ("ulysses", True, True),
        ("ulysses", False, False),
        ("all_gather", True, True),
    ],
)
def test_strategies_equal_flash(strategy, load_balance, is_causal):
    kv = N if strategy == "ulysses" else K  # Ulysses needs K divisible by P = 4
    check(strategy, load_balance, num_kv_heads=kv, is_causal=is_causal)


@pytest.mark.parametrize("strategy", ["ring", "ulysses"])
def test_options_equal_flash(strategy):
    kv = N if strategy == "ulysses" else 1  # ring: multi-query attention
    seg = jnp.asarray(np.repeat(np.arange(4), T // 4)[None].repeat(B, 0))
    seg = seg.at[1, 40:].set(7)
    check(strategy, True, num_kv_heads=kv, is_causal=True, segment_ids=seg)
    check(strategy, True, num_kv_heads=kv, is_causal=True, local_window_size=(9, 0))
    # A learned per-head distance slope (ALiBi-like): its gradient crosses the ring.
    check(strategy, True, num_kv_heads=kv, is_causal=True, table=jnp.linspace(0.1, 0.4, N))
    check(strategy, False, num_kv_heads=kv, softcap=5.0, scale=0.3)


@pytest.mark.parametrize("strategy", ["ring", "ulysses"])
def test_mods_and_sinks_equal_flash(strategy):
    kv = N if strategy == "ulysses" else K

    def score_mod(score, b, h, qi, ki):
        return score - 0.05 * (h + 1) * jnp.abs(qi - ki)

    def mask_mod(b, h, qi, ki):
        return (qi >= ki) & ((qi - ki < 20) | (h % 2 == 0))

    check(strategy, True, num_kv_heads=kv, score_mod=score_mod, mask_mod=mask_mod)
    check(strategy, True, num_kv_heads=kv, mask_mod=flex.causal_mask_mod)
    q, k, v = inputs(kv)
    sinks = jnp.linspace(-1.0, 1.0, N)

    def f_cp(q, sinks):
        return aj.context_parallel_attention(
            q, k, v, mesh=mesh_2x4(), batch_axis="data", strategy=strategy, is_causal=True,
            sinks=sinks, **BLOCKS,
        )  # fmt: skip

    def f_ref(q, sinks):
        return aj.flash_attention(q, k, v, is_causal=True, sinks=sinks, **BLOCKS)

    chex.assert_trees_all_close(jax.jit(f_cp)(q, sinks), f_ref(q, sinks), atol=1e-5)
    g_cp = jax.jit(jax.grad(lambda *a: jnp.sum(f_cp(*a) ** 2), argnums=(0, 1)))(q, sinks)
    g_ref = jax.grad(lambda *a: jnp.sum(f_ref(*a) ** 2), argnums=(0, 1))(q, sinks)
    chex.assert_trees_all_close(g_cp, g_ref, atol=1e-4)


def test_ring_inside_shard_map_on_8_devices():
    """ring_attention called by hand in shard_map over all 8 devices, zigzag layout."""
    q, k, v = inputs()
    mesh = Mesh(np.array(jax.devices()[:8]), ("sequence",))
    spec = jax.sharding.PartitionSpec(None, "sequence")

    @jax.jit
    def f(q, k, v):
        q, k, v = (aj.zigzag_reorder(x, 8) for x in (q, k, v))
        out = jax.shard_map(
            lambda q, k, v: aj.ring_attention(q, k, v, axis_name="sequence", is_causal=True),
            mesh=mesh,
            in_specs=(spec, spec, spec),
            out_specs=spec,
            check_vma=False,
        )(q, k, v)
        return aj.zigzag_restore(out, 8)

    chex.assert_trees_all_close(f(q, k, v), aj.flash_attention(q, k, v, is_causal=True), atol=1e-5)


def test_ulysses_heads_must_divide():
    q, k, v = inputs(num_kv_heads=2)
    with pytest.raises(ValueError, match=r"ulysses_attention: the number of query heads N=4 and "
                       r"of key/value heads K=2 must be divisible by the size 4 of axis "
                       r"'sequence'"):  # fmt: skip
        aj.context_parallel_attention(
            q, k, v, mesh=mesh_2x4(), batch_axis="data", strategy="ulysses"
        )
