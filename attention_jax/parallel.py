r"""Context parallelism: attention over a sequence split across the devices of a mesh axis.

When a sequence outgrows one device, its tokens are sharded over a mesh axis (``P``
devices, ``T / P`` tokens each) and attention must still see every key. Three strategies,
all built on JAX's own collectives inside :func:`jax.shard_map`:

* :func:`ring_attention` (Liu et al. 2023, "Ring Attention with Blockwise Transformers"):
  keys and values (with their positions and segment ids) travel around the ring with
  ``lax.ppermute`` while each device runs :func:`attention_jax.flash_attention` of its
  queries against the shard it holds; the partial results combine with the log-sum-exp rule
  of :func:`attention_jax.merge_attention`. A ``jax.custom_vjp`` runs the backward ring (the
  gradients of K and V travel with them), so no device ever holds more than two K/V shards:
  memory per device is O(T / P). Causal attention over contiguous shards is unbalanced
  (device ``P - 1`` sees every shard, device 0 only its own); ``load_balance=True`` uses the
  zigzag layout (:func:`zigzag_reorder`: ``2P`` chunks, device ``i`` holds chunks ``i`` and
  ``2P - 1 - i``, as MaxText's ``dual_chunk_swap``) so every device does the same work.
* :func:`ulysses_attention` (Jacobs et al. 2023, "DeepSpeed Ulysses"): one ``all_to_all``
  turns sequence shards into head shards, each device runs flash attention over the whole
  sequence for ``N / P`` heads, and a second ``all_to_all`` turns the output back.
* ``"all_gather"`` in :func:`context_parallel_attention`: gather K/V everywhere, attend
  locally (the simple baseline; O(T) memory per device).

Each device's tokens keep their *global* positions (``query_positions`` /
``key_value_positions`` of the flash call), so causality, windows, ``bias_fn`` (ALiBi, T5),
``score_mod`` and ``mask_mod`` see the true ``q_idx`` / ``kv_idx``.

Shape letters: ``B`` batch, ``T`` global sequence length, ``t = T / P`` tokens per device,
``N`` query heads, ``K`` key/value heads, ``H`` head dim, ``P`` devices on the axis.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import AbstractMesh, Mesh, NamedSharding, PartitionSpec

from attention_jax import _checks
from attention_jax import flash as _flash
from attention_jax._inputs import canonicalize_attention_inputs
from attention_jax.flash import flash_attention, merge_attention
from attention_jax.flex import create_block_mask

__all__ = [
    "CONTEXT_PARALLEL_STRATEGIES",
    "all_gather_attention",
    "DATA_AXIS",
    "SEQUENCE_AXIS",
    "context_parallel_attention",
    "ring_attention",
    "ring_block_counts",
    "shard_positions",
    "ulysses_attention",
    "zigzag_reorder",
    "zigzag_restore",
]

CONTEXT_PARALLEL_STRATEGIES = ("ring", "ulysses", "all_gather")

# The mesh axis names of the library: the batch over "data", the tokens over "sequence"
# (attention_jax.train.make_mesh builds such meshes; the models look these names up).
DATA_AXIS = "data"
SEQUENCE_AXIS = "sequence"


# ----------------------------------------------------------------------------------------
# Layouts.
# ----------------------------------------------------------------------------------------


def _zigzag_order(length: int, num_shards: int, fn: str) -> np.ndarray:
    num_shards = _checks.check_int(num_shards, "num_shards", fn=fn)
    if length % (2 * num_shards):
        raise ValueError(
            f"{fn}: the sequence length must be divisible by 2 * num_shards = "
            f"{2 * num_shards}, got length {length}."
        )
    chunks = np.arange(length).reshape(2 * num_shards, -1)
    order = [c for i in range(num_shards) for c in (chunks[i], chunks[2 * num_shards - 1 - i])]
    return np.concatenate(order)


def zigzag_reorder(x: jax.Array, num_shards: int, axis: int = 1) -> jax.Array:
    """Reorders a sequence axis into the load-balanced (zigzag) layout.

    The axis is cut into ``2 * num_shards`` equal chunks; the result holds chunks
    ``0, 2P-1, 1, 2P-2, ..., P-1, P``, so that sharding it evenly over ``P`` devices gives
    device ``i`` chunks ``i`` and ``2P - 1 - i``: under a causal mask every device then has
    the same number of visible (query, key) pairs.

    Args:
      x: array with the sequence on ``axis`` (e.g. ``[B, T, N, H]``), ``T`` divisible by
        ``2 * num_shards``.
      num_shards: ``P``, the number of devices the axis will be split over.
      axis: the sequence axis (static).

    Returns:
      ``x`` reordered along ``axis`` (same shape). :func:`zigzag_restore` inverts it.
    """
    x = jnp.asarray(x)
    order = _zigzag_order(x.shape[axis], num_shards, "zigzag_reorder")
    return jnp.take(x, jnp.asarray(order), axis=axis)


def zigzag_restore(x: jax.Array, num_shards: int, axis: int = 1) -> jax.Array:
    """Inverse of :func:`zigzag_reorder`: back to the natural order along ``axis``."""
    x = jnp.asarray(x)
    order = _zigzag_order(x.shape[axis], num_shards, "zigzag_restore")
    return jnp.take(x, jnp.asarray(np.argsort(order)), axis=axis)


def shard_positions(
    shard: int | jax.Array, num_shards: int, shard_length: int, *, load_balance: bool
) -> jax.Array:
    """Global positions ``[shard_length]`` of the tokens that device ``shard`` holds.

    Contiguous layout: ``shard * t + arange(t)``; zigzag layout (``load_balance=True``):
    chunk ``shard`` then chunk ``2P - 1 - shard``, each of ``t / 2`` tokens.
    """
    if not load_balance:
        return shard * shard_length + jnp.arange(shard_length, dtype=jnp.int32)
    half = shard_length // 2
    first = shard * half + jnp.arange(half, dtype=jnp.int32)
    second = (2 * num_shards - 1 - shard) * half + jnp.arange(half, dtype=jnp.int32)
    return jnp.concatenate([first, second]).astype(jnp.int32)


# ----------------------------------------------------------------------------------------
# Ring attention.
# ----------------------------------------------------------------------------------------


def _check_shards(query, key, value, fn: str):
    query = _checks.float_array(query, "query", fn=fn)
    key = _checks.float_array(key, "key", fn=fn)
    value = _checks.float_array(value, "value", fn=fn)
    if query.ndim != 4 or key.ndim != 4 or value.ndim != 4:
        raise ValueError(
            f"{fn}: query, key and value must be per-device shards [B, t, N, H] / [B, t, K, H],"
            f" got {_checks.describe(query)}, {_checks.describe(key)}, "
            f"{_checks.describe(value)}."
        )
    if key.shape[1] != query.shape[1]:
        raise ValueError(
            f"{fn}: query and key shards must hold the same number of tokens t (self-attention"
            f" over one sharded sequence), got query {_checks.describe(query)} and key "
            f"{_checks.describe(key)}."
        )
    return query, key, value


def _split_segments(segment_ids, fn: str, shape):
    if segment_ids is None:
        return None
    seg = _checks.int_array(segment_ids, "segment_ids", fn=fn, shape=shape)
    return seg


def ring_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    axis_name: str,
    load_balance: bool = True,
    is_causal: bool = False,
    scale: float | None = None,
    local_window_size: int | tuple[int, int] | None = None,
    segment_ids: jax.Array | None = None,
    bias_fn: Callable | None = None,
    score_mod: Callable | None = None,
    mask_mod: Callable | None = None,
    softcap: float | None = None,
    sinks: jax.Array | None = None,
    block_q: int | None = None,
    block_k: int | None = None,
) -> jax.Array:
    r"""Ring attention over the devices of ``axis_name``; call inside :func:`jax.shard_map`.

    Device ``i`` holds query, key and value shards of ``t`` tokens (the contiguous tokens
    ``i t .. (i + 1) t - 1``, or with ``load_balance=True`` the zigzag chunks ``i`` and
    ``2P - 1 - i`` of :func:`zigzag_reorder`). For ``r = 0 .. P - 1`` it attends to the K/V
    shard of device ``(i - r) mod P`` with :func:`attention_jax.flash_attention` (at the
    global positions of both shards), merges the result into its running output and
    log-sum-exp, and passes the shard on with ``lax.ppermute``:

    .. math::
      L = \log \sum_r e^{L_r}, \qquad o = \sum_r e^{L_r - L}\, o_r .

    Under a causal mask a shard wholly in the queries' future is skipped (``lax.cond``).
    The backward pass is a ``jax.custom_vjp`` running the same ring: at each step flash
    attention's backward pass runs at the merged output and log-sum-exp (with the final
    :math:`L` the held shard's weights :math:`e^{s - L}` are the final ones, so this is its
    exact share of the gradient and no forward block is recomputed), the gradient of the
    held K/V shard is added to accumulators that travel with it, and after ``P`` steps every
    K/V gradient is back on its device. Everything in the ring stays in flash's internal
    blocked layout, converted once before and after it. Memory per device: the local
    shards, one travelling K/V shard and its gradients, plus flash blocks: O(t), never O(T).

    Args:
      query: ``[B, t, N, H]`` this device's query shard.
      key: ``[B, t, K, H]`` its key shard (``N % K == 0``: GQA/MQA).
      value: ``[B, t, K, H]`` its value shard.
      axis_name: the mesh axis the sequence is split over (keyword-only, static).
      load_balance: the shards are in the zigzag layout (``t`` even).
      is_causal, scale, local_window_size, bias_fn, score_mod, mask_mod, softcap,
        block_q, block_k: as :func:`attention_jax.flash_attention`, applied at global
        positions.
      segment_ids: ``[B, t]`` int segment ids of this device's tokens (they travel with
        K/V).
      sinks: ``[N]`` sink logits (gpt-oss style): joined once into the final denominator.

    Returns:
      ``[B, t, N, H]``: this device's rows of the attention output.

    Raises:
      ValueError, TypeError: at trace time for shards of the wrong rank or length, an odd
        ``t`` with ``load_balance``, and every error :func:`flash_attention` raises.
    """
    fn = "ring_attention"
    query, key, value = _check_shards(query, key, value, fn)
    b, t = query.shape[:2]
    if load_balance and t % 2:
        raise ValueError(
            f"{fn}: load_balance=True needs an even shard length t (two zigzag chunks), got "
            f"query {_checks.describe(query)}."
        )
    seg = _split_segments(segment_ids, fn, (b, t))
    num_shards = lax.axis_size(axis_name)
    index = lax.axis_index(axis_name)
    pos = shard_positions(index, num_shards, t, load_balance=load_balance)
    seg_pair = None if seg is None else (seg, seg)
    inp = canonicalize_attention_inputs(
        query,
        key,
        value,
        scale=scale,
        is_causal=is_causal,
        local_window_size=local_window_size,
        segment_ids=seg_pair,
        query_positions=pos,
        key_value_positions=pos,
        bias_fn=bias_fn,
        score_mod=score_mod,
        mask_mod=mask_mod,
        softcap=softcap,
        fn=fn,
    )
    # Flash's internal blocked layouts, made once: q [nq, B, K, bq * G, H] (scaled), K and
    # V [nk, B, K, bk, H]. The K/V shards travel the ring in this layout, and the output,
    # log-sum-exp and every gradient stay in it until the ring ends, so no step converts
    # a shard (each conversion is a shard-sized copy: they set the peak memory).
    # A mask_mod's block mask depends on the held shard's positions: built in every step.
    cfg, q_b, k_b, v_b, _, consts, aux, mask_consts = _flash._setup(
        inp, block_q, block_k, fn, plan_mask_mod=False
    )
    ring = _RingSpec(cfg, axis_name, num_shards, (b, query.shape[2], t, t))
    out_b, lse_b = _ring(ring, q_b, k_b, v_b, aux, mask_consts, *consts)
    out = _flash._query_rows_from_internal(out_b, t, cfg.groups).astype(query.dtype)
    lse = _flash._lse_from_internal(lse_b, t, cfg.groups)
    if sinks is not None:
        sinks = _checks.float_array(sinks, "sinks", fn=fn)
        if sinks.shape != (query.shape[2],):
            raise ValueError(
                f"{fn}: sinks must be of shape [N]=({query.shape[2]},), got "
                f"{_checks.describe(sinks)}."
            )
        sink_lse = jnp.broadcast_to(sinks.astype(jnp.float32)[None, :, None], lse.shape)
        zero = jnp.zeros_like(out)
        out, lse = merge_attention(out, lse, zero, sink_lse)
    return out


@dataclasses.dataclass(frozen=True)
class _RingSpec:
    """Static description of one ring (hashable: a ``nondiff_argnums`` argument)."""

    cfg: Any  # flash's static config of one (local queries, one K/V shard) call
    axis_name: str
    num_shards: int
    grid: tuple[int, int, int, int]  # (B, N, t, s) for the per-step block masks


def _step_aux(ring: _RingSpec, aux, kv_pos, kv_seg, mask_consts):
    """Flash's ``aux`` (of the local queries against their own shard) for the held K/V
    shard: its padded positions and segment ids and, with a ``mask_mod``, the block mask of
    this pair of shards (its empty and full blocks depend on the shards' positions)."""
    cfg = ring.cfg
    q_pos = aux["q_pos"]
    block_state = None
    if cfg.mask_mod is not None:
        b, n, t, s = ring.grid

        def mask_mod(bi, hi, qi, kvi):
            return cfg.mask_mod(bi, hi, qi, kvi, *mask_consts)

        block_state = create_block_mask(
            mask_mod,
            b,
            n,
            t,
            s,
            block_q=cfg.bq,
            block_k=cfg.bk,
            query_positions=q_pos[..., :t],
            key_value_positions=kv_pos[..., :s],
        ).state
    return {**aux, "kv_pos": kv_pos, "kv_seg": kv_seg, "block_state": block_state}


def _visible(is_causal: bool, q_pos, kv_pos):
    """Whether any key of the held shard can be visible to the local queries."""
    if not is_causal:
        return jnp.bool_(True)
    return jnp.min(kv_pos) <= jnp.max(q_pos)


def _shift(axis_name: str, num_shards: int, *xs):
    perm = [(j, (j + 1) % num_shards) for j in range(num_shards)]
    return tuple(lax.ppermute(x, axis_name, perm) for x in xs)


def _ring_forward(ring: _RingSpec, q, k, v, aux, mask_consts, consts):
    cfg = ring.cfg
    rows = q.shape[:-1]  # [nq, B, K, bq * G]

    def empty():
        return jnp.zeros(q.shape, v.dtype), jnp.full(rows, -jnp.inf, cfg.acc)

    def step(carry, _):
        out, lse, k_cur, v_cur, pos_cur, seg_cur = carry

        def attend():
            aux_r = _step_aux(ring, aux, pos_cur, seg_cur, mask_consts)
            return _flash._forward(cfg, q, k_cur, v_cur, None, None, consts, aux_r, mask_consts)

        o_r, l_r = lax.cond(_visible(cfg.is_causal, aux["q_pos"], pos_cur), attend, empty)
        out, lse = _flash._merge_rows(out, lse, o_r, l_r)
        k_cur, v_cur, pos_cur, seg_cur = _shift(
            ring.axis_name, ring.num_shards, k_cur, v_cur, pos_cur, seg_cur
        )
        return (out, lse, k_cur, v_cur, pos_cur, seg_cur), None

    out = jnp.zeros(q.shape, cfg.acc)
    lse = jnp.full(rows, -jnp.inf, cfg.acc)
    carry = (out, lse, k, v, aux["kv_pos"], aux["kv_seg"])
    (out, lse, *_), _ = lax.scan(step, carry, None, length=ring.num_shards)
    return out.astype(v.dtype), lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _ring(ring, q, k, v, aux, mask_consts, *consts):
    return _ring_forward(ring, q, k, v, aux, mask_consts, consts)


def _ring_fwd(ring, q, k, v, aux, mask_consts, *consts):
    out, lse = _ring_forward(ring, q, k, v, aux, mask_consts, consts)
    return (out, lse), (q, k, v, aux, mask_consts, consts, out, lse)


def _ring_bwd(ring, res, cotangents):
    q, k, v, aux, mask_consts, consts, out, lse = res
    d_out, d_lse = cotangents
    cfg = ring.cfg
    acc = cfg.acc
    # Only floating closed-over arrays are differentiated (ids and positions are not).
    is_float = tuple(jnp.issubdtype(c.dtype, jnp.inexact) for c in consts)

    def grads(k_cur, v_cur, pos_cur, seg_cur):
        # Flash's backward at the merged (out, lse): with the final log-sum-exp the block's
        # weights exp(s - lse) are the final ones, so this is its exact share of dq, dk, dv
        # (the backward ring recomputes no forward block).
        aux_r = _step_aux(ring, aux, pos_cur, seg_cur, mask_consts)
        res = (q, k_cur, v_cur, None, None, consts, aux_r, mask_consts, out, lse)
        dq, dk, dv, _, _, dconsts, _, _ = _flash._backward(cfg, res, (d_out, d_lse))
        return (dq, dk, dv) + tuple(d for d, fl in zip(dconsts, is_float, strict=True) if fl)

    float_consts = [c for c, fl in zip(consts, is_float, strict=True) if fl]

    def zero_grads(k_cur, v_cur, pos_cur, seg_cur):
        del pos_cur, seg_cur
        zeros = (jnp.zeros_like(q), jnp.zeros_like(k_cur), jnp.zeros_like(v_cur))
        return zeros + tuple(jnp.zeros_like(c) for c in float_consts)

    def step(carry, _):
        dq, dconsts, k_cur, v_cur, pos_cur, seg_cur, dk_cur, dv_cur = carry
        dq_r, dk_r, dv_r, *dc_r = lax.cond(
            _visible(cfg.is_causal, aux["q_pos"], pos_cur),
            grads,
            zero_grads,
            k_cur,
            v_cur,
            pos_cur,
            seg_cur,
        )
        dq = dq + dq_r.astype(acc)
        dk_cur = dk_cur + dk_r.astype(acc)
        dv_cur = dv_cur + dv_r.astype(acc)
        dconsts = tuple(a + g.astype(a.dtype) for a, g in zip(dconsts, dc_r, strict=True))
        k_cur, v_cur, pos_cur, seg_cur, dk_cur, dv_cur = _shift(
            ring.axis_name, ring.num_shards, k_cur, v_cur, pos_cur, seg_cur, dk_cur, dv_cur
        )
        return (dq, dconsts, k_cur, v_cur, pos_cur, seg_cur, dk_cur, dv_cur), None

    carry = (
        jnp.zeros(q.shape, acc),
        tuple(jnp.zeros(c.shape, _checks.compute_dtype(c.dtype)) for c in float_consts),
        k,
        v,
        aux["kv_pos"],
        aux["kv_seg"],
        jnp.zeros(k.shape, acc),
        jnp.zeros(v.shape, acc),
    )
    (dq, dconsts, *_, dk, dv), _ = lax.scan(step, carry, None, length=ring.num_shards)
    it = iter(dconsts)
    dconsts = tuple(
        next(it).astype(c.dtype) if fl else None for c, fl in zip(consts, is_float, strict=True)
    )
    return (
        dq.astype(q.dtype),
        dk.astype(k.dtype),
        dv.astype(v.dtype),
        None,
        None,
        *dconsts,
    )


_ring.defvjp(_ring_fwd, _ring_bwd)


def ring_block_counts(
    seq_len: int,
    num_shards: int,
    *,
    is_causal: bool = True,
    load_balance: bool = True,
    local_window_size: int | tuple[int, int] | None = None,
    block_q: int = 512,
    block_k: int = 256,
) -> np.ndarray:
    """Flash blocks each device computes in one ring pass: ``[num_shards]`` int.

    Counts, for every device and ring step, the ``block_q x block_k`` blocks of its queries
    against the held K/V shard that hold at least one visible (query, key) pair (the blocks
    flash attention visits), skipped shards counting zero. The measure of load balance.
    """
    fn = "ring_block_counts"
    seq_len = _checks.check_int(seq_len, "seq_len", fn=fn)
    num_shards = _checks.check_int(num_shards, "num_shards", fn=fn)
    if seq_len % (2 * num_shards if load_balance else num_shards):
        raise ValueError(
            f"{fn}: seq_len {seq_len} must divide into {num_shards} shards"
            + (" of two zigzag chunks" if load_balance else "")
            + "."
        )
    window = _checks.check_window(local_window_size, fn=fn)
    t = seq_len // num_shards
    bq, bk = min(block_q, t), min(block_k, t)
    counts = np.zeros(num_shards, np.int64)
    for i in range(num_shards):
        qp = np.asarray(shard_positions(i, num_shards, t, load_balance=load_balance))
        for r in range(num_shards):
            kp = np.asarray(
                shard_positions((i - r) % num_shards, num_shards, t, load_balance=load_balance)
            )
            for a in range(0, t, bq):
                q_blk = qp[a : a + bq, None]
                for c in range(0, t, bk):
                    k_blk = kp[None, c : c + bk]
                    ok = np.ones((q_blk.shape[0], k_blk.shape[1]), bool)
                    if is_causal:
                        ok &= k_blk <= q_blk
                    if window is not None:
                        ok &= (k_blk >= q_blk - window[0]) & (k_blk <= q_blk + window[1])
                    counts[i] += bool(ok.any())
    return counts


# ----------------------------------------------------------------------------------------
# Ulysses and all-gather.
# ----------------------------------------------------------------------------------------


def _gathered_positions(axis_name, t, load_balance):
    num_shards = lax.axis_size(axis_name)
    index = lax.axis_index(axis_name)
    pos = shard_positions(index, num_shards, t, load_balance=load_balance)
    return lax.all_gather(pos, axis_name, tiled=True)


def ulysses_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    axis_name: str,
    load_balance: bool = False,
    segment_ids: jax.Array | None = None,
    sinks: jax.Array | None = None,
    **options,
) -> jax.Array:
    """DeepSpeed-Ulysses attention over ``axis_name``; call inside :func:`jax.shard_map`.

    ``lax.all_to_all`` turns the sequence shards ``[B, t, N, H]`` into head shards
    ``[B, T, N / P, H]`` (K/V: ``[B, T, K / P, H]``), each device runs
    :func:`attention_jax.flash_attention` over the whole sequence for its heads (at the
    global positions of the layout), and a second ``all_to_all`` returns ``[B, t, N, H]``.
    Gradients by autodiff (the transpose of ``all_to_all`` is ``all_to_all``).

    Args:
      query, key, value: this device's shards, as :func:`ring_attention`.
      axis_name: the mesh axis of the sequence (keyword-only, static). ``N`` and ``K`` must
        be divisible by its size ``P``.
      load_balance: the shards are in the zigzag layout (only positions change).
      segment_ids: ``[B, t]`` int segment ids of this device's tokens.
      sinks: ``[N]`` sink logits (each device uses those of its heads).
      **options: the keyword options of :func:`attention_jax.flash_attention`
        (``is_causal``, ``scale``, ``local_window_size``, ``bias_fn``, ``score_mod``,
        ``mask_mod``, ``softcap``, ``block_q``, ``block_k``). ``score_mod`` and ``mask_mod``
        see global head indices, and a ``bias_fn`` output over all ``N`` heads is cut to the
        device's heads.

    Returns:
      ``[B, t, N, H]``: this device's rows of the attention output.
    """
    fn = "ulysses_attention"
    query, key, value = _check_shards(query, key, value, fn)
    p = lax.axis_size(axis_name)
    n, kh = query.shape[2], key.shape[2]
    if n % p or kh % p:
        raise ValueError(
            f"{fn}: the number of query heads N={n} and of key/value heads K={kh} must be "
            f"divisible by the size {p} of axis {axis_name!r} (each device attends with N/P "
            "heads); use ring_attention otherwise."
        )
    b, t = query.shape[:2]
    seg = _split_segments(segment_ids, fn, (b, t))

    def to_heads(x):  # [B, t, N, H] -> [B, T, N / P, H]
        return lax.all_to_all(x, axis_name, split_axis=2, concat_axis=1, tiled=True)

    pos = _gathered_positions(axis_name, t, load_balance)
    if seg is not None:
        seg = lax.all_gather(seg, axis_name, axis=1, tiled=True)
    heads, first = n // p, lax.axis_index(axis_name) * (n // p)
    if sinks is not None:
        sinks = _checks.float_array(sinks, "sinks", fn=fn)
        sinks = lax.dynamic_slice_in_dim(sinks, first, heads)
    options = _local_heads(options, first, heads, n)
    out = flash_attention(
        to_heads(query),
        to_heads(key),
        to_heads(value),
        query_positions=pos,
        key_value_positions=pos,
        segment_ids=seg,
        sinks=sinks,
        **options,
    )
    return lax.all_to_all(out, axis_name, split_axis=1, concat_axis=2, tiled=True)


def _local_heads(options: dict, first, heads: int, n: int) -> dict:
    """The user mods of a device that holds query heads ``first .. first + heads - 1``: they
    see global head indices, and a ``bias_fn`` over all ``N`` heads is cut to these."""
    options = dict(options)
    # flash_attention closure-converts the mods for its VJP, which hoists floating arrays
    # only: an integer tracer captured here would leak into the backward pass, so the
    # offset travels as a float and is cast back inside.
    first_f = jnp.asarray(first, jnp.float32)

    def offset():
        return first_f.astype(jnp.int32)

    if options.get("bias_fn") is not None:
        bias_fn = options["bias_fn"]

        def local_bias(q_pos, kv_pos):
            bias = jnp.asarray(bias_fn(q_pos, kv_pos))
            if bias.ndim >= 3 and bias.shape[-3] == n and n != heads:
                bias = lax.dynamic_slice_in_dim(bias, offset(), heads, axis=bias.ndim - 3)
            return bias

        options["bias_fn"] = local_bias
    if options.get("score_mod") is not None:
        score_mod = options["score_mod"]
        options["score_mod"] = lambda s, b, h, qi, ki: score_mod(s, b, h + offset(), qi, ki)
    if options.get("mask_mod") is not None:
        mask_mod = options["mask_mod"]
        options["mask_mod"] = lambda b, h, qi, ki: mask_mod(b, h + offset(), qi, ki)
    return options


def all_gather_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    axis_name: str,
    load_balance: bool = False,
    segment_ids: jax.Array | None = None,
    **options,
) -> jax.Array:
    """All-gather K/V over ``axis_name``, then local flash attention; call inside
    :func:`jax.shard_map`. The simple baseline of context parallelism: K/V memory O(T) per
    device, traffic ``(P - 1)`` shards of K and V per device.

    Args:
      query: ``[B, t, N, H]``, this device's shard of the sequence (``t = T / P``).
      key, value: ``[B, t, K, H]``.
      axis_name: the mesh axis the sequence is split over.
      load_balance: the shards are in the zigzag layout (:func:`zigzag_reorder`).
      segment_ids: ``[B, t]`` int, this device's shard.
      **options: options of :func:`attention_jax.flash_attention` (``is_causal``,
        ``bias_fn``, ...), applied at the true global positions.

    Returns:
      ``[B, t, N, H]``: this device's shard of the output.
    """
    fn = "all_gather_attention"
    query, key, value = _check_shards(query, key, value, fn)
    b, t = query.shape[:2]
    seg = _split_segments(segment_ids, fn, (b, t))
    num_shards = lax.axis_size(axis_name)
    q_pos = shard_positions(lax.axis_index(axis_name), num_shards, t, load_balance=load_balance)
    kv_pos = _gathered_positions(axis_name, t, load_balance)
    k = lax.all_gather(key, axis_name, axis=1, tiled=True)
    v = lax.all_gather(value, axis_name, axis=1, tiled=True)
    if seg is not None:
        seg = (seg, lax.all_gather(seg, axis_name, axis=1, tiled=True))
    return flash_attention(
        query,
        k,
        v,
        query_positions=q_pos,
        key_value_positions=kv_pos,
        segment_ids=seg,
        **options,
    )


_STRATEGIES = {
    "ring": ring_attention,
    "ulysses": ulysses_attention,
    "all_gather": all_gather_attention,
}


def _has_explicit_axes(mesh: Mesh) -> bool:
    explicit = getattr(getattr(jax.sharding, "AxisType", None), "Explicit", None)
    return explicit is not None and explicit in tuple(getattr(mesh, "axis_types", ()) or ())


def context_parallel_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    mesh: Mesh | AbstractMesh | None = None,
    axis: str = SEQUENCE_AXIS,
    batch_axis: str | None = None,
    strategy: str = "ring",
    load_balance: bool = True,
    segment_ids: jax.Array | None = None,
    **options,
) -> jax.Array:
    """Attention over global arrays with the sequence split over ``mesh.shape[axis]``.

    Reorders the sequence into the zigzag layout when ``load_balance`` (and back after),
    places tokens over ``axis`` and the batch over ``batch_axis`` when given, and runs the
    ``strategy`` under :func:`jax.shard_map`. Self-attention (``T == S``).

    Args:
      query: ``[B, T, N, H]``.
      key, value: ``[B, T, K, H]``.
      mesh: a :class:`jax.sharding.Mesh` (or the ``AbstractMesh`` of a traced program) with
        an axis named ``axis``; None: the mesh set by ``jax.set_mesh`` (how the models of
        :mod:`attention_jax.nn` call it inside a training step).
      axis: the mesh axis for the sequence (size ``P``; ``T`` divisible by ``P``, by
        ``2P`` with ``load_balance``).
      batch_axis: optional mesh axis for the batch (``B`` divisible by its size).
      strategy: ``"ring"``, ``"ulysses"`` or ``"all_gather"``.
      load_balance: use the zigzag layout (balances causal work; harmless otherwise).
      segment_ids: ``[B, T]`` int: packed sequences.
      **options: keyword options of :func:`ring_attention` / :func:`ulysses_attention`
        (``is_causal``, ``scale``, ``local_window_size``, ``bias_fn``, ``score_mod``,
        ``mask_mod``, ``softcap``, ``sinks``, ``block_q``, ``block_k``).

    Returns:
      ``[B, T, N, H]``, equal to :func:`attention_jax.flash_attention` on one device.
    """
    fn = "context_parallel_attention"
    strategy = _checks.check_choice(strategy, "strategy", CONTEXT_PARALLEL_STRATEGIES, fn=fn)
    if mesh is None:
        mesh = jax.sharding.get_abstract_mesh()
        if mesh.empty:
            raise ValueError(
                f"{fn}: mesh is None and no mesh is set: pass mesh= or call it under "
                "jax.set_mesh(mesh)."
            )
    if not isinstance(mesh, Mesh | AbstractMesh):
        raise TypeError(f"{fn}: mesh must be a jax.sharding.Mesh, got {mesh!r}.")
    for name, value_ in (("axis", axis), ("batch_axis", batch_axis)):
        if value_ is not None and value_ not in mesh.shape:
            raise ValueError(
                f"{fn}: {name} must name an axis of the mesh {dict(mesh.shape)}, got {value_!r}."
            )
    query = _checks.float_array(query, "query", fn=fn)
    key = _checks.float_array(key, "key", fn=fn)
    value = _checks.float_array(value, "value", fn=fn)
    p = mesh.shape[axis]
    t = query.shape[1] if query.ndim == 4 else None
    need = 2 * p if load_balance else p
    if t is None or key.shape[:2] != query.shape[:2] or value.shape[:2] != query.shape[:2]:
        raise ValueError(
            f"{fn}: query [B, T, N, H], key and value [B, T, K, H] must share B and T, got "
            f"{_checks.describe(query)}, {_checks.describe(key)}, {_checks.describe(value)}."
        )
    if t % need:
        raise ValueError(
            f"{fn}: the sequence length T must be divisible by "
            f"{'2 * ' if load_balance else ''}mesh.shape[{axis!r}] = {need}, got query "
            f"{_checks.describe(query)}."
        )
    if batch_axis is not None and query.shape[0] % mesh.shape[batch_axis]:
        raise ValueError(
            f"{fn}: the batch B must be divisible by mesh.shape[{batch_axis!r}] = "
            f"{mesh.shape[batch_axis]}, got query {_checks.describe(query)}."
        )
    sinks = options.pop("sinks", None)
    if segment_ids is not None:
        segment_ids = _checks.int_array(segment_ids, "segment_ids", fn=fn, shape=query.shape[:2])
    sharded = [x for x in (query, key, value, segment_ids) if x is not None]
    spec = PartitionSpec(batch_axis, axis)
    explicit = _has_explicit_axes(mesh)

    def permute(x, reorder):
        if explicit:
            # Explicit-axis meshes (jax.make_mesh's default) type every array's sharding: the
            # zigzag gather runs with the sequence unsharded and the result is resharded.
            x = jax.sharding.reshard(x, NamedSharding(mesh, PartitionSpec(batch_axis)))
        x = (zigzag_reorder if reorder else zigzag_restore)(x, p, axis=1)
        return jax.sharding.reshard(x, NamedSharding(mesh, spec)) if explicit else x

    if load_balance:
        sharded = [permute(x, True) for x in sharded]
    elif explicit:
        sharded = [jax.sharding.reshard(x, NamedSharding(mesh, spec)) for x in sharded]
    strategy_fn = _STRATEGIES[strategy]
    has_seg = segment_ids is not None

    def local(sinks, q, k, v, *seg):
        extra = {} if sinks is None else {"sinks": sinks}
        return strategy_fn(
            q,
            k,
            v,
            axis_name=axis,
            load_balance=load_balance,
            segment_ids=seg[0] if has_seg else None,
            **extra,
            **options,
        )

    in_specs = (PartitionSpec(), *(spec for _ in sharded))
    out = jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=spec, check_vma=False)(
        sinks, *sharded
    )
    return permute(out, False) if load_balance else out
