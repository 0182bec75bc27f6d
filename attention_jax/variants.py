r"""Attention variants of 2020-2025, one paper each, built on the core attention call.

* :func:`differential_attention` -- Ye et al. 2024, "Differential Transformer": the
  difference of two softmax attentions, two calls of
  :func:`attention_jax.dot_product_attention` (materialized or flash).
* :func:`forgetting_attention` -- Lin et al. 2025, "Forgetting Transformer" (FoX, ICLR):
  softmax attention with a data-dependent forget-gate decay, a ``score_mod`` of
  :func:`attention_jax.dot_product_attention` (the flash path keeps memory linear in ``T``).
* :func:`stick_breaking_attention` -- Tan et al. 2024, "Scaling Stick-Breaking Attention"
  (arXiv 2410.17980): causal attention whose weights come from stick-breaking sigmoids instead
  of a softmax, computed in log space on the materialized grid.

Shape letters: ``B`` batch, ``T`` queries, ``S`` keys, ``N`` query heads, ``K`` key/value
heads (``N % K == 0``, grouped-query attention as in ``dot_product_attention``), ``H`` head
dim. Arguments are checked at trace time with the function's name; every function composes
with ``jit``, ``vmap`` and ``grad``. Logits and weights are computed in float32 (float64 for
float64 inputs); outputs have the input dtype.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from attention_jax import _checks
from attention_jax._inputs import canonicalize_attention_inputs
from attention_jax.attention import dot_product_attention

__all__ = ["differential_attention", "forgetting_attention", "stick_breaking_attention"]


def _shapes(**arrays) -> str:
    return ", ".join(f"{name} {tuple(jnp.shape(x))}" for name, x in arrays.items())


# ----------------------------------------------------------------------------------------
# Differential attention (Ye et al. 2024).
# ----------------------------------------------------------------------------------------


def _pad_last(x: jax.Array, size: int) -> jax.Array:
    if x.shape[-1] == size:
        return x
    return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, size - x.shape[-1])])


def differential_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    lam,
    *,
    scale: float | None = None,
    is_causal: bool = False,
    query_seq_lengths: jax.Array | None = None,
    key_value_seq_lengths: jax.Array | None = None,
    local_window_size: int | tuple[int, int] | None = None,
    segment_ids: jax.Array | tuple[jax.Array, jax.Array] | None = None,
    query_positions: jax.Array | None = None,
    key_value_positions: jax.Array | None = None,
    implementation: str | None = None,
    block_q: int | None = None,
    block_k: int | None = None,
) -> jax.Array:
    r"""Differential attention (Ye et al. 2024, "Differential Transformer", arXiv 2410.05258).

    .. math::
      \mathrm{DiffAttn}(Q, K, V) = \mathrm{softmax}(s\,Q_0 K_0^\top)\,V
        - \lambda\,\mathrm{softmax}(s\,Q_1 K_1^\top)\,V, \qquad s = 1/\sqrt{H}

    Each query and key head carries two halves (the paper's :math:`Q_1, Q_2` and
    :math:`K_1, K_2`, here index 0 and 1 of the pair axis); both softmax maps weight the same
    values. The two maps are two calls of :func:`attention_jax.dot_product_attention` with the
    same masks, so ``implementation="flash"`` serves them blockwise with memory linear in
    ``T`` and ``S``. The paper's per-head GroupNorm, its ``(1 - lambda_init)`` factor and the
    re-parameterization of :math:`\lambda` belong to the module around this function.

    Shapes::

      query: [B, T, N, 2, H]   key: [B, S, K, 2, H]   value: [B, S, K, Hv]  ->  [B, T, N, Hv]
      (or unbatched [T, N, 2, H], [S, K, 2, H], [S, K, Hv] -> [T, N, Hv])

    ``Hv`` may differ from ``H`` (the paper uses ``Hv = 2 H``): the shorter of the query/key
    halves and the values is zero-padded to ``max(H, Hv)`` before each call, which leaves the
    logits unchanged (the scale stays ``1 / sqrt(H)``) and costs the compute of head dim
    ``max(H, Hv)``.

    Args:
      query: ``[B, T, N, 2, H]`` floating array.
      key: ``[B, S, K, 2, H]``, same dtype as ``query``.
      value: ``[B, S, K, Hv]``, same dtype as ``query``.
      lam: :math:`\lambda`, a float scalar or ``[N]`` (one per query head); may be traced and
        is differentiated.
      scale: logit scale, default ``1 / sqrt(H)``.
      is_causal, query_seq_lengths, key_value_seq_lengths, local_window_size, segment_ids,
        query_positions, key_value_positions: masks as in
        :func:`attention_jax.dot_product_attention`, applied to both maps.
      implementation: as in :func:`attention_jax.dot_product_attention` (``"xla"``,
        ``"flash"``, ...; None chooses).
      block_q, block_k: block sizes of the flash path, as in
        :func:`attention_jax.dot_product_attention`.

    Returns:
      ``[B, T, N, Hv]`` (``[T, N, Hv]`` unbatched) in the dtype of ``query``. The difference
      is taken in float32 from the two maps' outputs. A query row with no visible key outputs
      zeros.

    Raises:
      TypeError: non-floating query, key, value or ``lam``, mixed dtypes.
      ValueError: shapes other than above (a pair axis of size other than 2, mismatched
        batch, key/value length, heads or head dim, ``N % K != 0``), ``lam`` neither a scalar
        nor ``[N]``, and the mask arguments' checks of ``dot_product_attention``.
    """
    fn = "differential_attention"
    query = _checks.float_array(query, "query", fn=fn)
    key = _checks.float_array(key, "key", fn=fn)
    value = _checks.float_array(value, "value", fn=fn)
    shapes = _shapes(query=query, key=key, value=value)
    if (
        query.ndim not in (4, 5)
        or key.ndim != query.ndim
        or value.ndim != query.ndim - 1
        or query.shape[-2] != 2
        or key.shape[-2] != 2
    ):
        raise ValueError(
            f"{fn}: query, key and value must be of shape [B, T, N, 2, H], [B, S, K, 2, H], "
            f"[B, S, K, Hv] (or all unbatched), got {shapes}."
        )
    if value.shape[:-1] != key.shape[:-2]:
        raise ValueError(f"{fn}: value must have the [B, S, K] axes of key, got {shapes}.")
    h, hv = query.shape[-1], value.shape[-1]
    n, kh = query.shape[-3], key.shape[-3]
    if key.shape[-1] != h:
        raise ValueError(f"{fn}: key must have the head dim H={h} of query, got {shapes}.")
    if query.ndim == 5 and key.shape[0] != query.shape[0]:
        raise ValueError(
            f"{fn}: key must have the batch size B={query.shape[0]} of query, got {shapes}."
        )
    if kh == 0 or n % kh != 0:
        raise ValueError(
            f"{fn}: the number of query heads N={n} must be a multiple of the key/value heads "
            f"K={kh}, got {shapes}."
        )
    if _checks.is_real(lam):
        lam = float(lam)
    lam = _checks.float_array(lam, "lam", fn=fn)
    if lam.shape not in ((), (n,)):
        raise ValueError(
            f"{fn}: lam must be a scalar or of shape [N]=({n},), got {_checks.describe(lam)}."
        )
    width = max(h, hv)  # zero padding of the head dims leaves q . k unchanged
    q0, q1 = (_pad_last(query[..., i, :], width) for i in range(2))
    k0, k1 = (_pad_last(key[..., i, :], width) for i in range(2))
    v = _pad_last(value, width)
    if scale is None:
        scale = 1.0 / math.sqrt(h)
    options = dict(
        scale=scale,
        is_causal=is_causal,
        query_seq_lengths=query_seq_lengths,
        key_value_seq_lengths=key_value_seq_lengths,
        local_window_size=local_window_size,
        segment_ids=segment_ids,
        query_positions=query_positions,
        key_value_positions=key_value_positions,
    )
    # The dtypes and every mask argument, checked under this function's name.
    canonicalize_attention_inputs(q0, k0, v, fn=fn, **options)
    path = dict(implementation=implementation, block_q=block_q, block_k=block_k)
    out0 = dot_product_attention(q0, k0, v, **path, **options)
    out1 = dot_product_attention(q1, k1, v, **path, **options)
    acc = _checks.compute_dtype(query.dtype)
    lam = lam.astype(acc)[..., None]  # [N, 1] or [1]: broadcasts over the head dim
    out = out0.astype(acc) - lam * out1.astype(acc)
    return out[..., :hv].astype(query.dtype)


# ----------------------------------------------------------------------------------------
# Forgetting attention (Lin et al. 2025).
# ----------------------------------------------------------------------------------------


def forgetting_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    log_forget: jax.Array,
    *,
    scale: float | None = None,
    query_positions: jax.Array | None = None,
    query_seq_lengths: jax.Array | None = None,
    key_value_seq_lengths: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
    implementation: str | None = None,
    block_q: int | None = None,
    block_k: int | None = None,
) -> jax.Array:
    r"""Forgetting attention (Lin et al. 2025, "Forgetting Transformer: Softmax Attention with
    a Forget Gate", ICLR 2025): causal softmax attention with a data-dependent decay.

    .. math::
      o_i = \sum_{j \le i} \frac{\exp(s\,q_i^\top k_j + D_{ij})}
        {\sum_{j' \le i} \exp(s\,q_i^\top k_{j'} + D_{ij'})}\, v_j, \qquad
      D_{ij} = \sum_{l = j + 1}^{i} \log f_l = c_i - c_j, \quad c = \mathrm{cumsum}(\log f)

    with :math:`f_l \in (0, 1]` the forget gate of token ``l`` and query head (in FoX
    :math:`\log f_l = \log\sigma(w^\top x_l + b)`, computed by the module). The decay is a
    ``score_mod`` of :func:`attention_jax.dot_product_attention` reading the cumulative sums
    ``c`` (float32) at the query and key positions, so ``implementation="flash"`` evaluates it
    per block with memory linear in ``T``, and gradients reach ``log_forget`` through ``c`` on
    every path. With ``log_forget = 0`` this is plain causal attention.

    Self-attention: key ``j`` sits at position ``j`` and, by default, query ``i`` too
    (``T == S``); the causal mask is always on. Cached decoding passes the ``T`` new queries'
    ``query_positions`` into the ``S`` cached keys (``log_forget`` then covers the keys, and
    the gate of each new token must already be in it). With packed sequences
    (``segment_ids``) the decay between two tokens of one segment only sums gates inside it.

    Shapes::

      query: [B, T, N, H]   key, value: [B, S, K, H]   log_forget: [B, S, N]  ->  [B, T, N, H]
      (or unbatched [T, N, H], [S, K, H], [S, N] -> [T, N, H]); S == T by default

    Args:
      query: ``[B, T, N, H]`` floating array.
      key: ``[B, T, K, H]``, same dtype as ``query``.
      value: ``[B, T, K, H]``, same dtype as ``query``.
      log_forget: ``[B, S, N]`` floating, the log forget gate of each token (key position)
        and query head (expected ``<= 0``; positive values are accepted and amplify
        instead). May be traced; differentiated.
      scale: logit scale, default ``1 / sqrt(H)``.
      query_positions: optional ``[T]`` or ``[B, T]`` int positions of the queries among the
        keys (default ``arange(T)``, which needs ``T == S``): query ``t`` reads the decay sum
        up to key ``query_positions[t]`` and sees keys at positions ``<=`` it.
      query_seq_lengths, key_value_seq_lengths, segment_ids: as in
        :func:`attention_jax.dot_product_attention`.
      implementation: as in :func:`attention_jax.dot_product_attention`; paths that cannot
        apply a ``score_mod`` (cudnn, tokamax) are not chosen.
      block_q, block_k: block sizes of the flash path, as in
        :func:`attention_jax.dot_product_attention`.

    Returns:
      ``[B, T, N, H]`` (``[T, N, H]`` unbatched) in the dtype of ``query``.

    Raises:
      TypeError: non-floating inputs or ``log_forget``, mixed query/key/value dtypes.
      ValueError: ``T != S`` without ``query_positions``, ``log_forget`` not ``[B, S, N]``,
        and the checks of ``dot_product_attention``.
    """
    fn = "forgetting_attention"
    inp = canonicalize_attention_inputs(
        query,
        key,
        value,
        scale=scale,
        is_causal=True,
        query_seq_lengths=query_seq_lengths,
        key_value_seq_lengths=key_value_seq_lengths,
        segment_ids=segment_ids,
        query_positions=query_positions,
        fn=fn,
    )
    b, t, s, n, _, _ = inp.dims
    if t != s and query_positions is None:
        raise ValueError(
            f"{fn}: key and value must have the length T={t} of query (self-attention; "
            f"pass query_positions for queries among more keys), got "
            f"{_shapes(query=query, key=key, value=value)}."
        )
    log_forget = _checks.float_array(log_forget, "log_forget", fn=fn)
    want = (s, n) if inp.unbatched else (b, s, n)
    if log_forget.shape != want:
        letters = "[S, N]" if inp.unbatched else "[B, S, N]"
        raise ValueError(
            f"{fn}: log_forget must be of shape {letters}={want}, got "
            f"{_checks.describe(log_forget)}."
        )
    acc = _checks.compute_dtype(log_forget.dtype)
    c = jnp.cumsum(log_forget.astype(acc), axis=-2)  # [B, S, N]: c_j = sum_{l <= j} log f_l
    if inp.unbatched:
        c = c[None]
    # Each query's cumulative sum, read at its position: [B|1, T, N].
    if query_positions is None:
        c_query = c
    else:
        qpos = jnp.clip(inp.query_positions, 0, s - 1)
        c_query = jnp.take_along_axis(c, jnp.broadcast_to(qpos, (c.shape[0], t))[..., None], axis=1)

    def score_mod(score, batch, head, q_idx, kv_idx):
        return score + (c_query[batch, q_idx, head] - c[batch, kv_idx, head]).astype(score.dtype)

    return dot_product_attention(
        query,
        key,
        value,
        scale=scale,
        is_causal=True,
        query_seq_lengths=query_seq_lengths,
        key_value_seq_lengths=key_value_seq_lengths,
        segment_ids=segment_ids,
        query_positions=query_positions,
        score_mod=score_mod,
        implementation=implementation,
        block_q=block_q,
        block_k=block_k,
    )


# ----------------------------------------------------------------------------------------
# Stick-breaking attention (Tan et al. 2024).
# ----------------------------------------------------------------------------------------


def stick_breaking_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    scale: float | None = None,
    attend_current: bool = False,
    return_remainder: bool = False,
    query_positions: jax.Array | None = None,
    key_value_positions: jax.Array | None = None,
):
    r"""Stick-breaking attention (Tan et al. 2024, "Scaling Stick-Breaking Attention: An
    Efficient Implementation and In-depth Study", arXiv 2410.17980).

    .. math::
      \beta_{ij} = \sigma(s\,q_i^\top k_j), \qquad
      A_{ij} = \beta_{ij} \prod_{j < k < i} (1 - \beta_{ik}) \quad (j < i), \qquad
      o_i = \sum_{j < i} A_{ij}\, v_j

    Each query breaks a stick of length 1 starting from its nearest preceding key: key ``j``
    takes the fraction :math:`\beta_{ij}` of what the keys between it and the query left, so
    recent keys come first and no positional encoding is needed. Weights are nonnegative and
    each row sums to at most 1; the remainder
    :math:`1 - \sum_j A_{ij} = \prod_{j < i} (1 - \beta_{ij})` is what no key took. With
    ``attend_current=True`` the query also sees its own key: ``j <= i`` and the product runs
    over ``j < k <= i``.

    Computed in log space,
    :math:`\log A_{ij} = \log\sigma(l_{ij}) + \sum_{j<k<i} \log\sigma(-l_{ik})` with the sum a
    reverse cumulative sum over keys, so outputs and gradients stay finite for logits of any
    finite size (``+-1e4`` included). Materialized path only: the float32 ``[B, N, T, S]``
    logits are formed in full (no flash path). Causal self-attention: by default ``T == S``
    and query ``i`` sits at key position ``i``; cached decoding passes the new queries'
    ``query_positions`` among ``S`` cached keys ("before" then compares positions, and the
    key order is the order of the key positions, which must increase along ``S``).

    Shapes::

      query: [B, T, N, H]   key, value: [B, S, K, H]  ->  [B, T, N, H] (and remainder [B, N, T])
      (or unbatched [T, N, H], [S, K, H] -> [T, N, H] (and [N, T])); S == T by default

    Args:
      query: ``[B, T, N, H]`` floating array.
      key: ``[B, T, K, H]``, same dtype as ``query`` (``N % K == 0``).
      value: ``[B, T, K, H]``, same dtype as ``query``.
      scale: logit scale, default ``1 / sqrt(H)``.
      attend_current: let query ``i`` attend to key ``i`` (default False, the paper's form:
        the first query then attends to nothing, outputs zeros and keeps the remainder 1).
      return_remainder: also return ``1 - sum_j A_ij``.
      query_positions: optional ``[T]`` or ``[B, T]`` int positions of the queries (default
        ``arange(T)``, which needs ``T == S``).
      key_value_positions: optional ``[S]`` or ``[B, S]`` increasing int positions of the
        keys (default ``arange(S)``).

    Returns:
      ``[B, T, N, H]`` (``[T, N, H]`` unbatched) in the dtype of ``query``; with
      ``return_remainder=True`` the pair ``(output, remainder)``, the remainder ``[B, N, T]``
      (``[N, T]``) in float32 (float64 for float64 inputs), computed as the product above.

    Raises:
      TypeError: non-floating inputs, mixed dtypes.
      ValueError: ``T != S`` without ``query_positions``, and the shape checks of
        ``dot_product_attention``.
    """
    fn = "stick_breaking_attention"
    inp = canonicalize_attention_inputs(
        query,
        key,
        value,
        scale=scale,
        query_positions=query_positions,
        key_value_positions=key_value_positions,
        fn=fn,
    )
    b, t, s, n, kh, h = inp.dims
    if t != s and query_positions is None:
        raise ValueError(
            f"{fn}: key and value must have the length T={t} of query (causal "
            f"self-attention; pass query_positions for queries among more keys), got "
            f"{_shapes(query=query, key=key, value=value)}."
        )
    acc = _checks.compute_dtype(inp.query.dtype)
    g = n // kh
    q = inp.query.reshape(b, t, kh, g, h)
    logits = jnp.einsum("btkgh,bskh->bkgts", q, inp.key, preferred_element_type=acc)
    logits = logits.reshape(b, n, t, s) * jnp.asarray(inp.scale, acc)
    q_pos = jnp.arange(t) if inp.query_positions is None else inp.query_positions
    k_pos = jnp.arange(s) if inp.key_value_positions is None else inp.key_value_positions
    rows = q_pos[..., :, None]  # [T, 1] or [B, T, 1]
    cols = k_pos[..., None, :]  # [1, S] or [B, 1, S]
    allowed = cols <= rows if attend_current else cols < rows  # [B|1?, T, S]
    if allowed.ndim == 3:
        allowed = allowed[:, None]  # [B, 1, T, S] against the [B, N, T, S] logits
    log_keep = jnp.where(allowed, jax.nn.log_sigmoid(-logits), 0.0)  # log(1 - beta_ik)
    # after[i, j] = sum_{k > j, allowed} log(1 - beta_ik): an exclusive reverse cumulative sum,
    # taken as the inclusive one shifted by a key (no subtraction, no cancellation).
    inclusive = jnp.flip(jnp.cumsum(jnp.flip(log_keep, -1), axis=-1), -1)
    after = jnp.concatenate([inclusive[..., 1:], jnp.zeros_like(inclusive[..., :1])], axis=-1)
    log_weights = jax.nn.log_sigmoid(logits) + after  # <= 0 everywhere: exp cannot overflow
    weights = jnp.where(allowed, jnp.exp(log_weights), 0.0)
    out = jnp.einsum(
        "bkgts,bskh->btkgh",
        weights.reshape(b, kh, g, t, s),
        inp.value.astype(acc),
    ).reshape(b, t, n, h)
    out = out.astype(inp.query.dtype)
    remainder = jnp.exp(inclusive[..., 0])  # prod over every allowed key of (1 - beta_ik)
    if inp.unbatched:
        out, remainder = out[0], remainder[0]
    return (out, remainder) if return_remainder else out
