r"""FlexAttention-style ``score_mod`` and ``mask_mod`` helpers (PyTorch
``torch.nn.attention.flex_attention`` semantics).

A **score_mod** rewrites one attention logit::

    score_mod(score, batch, head, q_idx, kv_idx) -> score

and a **mask_mod** says whether one query may attend to one key (True = may attend)::

    mask_mod(batch, head, q_idx, kv_idx) -> bool

Both are written as for scalars: the attention functions (``dot_product_attention``,
``flash_attention``) apply them with ``jax.vmap`` over every index, so a mod may index
arrays it captures, e.g. ``score + table[head, q_idx - kv_idx + T - 1]``.

Index conventions:

* ``score`` is the float32 logit after scaling (``q . k * scale``), before masking and the
  normalizer;
* ``batch`` is the batch index ``b`` in ``[0, B)``;
* ``head`` is the *query* head index ``h`` in ``[0, N)`` (with grouped K/V heads, several
  query heads share a key head; mods always see the query head);
* ``q_idx`` / ``kv_idx`` are the query / key **positions** (int32 scalars): by default
  ``arange(T)`` / ``arange(S)``, otherwise the ``query_positions`` /
  ``key_value_positions`` of the call (e.g. queries at ``cache_len ..`` in cached
  decoding, global positions on a sequence shard). Helpers that index a per-token array
  (:func:`document_mask_mod`) therefore use the position as an index into it, which is the
  token's index when positions are the default ``arange``. Out-of-range reads are clamped
  by JAX (never an error), so padded rows of a block are safe to evaluate; their results
  are meaningless and masked by the caller.

Shape letters: ``B`` batch, ``N`` query heads, ``T`` queries, ``S`` keys.

Every factory here checks its arguments when it is called (shapes, dtypes and Python
values, never traced values) with the message style of :mod:`attention_jax._checks`, and
returns a plain Python closure (no ``jit`` inside) that is differentiable with respect to
the arrays it captures: a learned table closed over inside ``jax.grad`` gets its gradient.
Captured arrays may be traced (close over a ``jit`` argument). The closures use only
elementwise operations and gathers, so besides scalars they also accept index arrays that
broadcast against each other (``batch[:, None, None, None]``, ``q_idx[:, None]``, ...).

Example (a causal sliding window of 256 keys with ALiBi and a Gemma-2 logit cap)::

    import attention_jax as aj
    from attention_jax import flex

    mask_mod = flex.and_masks(flex.causal_mask_mod, flex.sliding_window_mask_mod(256))
    score_mod = flex.compose_score_mods(
        flex.alibi_score_mod(aj.alibi_slopes(num_heads)), flex.softcap_score_mod(50.0)
    )
    out = aj.dot_product_attention(q, k, v, score_mod=score_mod, mask_mod=mask_mod)

Packed documents with a prefix-LM inside each example, and a learned relative table::

    mask_mod = flex.and_masks(
        flex.document_mask_mod(segment_ids), flex.prefix_lm_mask_mod(prefix_lengths)
    )
    score_mod = flex.relative_position_score_mod(params["rel"], max_distance=64)
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from attention_jax import _checks
from attention_jax._checks import check_int, check_positive, describe, float_array, int_array
from attention_jax.positional import check_t5_config, t5_relative_position_bucket

__all__ = [
    "BlockMask",
    "create_block_mask",
    "evaluate_on_grid",
    "mask_grid_counts",
    "reads_batch_and_head",
    "MaskMod",
    "ScoreMod",
    "alibi_score_mod",
    "and_masks",
    "causal_mask_mod",
    "compose_score_mods",
    "document_mask_mod",
    "noop_mask_mod",
    "or_masks",
    "prefix_lm_mask_mod",
    "relative_position_score_mod",
    "sliding_window_mask_mod",
    "softcap_score_mod",
    "t5_score_mod",
]

ScoreMod = Callable[[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]
"""``score_mod(score, batch, head, q_idx, kv_idx) -> score``."""

MaskMod = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]
"""``mask_mod(batch, head, q_idx, kv_idx) -> bool`` (True = may attend)."""


def _check_callables(mods, name: str, *, fn: str) -> tuple:
    for i, mod in enumerate(mods):
        if not callable(mod):
            raise TypeError(f"{fn}: {name}[{i}] must be a callable, got {describe(mod)}.")
    return tuple(mods)


# -------------------------------------------------------------------------- mask mods


def noop_mask_mod(batch, head, q_idx, kv_idx) -> jax.Array:
    """Every query sees every key: always True (PyTorch's ``noop_mask``)."""
    del batch, head, kv_idx
    return jnp.ones(jnp.shape(q_idx), dtype=jnp.bool_)


def causal_mask_mod(batch, head, q_idx, kv_idx) -> jax.Array:
    r"""Causal mask as a mask_mod: a query sees keys at positions :math:`j \le i`.

    A mask_mod itself (no factory). With positions it covers cached decoding: queries at
    ``cache_len + t`` see the whole cache, as ``causal_mask(T, S, offset=S - T)``.
    """
    del batch, head
    return jnp.less_equal(kv_idx, q_idx)


def sliding_window_mask_mod(left: int, right: int = 0) -> MaskMod:
    r"""Local window: a query at :math:`i` sees keys :math:`i - \mathrm{left} \le j \le
    i + \mathrm{right}`.

    The same keys as ``local_window_size=(left, right)`` of ``dot_product_attention``; the
    default ``right=0`` is a causal window of ``left + 1`` keys.

    Args:
      left: keys before the query, an int >= 0.
      right: keys after the query, an int >= 0.

    Returns:
      mask_mod.

    Raises:
      ValueError: ``left`` or ``right`` is not an int >= 0.
    """
    fn = "sliding_window_mask_mod"
    left = check_int(left, "left", fn=fn, minimum=0)
    right = check_int(right, "right", fn=fn, minimum=0)

    def mask_mod(batch, head, q_idx, kv_idx):
        del batch, head
        return (kv_idx >= q_idx - left) & (kv_idx <= q_idx + right)

    return mask_mod


def document_mask_mod(
    segment_ids: ArrayLike, key_value_segment_ids: ArrayLike | None = None
) -> MaskMod:
    """Packed sequences: a query sees only keys of its own segment (document).

    ``segment_ids[b, q_idx] == key_value_segment_ids[b, kv_idx]``, the mask of
    ``segment_mask``. The ids are indexed at the *positions* ``q_idx`` / ``kv_idx``, which
    equal the token indices when positions are the default ``arange``.

    Args:
      segment_ids: integer ``[B, T]`` segment id of each query (``[T]``: shared by the
        batch). May be traced.
      key_value_segment_ids: integer ``[B, S]`` (or ``[S]``) id of each key; defaults to
        ``segment_ids`` (self-attention). May be traced.

    Returns:
      mask_mod.

    Raises:
      TypeError: ids not integer.
      ValueError: ids not 1-D or 2-D, or 2-D with different batch sizes.
    """
    fn = "document_mask_mod"
    q_ids = int_array(segment_ids, "segment_ids", fn=fn)
    kv_ids = q_ids if key_value_segment_ids is None else key_value_segment_ids
    kv_ids = int_array(kv_ids, "key_value_segment_ids", fn=fn)
    for name, ids, letter in (("segment_ids", q_ids, "T"), ("key_value_segment_ids", kv_ids, "S")):
        if ids.ndim not in (1, 2):
            raise ValueError(
                f"{fn}: {name} must be of shape [B, {letter}] or [{letter}], got {describe(ids)}."
            )
    if q_ids.ndim == kv_ids.ndim == 2 and q_ids.shape[0] != kv_ids.shape[0]:
        raise ValueError(
            f"{fn}: segment_ids and key_value_segment_ids must share the batch size, got "
            f"{q_ids.shape} and {kv_ids.shape}."
        )

    def take(ids, batch, idx):
        return ids[batch, idx] if ids.ndim == 2 else ids[idx]

    def mask_mod(batch, head, q_idx, kv_idx):
        del head
        return take(q_ids, batch, q_idx) == take(kv_ids, batch, kv_idx)

    return mask_mod


def prefix_lm_mask_mod(prefix_lengths: ArrayLike | int) -> MaskMod:
    r"""Prefix-LM: every query sees the whole prefix, and the rest causally.

    :math:`j < \mathrm{prefix}_b \ \lor\ j \le i` (bidirectional inside the prefix, causal
    after it; T5 / UniLM / PaLI prefix-LM).

    Args:
      prefix_lengths: a Python int >= 0 for every example, or an integer array ``[B]`` (or a
        scalar array) of prefix lengths per example. May be traced.

    Returns:
      mask_mod.

    Raises:
      ValueError: a negative or non-int Python value, or an array not of shape ``[B]``.
      TypeError: a non-integer array.
    """
    fn = "prefix_lm_mask_mod"
    if isinstance(prefix_lengths, numbers.Number):
        prefix = check_int(prefix_lengths, "prefix_lengths", fn=fn, minimum=0)
    else:
        prefix = int_array(prefix_lengths, "prefix_lengths", fn=fn)
        if prefix.ndim > 1:
            raise ValueError(
                f"{fn}: prefix_lengths must be an int >= 0 or an integer array of shape [B], "
                f"got {describe(prefix)}."
            )
    batched = getattr(prefix, "ndim", 0) == 1

    def mask_mod(batch, head, q_idx, kv_idx):
        del head
        length = prefix[batch] if batched else prefix
        return (kv_idx < length) | (kv_idx <= q_idx)

    return mask_mod


def and_masks(*mask_mods: MaskMod) -> MaskMod:
    """Intersection: allowed where every mask_mod allows (no mask_mods: always True).

    Raises:
      TypeError: an argument is not callable.
    """
    mods = _check_callables(mask_mods, "mask_mods", fn="and_masks")

    def mask_mod(batch, head, q_idx, kv_idx):
        result = noop_mask_mod(batch, head, q_idx, kv_idx)
        for mod in mods:
            result = result & mod(batch, head, q_idx, kv_idx)
        return result

    return mask_mod


def or_masks(*mask_mods: MaskMod) -> MaskMod:
    """Union: allowed where any mask_mod allows (no mask_mods: always False).

    Raises:
      TypeError: an argument is not callable.
    """
    mods = _check_callables(mask_mods, "mask_mods", fn="or_masks")

    def mask_mod(batch, head, q_idx, kv_idx):
        result = ~noop_mask_mod(batch, head, q_idx, kv_idx)
        for mod in mods:
            result = result | mod(batch, head, q_idx, kv_idx)
        return result

    return mask_mod


# ------------------------------------------------------------------------- score mods


def alibi_score_mod(slopes: ArrayLike) -> ScoreMod:
    r"""ALiBi as a score_mod: :math:`s - m_h \, |i - j|`.

    The same numbers as :func:`attention_jax.alibi_bias` added to the logits.

    Args:
      slopes: floating ``[N]`` per-head slopes, e.g. :func:`attention_jax.alibi_slopes`.
        May be traced (learned slopes get gradients).

    Returns:
      score_mod.

    Raises:
      TypeError: ``slopes`` not floating.
      ValueError: ``slopes`` not of shape ``[N]``.
    """
    fn = "alibi_score_mod"
    slopes = float_array(slopes, "slopes", fn=fn)
    if slopes.ndim != 1:
        raise ValueError(f"{fn}: slopes must be of shape [N], got {describe(slopes)}.")

    def score_mod(score, batch, head, q_idx, kv_idx):
        del batch
        return score - slopes[head] * jnp.abs(q_idx - kv_idx)

    return score_mod


def softcap_score_mod(cap: float) -> ScoreMod:
    r"""Logit soft-capping as a score_mod: :math:`c \tanh(s / c)` (Gemma 2, Grok).

    Placed last in :func:`compose_score_mods` it caps the biased logits.

    Args:
      cap: a finite Python number > 0.

    Returns:
      score_mod.

    Raises:
      ValueError: ``cap`` is not a finite number > 0.
    """
    cap = check_positive(cap, "cap", fn="softcap_score_mod")

    def score_mod(score, batch, head, q_idx, kv_idx):
        del batch, head, q_idx, kv_idx
        return cap * jnp.tanh(score / cap)

    return score_mod


def t5_score_mod(
    table: ArrayLike, *, bidirectional: bool = True, max_distance: int = 128
) -> ScoreMod:
    r"""T5 relative bias as a score_mod: :math:`s + \mathrm{table}[\mathrm{bucket}(j - i), h]`.

    Buckets of :func:`attention_jax.t5_relative_position_bucket` with ``num_buckets =
    table.shape[0]``; the same numbers as :func:`attention_jax.t5_relative_bias`.

    Args:
      table: floating ``[num_buckets, N]`` learned biases (may be traced; gets gradients).
      bidirectional: keyword-only; see :func:`attention_jax.t5_relative_position_bucket`.
      max_distance: keyword-only; distances at and beyond it share the last bucket.

    Returns:
      score_mod.

    Raises:
      TypeError: ``table`` not floating, ``bidirectional`` not a bool.
      ValueError: ``table`` not 2-D, too few buckets, or ``max_distance`` too small.
    """
    fn = "t5_score_mod"
    table = float_array(table, "table", fn=fn)
    if table.ndim != 2:
        raise ValueError(f"{fn}: table must be of shape [num_buckets, N], got {describe(table)}.")
    check_t5_config(table.shape[0], max_distance, bidirectional, fn)
    num_buckets = table.shape[0]

    def score_mod(score, batch, head, q_idx, kv_idx):
        del batch
        bucket = t5_relative_position_bucket(
            jnp.subtract(kv_idx, q_idx),
            bidirectional=bidirectional,
            num_buckets=num_buckets,
            max_distance=max_distance,
        )
        return score + table[bucket, head]

    return score_mod


def relative_position_score_mod(table: ArrayLike, *, max_distance: int) -> ScoreMod:
    r"""A learned relative-position bias, clipped (Shaw et al. 2018 style, one scalar per
    head and offset): :math:`s + \mathrm{table}[h, \mathrm{clip}(j - i, -D, D) + D]`.

    Column ``D + r`` holds the bias of a key ``r`` positions after the query; offsets beyond
    ``D = max_distance`` share the edge columns.

    Args:
      table: floating ``[N, 2 * max_distance + 1]`` (may be traced; gets gradients).
      max_distance: keyword-only int >= 0.

    Returns:
      score_mod.

    Raises:
      TypeError: ``table`` not floating.
      ValueError: ``max_distance`` not an int >= 0, or ``table`` of the wrong shape.
    """
    fn = "relative_position_score_mod"
    max_distance = check_int(max_distance, "max_distance", fn=fn, minimum=0)
    table = float_array(table, "table", fn=fn)
    width = 2 * max_distance + 1
    if table.ndim != 2 or table.shape[1] != width:
        raise ValueError(
            f"{fn}: table must be of shape [N, 2 * max_distance + 1] = [N, {width}], "
            f"got {describe(table)}."
        )

    def score_mod(score, batch, head, q_idx, kv_idx):
        del batch
        offset = jnp.clip(jnp.subtract(kv_idx, q_idx), -max_distance, max_distance)
        return score + table[head, offset + max_distance]

    return score_mod


def compose_score_mods(*score_mods: ScoreMod) -> ScoreMod:
    """Applies score_mods in order: ``compose_score_mods(f, g)`` is ``g(f(score, ...), ...)``
    (no score_mods: the identity).

    Raises:
      TypeError: an argument is not callable.
    """
    mods = _check_callables(score_mods, "score_mods", fn="compose_score_mods")

    def score_mod(score, batch, head, q_idx, kv_idx):
        for mod in mods:
            score = mod(score, batch, head, q_idx, kv_idx)
        return score

    return score_mod


# ----------------------------------------------------------------------------------------
# Evaluating mods on index grids; block masks.
# ----------------------------------------------------------------------------------------

EMPTY, PARTIAL, FULL = 0, 1, 2


def evaluate_on_grid(fn: Callable, sizes: Sequence[int], args) -> jax.Array:
    """``fn(*scalars)`` on every point of a grid of ``sizes``, by nested ``jax.vmap``.

    ``args`` is a sequence of ``(array, axes)``: ``array`` spans the grid axes ``axes``
    (ascending; ``array.shape == [sizes[a] for a in axes]``), so the scalar ``fn`` receives is
    the array's entry at the point. Nested vmaps (one per axis) let XLA see broadcasts rather
    than materialized index grids, and let ``fn`` index captured arrays as for scalars.

    Returns:
      ``fn``'s output at every point, ``sizes`` shaped.
    """
    arrays = [a for a, _ in args]
    axes = [tuple(ax) for _, ax in args]

    def level(depth, arrays, axes):
        if depth == len(sizes):
            return fn(*arrays)
        in_axes = tuple(0 if ax and ax[0] == depth else None for ax in axes)
        rest = [ax[1:] if ax and ax[0] == depth else ax for ax in axes]
        if all(a is None for a in in_axes):  # nothing varies along this axis
            out = level(depth + 1, arrays, rest)
            return jnp.broadcast_to(jnp.expand_dims(out, 0), (sizes[depth],) + out.shape)
        return jax.vmap(lambda *xs: level(depth + 1, list(xs), rest), in_axes=in_axes)(*arrays)

    return level(0, arrays, axes)


def _check_mod_output(out, name: str, fn: str, *, boolean: bool) -> None:
    if boolean and out.dtype != jnp.bool_:
        raise TypeError(
            f"{fn}: {name} must return a bool (True = may attend) for each scalar "
            f"(batch, head, q_idx, kv_idx), got {_checks.describe(out)}."
        )
    if not boolean and not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(
            f"{fn}: {name} must return a float score for each scalar score, got "
            f"{_checks.describe(out)}."
        )
    if out.shape != ():
        raise ValueError(
            f"{fn}: {name} must return one value per scalar score (written as for scalars: "
            f"the library vmaps it), got {_checks.describe(out)}."
        )


def reads_batch_and_head(mask_mod: Callable) -> tuple[bool, bool]:
    """Whether ``mask_mod(batch, head, q_idx, kv_idx)`` reads its ``batch`` and ``head``
    arguments, from its jaxpr (an argument no equation and no output uses is not read).

    A mask that reads neither (causal, windows, prefixes shared by the batch) is evaluated once
    and broadcast over batch and heads instead of once per batch element and head.
    """
    i = jnp.int32(0)
    jaxpr = jax.make_jaxpr(mask_mod)(i, i, i, i).jaxpr
    used = {id(v) for eqn in jaxpr.eqns for v in eqn.invars} | {id(v) for v in jaxpr.outvars}
    return id(jaxpr.invars[0]) in used, id(jaxpr.invars[1]) in used


def mask_grid_counts(
    reads: tuple[bool, bool], batch: int, heads: int, query_positions, key_value_positions
) -> tuple[int, int]:
    """How many batch elements and heads to evaluate a ``mask_mod`` for: all of an index it
    reads (``reads`` from :func:`reads_batch_and_head`), one (then broadcast) otherwise.
    ``[B, T]`` positions make the mask depend on the batch element whatever it reads."""
    reads_batch, reads_head = reads
    batched = query_positions.ndim == 2 or key_value_positions.ndim == 2
    return (batch if reads_batch or batched else 1), (heads if reads_head else 1)


def check_mask_mod(mask_mod, *, fn: str) -> Callable | None:
    """``mask_mod(batch, head, q_idx, kv_idx) -> bool``, checked on int32 scalars."""
    if mask_mod is None:
        return None
    if not callable(mask_mod):
        raise TypeError(f"{fn}: mask_mod must be None or a callable, got {mask_mod!r}.")
    i = jax.ShapeDtypeStruct((), jnp.int32)
    out = jax.eval_shape(mask_mod, i, i, i, i)
    _check_mod_output(out, "mask_mod", fn, boolean=True)
    return mask_mod


def check_score_mod(score_mod, *, fn: str) -> Callable | None:
    """``score_mod(score, batch, head, q_idx, kv_idx) -> score``, checked on scalars."""
    if score_mod is None:
        return None
    if not callable(score_mod):
        raise TypeError(f"{fn}: score_mod must be None or a callable, got {score_mod!r}.")
    i = jax.ShapeDtypeStruct((), jnp.int32)
    out = jax.eval_shape(score_mod, jax.ShapeDtypeStruct((), jnp.float32), i, i, i, i)
    _check_mod_output(out, "score_mod", fn, boolean=False)
    return score_mod


@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class BlockMask:
    """Which ``block_q x block_k`` blocks of the ``[q_len, kv_len]`` attention grid a
    ``mask_mod`` leaves empty, full or partial, per batch element and head.

    Made by :func:`create_block_mask`. A pytree: ``state`` is its only array leaf, the rest is
    static, so a ``BlockMask`` can be made inside ``jit`` (from traced captured arrays) or
    passed into a jitted function. ``block_mask=`` alone is enough in
    :func:`attention_jax.dot_product_attention` / :func:`attention_jax.flash_attention`: the
    flash path skips empty blocks, evaluates ``mask_mod`` only on partial ones and runs with
    the block sizes recorded here; the materialized path evaluates ``mask_mod`` on the grid.

    Attributes:
      state: int8 ``[B|1, N|1, nq, nk]``: 0 empty (skipped), 1 partial (``mask_mod``
        evaluated), 2 full (no mask evaluation), ``nq = ceil(q_len / block_q)``.
      mask_mod: ``(batch, head, q_idx, kv_idx) -> bool``.
      q_len, kv_len: the sequence lengths ``T`` and ``S`` it was made for.
      block_q, block_k: block sizes in tokens (clamped to ``q_len``/``kv_len``).
      batch_size, num_heads: ``B`` and ``N`` it was made for, or None where the mask does not
        depend on that index (broadcast over any batch / head count).
    """

    state: jax.Array
    mask_mod: Callable
    q_len: int
    kv_len: int
    block_q: int
    block_k: int
    batch_size: int | None
    num_heads: int | None

    def tree_flatten(self):
        static = (
            self.mask_mod,
            self.q_len,
            self.kv_len,
            self.block_q,
            self.block_k,
            self.batch_size,
            self.num_heads,
        )
        return (self.state,), static

    @classmethod
    def tree_unflatten(cls, static, leaves):
        return cls(leaves[0], *static)

    @property
    def shape(self) -> tuple:
        """``(B or None, N or None, q_len, kv_len)``: the grid it describes."""
        return (self.batch_size, self.num_heads, self.q_len, self.kv_len)

    def sparsity(self) -> jax.Array:
        """Fraction of blocks that are empty (skipped), over batch and heads."""
        return jnp.mean(self.state == EMPTY)

    def __repr__(self):
        return (
            f"BlockMask(shape={self.shape}, block_q={self.block_q}, block_k={self.block_k}, "
            f"state={_checks.describe(self.state)})"
        )


def _padded_positions(x, length: int, padded: int, fn: str, name: str, batch):
    if x is None:
        return jnp.arange(padded, dtype=jnp.int32)
    x = _checks.positions(x, name, fn=fn, batch=batch, length=length).astype(jnp.int32)
    if padded != length:
        widths = [(0, 0)] * (x.ndim - 1) + [(0, padded - length)]
        x = jnp.pad(x, widths, mode="edge")
    return x


def create_block_mask(
    mask_mod: Callable,
    batch_size: int | None,
    num_heads: int | None,
    q_len: int,
    kv_len: int,
    *,
    block_q: int | None = None,
    block_k: int | None = None,
    query_positions: jax.Array | None = None,
    key_value_positions: jax.Array | None = None,
) -> BlockMask:
    """Evaluates ``mask_mod`` block by block and records which blocks are empty, full or partial.

    Like PyTorch's ``create_block_mask``. The grid is walked one ``[B|1, N|1, block_q,
    block_k]`` block at a time (``lax.map``), so no ``[q_len, kv_len]`` array is ever held; jit-
    and vmap-free, it also runs inside ``jit`` with ``mask_mod`` closing over traced arrays.

    Args:
      mask_mod: ``(batch, head, q_idx, kv_idx) -> bool`` written as for scalars.
      batch_size: ``B``, or None if the mask does not depend on ``batch``.
      num_heads: ``N`` (query heads), or None if it does not depend on ``head``.
      q_len: ``T``.
      kv_len: ``S``.
      block_q, block_k: block sizes in tokens (default the flash path's
        ``DEFAULT_BLOCK_Q``/``DEFAULT_BLOCK_K``; clamped to ``T``/``S``). The flash path runs
        with these sizes when the attention call does not name others.
      query_positions: ``[T]`` or ``[B, T]`` int: the ``q_idx`` passed to ``mask_mod``
        (default ``arange(T)``), as in the attention call.
      key_value_positions: ``[S]`` or ``[B, S]`` int (default ``arange(S)``).

    Returns:
      A :class:`BlockMask` with ``state`` ``[B|1, N|1, ceil(T / block_q), ceil(S / block_k)]``.
    """
    from attention_jax.flash import DEFAULT_BLOCK_K, DEFAULT_BLOCK_Q

    fn = "create_block_mask"
    check_mask_mod(mask_mod, fn=fn)
    if batch_size is not None:
        batch_size = _checks.check_int(batch_size, "batch_size", fn=fn)
    if num_heads is not None:
        num_heads = _checks.check_int(num_heads, "num_heads", fn=fn)
    q_len = _checks.check_int(q_len, "q_len", fn=fn)
    kv_len = _checks.check_int(kv_len, "kv_len", fn=fn)
    bq = min(
        DEFAULT_BLOCK_Q if block_q is None else _checks.check_int(block_q, "block_q", fn=fn), q_len
    )
    bk = min(
        DEFAULT_BLOCK_K if block_k is None else _checks.check_int(block_k, "block_k", fn=fn), kv_len
    )
    nq, nk = -(-q_len // bq), -(-kv_len // bk)
    q_pos = _padded_positions(query_positions, q_len, nq * bq, fn, "query_positions", batch_size)
    kv_pos = _padded_positions(
        key_value_positions, kv_len, nk * bk, fn, "key_value_positions", batch_size
    )
    batched = {pos.shape[0] for pos in (q_pos, kv_pos) if pos.ndim == 2}
    if len(batched) > 1:
        raise ValueError(
            f"{fn}: query_positions and key_value_positions must share the batch size, got "
            f"{q_pos.shape[0]} and {kv_pos.shape[0]}."
        )
    if batch_size is None and batched:
        batch_size = batched.pop()  # batched positions make the mask depend on the batch
    b = batch_size or 1
    n = num_heads or 1
    # Evaluate once for the indices the mask does not read, then broadcast.
    b_eval, n_eval = mask_grid_counts(reads_batch_and_head(mask_mod), b, n, q_pos, kv_pos)
    q_blocks = q_pos.reshape(q_pos.shape[:-1] + (nq, bq))
    kv_blocks = kv_pos.reshape(kv_pos.shape[:-1] + (nk, bk))
    q_valid = (jnp.arange(nq * bq) < q_len).reshape(nq, bq)
    kv_valid = (jnp.arange(nk * bk) < kv_len).reshape(nk, bk)

    def block(i, j):
        qb = q_blocks[..., i, :]
        kb = kv_blocks[..., j, :]
        args = [
            (jnp.arange(b_eval, dtype=jnp.int32), (0,)),
            (jnp.arange(n_eval, dtype=jnp.int32), (1,)),
            (qb, (0, 2) if qb.ndim == 2 else (2,)),
            (kb, (0, 3) if kb.ndim == 2 else (3,)),
        ]
        allowed = evaluate_on_grid(mask_mod, (b_eval, n_eval, bq, bk), args)
        valid = q_valid[i][:, None] & kv_valid[j][None, :]
        some = jnp.any(allowed & valid, axis=(2, 3))
        every = jnp.all(allowed | ~valid, axis=(2, 3))
        return jnp.where(every & some, FULL, jnp.where(some, PARTIAL, EMPTY)).astype(jnp.int8)

    def row(i):
        return lax.map(lambda j: block(i, j), jnp.arange(nk))  # [nk, b, n]

    state = lax.map(row, jnp.arange(nq))  # [nq, nk, b, n]
    state = jnp.broadcast_to(jnp.transpose(state, (2, 3, 0, 1)), (b, n, nq, nk))
    return BlockMask(state, mask_mod, q_len, kv_len, bq, bk, batch_size, num_heads)
