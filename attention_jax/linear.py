r"""Linear attention and its gated and delta-rule descendants, chunked and recurrent.

* :func:`linear_attention` -- Katharopoulos et al. 2020, "Transformers are RNNs": causal
  attention with a feature map :math:`\phi` in place of the softmax kernel, optionally
  normalized; feature maps elu+1, ReLU, identity, the 2nd-order Taylor map of Based (Arora et
  al. 2024) and Performer's positive random features (FAVOR+, Choromanski et al. 2021).
* :func:`gated_linear_attention` -- linear attention with a data-dependent decay of the
  state: one scalar per head and token (RetNet, Sun et al. 2023; Mamba-2, Dao & Gu 2024) or
  one per key dimension (GLA, Yang et al. 2024, "Gated Linear Attention Transformers with
  Hardware-Efficient Training").
* :func:`delta_rule_attention` -- DeltaNet (Schlag et al. 2021; Yang et al. 2024,
  "Parallelizing Linear Transformers with the Delta Rule over Sequence Length") and, with a
  decay, Gated DeltaNet (Yang, Kautz & Hatamizadeh 2024), trained chunkwise with the WY/UT
  representation.
* :func:`favor_projection` -- the random projection of FAVOR+.

Every function is causal and keeps a state ``S`` of shape ``[H_k, H_v]`` per query head (the
state tensor is ``[B, N, H_k, H_v]``). They compute in the *chunkwise-parallel* form: the
sequence is cut into chunks of ``chunk_size`` tokens; inside a chunk the outputs are a masked
``[C, C]`` product as in softmax attention, across chunks the state is carried by
``lax.scan``. ``chunk_size=1`` is the pure recurrence. ``T`` need not be a multiple of
``chunk_size`` (the tail chunk is zero-padded internally, which leaves outputs and states
unchanged). Memory is linear in ``T``: the largest intermediates are ``[T/C, C, C]`` per head
(``[T/C, H_k, H_v]`` for the states at the chunk boundaries), and gradients are the autodiff of
the chunked form. ``initial_state`` continues from a previous call and ``return_state=True``
also returns the final state, so a long sequence can be processed in pieces (or decoded one
token at a time with ``T = 1``).

Shape letters: ``B`` batch, ``T`` length, ``N`` query heads, ``K`` key/value heads
(``N % K == 0``: grouped-query attention, query head ``n`` reads key/value head
``n // (N // K)``; the state and the decays stay per query head), ``H_k`` query/key head dim,
``H_v`` value head dim, ``C`` chunk size. Arguments are checked at trace time with the
function's name; every function composes with ``jit``, ``vmap`` and ``grad``. States and
intra-chunk products are computed in float32 (float64 for float64 inputs); outputs have the
input dtype, states the compute dtype.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from attention_jax import _checks

__all__ = [
    "FEATURE_MAPS",
    "delta_rule_attention",
    "favor_projection",
    "gated_linear_attention",
    "linear_attention",
    "short_convolution",
]

FEATURE_MAPS = ("elu1", "relu", "identity", "taylor", "favor")
"""The named feature maps of :func:`linear_attention` (a callable is accepted too)."""

# Largest sub-chunk of the per-dimension decay (GLA): the diagonal blocks of this size are
# computed exactly ([c, c, H_k] per block), the rest through a factorization that is stable
# for decays <= 1 (as fla's secondary chunking).
_GLA_SUB_CHUNK = 16


# ----------------------------------------------------------------------------------------
# Argument checks and layout.
# ----------------------------------------------------------------------------------------


def _shapes(**arrays) -> str:
    return ", ".join(f"{name} {tuple(jnp.shape(x))}" for name, x in arrays.items())


def _check_qkv(fn: str, query, key, value):
    """Floating ``[B, T, N, H_k]``, ``[B, T, K, H_k]``, ``[B, T, K, H_v]`` of one dtype."""
    query = _checks.float_array(query, "query", fn=fn)
    key = _checks.float_array(key, "key", fn=fn)
    value = _checks.float_array(value, "value", fn=fn)
    shapes = _shapes(query=query, key=key, value=value)
    if not query.ndim == key.ndim == value.ndim == 4:
        raise ValueError(
            f"{fn}: query, key and value must be of shape [B, T, N, H_k], [B, T, K, H_k], "
            f"[B, T, K, H_v], got {shapes}."
        )
    if not query.dtype == key.dtype == value.dtype:
        raise TypeError(
            f"{fn}: query, key and value must share a dtype, got {query.dtype}, {key.dtype}, "
            f"{value.dtype}."
        )
    b, t, n, hk = query.shape
    if key.shape[:2] != (b, t):
        raise ValueError(
            f"{fn}: key must have the batch size B={b} and length T={t} of query, got {shapes}."
        )
    if key.shape[3] != hk:
        raise ValueError(f"{fn}: key must have the head dim H_k={hk} of query, got {shapes}.")
    if value.shape[:3] != key.shape[:3]:
        raise ValueError(f"{fn}: value must have the [B, T, K] axes of key, got {shapes}.")
    kh = key.shape[2]
    if kh == 0 or n % kh != 0:
        raise ValueError(
            f"{fn}: the number of query heads N={n} must be a multiple of the key/value heads "
            f"K={kh}, got {shapes}."
        )
    return query, key, value


def _check_per_token(x, name: str, want: tuple, letters: str, *, fn: str) -> jax.Array:
    x = _checks.float_array(x, name, fn=fn)
    if x.shape != want:
        raise ValueError(
            f"{fn}: {name} must be of shape {letters}={want}, got {_checks.describe(x)}."
        )
    return x


def _check_log_decay(log_decay, b, t, n, hk, *, fn: str, per_dim_ok: bool) -> jax.Array:
    log_decay = _checks.float_array(log_decay, "log_decay", fn=fn)
    ok = log_decay.shape == (b, t, n) or (per_dim_ok and log_decay.shape == (b, t, n, hk))
    if not ok:
        rule = f"of shape [B, T, N]={(b, t, n)}"
        if per_dim_ok:
            rule += f" or [B, T, N, H_k]={(b, t, n, hk)}"
        raise ValueError(f"{fn}: log_decay must be {rule}, got {_checks.describe(log_decay)}.")
    return log_decay


def _check_state(state, want: tuple, letters: str, *, fn: str, name: str = "initial_state"):
    state = _checks.float_array(state, name, fn=fn)
    if state.shape != want:
        raise ValueError(
            f"{fn}: {name} must be of shape {letters}={want}, got {_checks.describe(state)}."
        )
    return state


def _check_scale(scale, hk: int, *, fn: str) -> float:
    scale = _checks.check_positive(scale, "scale", fn=fn, allow_none=True)
    return 1.0 / math.sqrt(hk) if scale is None else scale


def _check_flags(fn: str, chunk_size, return_state) -> int:
    chunk_size = _checks.check_int(chunk_size, "chunk_size", fn=fn)
    if not isinstance(return_state, bool):
        raise TypeError(f"{fn}: return_state must be a bool, got {_checks.describe(return_state)}.")
    return chunk_size


def _chunked(x: jax.Array, c: int) -> jax.Array:
    """``[B, T, N, ...]`` -> ``[T'/C, B, N, C, ...]`` (chunk-major for ``lax.scan``), zero-padded
    along ``T`` to ``T' = C * ceil(T / C)``."""
    b, t = x.shape[:2]
    pad = -t % c
    if pad:
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    x = x.reshape(b, (t + pad) // c, c, *x.shape[2:])
    return jnp.transpose(x, (1, 0, 3, 2, *range(4, x.ndim)))


def _unchunked(x: jax.Array, t: int) -> jax.Array:
    """``[T'/C, B, N, C, H]`` -> ``[B, T, N, H]``."""
    nc, b, n, c, h = x.shape
    return jnp.transpose(x, (1, 0, 3, 2, 4)).reshape(b, nc * c, n, h)[:, :t]


def _repeat_heads(x: jax.Array, groups: int) -> jax.Array:
    """Key/value heads ``[B, T, K, ...]`` -> ``[B, T, N, ...]``, head ``n`` reading ``n // groups``."""
    return x if groups == 1 else jnp.repeat(x, groups, axis=2)


def _tril(c: int, k: int = 0) -> jax.Array:
    return jnp.tril(jnp.ones((c, c), bool), k)


def _masked_exp(x: jax.Array, mask: jax.Array) -> jax.Array:
    """``exp(x)`` where ``mask``, 0 elsewhere, with finite gradients for masked entries."""
    return jnp.where(mask, jnp.exp(jnp.where(mask, x, 0.0)), 0.0)


def _scan_states(s0, decay, kv):
    """States at the start of every chunk and after the last one.

    ``s0 [B, N, D, E]``; ``decay`` None (no decay), ``[nc, B, N]`` or ``[nc, B, N, D]`` (the
    chunk's total decay); ``kv [nc, B, N, D, E]`` (the chunk's contribution). ``S_{c+1} =
    decay_c * S_c + kv_c``. Returns ``([nc, B, N, D, E], [B, N, D, E])``.
    """

    def step(s, xs):
        d, u = xs
        if d is not None:
            s_next = (d[..., None, None] if d.ndim == s.ndim - 2 else d[..., None]) * s + u
        else:
            s_next = s + u
        return s_next, s

    if kv.shape[0] == 1:  # one chunk: no loop, and an unused final state is dead code
        final, start = step(s0, (None if decay is None else decay[0], kv[0]))
        return start[None], final
    final, starts = jax.lax.scan(step, s0, (decay, kv))
    return starts, final


# ----------------------------------------------------------------------------------------
# Feature maps.
# ----------------------------------------------------------------------------------------


def favor_projection(
    rng: jax.Array, num_features: int, head_dim: int, *, orthogonal: bool = True
) -> jax.Array:
    r"""The random projection :math:`W` of FAVOR+ (Choromanski et al. 2021, "Rethinking
    Attention with Performers"), for ``feature_map="favor"`` of :func:`linear_attention`.

    Rows :math:`w_i \sim \mathcal N(0, I_{H})`. With ``orthogonal=True`` (the paper's ORF),
    the rows come in blocks of ``head_dim`` mutually orthogonal directions (QR of a Gaussian
    matrix), each rescaled to the norm of an independent Gaussian vector, so that every row
    still has the marginal law of :math:`\mathcal N(0, I_H)`.

    Args:
      rng: a PRNG key (``jax.random.key`` or ``jax.random.PRNGKey``).
      num_features: ``M``, the number of random features (int >= 1).
      head_dim: ``H``, the query/key head dim (int >= 1).
      orthogonal: orthogonal random features (default) or i.i.d. Gaussian rows.

    Returns:
      ``[M, H]`` float32.

    Raises:
      ValueError: ``num_features`` or ``head_dim`` not an int >= 1.
    """
    fn = "favor_projection"
    m = _checks.check_int(num_features, "num_features", fn=fn)
    h = _checks.check_int(head_dim, "head_dim", fn=fn)
    if not orthogonal:
        return jax.random.normal(rng, (m, h), jnp.float32)
    blocks = -(-m // h)
    k_dirs, k_norms = jax.random.split(rng)
    gauss = jax.random.normal(k_dirs, (blocks, h, h), jnp.float32)
    q, _ = jnp.linalg.qr(gauss)  # [blocks, H, H], orthonormal columns
    dirs = jnp.swapaxes(q, -1, -2).reshape(blocks * h, h)[:m]
    norms = jnp.linalg.norm(jax.random.normal(k_norms, (m, h), jnp.float32), axis=-1)
    return dirs * norms[:, None]


def _taylor(x: jax.Array) -> jax.Array:
    """Based's 2nd-order Taylor map: ``phi(q) . phi(k) = 1 + s + s^2 / 2``, ``s = q.k/sqrt(d)``."""
    d = x.shape[-1]
    one = jnp.ones(x.shape[:-1] + (1,), x.dtype)
    # The pairs i < j in row-major order, as slices (indexing would gather, and scatter in
    # the backward pass).
    pairs = [x[..., i : i + 1] * x[..., i + 1 :] for i in range(d - 1)]
    return jnp.concatenate(
        [one, x / d**0.25, x * x / math.sqrt(2.0 * d), *(p / math.sqrt(d) for p in pairs)],
        axis=-1,
    )


def _taylor_kernel(qk: jax.Array, head_dim: int) -> jax.Array:
    """``phi(q) . phi(k)`` of :func:`_taylor` from ``qk = q . k``: ``1 + s + s^2 / 2`` with
    ``s = q . k / sqrt(H_k)``."""
    s = qk / math.sqrt(head_dim)
    return 1.0 + s + 0.5 * s * s


def _favor(x: jax.Array, projection: jax.Array) -> jax.Array:
    """``exp(W x' - |x'|^2 / 2) / sqrt(M)`` with ``x' = x / H^(1/4)``."""
    m, d = projection.shape
    x = x / d**0.25
    wx = jnp.einsum("...d,md->...m", x, projection.astype(x.dtype))
    return jnp.exp(wx - 0.5 * jnp.sum(x * x, axis=-1, keepdims=True)) / math.sqrt(m)


def _feature_map(fn, feature_map, hk, projection, rng, num_features) -> Callable:
    if feature_map != "favor":
        for name, value in (
            ("projection", projection),
            ("rng", rng),
            ("num_features", num_features),
        ):
            if value is not None:
                raise ValueError(
                    f"{fn}: {name} must be None unless feature_map='favor', got "
                    f"{_checks.describe(value)}."
                )
    if callable(feature_map):
        return feature_map
    if feature_map == "elu1":
        return lambda x: jax.nn.elu(x) + 1.0
    if feature_map == "relu":
        return jax.nn.relu
    if feature_map == "identity":
        return lambda x: x
    if feature_map == "taylor":
        return _taylor
    # favor
    if (projection is None) == (rng is None):
        raise ValueError(
            f"{fn}: exactly one of projection (an [M, H_k] array) and rng (a PRNG key) must "
            f"be given for feature_map='favor', got projection {_checks.describe(projection)}, "
            f"rng {_checks.describe(rng)}."
        )
    if projection is not None:
        if num_features is not None:
            raise ValueError(
                f"{fn}: num_features must be None when projection is given, got "
                f"{_checks.describe(num_features)}."
            )
        projection = _checks.float_array(projection, "projection", fn=fn)
        if projection.ndim != 2 or projection.shape[1] != hk or projection.shape[0] < 1:
            raise ValueError(
                f"{fn}: projection must be of shape [M, H_k] with H_k={hk}, got "
                f"{_checks.describe(projection)}."
            )
    else:
        if num_features is None:
            num_features = max(1, int(hk * math.log(hk)))
        num_features = _checks.check_int(num_features, "num_features", fn=fn)
        projection = favor_projection(rng, num_features, hk)
    return lambda x: _favor(x, projection)


# ----------------------------------------------------------------------------------------
# Linear attention (Katharopoulos et al. 2020) and gated linear attention.
# ----------------------------------------------------------------------------------------


def _gla_intra_per_dim(q: jax.Array, k: jax.Array, b: jax.Array) -> jax.Array:
    """``A[t, s] = sum_d q_td k_sd exp(b_td - b_sd)`` for ``s <= t``, else 0.

    ``q, k, b: [..., C, D]`` (``b`` the inclusive cumulative log decay inside the chunk);
    returns ``[..., C, C]``. Sub-chunks of ``c`` tokens: their diagonal blocks exactly
    (``[c, c, D]`` each), the blocks below them as one product of ``q_t exp(b_t - r_i)`` and
    ``k_s exp(r_i - b_s)``, with ``r_i`` the cumulative decay just before query sub-chunk
    ``i``: both factors are <= 1 for decays <= 1, so nothing overflows.
    """
    big_c, d = q.shape[-2:]
    c = max(x for x in range(1, min(_GLA_SUB_CHUNK, big_c) + 1) if big_c % x == 0)
    m = big_c // c
    lead = q.shape[:-2]
    qs, ks, bs = (x.reshape(*lead, m, c, d) for x in (q, k, b))
    # Diagonal blocks: [..., m, c, c, D].
    tri = _tril(c)[:, :, None]
    w = _masked_exp(bs[..., :, None, :] - bs[..., None, :, :], tri)
    a_diag = jnp.einsum("...td,...sd,...tsd->...ts", qs, ks, w)  # [..., m, c, c]
    # Blocks below the diagonal: keys s before sub-chunk i, reference r_i = b at i*c - 1.
    ref = jnp.concatenate([jnp.zeros_like(bs[..., :1, 0, :]), bs[..., :-1, -1, :]], axis=-2)
    q_off = qs * jnp.exp(bs - ref[..., None, :])  # [..., m, c, D]
    before = (jnp.arange(big_c)[None, :] < (jnp.arange(m) * c)[:, None])[:, :, None]  # [m, C, 1]
    k_off = k[..., None, :, :] * _masked_exp(ref[..., :, None, :] - b[..., None, :, :], before)
    a_off = jnp.einsum("...itd,...isd->...its", q_off, k_off)  # [..., m, c, C]
    # Place the diagonal blocks: a[i, t, j, s] += (i == j) a_diag[i, t, s].
    eye = jnp.eye(m, dtype=a_off.dtype)[:, None, :, None]
    a = a_off.reshape(*lead, m, c, m, c) + eye * a_diag[..., :, :, None, :]
    return a.reshape(*lead, big_c, big_c)


def _linear_core(q, k, v, log_decay, s0, c: int, *, kernel=None, zero_start: bool = False):
    """Chunked ``S_t = a_t S_{t-1} + k_t v_t^T``, ``o_t = q_t^T S_t`` (``a_t = exp(log_decay_t)``,
    1 when ``log_decay`` is None).

    ``q, k: [B, T, N, D]``, ``v: [B, T, N, E]`` (heads already repeated), ``log_decay``
    None, ``[B, T, N]`` or ``[B, T, N, D]``, ``s0: [B, N, D, E]``, all in the compute dtype.
    ``kernel``: None, or ``(q_raw, k_raw, fn)`` (no decay only) with ``q . k = fn(q_raw .
    k_raw)`` for the feature-mapped ``q, k``: the scores inside a chunk then cost ``H_k``
    instead of ``D`` per pair (the Taylor map: ``D = 153`` features of ``H_k = 16``).
    ``zero_start``: ``s0`` is zeros (no initial state), so the first chunk skips the
    inter-chunk product (a sequence of one chunk then never reads ``q`` past the kernel).
    Returns ``o [B, T, N, E]`` and the final state ``[B, N, D, E]``.
    """
    t = q.shape[1]
    qc, kc, vc = _chunked(q, c), _chunked(k, c), _chunked(v, c)  # [nc, B, N, C, *]
    incl = _tril(c)
    if log_decay is None:
        if kernel is None:
            scores = jnp.einsum("...td,...sd->...ts", qc, kc)
        else:
            q_raw, k_raw, fn = kernel
            scores = fn(jnp.einsum("...td,...sd->...ts", _chunked(q_raw, c), _chunked(k_raw, c)))
        a = jnp.where(incl, scores, 0.0)
        kv = jnp.einsum("...sd,...se->...de", kc, vc)
        starts, final = _scan_states(s0, None, kv)
        q_inter = qc
    else:
        # Inclusive cumulative log decay inside each chunk (padded tokens: log decay 0).
        bc = jnp.cumsum(_chunked(log_decay, c), axis=3)  # [nc, B, N, C] or [nc, B, N, C, D]
        last = bc[:, :, :, -1]  # [nc, B, N] or [nc, B, N, D]
        if log_decay.ndim == 3:
            gamma = _masked_exp(bc[..., :, None] - bc[..., None, :], incl)
            a = jnp.einsum("...td,...sd->...ts", qc, kc) * gamma
            k_state = kc * jnp.exp(last[..., None] - bc)[..., None]
            q_inter = qc * jnp.exp(bc)[..., None]
        else:
            # [C, C, D] per block would be the naive form; recomputed in the backward pass,
            # one chunk at a time, so that memory stays [T/C, C, C].
            intra = jax.checkpoint(_gla_intra_per_dim)
            a = jax.lax.map(lambda x: intra(*x), (qc, kc, bc))
            k_state = kc * jnp.exp(last[..., None, :] - bc)
            q_inter = qc * jnp.exp(bc)
        kv = jnp.einsum("...sd,...se->...de", k_state, vc)
        starts, final = _scan_states(s0, jnp.exp(last), kv)
    out = jnp.einsum("...ts,...se->...te", a, vc)
    if zero_start:  # the first chunk starts from a zero state: no inter-chunk term there
        inter = jnp.einsum("...td,...de->...te", q_inter[1:], starts[1:])
        out = out + jnp.pad(inter, [(1, 0)] + [(0, 0)] * (inter.ndim - 1))
    else:
        out = out + jnp.einsum("...td,...de->...te", q_inter, starts)
    return _unchunked(out, t), final


def linear_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    feature_map: str | Callable = "elu1",
    normalize: bool = True,
    chunk_size: int = 64,
    initial_state=None,
    return_state: bool = False,
    projection: jax.Array | None = None,
    rng: jax.Array | None = None,
    num_features: int | None = None,
    eps: float = 1e-6,
):
    r"""Causal linear attention (Katharopoulos et al. 2020, "Transformers are RNNs: Fast
    Autoregressive Transformers with Linear Attention", ICML).

    .. math::
      S_t = S_{t-1} + \phi(k_t)\,v_t^\top, \qquad z_t = z_{t-1} + \phi(k_t), \qquad
      o_t = \frac{S_t^\top \phi(q_t)}{\phi(q_t)^\top z_t + \varepsilon}
      \quad\text{(or } o_t = S_t^\top \phi(q_t) \text{ when not normalized)}

    with :math:`S_0, z_0` zero or ``initial_state``. No further scale is applied to the
    queries (the Taylor and FAVOR+ maps carry their own :math:`1/\sqrt{H_k}`; scale the inputs
    beforehand for another). Feature maps, each applied to query and key alike:

    * ``"elu1"``: :math:`\mathrm{elu}(x) + 1` (Katharopoulos et al.); ``F = H_k``.
    * ``"relu"``: :math:`\max(x, 0)`; ``F = H_k``.
    * ``"identity"``: :math:`x`; ``F = H_k`` (unnormalized linear attention; with
      ``normalize=True`` the denominator may vanish or change sign).
    * ``"taylor"``: Based (Arora et al. 2024, "Simple linear attention language models
      balance the recall-throughput tradeoff"), the 2nd-order Taylor expansion of
      :math:`\exp(q^\top k / \sqrt{H_k})`:
      :math:`\phi(x) = [1,\ x / H_k^{1/4},\ x_i^2 / \sqrt{2 H_k}\ (i),\
      x_i x_j / \sqrt{H_k}\ (i < j)]` so that
      :math:`\phi(q)^\top\phi(k) = 1 + s + s^2/2`, :math:`s = q^\top k/\sqrt{H_k}` (the
      layout of flash-linear-attention's ``TaylorFeatureMap``);
      ``F = 1 + H_k + H_k (H_k + 1) / 2`` (153 for ``H_k = 16``, Based's feature dim).
      Inside a chunk the scores come from that kernel on :math:`q^\top k` (``H_k`` per pair,
      not ``F``; Based's parallel form); the features only build the state, so a large
      ``chunk_size`` (up to ``T``: no state to carry) is the fast choice for short sequences.
    * ``"favor"``: Performer's positive random features (FAVOR+, Choromanski et al. 2021):
      :math:`\phi(x) = \exp(W x' - \|x'\|^2/2) / \sqrt{M}`, :math:`x' = x / H_k^{1/4}`, an
      unbiased estimate of :math:`\exp(q^\top k/\sqrt{H_k})`; ``F = M``. ``W [M, H_k]`` is
      ``projection``, or is drawn from ``rng`` by :func:`favor_projection` (orthogonal
      features, ``M = num_features``, default :math:`\lfloor H_k \ln H_k \rfloor`). No
      max-subtraction stabilizer: very large ``|x|`` overflows.
    * a callable ``phi(x)``: ``[B, T, heads, H_k]`` -> ``[B, T, heads, F]`` in the compute
      dtype, applied to the queries and the keys (``heads`` is ``N``, then ``K``).

    Shapes::

      query: [B, T, N, H_k]   key: [B, T, K, H_k]   value: [B, T, K, H_v]  ->  [B, T, N, H_v]
      state: S [B, N, F, H_v]  (normalize=False)   or   (S [B, N, F, H_v], z [B, N, F])

    Args:
      query: ``[B, T, N, H_k]`` floating array.
      key: ``[B, T, K, H_k]``, same dtype as ``query``.
      value: ``[B, T, K, H_v]``, same dtype as ``query``.
      feature_map: one of :data:`FEATURE_MAPS` or a callable (see above).
      normalize: divide by :math:`\phi(q_t)^\top z_t + \varepsilon` (the paper's
        normalizer); the state is then the pair ``(S, z)``.
      chunk_size: tokens per chunk, int >= 1 (``1``: the recurrence; a chunk size above ``T``
        is cut to ``T``).
      initial_state: the state before the first token: ``S [B, N, F, H_v]``, or with
        ``normalize=True`` the pair ``(S, z)`` with ``z [B, N, F]``; None for zeros.
      return_state: also return the state after the last token (same format).
      projection: ``[M, H_k]`` FAVOR+ projection (``feature_map="favor"`` only).
      rng: a PRNG key to draw the FAVOR+ projection with :func:`favor_projection`
        (``feature_map="favor"`` only, instead of ``projection``; the same key gives the
        same features, so calls that carry a state must pass the same key).
      num_features: ``M`` for a projection drawn from ``rng``.
      eps: added to the normalizer (``normalize=True``).

    Returns:
      ``[B, T, N, H_v]`` in the dtype of ``query``; with ``return_state`` the pair
      ``(out, final_state)``, the state in the compute dtype (float32 for bfloat16, float32
      and float16 inputs, float64 for float64).

    Raises:
      TypeError: non-floating or mixed-dtype query/key/value, a non-floating initial state or
        projection, a non-bool ``return_state``.
      ValueError: shapes other than above (ranks, batch, length, head dims, ``N % K != 0``),
        an unknown feature map, a callable map returning another shape, ``chunk_size < 1``,
        an initial state of the wrong format or shape, ``projection``/``rng``/
        ``num_features`` missing or given where they do not apply.
    """
    fn = "linear_attention"
    query, key, value = _check_qkv(fn, query, key, value)
    c = _check_flags(fn, chunk_size, return_state)
    if not isinstance(normalize, bool):
        raise TypeError(f"{fn}: normalize must be a bool, got {_checks.describe(normalize)}.")
    feature_map = _checks.check_choice(
        feature_map, "feature_map", FEATURE_MAPS, fn=fn, callable_ok=True
    )
    eps = float(_checks.check_positive(eps, "eps", fn=fn)) if normalize else eps
    b, t, n, hk = query.shape
    kh, hv = key.shape[2], value.shape[3]
    acc = _checks.compute_dtype(query.dtype)
    phi = _feature_map(fn, feature_map, hk, projection, rng, num_features)
    # The feature dim and the checks from shapes alone; the maps run after every check.
    fq, fk = (jax.eval_shape(phi, jax.ShapeDtypeStruct(x.shape, acc)) for x in (query, key))
    if not all(
        hasattr(x, "shape") and len(x.shape) == 4 and jnp.issubdtype(x.dtype, jnp.floating)
        for x in (fq, fk)
    ) or (fq.shape[:3], fk.shape[:3], fq.shape[3]) != ((b, t, n), (b, t, kh), fk.shape[3]):
        got = ", ".join(
            f"{name} {tuple(x.shape) if hasattr(x, 'shape') else _checks.describe(x)}"
            for name, x in (("phi_query", fq), ("phi_key", fk))
        )
        raise ValueError(
            f"{fn}: feature_map must map [B, T, heads, H_k] to floating [B, T, heads, F], got "
            f"{_shapes(query=query, key=key)} -> {got}."
        )
    f = fq.shape[3]
    v = value.astype(acc)
    if normalize:  # one more value column of ones: its output is the normalizer
        v = jnp.concatenate([v, jnp.ones(v.shape[:3] + (1,), acc)], axis=-1)
    if initial_state is None:
        s0 = jnp.zeros((b, n, f, v.shape[-1]), acc)
    elif normalize:
        if not (isinstance(initial_state, tuple | list) and len(initial_state) == 2):
            raise ValueError(
                f"{fn}: initial_state must be a pair (S [B, N, F, H_v], z [B, N, F]) with "
                f"normalize=True, got {_checks.describe(initial_state)}."
            )
        s_init = _check_state(initial_state[0], (b, n, f, hv), "[B, N, F, H_v]", fn=fn)
        z_init = _check_state(initial_state[1], (b, n, f), "[B, N, F]", fn=fn)
        s0 = jnp.concatenate([s_init.astype(acc), z_init.astype(acc)[..., None]], axis=-1)
    else:
        s0 = _check_state(initial_state, (b, n, f, hv), "[B, N, F, H_v]", fn=fn).astype(acc)
    groups = n // kh
    c = min(c, t) if t else c
    q_acc, k_acc = query.astype(acc), key.astype(acc)
    # The map on the K key heads (as documented), repeated to the query heads afterwards.
    fq, fk = phi(q_acc).astype(acc), phi(k_acc).astype(acc)
    # Based's parallel form inside a chunk: phi(q).phi(k) from q.k, H_k instead of F per pair.
    kernel = (
        (q_acc, _repeat_heads(k_acc, groups), functools.partial(_taylor_kernel, head_dim=hk))
        if feature_map == "taylor"
        else None
    )
    out, final = _linear_core(
        fq,
        _repeat_heads(fk, groups),
        _repeat_heads(v, groups),
        None,
        s0,
        c,
        kernel=kernel,
        zero_start=initial_state is None,
    )
    if normalize:
        out = out[..., :hv] / (out[..., hv:] + eps)
        final = (final[..., :hv], final[..., hv])
    out = out.astype(query.dtype)
    return (out, final) if return_state else out


def gated_linear_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    log_decay: jax.Array,
    *,
    scale: float | None = None,
    chunk_size: int = 64,
    initial_state: jax.Array | None = None,
    return_state: bool = False,
):
    r"""Causal linear attention with a data-dependent decay of the state.

    .. math::
      S_t = \exp(g_t) \odot S_{t-1} + k_t\,v_t^\top, \qquad o_t = S_t^\top (s\,q_t),
      \qquad s = 1/\sqrt{H_k} \text{ by default}

    with :math:`g_t` = ``log_decay`` (expected :math:`\le 0`, e.g. ``log_sigmoid`` of a gate
    logit; the chunked form is stable for any decay <= 1) and :math:`S_0` zero or
    ``initial_state``. Two forms of decay:

    * ``[B, T, N]``: one scalar per token and query head, :math:`\exp(g_t)\,S_{t-1}` --
      RetNet (Sun et al. 2023, a fixed decay per head), Mamba-2 / SSD (Dao & Gu 2024),
      Lightning/HGRN-style scalar gates.
    * ``[B, T, N, H_k]``: one per key dimension, :math:`\mathrm{diag}(\exp(g_t))\,S_{t-1}`
      -- GLA (Yang et al. 2024, "Gated Linear Attention Transformers with
      Hardware-Efficient Training", ICML). Inside a chunk the diagonal blocks of 16 tokens
      are computed exactly and the rest through a factorization whose factors are <= 1 (as
      the paper's secondary chunking); these blocks are recomputed in the backward pass.

    The scale multiplies the queries (flash-linear-attention's convention; GLA's and
    RetNet's ``1/sqrt(H_k)``). With ``log_decay = 0`` this is unnormalized linear attention
    with the identity feature map. The decays are per query head: under grouped-query
    attention the keys and values are shared, the states are not.

    Shapes::

      query: [B, T, N, H_k]   key: [B, T, K, H_k]   value: [B, T, K, H_v]
      log_decay: [B, T, N] or [B, T, N, H_k]   state: [B, N, H_k, H_v]  ->  [B, T, N, H_v]

    Args:
      query: ``[B, T, N, H_k]`` floating array.
      key: ``[B, T, K, H_k]``, same dtype as ``query``.
      value: ``[B, T, K, H_v]``, same dtype as ``query``.
      log_decay: ``[B, T, N]`` or ``[B, T, N, H_k]`` floating, the log of the decay applied
        to the state before token ``t`` is added; differentiated.
      scale: query scale, default ``1 / sqrt(H_k)``.
      chunk_size: tokens per chunk, int >= 1 (``1``: the recurrence; a chunk size above ``T``
        is cut to ``T``).
      initial_state: ``[B, N, H_k, H_v]``, the state before the first token; None for zeros.
      return_state: also return the state after the last token.

    Returns:
      ``[B, T, N, H_v]`` in the dtype of ``query``; with ``return_state`` the pair
      ``(out, final_state)``, the state ``[B, N, H_k, H_v]`` in the compute dtype.

    Raises:
      TypeError: non-floating or mixed-dtype query/key/value, non-floating ``log_decay`` or
        initial state, a non-bool ``return_state``.
      ValueError: shapes other than above (ranks, batch, length, head dims, ``N % K != 0``,
        ``log_decay``, ``initial_state``), ``chunk_size < 1``, a scale that is not a finite
        number > 0.
    """
    fn = "gated_linear_attention"
    query, key, value = _check_qkv(fn, query, key, value)
    c = _check_flags(fn, chunk_size, return_state)
    b, t, n, hk = query.shape
    kh, hv = key.shape[2], value.shape[3]
    scale = _check_scale(scale, hk, fn=fn)
    log_decay = _check_log_decay(log_decay, b, t, n, hk, fn=fn, per_dim_ok=True)
    acc = _checks.compute_dtype(query.dtype)
    if initial_state is None:
        s0 = jnp.zeros((b, n, hk, hv), acc)
    else:
        s0 = _check_state(initial_state, (b, n, hk, hv), "[B, N, H_k, H_v]", fn=fn).astype(acc)
    groups = n // kh
    c = min(c, t) if t else c
    out, final = _linear_core(
        query.astype(acc) * scale,
        _repeat_heads(key.astype(acc), groups),
        _repeat_heads(value.astype(acc), groups),
        log_decay.astype(acc),
        s0,
        c,
        zero_start=initial_state is None,
    )
    out = out.astype(query.dtype)
    return (out, final) if return_state else out


# ----------------------------------------------------------------------------------------
# The short convolution of the delta-rule layers.
# ----------------------------------------------------------------------------------------


def short_convolution(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Depthwise convolution over time, without padding: ``y_t = sum_j w_j * x_{t + j}``.

    The short causal convolution of DeltaNet / Gated DeltaNet / Mamba layers (the caller
    left-pads ``x`` with ``W - 1`` zeros, or the previous inputs when decoding), as ``W``
    shifted products: a grouped ``lax.conv`` with one group per channel runs as a dense
    convolution on XLA:CPU, ``C`` times the work.

    Shapes::

      x: [B, T + W - 1, C]   kernel: [W, 1, C] (``nnx.Conv``'s depthwise layout) or [W, C]
        ->  [B, T, C]

    Args:
      x: ``[B, T + W - 1, C]`` floating.
      kernel: ``[W, 1, C]`` or ``[W, C]`` floating, ``W <= T + W - 1``.

    Returns:
      ``[B, T, C]`` in the result dtype of ``x`` and ``kernel``.
    """
    fn = "short_convolution"
    x = _checks.float_array(x, "x", fn=fn)
    kernel = _checks.float_array(kernel, "kernel", fn=fn)
    if kernel.ndim == 3 and kernel.shape[1] == 1:
        kernel = kernel[:, 0]
    if (
        x.ndim != 3
        or kernel.ndim != 2
        or kernel.shape[1] != x.shape[2]
        or kernel.shape[0] > x.shape[1]
    ):
        raise ValueError(
            f"{fn}: x must be [B, T + W - 1, C] and kernel [W, C] (or [W, 1, C]) with W <= "
            f"T + W - 1, got {_shapes(x=x, kernel=kernel)}."
        )
    width = kernel.shape[0]
    t = x.shape[1] - width + 1
    return sum(x[:, j : j + t] * kernel[j] for j in range(width))


# ----------------------------------------------------------------------------------------
# Delta rule (DeltaNet, Gated DeltaNet).
# ----------------------------------------------------------------------------------------


def _unit_lower_inverse(a: jax.Array) -> jax.Array:
    """``(I + a)^{-1}`` for strictly lower-triangular ``a [..., C, C]``.

    Recursive doubling of the diagonal blocks, all blocks of a level in one batched product:
    ``inv([[M11, 0], [M21, M22]]) = [[X11, 0], [-X22 M21 X11, X22]]`` with ``X = M^{-1}`` of
    the half-size blocks, from 1 x 1 blocks (the unit diagonal) up to ``C`` (padded to a
    power of 2 with the identity). Every intermediate is the inverse of a diagonal block, so
    nothing grows beyond the entries of the inverse itself (a Neumann series would); about
    ``C^3 / 3`` flops in ``log2 C`` matrix products, where ``lax.linalg.triangular_solve``
    runs row by row (and slowly) on CPU.
    """
    c = a.shape[-1]
    p = 1 << (c - 1).bit_length()
    lead = a.shape[:-2]
    a = a.reshape(-1, c, c)  # one batch axis: the block views below stay at rank <= 7
    if p != c:
        a = jnp.pad(a, [(0, 0), (0, p - c), (0, p - c)])
    inv = jnp.ones((a.shape[0], p, 1, 1), a.dtype)  # the 1 x 1 diagonal blocks
    s = 1
    while s < p:
        nb = p // (2 * s)
        x = inv.reshape(-1, nb, 2, s, s)
        x11, x22 = x[:, :, 0], x[:, :, 1]
        # The lower-left s x s block of every 2s x 2s diagonal block of a (a masked sum
        # rather than jnp.diagonal, whose gather and scatter compile slowly on CPU).
        blocks = a.reshape(-1, nb, 2, s, nb, 2, s)[:, :, 1, :, :, 0, :]  # [.., nb, s, nb, s]
        m21 = jnp.sum(blocks * jnp.eye(nb, dtype=a.dtype)[:, None, :, None], axis=-2)
        x21 = -(x22 @ m21) @ x11
        top = jnp.concatenate([x11, jnp.zeros_like(x11)], axis=-1)
        inv = jnp.concatenate([top, jnp.concatenate([x21, x22], axis=-1)], axis=-2)
        s *= 2
    return inv.reshape(lead + (p, p))[..., :c, :c]


def _delta_core(q, k, v, beta, log_decay, s0, c: int):
    r"""Chunked (gated) delta rule with the UT transform.

    Inside a chunk, with :math:`\gamma_t = \exp(b_t)` (``b`` the inclusive cumulative log
    decay in the chunk; 1 without decay) and the state :math:`S_0` at its start, the states
    are :math:`S_t = \gamma_t S_0 + \sum_{s \le t} (\gamma_t/\gamma_s) k_s u_s^\top`
    with pseudo-values :math:`U = \tilde U - W S_0`, where :math:`(I + A) [\tilde U, W] =
    [\beta \odot V, \beta\gamma \odot K]` and
    :math:`A_{ts} = \beta_t (\gamma_t/\gamma_s) k_t^\top k_s` for ``s < t`` (``I + A`` is
    unit lower triangular, inverted by :func:`_unit_lower_inverse`). Then
    :math:`O = \gamma \odot (Q S_0) + (Q K^\top \odot \Gamma \odot M) U` and
    :math:`S_C = \gamma_C S_0 + (K \odot \gamma_C/\gamma)^\top U`. Everything but the
    three products with :math:`S_0` is computed for all chunks at once.
    """
    t = q.shape[1]
    qc, kc, vc = _chunked(q, c), _chunked(k, c), _chunked(v, c)  # [nc, B, N, C, *]
    betac = _chunked(beta, c)[..., None]  # [nc, B, N, C, 1]
    incl, strict = _tril(c), _tril(c, -1)
    kk = jnp.einsum("...td,...sd->...ts", kc, kc)
    qk = jnp.einsum("...td,...sd->...ts", qc, kc)
    if log_decay is None:
        a = jnp.where(strict, betac * kk, 0.0)
        rhs = jnp.concatenate([betac * vc, betac * kc], axis=-1)
        p = jnp.where(incl, qk, 0.0)
        q_inter, k_state, decay = qc, kc, None
    else:
        bc = jnp.cumsum(_chunked(log_decay, c), axis=3)  # [nc, B, N, C]
        last = bc[..., -1]
        gamma = _masked_exp(bc[..., :, None] - bc[..., None, :], incl)  # gamma_t / gamma_s
        a = jnp.where(strict, betac * kk * gamma, 0.0)
        g = jnp.exp(bc)[..., None]
        rhs = jnp.concatenate([betac * vc, betac * g * kc], axis=-1)
        p = qk * gamma
        q_inter = qc * g
        k_state = kc * jnp.exp(last[..., None] - bc)[..., None]
        decay = jnp.exp(last)
    # (I + A) X = rhs with A strictly lower triangular: X = (I + A)^{-1} rhs.
    sol = jnp.einsum("...ts,...se->...te", _unit_lower_inverse(a), rhs)
    hv = v.shape[-1]
    u_tilde, w = sol[..., :hv], sol[..., hv:]

    def step(s, xs):
        u_tilde, w, p, q_inter, k_state, d = xs
        u = u_tilde - jnp.einsum("...td,...de->...te", w, s)
        o = jnp.einsum("...td,...de->...te", q_inter, s) + jnp.einsum("...ts,...se->...te", p, u)
        s_next = jnp.einsum("...sd,...se->...de", k_state, u)
        s_next = s_next + (s if d is None else d[..., None, None] * s)
        return s_next, o

    final, out = jax.lax.scan(step, s0, (u_tilde, w, p, q_inter, k_state, decay))
    return _unchunked(out, t), final


def delta_rule_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    beta: jax.Array,
    *,
    log_decay: jax.Array | None = None,
    scale: float | None = None,
    chunk_size: int = 64,
    initial_state: jax.Array | None = None,
    return_state: bool = False,
):
    r"""Delta-rule linear attention: DeltaNet and, with ``log_decay``, Gated DeltaNet.

    .. math::
      S_t = a_t S_{t-1} + \beta_t\,k_t\,(v_t - a_t S_{t-1}^\top k_t)^\top
          = a_t (I - \beta_t k_t k_t^\top) S_{t-1} + \beta_t k_t v_t^\top, \qquad
      o_t = S_t^\top (s\,q_t)

    with :math:`a_t = \exp(\text{log\_decay}_t)` (1 without ``log_decay``: DeltaNet, Schlag
    et al. 2021, "Linear Transformers Are Secretly Fast Weight Programmers"; with it: Gated
    DeltaNet, Yang, Kautz & Hatamizadeh 2024, "Gated Delta Networks: Improving Mamba2 with
    Delta Rule"), :math:`\beta_t \in [0, 1]` the writing strength, :math:`S_0` zero or
    ``initial_state`` and :math:`s = 1/\sqrt{H_k}` by default (flash-linear-attention's
    convention: the scale multiplies the queries only). The papers L2-normalize the queries
    and keys (then :math:`I - \beta_t k_t k_t^\top` is a contraction); that is the caller's
    (the module's) business, as is keeping ``beta`` in ``[0, 1]``.

    Trained chunkwise with the WY/UT representation (Yang et al. 2024, "Parallelizing Linear
    Transformers with the Delta Rule over Sequence Length", NeurIPS): per chunk the inverse
    of one unit lower-triangular ``[C, C]`` matrix (by recursive doubling, in matrix
    products) gives the pseudo-values :math:`U = \tilde U - W S` for all chunks at once; the
    scan across chunks then costs three ``[C, H]`` by
    ``[H, H_v]`` products per chunk. ``chunk_size=1`` is the step-by-step recurrence.

    Shapes::

      query: [B, T, N, H_k]   key: [B, T, K, H_k]   value: [B, T, K, H_v]
      beta: [B, T, N]   log_decay: [B, T, N]   state: [B, N, H_k, H_v]  ->  [B, T, N, H_v]

    Args:
      query: ``[B, T, N, H_k]`` floating array.
      key: ``[B, T, K, H_k]``, same dtype as ``query``.
      value: ``[B, T, K, H_v]``, same dtype as ``query``.
      beta: ``[B, T, N]`` floating, the writing strength per token and query head;
        differentiated.
      log_decay: None (DeltaNet) or ``[B, T, N]`` floating, :math:`\log a_t` (Gated
        DeltaNet; expected <= 0); differentiated.
      scale: query scale, default ``1 / sqrt(H_k)``.
      chunk_size: tokens per chunk, int >= 1 (``1``: the recurrence; a chunk size above ``T``
        is cut to ``T``).
      initial_state: ``[B, N, H_k, H_v]``, the state before the first token; None for zeros.
      return_state: also return the state after the last token.

    Returns:
      ``[B, T, N, H_v]`` in the dtype of ``query``; with ``return_state`` the pair
      ``(out, final_state)``, the state ``[B, N, H_k, H_v]`` in the compute dtype.

    Raises:
      TypeError: non-floating or mixed-dtype query/key/value, non-floating ``beta``,
        ``log_decay`` or initial state, a non-bool ``return_state``.
      ValueError: shapes other than above (ranks, batch, length, head dims, ``N % K != 0``,
        ``beta``, ``log_decay``, ``initial_state``), ``chunk_size < 1``, a scale that is not
        a finite number > 0.
    """
    fn = "delta_rule_attention"
    query, key, value = _check_qkv(fn, query, key, value)
    c = _check_flags(fn, chunk_size, return_state)
    b, t, n, hk = query.shape
    kh, hv = key.shape[2], value.shape[3]
    scale = _check_scale(scale, hk, fn=fn)
    beta = _check_per_token(beta, "beta", (b, t, n), "[B, T, N]", fn=fn)
    if log_decay is not None:
        log_decay = _check_log_decay(log_decay, b, t, n, hk, fn=fn, per_dim_ok=False)
    acc = _checks.compute_dtype(query.dtype)
    if initial_state is None:
        s0 = jnp.zeros((b, n, hk, hv), acc)
    else:
        s0 = _check_state(initial_state, (b, n, hk, hv), "[B, N, H_k, H_v]", fn=fn).astype(acc)
    groups = n // kh
    c = min(c, t) if t else c
    out, final = _delta_core(
        query.astype(acc) * scale,
        _repeat_heads(key.astype(acc), groups),
        _repeat_heads(value.astype(acc), groups),
        beta.astype(acc),
        None if log_decay is None else log_decay.astype(acc),
        s0,
        c,
    )
    out = out.astype(query.dtype)
    return (out, final) if return_state else out
