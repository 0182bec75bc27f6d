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
    chex.assert_trees_all_close(
        jax.jit(f_cp)(q, k, v, tab), jax.jit(f_ref)(q, k, v, tab), atol=1e-5
    )

    def loss(f):
        return lambda *a: jnp.sum(jnp.sin(f(*a)))

    g_ref = jax.jit(jax.grad(loss(f_ref), argnums=(0, 1, 2, 3)))(q, k, v, tab)
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


def _segments():
    seg = jnp.asarray(np.repeat(np.arange(4), T // 4)[None].repeat(B, 0))
    return seg.at[1, 40:].set(7)


OPTIONS = {
    "segment_ids": lambda: dict(load_balance=True, is_causal=True, segment_ids=_segments()),
    "window": lambda: dict(load_balance=True, is_causal=True, local_window_size=(9, 0)),
    # A learned per-head distance slope (ALiBi-like): its gradient crosses the ring.
    "bias_fn": lambda: dict(load_balance=True, is_causal=True, table=jnp.linspace(0.1, 0.4, N)),
    "softcap": lambda: dict(load_balance=False, softcap=5.0, scale=0.3),
}
# `make test` runs the segment ids and the learned bias through the ring; `make test-all`
# runs every option through both strategies.
FAST_OPTIONS = {("ring", "segment_ids"), ("ring", "bias_fn")}


@pytest.mark.parametrize(
    "strategy, option",
    [
        pytest.param(s, o, marks=() if (s, o) in FAST_OPTIONS else pytest.mark.slow, id=f"{s}-{o}")
        for s in ("ring", "ulysses")
        for o in OPTIONS
    ],
)
def test_options_equal_flash(strategy, option):
    kv = N if strategy == "ulysses" else 1  # ring: multi-query attention
    opts = OPTIONS[option]()
    check(strategy, opts.pop("load_balance"), num_kv_heads=kv, **opts)


@pytest.mark.parametrize("strategy", [pytest.param("ring", marks=pytest.mark.slow), "ulysses"])
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

    chex.assert_trees_all_close(jax.jit(f_cp)(q, sinks), jax.jit(f_ref)(q, sinks), atol=1e-5)
    g_cp = jax.jit(jax.grad(lambda *a: jnp.sum(f_cp(*a) ** 2), argnums=(0, 1)))(q, sinks)
    g_ref = jax.jit(jax.grad(lambda *a: jnp.sum(f_ref(*a) ** 2), argnums=(0, 1)))(q, sinks)
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


def test_ring_memory_per_device_is_a_few_shards():
    """The compiled per-device program of the causal ring's forward+backward holds a fixed
    number of shard-sized buffers (O(T / P)): the output and dq accumulators, the blocked q
    and dO, and K, V, dK, dV double-buffered around each ``ppermute``, plus flash blocks.
    All-gather, the O(T) baseline, holds ~50 at P = 8. Before the ring carried flash's
    blocked layout it held 15 (a layout copy of each operand in every step)."""
    t, n, h, p = 16384, 2, 32, 8
    mesh = Mesh(np.array(jax.devices()[:p]), ("sequence",))
    spec = jax.sharding.PartitionSpec(None, "sequence")
    shard_bytes = (t // p) * n * h * 4

    def temporaries(local_fn):
        def loss(q, k, v):
            out = local_fn(q, k, v, axis_name="sequence", is_causal=True, block_q=128, block_k=128)
            return jnp.sum(out)

        fn = jax.shard_map(
            jax.grad(loss, argnums=(0, 1, 2)),
            mesh=mesh,
            in_specs=(spec,) * 3,
            out_specs=(spec,) * 3,
            check_vma=False,
        )
        x = jax.ShapeDtypeStruct(
            (1, t, n, h), jnp.float32, sharding=jax.sharding.NamedSharding(mesh, spec)
        )
        memory = jax.jit(fn).lower(x, x, x).compile().memory_analysis()
        return memory.temp_size_in_bytes / shard_bytes

    ring = temporaries(aj.ring_attention)
    assert ring <= 12.5, ring
    assert temporaries(aj.all_gather_attention) > 3 * ring


def test_ulysses_heads_must_divide():
    q, k, v = inputs(num_kv_heads=2)
    with pytest.raises(ValueError, match=r"ulysses_attention: the number of query heads N=4 and "
                       r"of key/value heads K=2 must be divisible by the size 4 of axis "
                       r"'sequence'"):  # fmt: skip
        aj.context_parallel_attention(
            q, k, v, mesh=mesh_2x4(), batch_axis="data", strategy="ulysses"
        )


def test_explicit_axis_mesh():
    """``jax.make_mesh`` meshes (explicit axis types in recent jax) work as well."""
    q, k, v = inputs()
    mesh = jax.make_mesh((2, 4), ("data", "sequence"))
    for strategy in ("ring", "all_gather"):  # Ulysses needs K divisible by 4
        out = jax.jit(
            lambda q, k, v, s=strategy: aj.context_parallel_attention(
                q, k, v, mesh=mesh, batch_axis="data", strategy=s, is_causal=True, **BLOCKS
            )
        )(q, k, v)
        ref = aj.flash_attention(q, k, v, is_causal=True, **BLOCKS)
        chex.assert_trees_all_close(np.asarray(out), ref, atol=1e-5, rtol=1e-5)


# --- training: TrainStep on a ("data", "sequence") mesh -----------------------------------


def lm_step(mesh, context_parallel, *, positional="rope", num_kv_heads=2, steps=1):
    """Loss and parameters after ``steps`` SGD steps of a small LM on ``mesh``."""
    import optax
    from flax import nnx

    from attention_jax import train as T
    from attention_jax.nn import TransformerConfig, TransformerLM

    cfg = TransformerConfig(
        vocab_size=17, d_model=32, num_layers=2, num_heads=4, num_kv_heads=num_kv_heads, max_len=32,
        positional=positional, context_parallel=context_parallel,
    )  # fmt: skip
    model = TransformerLM(cfg, rngs=nnx.Rngs(0))
    step = T.TrainStep(model, nnx.Optimizer(model, optax.sgd(0.5), wrt=nnx.Param), mesh=mesh)
    x = jax.random.randint(jax.random.key(1), (4, 32), 0, 17)
    batch = (x, jnp.roll(x, -1, axis=1))
    hlo = step._jit.lower(*step._args(0, batch, None)).as_text()
    losses = [float(step(i, batch)["loss"]) for i in range(steps)]
    params = [np.asarray(p) for p in jax.tree.leaves(nnx.state(step.state, nnx.Param))]
    return losses, params, hlo


@pytest.mark.parametrize(
    "strategy, positional, kv_heads, collective",
    [("ring", "rope", 2, "collective_permute"), ("ulysses", "alibi", 4, "all_to_all")],
)
def test_train_step_on_2x4_mesh_equals_one_device(strategy, positional, kv_heads, collective):
    from attention_jax import train as T

    one = T.data_mesh(jax.devices()[:1])
    ref_loss, ref_params, _ = lm_step(one, None, positional=positional, num_kv_heads=kv_heads)
    mesh = T.make_mesh(data=2, sequence=4)
    loss, params, hlo = lm_step(mesh, strategy, positional=positional, num_kv_heads=kv_heads)
    assert collective in hlo  # the attention really ran context-parallel
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-5)
    for got, want in zip(params, ref_params, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_context_parallel_layer_errors():
    from flax import nnx

    from attention_jax.nn import AttentionConfig, MultiHeadAttention

    cfg = AttentionConfig(num_heads=4, head_dim=8, context_parallel="ring")
    layer = MultiHeadAttention(32, cfg, rngs=nnx.Rngs(0))
    x = jnp.ones((2, 32, 32))
    mesh = jax.make_mesh((2, 4), ("data", "sequence"))
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        with pytest.raises(ValueError, match="context_parallel='ring'.*mask cannot be sharded"):
            jax.eval_shape(lambda x: layer(x, mask=jnp.ones((2, 1, 32, 32), bool)), x)
        with pytest.raises(ValueError, match="query_seq_lengths cannot be sharded"):
            jax.eval_shape(lambda x: layer(x, query_seq_lengths=jnp.array([3, 4])), x)


@pytest.mark.slow
def test_char_lm_on_a_2x4_mesh_with_ring_attention(tmp_path):
    """``char_lm.py --mesh 2x4 --context-parallel ring`` trains, evaluates and samples."""
    import json
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "experiments"))
    import char_lm

    text = tmp_path / "text.txt"
    text.write_text("to be or not to be, that is the question\n" * 60)
    out = tmp_path / "run"
    char_lm.main(
        [
            "--data", str(text), "--out", str(out), "--mesh", "2x4", "--context-parallel",
            "ring", "--steps", "4", "--eval-interval", "2", "--eval-iters", "1", "--block",
            "16", "--batch", "4", "--layers", "1", "--d-model", "16", "--heads", "4",
            "--sample", "5", "--no-progress",
        ]
    )  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert np.isfinite(metrics["val_loss_full"]) and metrics["args"]["mesh"] == "2x4"
