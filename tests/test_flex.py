"""score_mod / mask_mod / block_mask in the materialized and flash paths.

References are float64 NumPy (forward and a hand-written backward) on the full grid, with
each mod written again here in NumPy; the paths are also checked against the equivalent
built-in options and against each other.
"""

from __future__ import annotations

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import attention_jax as aj
from attention_jax import flex
from attention_jax.flash import flash_block_plan

IMPLS = ("xla", "flash")
BLOCKS = dict(block_q=4, block_k=8)  # small blocks: several of them, ragged edges
TOL = dict(atol=2e-5, rtol=2e-5)


def attend(impl, q, k, v, **kw):
    extra = BLOCKS if impl == "flash" and "block_mask" not in kw else {}
    return aj.dot_product_attention(q, k, v, implementation=impl, **extra, **kw)


# ----------------------------------------------------------------------------------------
# float64 NumPy reference: additive score terms and a boolean mask on the full grid.
# ----------------------------------------------------------------------------------------


def np_reference(q, k, v, *, bias=None, mask=None, softcap=None, d_out=None):
    """``out [B, T, N, H]`` and, with ``d_out``, ``(dq, dk, dv, dbias)`` of
    ``sum(out * d_out)``, where logits = softcap(q k^T / sqrt(H)) + bias, masked by ``mask``
    (``[B|1, N|1, T, S]``); a row with no allowed key outputs 0."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    b, t, n, h = q.shape
    s, kh = k.shape[1], k.shape[2]
    kr, vr = np.repeat(k, n // kh, axis=2), np.repeat(v, n // kh, axis=2)
    raw = np.einsum("btnh,bsnh->bnts", q, kr) / math.sqrt(h)
    capped = raw if softcap is None else softcap * np.tanh(raw / softcap)
    logits = capped + (0.0 if bias is None else np.asarray(bias, np.float64))
    allowed = np.ones((b, n, t, s), bool) if mask is None else np.broadcast_to(mask, (b, n, t, s))
    z = np.where(allowed, logits, -np.inf)
    m = np.max(z, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.where(allowed, np.exp(z - m), 0.0)
    total = e.sum(-1, keepdims=True)
    p = e / np.where(total > 0, total, 1.0)
    out = np.einsum("bnts,bsnh->btnh", p, vr)
    if d_out is None:
        return out
    do = np.asarray(d_out, np.float64)
    dp = np.einsum("btnh,bsnh->bnts", do, vr)
    ds = p * (dp - np.sum(dp * p, axis=-1, keepdims=True))  # d logits
    draw = ds if softcap is None else ds * (1.0 - np.tanh(raw / softcap) ** 2)
    dq = np.einsum("bnts,bsnh->btnh", draw, kr) / math.sqrt(h)
    dk = np.einsum("bnts,btnh->bsnh", draw, q) / math.sqrt(h)
    dv = np.einsum("bnts,btnh->bsnh", p, do)
    g = n // kh
    dk = dk.reshape(b, s, kh, g, h).sum(3)
    dv = dv.reshape(b, s, kh, g, h).sum(3)
    return out, (dq, dk, dv, ds)


def inputs(b=2, t=13, s=21, n=4, kh=2, h=8, seed=0):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.normal(size=(b, t, n, h)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(b, s, kh, h)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(b, s, kh, h)), jnp.float32)
    d_out = jnp.asarray(rng.normal(size=(b, t, n, h)), jnp.float32)
    return q, k, v, d_out


def grads(impl, q, k, v, d_out, extra_args=(), **kw_of_extra):
    """Output and gradients of ``sum(out * d_out)`` w.r.t. q, k, v and ``extra_args``; ``kw``
    maps extra args to attention keyword arguments."""

    def loss(q, k, v, *extra):
        out = attend(impl, q, k, v, **kw_of_extra["build"](*extra))
        return jnp.sum(out * d_out), out

    floats = [i for i, x in enumerate(extra_args) if jnp.issubdtype(x.dtype, jnp.inexact)]
    argnums = (0, 1, 2, *(3 + i for i in floats))  # integer extras are traced, not differentiated
    (_, out), g = jax.jit(jax.value_and_grad(loss, argnums, has_aux=True))(q, k, v, *extra_args)
    return out, g


# ----------------------------------------------------------------------------------------
# Against the NumPy reference.
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_relative_table_with_causal_mask(impl):
    """A learned relative-position table as score_mod: forward and gradients, table too."""
    q, k, v, d_out = inputs()
    b, t, n, _ = q.shape
    s, dist = k.shape[1], 5
    table = jnp.asarray(np.random.default_rng(1).normal(size=(n, 2 * dist + 1)), jnp.float32)
    # Queries sit at the end of the keys (cached decoding layout): positions s - t .. s - 1.
    q_pos = np.arange(s - t, s, dtype=np.int32)

    def build(table):
        return dict(
            score_mod=flex.relative_position_score_mod(table, max_distance=dist),
            mask_mod=flex.causal_mask_mod,
            query_positions=q_pos,
        )

    out, (dq, dk, dv, dtable) = grads(impl, q, k, v, d_out, (table,), build=build)
    rel = np.clip(np.arange(s)[None, :] - q_pos[:, None], -dist, dist) + dist  # [T, S]
    bias = np.asarray(table, np.float64)[:, rel][None]  # [1, N, T, S]
    mask = (np.arange(s)[None, :] <= q_pos[:, None])[None, None]
    ref_out, (rq, rk, rv, ds) = np_reference(q, k, v, bias=bias, mask=mask, d_out=d_out)
    ref_dtable = np.zeros((n, 2 * dist + 1))
    for h_ in range(n):
        np.add.at(ref_dtable[h_], rel, ds[:, h_].sum(0))
    chex.assert_trees_all_close((out, dq, dk, dv, dtable), (ref_out, rq, rk, rv, ref_dtable), **TOL)


@pytest.mark.parametrize("impl", IMPLS)
def test_prefix_lm_with_ragged_lengths(impl):
    q, k, v, d_out = inputs(t=21, s=21)
    b, t, n, _ = q.shape
    prefix = np.array([5, 12], np.int32)
    kv_len = np.array([21, 16], np.int32)

    def build(prefix):
        return dict(mask_mod=flex.prefix_lm_mask_mod(prefix), key_value_seq_lengths=kv_len)

    out, (dq, dk, dv) = grads(impl, q, k, v, d_out, (jnp.asarray(prefix),), build=build)
    i, j = np.arange(t)[:, None], np.arange(t)[None, :]
    mask = ((j < prefix[:, None, None]) | (j <= i)) & (j < kv_len[:, None, None])
    ref_out, (rq, rk, rv, _) = np_reference(q, k, v, mask=mask[:, None], d_out=d_out)
    chex.assert_trees_all_close((out, dq, dk, dv), (ref_out, rq, rk, rv), **TOL)


@pytest.mark.parametrize("impl", IMPLS)
def test_head_dependent_mods_under_gqa(impl):
    """score_mod and mask_mod see the query head (N=6 query heads share K=2 kv heads)."""
    q, k, v, d_out = inputs(n=6, kh=2, t=11, s=17)
    b, t, n, _ = q.shape
    s = k.shape[1]
    weights = jnp.arange(1, n + 1, dtype=jnp.float32) / n

    def build():
        return dict(
            score_mod=lambda sc, bi, hi, qi, ki: sc * weights[hi] + 0.1 * (bi + 1),
            mask_mod=lambda bi, hi, qi, ki: jnp.where(hi % 2 == 0, ki <= qi, ki >= qi - 2),
        )

    out, (dq, dk, dv) = grads(impl, q, k, v, d_out, build=build)
    # The reference: logits * w_h + 0.1 (b + 1), i.e. q scaled per head plus a constant bias.
    w = np.asarray(weights, np.float64)
    q_scaled = np.asarray(q, np.float64) * w[None, None, :, None]
    i, j = np.arange(t)[:, None], np.arange(s)[None, :]
    mask = np.where((np.arange(n) % 2 == 0)[:, None, None], j <= i, j >= i - 2)[None]
    bias = 0.1 * (np.arange(b) + 1.0)[:, None, None, None] * np.ones((1, n, t, s))
    ref_out, (rq, rk, rv, _) = np_reference(q_scaled, k, v, bias=bias, mask=mask, d_out=d_out)
    rq = rq * w[None, None, :, None]
    chex.assert_trees_all_close((out, dq, dk, dv), (ref_out, rq, rk, rv), **TOL)


@pytest.mark.parametrize("impl", IMPLS)
def test_fully_masked_rows_give_zeros_and_finite_gradients(impl):
    q, k, v, d_out = inputs(t=12, s=12)

    def build():
        return dict(mask_mod=lambda bi, hi, qi, ki: (qi >= 5) & (ki <= qi))

    out, g = grads(impl, q, k, v, d_out, build=build)
    chex.assert_trees_all_close(out[:, :5], jnp.zeros_like(out[:, :5]))
    for x in (out, *g):
        assert bool(jnp.all(jnp.isfinite(x)))
    i, j = np.arange(12)[:, None], np.arange(12)[None, :]
    ref_out = np_reference(q, k, v, mask=((i >= 5) & (j <= i))[None, None])
    chex.assert_trees_all_close(out, ref_out, **TOL)


# ----------------------------------------------------------------------------------------
# Against the built-in options and across paths.
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_document_and_causal_equals_segment_ids(impl):
    q, k, v, d_out = inputs(t=24, s=24, seed=3)
    seg = jnp.asarray([[0] * 7 + [1] * 9 + [2] * 8, [0] * 12 + [1] * 12], jnp.int32)
    mod = flex.and_masks(flex.document_mask_mod(seg), flex.causal_mask_mod)
    ref = attend(impl, q, k, v, segment_ids=seg, is_causal=True)
    chex.assert_trees_all_close(attend(impl, q, k, v, mask_mod=mod), ref, **TOL)
    bm = aj.create_block_mask(mod, 2, None, 24, 24, block_q=8, block_k=4)
    chex.assert_trees_all_close(attend(impl, q, k, v, block_mask=bm), ref, **TOL)

    def build_mod():
        return dict(mask_mod=mod)

    def build_builtin():
        return dict(segment_ids=seg, is_causal=True)

    chex.assert_trees_all_close(
        grads(impl, q, k, v, d_out, build=build_mod),
        grads(impl, q, k, v, d_out, build=build_builtin),
        **TOL,
    )


@pytest.mark.parametrize("impl", IMPLS)
def test_alibi_and_softcap_as_one_score_mod_equal_bias_fn_and_softcap(impl):
    q, k, v, d_out = inputs(seed=4)
    q = q * 3.0  # large logits, so the cap matters
    n = q.shape[2]
    slopes = aj.alibi_slopes(n)

    def build_mod(slopes):
        mod = flex.compose_score_mods(flex.softcap_score_mod(2.5), flex.alibi_score_mod(slopes))
        return dict(score_mod=mod, mask_mod=flex.causal_mask_mod)

    def build_builtin(slopes):
        return dict(bias_fn=functools.partial(aj.alibi_bias, slopes), softcap=2.5, is_causal=True)

    chex.assert_trees_all_close(
        grads(impl, q, k, v, d_out, (slopes,), build=build_mod),
        grads(impl, q, k, v, d_out, (slopes,), build=build_builtin),
        **TOL,
    )


def test_t5_score_mod_equals_t5_bias_fn_in_both_paths():
    q, k, v, d_out = inputs(seed=5)
    n = q.shape[2]
    table = jnp.asarray(np.random.default_rng(6).normal(size=(16, n)), jnp.float32)

    def build_mod(table):
        return dict(score_mod=flex.t5_score_mod(table, max_distance=16))

    def build_builtin(table):
        return dict(bias_fn=functools.partial(aj.t5_relative_bias, table, max_distance=16))

    results = [
        grads(impl, q, k, v, d_out, (table,), build=build)
        for impl in IMPLS
        for build in (build_mod, build_builtin)
    ]
    for other in results[1:]:
        chex.assert_trees_all_close(other, results[0], **TOL)


def test_window_mask_mod_with_block_mask_equals_local_window_size():
    q, k, v, _ = inputs(t=40, s=40, seed=7)
    mod = flex.and_masks(flex.causal_mask_mod, flex.sliding_window_mask_mod(6))
    bm = aj.create_block_mask(mod, None, None, 40, 40, block_q=8, block_k=8)
    ref = attend("xla", q, k, v, is_causal=True, local_window_size=(6, 0))
    chex.assert_trees_all_close(attend("xla", q, k, v, block_mask=bm), ref, **TOL)
    chex.assert_trees_all_close(attend("flash", q, k, v, block_mask=bm), ref, **TOL)
    chex.assert_trees_all_close(attend("flash", q, k, v, mask_mod=mod), ref, **TOL)


def test_check_grads_of_flash_with_mods_float64():
    with jax.enable_x64(True):
        rng = np.random.default_rng(8)
        q = jnp.asarray(rng.normal(size=(1, 9, 2, 4)))
        k = jnp.asarray(rng.normal(size=(1, 11, 1, 4)))
        v = jnp.asarray(rng.normal(size=(1, 11, 1, 4)))
        table = jnp.asarray(rng.normal(size=(2, 7)))

        def fn(q, k, v, table):
            return aj.flash_attention(
                q,
                k,
                v,
                score_mod=flex.compose_score_mods(
                    flex.softcap_score_mod(3.0),
                    flex.relative_position_score_mod(table, max_distance=3),
                ),
                mask_mod=flex.sliding_window_mask_mod(4, 2),
                block_q=4,
                block_k=4,
            )

        check_grads(jax.jit(fn), (q, k, v, table), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_block_mask_made_inside_jit_from_traced_segment_ids():
    q, k, v, _ = inputs(b=2, t=32, s=32, seed=9)

    @jax.jit
    def f(seg, q, k, v):
        bm = aj.create_block_mask(
            flex.document_mask_mod(seg), 2, None, 32, 32, block_q=8, block_k=8
        )
        return aj.flash_attention(q, k, v, block_mask=bm), bm

    seg = jnp.asarray(np.repeat(np.arange(4), 8)[None].repeat(2, 0), jnp.int32)
    out, bm = f(seg, q, k, v)
    chex.assert_trees_all_close(out, attend("xla", q, k, v, segment_ids=seg), **TOL)
    chex.assert_shape(bm.state, (2, 1, 4, 4))
    np.testing.assert_array_equal(np.asarray(bm.state[0, 0]), 2 * np.eye(4, dtype=np.int8))


def test_jit_vmap_grad_compose_with_mods():
    q, k, v, _ = inputs(seed=10)
    table = jnp.asarray(np.random.default_rng(11).normal(size=(4, 9)), jnp.float32)

    def loss(q, k, v):  # one example: [T, N, H]
        mod = flex.relative_position_score_mod(table, max_distance=4)
        out = aj.flash_attention(q, k, v, score_mod=mod, mask_mod=flex.causal_mask_mod)
        return jnp.sum(out**2)

    batched = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1, 2))))(q, k, v)
    looped = [jax.grad(loss, argnums=(0, 1, 2))(q[i], k[i], v[i]) for i in range(q.shape[0])]
    chex.assert_trees_all_close(batched, jax.tree.map(lambda *x: jnp.stack(x), *looped), **TOL)


# ----------------------------------------------------------------------------------------
# Block skipping and memory.
# ----------------------------------------------------------------------------------------


def test_block_mask_records_empty_full_and_partial_blocks():
    bm = aj.create_block_mask(flex.causal_mask_mod, None, 3, 20, 20, block_q=8, block_k=8)
    chex.assert_shape(bm.state, (1, 3, 3, 3))
    expected = np.array([[1, 0, 0], [2, 1, 0], [2, 2, 1]], np.int8)
    for h in range(3):
        np.testing.assert_array_equal(np.asarray(bm.state[0, h]), expected)
    assert (bm.block_q, bm.block_k, bm.shape) == (8, 8, (None, 3, 20, 20))
    assert math.isclose(float(bm.sparsity()), 3 / 9, rel_tol=1e-6)
    leaves, treedef = jax.tree.flatten(bm)
    assert len(leaves) == 1 and jax.tree.unflatten(treedef, leaves).mask_mod is bm.mask_mod


def test_document_block_mask_visits_only_the_diagonal_blocks():
    t, docs, block = 512, 8, 32  # 8 documents of 64 tokens: 2 x 2 blocks each
    seg = jnp.asarray(np.repeat(np.arange(docs), t // docs)[None], jnp.int32)
    bm = aj.create_block_mask(
        flex.document_mask_mod(seg), 1, None, t, t, block_q=block, block_k=block
    )
    x = jnp.zeros((1, t, 2, 8))
    plan = np.asarray(flash_block_plan(aj.canonicalize_attention_inputs(x, x, x, block_mask=bm)))
    nb = t // block
    assert plan.shape == (nb, nb)
    assert np.sum(plan > 0) == docs * 2 * 2  # 32 of 256 blocks visited
    assert np.all(plan[plan > 0] == 2)  # aligned documents: no mask evaluation at all
    # A mask_mod alone gets the same plan (the flash path makes the block mask itself).
    inp = aj.canonicalize_attention_inputs(x, x, x, mask_mod=flex.document_mask_mod(seg))
    np.testing.assert_array_equal(
        np.asarray(flash_block_plan(inp, block_q=block, block_k=block)), plan
    )


def test_flash_with_mods_never_holds_a_t_by_s_array():
    t = s = 4096
    spec = jax.ShapeDtypeStruct((1, t, 2, 16), jnp.float32)
    slopes = aj.alibi_slopes(2)
    table = jnp.zeros((2, 33))

    def loss(q, k, v, table):
        mod = flex.compose_score_mods(
            flex.alibi_score_mod(slopes), flex.relative_position_score_mod(table, max_distance=16)
        )
        out = aj.flash_attention(q, k, v, score_mod=mod, mask_mod=flex.causal_mask_mod)
        return jnp.sum(out)

    table_spec = jax.ShapeDtypeStruct(table.shape, table.dtype)
    for fn in (loss, jax.grad(loss, argnums=(0, 1, 2, 3))):
        compiled = jax.jit(fn).lower(spec, spec, spec, table_spec).compile()
        temp = compiled.memory_analysis().temp_size_in_bytes
        assert temp < t * s * 4 / 4, temp  # far below one [T, S] float32 array (64 MiB)

    def dense(q, k, v, table):
        return jnp.sum(attend("xla", q, k, v, mask_mod=flex.causal_mask_mod))

    temp = jax.jit(dense).lower(spec, spec, spec, table_spec).compile().memory_analysis()
    assert temp.temp_size_in_bytes >= t * s * 4  # the measurement sees a [T, S] array


# ----------------------------------------------------------------------------------------
# Bad input.
# ----------------------------------------------------------------------------------------

X = jnp.ones((1, 8, 2, 4))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "kw, error, message",
    [
        (
            dict(mask_mod=lambda b, h, q, k: q - k),
            TypeError,
            r"dot_product_attention: mask_mod must return a bool \(True = may attend\) for each "
            r"scalar \(batch, head, q_idx, kv_idx\), got int32 array of shape \(\)\.",
        ),
        (
            dict(score_mod=lambda s, b, h, q, k: jnp.stack([s, s])),
            ValueError,
            r"dot_product_attention: score_mod must return one value per scalar score .* got "
            r"float32 array of shape \(2,\)\.",
        ),
        (
            dict(score_mod=lambda s, b, h, q, k: q > k),
            TypeError,
            r"dot_product_attention: score_mod must return a float score for each scalar score, "
            r"got bool array of shape \(\)\.",
        ),
        (dict(mask_mod="causal"), TypeError, r"mask_mod must be None or a callable, got 'causal'"),
        (dict(block_mask=np.ones((1, 1, 1, 1))), TypeError, r"block_mask must be None or a Block"),
        (
            dict(block_mask=aj.create_block_mask(flex.causal_mask_mod, None, None, 8, 9)),
            ValueError,
            r"dot_product_attention: block_mask must be made for the call's \[B, N, T, S\]="
            r"\(1, 2, 8, 8\) \(None: any\), got a block_mask made for \(None, None, 8, 9\)\.",
        ),
        (
            dict(block_mask=aj.create_block_mask(flex.causal_mask_mod, 3, None, 8, 8)),
            ValueError,
            r"block_mask must be made for the call's \[B, N, T, S\]=\(1, 2, 8, 8\) \(None: any\), "
            r"got a block_mask made for \(3, None, 8, 8\)",
        ),
        (
            dict(
                block_mask=aj.create_block_mask(flex.causal_mask_mod, None, None, 8, 8),
                mask_mod=flex.noop_mask_mod,
            ),
            ValueError,
            r"mask_mod must be the block_mask's own mask_mod when both are given",
        ),
    ],
)
def test_bad_mods_raise_at_trace_time(impl, kw, error, message):
    with pytest.raises(error, match=message):
        jax.jit(lambda q: aj.dot_product_attention(q, q, q, implementation=impl, **kw))(X)


def test_block_sizes_that_disagree_with_the_block_mask_raise():
    bm = aj.create_block_mask(flex.causal_mask_mod, None, None, 8, 8, block_q=4, block_k=4)
    with pytest.raises(
        ValueError,
        match=r"flash_attention: block_mask must have the block sizes the call runs with, got "
        r"a block_mask of blocks \(4, 4\) and block_q, block_k = \(2, 4\)",
    ):
        aj.flash_attention(X, X, X, block_mask=bm, block_q=2)
    # Without explicit sizes the block mask's are used; equal explicit ones are fine.
    chex.assert_trees_all_close(
        aj.flash_attention(X, X, X, block_mask=bm),
        aj.flash_attention(X, X, X, block_mask=bm, block_q=4, block_k=4),
    )


def test_fused_kernels_refuse_mods_with_the_reason(monkeypatch):
    from attention_jax import dispatch

    monkeypatch.setattr(dispatch, "_platform", lambda: "cuda")
    q = jnp.ones((1, 16, 2, 64), jnp.bfloat16)
    for kw, reason in (
        (dict(score_mod=flex.softcap_score_mod(5.0)), "score_mod"),
        (dict(mask_mod=flex.causal_mask_mod), "mask_mod"),
    ):
        inputs_ = aj.canonicalize_attention_inputs(q, q, q, **kw)
        with pytest.raises(ValueError, match=rf"implementation='cudnn' cannot serve .*{reason}"):
            aj.select_implementation(inputs_, implementation="cudnn")
        assert aj.select_implementation(inputs_).name in ("xla", "flash")


def test_masks_that_do_not_read_batch_or_head_are_evaluated_once():
    seg = jnp.zeros((2, 8), jnp.int32)
    assert flex.reads_batch_and_head(flex.causal_mask_mod) == (False, False)
    assert flex.reads_batch_and_head(flex.document_mask_mod(seg)) == (True, False)
    assert flex.reads_batch_and_head(lambda b, h, q, k: (h == 0) | (k <= q)) == (False, True)
    # Broadcast over the batch and heads the mask does not read: the state has their sizes.
    bm = aj.create_block_mask(flex.causal_mask_mod, 2, 3, 8, 8, block_q=4, block_k=4)
    chex.assert_shape(bm.state, (2, 3, 2, 2))
    np.testing.assert_array_equal(np.asarray(bm.state[1, 2]), [[1, 0], [2, 1]])
