"""Scaled dot-product attention (materialized path), additive attention and attention pooling."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from attention_jax import _checks, normalizers
from attention_jax._inputs import AttentionInputs, canonicalize_attention_inputs
from attention_jax.dispatch import select_implementation
from attention_jax.flash import flash_attention_canonical
from attention_jax.flex import (
    BlockMask,
    evaluate_on_grid,
    mask_grid_counts,
    reads_batch_and_head,
)
from attention_jax.masks import attention_mask, combine_masks

__all__ = ["dot_product_attention", "additive_attention", "attention_pool"]


def materialized_logits_and_mask(inp: AttentionInputs) -> tuple[jax.Array, jax.Array | None]:
    """The full ``[B, N, T, S]`` float32 logits and boolean mask of a canonical attention call.

    logits = softcap(scale * q k^T) + bias (+ bias_fn(query_positions, key_value_positions)).
    """
    b, t, s, n, k, h = inp.dims
    dtype = _checks.compute_dtype(inp.query.dtype)
    # Heads-major operands, [B, K, G*T, H] x [B, K, S, H] -> [B, K, G*T, S], so that the
    # product comes out in its final layout: with the einsum "btkgh,bskh->bkgts" XLA:CPU
    # computed k q^T and then transposed the whole [T, S] array (2x slower forward).
    q = inp.query.reshape(b, t, k, n // k, h).transpose(0, 2, 3, 1, 4).reshape(b, k, -1, h)
    logits = lax.dot_general(
        q,
        inp.key.transpose(0, 2, 1, 3),
        (((3,), (3,)), ((0, 1), (0, 1))),
        preferred_element_type=dtype,
    )
    logits = logits.reshape(b, n, t, s) * jnp.asarray(inp.scale, dtype)
    if inp.softcap is not None:
        logits = normalizers.softcap(logits, inp.softcap)
    if inp.bias is not None:
        logits = logits + inp.bias.astype(dtype)
    q_index, kv_index = jnp.arange(t), jnp.arange(s)
    q_pos = q_index if inp.query_positions is None else inp.query_positions
    kv_pos = kv_index if inp.key_value_positions is None else inp.key_value_positions
    q_pos, kv_pos = q_pos.astype(jnp.int32), kv_pos.astype(jnp.int32)  # as the flash path
    if inp.bias_fn is not None:
        logits = logits + jnp.asarray(inp.bias_fn(q_pos, kv_pos)).astype(dtype)

    def grid_args(batch: int, heads: int):  # batch, head, q_idx, kv_idx of the [B, N, T, S] grid
        return [
            (jnp.arange(batch, dtype=jnp.int32), (0,)),
            (jnp.arange(heads, dtype=jnp.int32), (1,)),
            (q_pos, (0, 2) if q_pos.ndim == 2 else (2,)),
            (kv_pos, (0, 3) if kv_pos.ndim == 2 else (3,)),
        ]

    if inp.score_mod is not None:
        scores = [(logits, (0, 1, 2, 3))] + grid_args(b, n)
        logits = evaluate_on_grid(inp.score_mod, logits.shape, scores).astype(dtype)
    mask_mod = None
    if inp.mask_mod is not None:
        reads = reads_batch_and_head(inp.mask_mod)
        b_eval, n_eval = mask_grid_counts(reads, b, n, q_pos, kv_pos)
        mask_mod = evaluate_on_grid(inp.mask_mod, (b_eval, n_eval, t, s), grid_args(b_eval, n_eval))
    mask = combine_masks(
        mask_mod,
        inp.mask,
        attention_mask(
            q_index,
            kv_index,
            query_positions=inp.query_positions,
            key_value_positions=inp.key_value_positions,
            is_causal=inp.is_causal,
            local_window_size=inp.local_window_size,
            query_seq_lengths=inp.query_seq_lengths,
            key_value_seq_lengths=inp.key_value_seq_lengths,
            query_segment_ids=inp.query_segment_ids,
            key_value_segment_ids=inp.key_value_segment_ids,
        ),
    )
    return logits, mask


def _materialized_attention(
    inp: AttentionInputs, *, normalizer, attention_dropout, dropout_rng
) -> tuple[jax.Array, jax.Array]:
    b, t, s, n, k, h = inp.dims
    logits, mask = materialized_logits_and_mask(inp)
    if inp.logits_head_mix is not None:
        # Talking heads (Shazeer et al. 2020): each head's logits mix those of every head.
        mix = inp.logits_head_mix.astype(logits.dtype)
        logits = jnp.einsum("bnts,nm->bmts", logits, mix)
    if mask is not None:
        mask = jnp.broadcast_to(mask, logits.shape)
    if inp.sinks is not None:
        weights = _softmax_with_sinks(logits, mask, inp.sinks)
    else:
        weights = normalizers.get_normalizer(normalizer)(logits, where=mask)
    if mask is not None:
        # Guarantees zero weight on masked keys whatever a custom normalizer returns.
        weights = jnp.where(mask, weights, 0.0)
    if inp.weights_head_mix is not None:
        mix = inp.weights_head_mix.astype(weights.dtype)
        weights = jnp.einsum("bnts,nm->bmts", weights, mix)
    if attention_dropout > 0.0:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - attention_dropout, weights.shape)
        weights = jnp.where(keep, weights / (1.0 - attention_dropout), 0.0)
    out = lax.dot_general(
        weights.reshape(b, k, -1, s),
        inp.value.astype(weights.dtype).transpose(0, 2, 1, 3),
        (((3,), (2,)), ((0, 1), (0, 1))),
    )  # [B, K, G*T, H]
    out = out.reshape(b, k, n // k, t, h).transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)
    if inp.query_seq_lengths is not None:
        # Padded query rows output zeros, as in jax.nn.dot_product_attention.
        valid = jnp.arange(t)[None, :] < inp.query_seq_lengths[:, None]
        out = jnp.where(valid[:, :, None, None], out, 0.0)
    return out.astype(inp.query.dtype), weights


def _softmax_with_sinks(logits, mask, sinks) -> jax.Array:
    """Softmax over the keys and one sink logit per head (value 0): ``[B, N, T, S]`` weights
    ``exp(l_j) / (exp(sink_h) + sum_j exp(l_j))``; a row with no allowed key gives zeros."""
    b, n, t, s = logits.shape
    sink = jnp.broadcast_to(sinks.astype(logits.dtype)[None, :, None, None], (b, n, t, 1))
    extended = jnp.concatenate([logits, sink], axis=-1)
    where = None
    if mask is not None:
        where = jnp.concatenate([mask, jnp.ones((b, n, t, 1), bool)], axis=-1)
    return normalizers.softmax(extended, where=where)[..., :s]


def _rows_with_keys(inp: AttentionInputs) -> jax.Array | None:
    """``[B|1, N|1, T]``: whether each query row may attend to at least one key (None: all).

    Analytic for the structural masks (positions are the indices here); with a dense mask the
    combined ``[.., T, S]`` boolean mask is formed once to find its empty rows.
    """
    b, t, s, _, _, _ = inp.dims
    if inp.mask is not None:
        full = combine_masks(
            inp.mask,
            attention_mask(
                jnp.arange(t),
                jnp.arange(s),
                is_causal=inp.is_causal,
                local_window_size=inp.local_window_size,
                query_seq_lengths=inp.query_seq_lengths,
                key_value_seq_lengths=inp.key_value_seq_lengths,
            ),
        )
        return jnp.any(jnp.broadcast_to(full, full.shape[:3] + (s,)), axis=-1)
    rows = jnp.arange(t)[None, :]  # [1, T]
    lo = jnp.zeros((1, t), jnp.int32)
    hi = jnp.full((1, 1), s - 1)
    valid = None
    if inp.key_value_seq_lengths is not None:
        hi = jnp.minimum(hi, inp.key_value_seq_lengths[:, None] - 1)
    if inp.local_window_size is not None:
        left, right = inp.local_window_size
        lo = jnp.maximum(lo, rows - left)
        hi = jnp.minimum(hi, rows + right)
    if inp.is_causal:
        hi = jnp.minimum(hi, rows)
    if inp.key_value_seq_lengths is not None or inp.local_window_size is not None or inp.is_causal:
        valid = lo <= hi
    if inp.query_seq_lengths is not None:
        q_valid = rows < inp.query_seq_lengths[:, None]
        valid = q_valid if valid is None else valid & q_valid
    return None if valid is None else valid[:, None, :]


def _fused_kernel_attention(inp: AttentionInputs, name: str) -> jax.Array:
    """cuDNN (through ``jax.nn``) or tokamax; rows with no visible key are set to zero, the
    convention of the other paths (the kernels may give them uniform weights)."""
    q_len, kv_len = inp.query_seq_lengths, inp.key_value_seq_lengths
    q_len = None if q_len is None else q_len.astype(jnp.int32)
    kv_len = None if kv_len is None else kv_len.astype(jnp.int32)
    if name == "cudnn":
        out = jax.nn.dot_product_attention(
            inp.query,
            inp.key,
            inp.value,
            bias=inp.bias,
            mask=inp.mask,
            scale=inp.scale,
            is_causal=inp.is_causal,
            query_seq_lengths=q_len,
            key_value_seq_lengths=kv_len,
            local_window_size=inp.local_window_size,
            implementation="cudnn",
        )
    else:
        import tokamax  # optional dependency, present when the dispatcher picked it

        out = tokamax.dot_product_attention(
            inp.query,
            inp.key,
            inp.value,
            bias=inp.bias,
            mask=inp.mask,
            scale=inp.scale,
            is_causal=inp.is_causal,
            query_seq_lengths=q_len,
            key_value_seq_lengths=kv_len,
            local_window_size=inp.local_window_size,
            logits_soft_cap=inp.softcap,
        )
    has_key = _rows_with_keys(inp)
    if has_key is not None:
        out = jnp.where(jnp.swapaxes(has_key, 1, 2)[..., None], out, 0.0)
    return out.astype(inp.query.dtype)


def dot_product_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    bias: jax.Array | None = None,
    mask: jax.Array | None = None,
    *,
    scale: float | None = None,
    is_causal: bool = False,
    query_seq_lengths: jax.Array | None = None,
    key_value_seq_lengths: jax.Array | None = None,
    local_window_size: int | tuple[int, int] | None = None,
    segment_ids: jax.Array | tuple[jax.Array, jax.Array] | None = None,
    query_positions: jax.Array | None = None,
    key_value_positions: jax.Array | None = None,
    bias_fn: Callable | None = None,
    softcap: float | None = None,
    score_mod: Callable | None = None,
    mask_mod: Callable | None = None,
    block_mask: BlockMask | None = None,
    sinks: jax.Array | None = None,
    logits_head_mix: jax.Array | None = None,
    weights_head_mix: jax.Array | None = None,
    normalizer: str | Callable = "softmax",
    attention_dropout: float = 0.0,
    dropout_rng: jax.Array | None = None,
    return_weights: bool = False,
    implementation: str | None = None,
    block_q: int | None = None,
    block_k: int | None = None,
):
    r"""Scaled dot-product attention, a drop-in superset of ``jax.nn.dot_product_attention``.

    .. math::
      \mathrm{Attention}(Q, K, V) = \mathrm{normalize}\big(\mathrm{softcap}(s\,QK^\top) + B,
      \ \mathrm{mask}\big)\,V

    Shapes (``B`` batch, ``T`` queries, ``S`` keys, ``N`` query heads, ``K`` key/value heads,
    ``H`` head dim)::

      query: [B, T, N, H]    key, value: [B, S, K, H]    (or unbatched [T, N, H], [S, K, H])

    ``N`` must be a multiple of ``K``: ``K == N`` is multi-head attention, ``1 < K < N``
    grouped-query and ``K == 1`` multi-query attention; K/V heads are shared by groups of
    ``N // K`` query heads without being repeated in memory.

    Masking follows one convention: True = may attend. All mask sources (``mask``,
    ``is_causal``, ``local_window_size``, the sequence lengths, ``segment_ids``) are combined
    with a logical AND. A query row with no allowed key gets zero weights and outputs zeros
    (``jax.nn.dot_product_attention`` gives such a row uniform weights). Logits, the
    normalizer and the accumulation run in float32 whatever the input dtype; the output has
    the input dtype.

    Args:
      query: ``[B, T, N, H]`` floating array.
      key: ``[B, S, K, H]``, same dtype as ``query``.
      value: ``[B, S, K, H]``, same dtype as ``query``.
      bias: optional additive bias broadcastable to ``[B, N, T, S]``.
      mask: optional boolean mask broadcastable to ``[B, N, T, S]``.
      scale: logit scale, default ``1 / sqrt(H)``.
      is_causal: mask keys at later positions than the query (query ``i`` sees keys
        ``j <= i``, positions aligned at the start as in jax; see ``query_positions``).
      query_seq_lengths: ``[B]`` int; query rows at index >= length are padding and output 0.
      key_value_seq_lengths: ``[B]`` int; key columns at index >= length are masked.
      local_window_size: ``(left, right)`` or int: query at position ``i`` sees keys in
        ``[i - left, i + right]``.
      segment_ids: ``[B, T]`` int (self-attention) or a pair ``([B, T], [B, S])``: queries
        only see keys with the same id (packed sequences).
      query_positions: ``[T]`` or ``[B, T]`` int positions of the queries for ``is_causal``,
        ``local_window_size`` and ``bias_fn`` (default ``arange(T)``; cached decoding passes
        ``cache_length + arange(T)``).
      key_value_positions: ``[S]`` or ``[B, S]`` int positions of the keys
        (default ``arange(S)``).
      bias_fn: optional ``(q_positions, k_positions) -> bias`` broadcastable to
        ``[B, N, t, s]`` (ALiBi, T5 relative bias). The materialized path evaluates it on the
        full grid, the flash path per block.
      softcap: optional positive float: logits become ``softcap * tanh(logits / softcap)``
        before the bias is added.
      score_mod: optional ``(score, batch, head, q_idx, kv_idx) -> score``, written as for
        scalars (FlexAttention's ``score_mod``; applied with ``jax.vmap`` over every index):
        ``score`` is the float32 logit after scaling, softcap, ``bias`` and ``bias_fn``,
        ``head`` the query head (also under GQA), ``q_idx``/``kv_idx`` the positions.
        Arrays it captures are differentiated (a learned table gets its gradient).
      mask_mod: optional ``(batch, head, q_idx, kv_idx) -> bool`` (True = may attend), written
        as for scalars and ANDed with every other mask source.
      block_mask: optional :class:`attention_jax.flex.BlockMask` from
        :func:`attention_jax.flex.create_block_mask` for this call's shapes: its
        ``mask_mod`` applies, and the flash path skips its empty blocks, evaluates the mask
        only on partial ones and runs with its block sizes.
      sinks: optional ``[N]`` float sink logits, one per query head (attention sinks as in
        gpt-oss): ``w_ij = exp(l_ij) / (exp(sinks_h) + sum_j exp(l_ij))``, so a head may give
        its weight to no key; ``sinks = 0`` is ``normalizer="softmax_one"``. Both paths; the
        gradient reaches ``sinks``. Softmax normalizer only.
      logits_head_mix, weights_head_mix: optional ``[N, N]`` talking-heads projections
        (Shazeer et al. 2020): ``logits'[m] = sum_n logits[n] P_l[n, m]`` before the
        normalizer, ``weights'[m] = sum_n weights[n] P_w[n, m]`` after it. They mix whole
        logit rows across heads: materialized path only (a forced ``"flash"`` raises).
      normalizer: ``"softmax"``, ``"softmax_one"``, ``"sparsemax"``, ``"sigmoid"`` or a
        callable ``(logits, where) -> weights``.
      attention_dropout: attention-weight dropout rate in ``[0, 1)``.
      dropout_rng: a ``jax.random`` key, required when ``attention_dropout > 0``.
      return_weights: also return the float32 weights ``[B, N, T, S]`` (materialized path);
      with dropout these are the weights actually applied (after dropout).
      implementation: None (choose; see :func:`attention_jax.select_implementation`) or a name
        from ``attention_jax.dispatch.IMPLEMENTATIONS``: ``"xla"`` (materialized),
        ``"flash"`` (:func:`attention_jax.flash_attention`, memory linear in ``T`` and
        ``S``), ``"cudnn"`` (``jax.nn.dot_product_attention``'s cuDNN kernel, NVIDIA GPUs,
        float16/bfloat16) or ``"tokamax"`` (optional extra). Every path outputs zeros for
        rows with no visible key.
      block_q, block_k: query and key block sizes of the flash path (see
        :func:`attention_jax.flash_attention`; default ``DEFAULT_BLOCK_Q``/``DEFAULT_BLOCK_K``),
        used when that path serves the call.

    Returns:
      ``[B, T, N, H]`` (``[T, N, H]`` unbatched) in the dtype of ``query``; with
      ``return_weights=True`` the pair ``(output, weights)``.

    Raises:
      TypeError, ValueError: at trace time, naming the argument and shapes (see
        :func:`attention_jax._inputs.canonicalize_attention_inputs`), for an unknown
        normalizer or implementation, or a forced implementation that cannot serve the options.
    """
    fn = "dot_product_attention"
    inp = canonicalize_attention_inputs(
        query,
        key,
        value,
        bias,
        mask,
        scale=scale,
        is_causal=is_causal,
        query_seq_lengths=query_seq_lengths,
        key_value_seq_lengths=key_value_seq_lengths,
        local_window_size=local_window_size,
        segment_ids=segment_ids,
        query_positions=query_positions,
        key_value_positions=key_value_positions,
        bias_fn=bias_fn,
        softcap=softcap,
        score_mod=score_mod,
        mask_mod=mask_mod,
        block_mask=block_mask,
        sinks=sinks,
        logits_head_mix=logits_head_mix,
        weights_head_mix=weights_head_mix,
        fn=fn,
    )
    normalizers.get_normalizer(normalizer, fn=fn)
    if sinks is not None and normalizer != "softmax":
        raise ValueError(
            f"{fn}: normalizer must be 'softmax' when sinks are given (the sink joins the "
            f"softmax denominator), got {normalizer!r}."
        )
    attention_dropout = _checks.check_rate(attention_dropout, "attention_dropout", fn=fn)
    if attention_dropout > 0.0 and dropout_rng is None:
        raise ValueError(
            f"{fn}: dropout_rng must be a jax.random key when attention_dropout > 0, got None."
        )
    selection = select_implementation(
        inp,
        implementation=implementation,
        normalizer=normalizer,
        attention_dropout=attention_dropout,
        return_weights=return_weights,
    )
    weights = None
    if selection.name == "xla":
        out, weights = _materialized_attention(
            inp, normalizer=normalizer, attention_dropout=attention_dropout, dropout_rng=dropout_rng
        )
    elif selection.name == "flash":
        out, _ = flash_attention_canonical(inp, block_q=block_q, block_k=block_k)
    elif selection.name in ("cudnn", "tokamax"):
        out = _fused_kernel_attention(inp, selection.name)
    else:  # pragma: no cover - every name in IMPLEMENTATIONS has a branch above
        raise NotImplementedError(selection.name)
    if inp.unbatched:
        out = out[0]
        weights = None if weights is None else weights[0]
    return (out, weights) if return_weights else out


def additive_attention(
    query: jax.Array,
    keys: jax.Array,
    values: jax.Array,
    params: dict[str, jax.Array],
    *,
    mask: jax.Array | None = None,
    return_weights: bool = False,
):
    r"""Additive (Bahdanau) attention: :math:`e_j = v^\top \tanh(W_q q + W_k k_j)`.

    Bahdanau, Cho & Bengio 2015. The weights are ``softmax(e)`` over the keys and the output
    is their weighted sum of ``values``.

    Args:
      query: ``[B, Dq]`` (one decoder state per example) or ``[B, T, Dq]``.
      keys: ``[B, S, Dk]``.
      values: ``[B, S, Dv]``.
      params: ``{"w_query": [Dq, A], "w_key": [Dk, A], "v": [A]}``.
      mask: optional boolean mask: ``[B, S]`` key padding (for 2-D and 3-D queries), or
        broadcastable to ``[B, T, S]`` for 3-D queries.
      return_weights: also return the weights ``[B, S]`` (``[B, T, S]``).

    Returns:
      ``[B, Dv]`` (``[B, T, Dv]``), with the weights when ``return_weights=True``.
    """
    fn = "additive_attention"
    query = _checks.float_array(query, "query", fn=fn)
    keys = _checks.float_array(keys, "keys", fn=fn)
    values = _checks.float_array(values, "values", fn=fn)
    missing = {"w_query", "w_key", "v"} - set(params)
    if missing:
        raise ValueError(
            f"{fn}: params must hold w_query, w_key and v, got {sorted(params)} "
            f"(params is missing {sorted(missing)})."
        )
    w_q, w_k, v = params["w_query"], params["w_key"], params["v"]
    if keys.ndim != 3 or values.ndim != 3 or keys.shape[:2] != values.shape[:2]:
        raise ValueError(
            f"{fn}: keys [B, S, Dk] and values [B, S, Dv] must agree on B and S, got "
            f"{keys.shape}, {values.shape}."
        )
    if query.ndim not in (2, 3) or query.shape[0] != keys.shape[0]:
        raise ValueError(
            f"{fn}: query must be [B, Dq] or [B, T, Dq] with B={keys.shape[0]}, got {query.shape}."
        )
    if w_q.shape != (query.shape[-1], v.shape[0]) or w_k.shape != (keys.shape[-1], v.shape[0]):
        raise ValueError(
            f"{fn}: params shapes w_query {w_q.shape}, w_key {w_k.shape}, v {v.shape} must fit "
            f"query {query.shape} and keys {keys.shape}."
        )
    single = query.ndim == 2
    q = query[:, None] if single else query
    # Scores in float32 (or float64) whatever the input dtype, like every other normalizer input.
    dtype = _checks.compute_dtype(query.dtype)
    q, keys_c = q.astype(dtype), keys.astype(dtype)
    w_q, w_k, v = w_q.astype(dtype), w_k.astype(dtype), v.astype(dtype)
    hidden = jnp.tanh((q @ w_q)[:, :, None, :] + (keys_c @ w_k)[:, None, :, :])  # [B, T, S, A]
    scores = hidden @ v  # [B, T, S]
    if mask is not None:
        mask = _checks.bool_array(mask, "mask", fn=fn)
        b, t, s = scores.shape
        # A 2-D mask is always key padding [B, S], also for 3-D queries: NumPy broadcasting
        # would otherwise pair its first axis with T whenever B == T.
        key_padding = single or mask.ndim == 2
        target = (b, s) if key_padding else (b, t, s)
        _checks.broadcastable(mask, "mask", target, fn=fn)
        if key_padding:
            mask = jnp.broadcast_to(mask, (b, s))[:, None]
    weights = normalizers.softmax(scores, where=mask)
    out = jnp.einsum("bts,bsd->btd", weights, values.astype(weights.dtype)).astype(values.dtype)
    if single:
        out, weights = out[:, 0], weights[:, 0]
    return (out, weights) if return_weights else out


def attention_pool(
    values: jax.Array,
    query: jax.Array,
    *,
    mask: jax.Array | None = None,
    return_weights: bool = False,
):
    r"""Attention pooling of a sequence into one vector.

    .. math::
      w = \mathrm{softmax}(X q), \qquad \mathrm{out} = \sum_s w_s X_s

    Args:
      values: ``[B, S, D]`` sequence to pool.
      query: ``[D]`` (a learned query shared by the batch) or ``[B, D]``.
      mask: optional boolean ``[B, S]``; masked positions get zero weight (a fully masked
        sequence pools to zeros).
      return_weights: also return the weights ``[B, S]``.

    Returns:
      ``[B, D]``, with the weights when ``return_weights=True``.
    """
    fn = "attention_pool"
    values = _checks.float_array(values, "values", fn=fn)
    query = _checks.float_array(query, "query", fn=fn)
    if values.ndim != 3:
        raise ValueError(f"{fn}: values must be [B, S, D], got {values.shape}.")
    b, s, d = values.shape
    if query.shape not in ((d,), (b, d)):
        raise ValueError(f"{fn}: query must be [D]=({d},) or [B, D]=({b}, {d}), got {query.shape}.")
    if mask is not None:
        mask = _checks.bool_array(mask, "mask", fn=fn)
        _checks.broadcastable(mask, "mask", (b, s), fn=fn)
    dtype = _checks.compute_dtype(values.dtype)
    query = jnp.broadcast_to(query.astype(dtype), (b, d))
    scores = jnp.einsum("bsd,bd->bs", values.astype(dtype), query)
    weights = normalizers.softmax(scores, where=mask)
    out = jnp.einsum("bs,bsd->bd", weights, values.astype(dtype)).astype(values.dtype)
    return (out, weights) if return_weights else out
