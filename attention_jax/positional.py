"""Positional encodings as pure functions.

Four families, each plugging in at a different place (see ``DESIGN.md``):

* absolute tables added to token embeddings: :func:`sinusoidal_encoding`, and its 2-D
  version for image patches :func:`sinusoidal_encoding_2d`;
* rotations of queries and keys: :func:`apply_rope` (with :class:`RopeScaling` for
  longer contexts than trained on), and axial 2-D RoPE for images :func:`apply_rope_2d`;
* additive biases on the attention logits: :func:`alibi_bias` (slopes from
  :func:`alibi_slopes`) and :func:`t5_relative_bias` (buckets from
  :func:`t5_relative_position_bucket`).

Positions are explicit integer arrays everywhere, so the same call serves training,
packed sequences and cached decoding (where positions start at the cache length). On a 2-D
grid of image patches a token has a row and a column; :func:`grid_positions` gives both for
the row-major order of :func:`attention_jax.vision.patchify`.
Static configuration (dimensions, ``base``, ``fraction``, ``scaling``, bucket counts) is
keyword-only and must be plain Python values; positions may be traced. Frequency and
bucket tables depend only on the static configuration, so they are computed in float64
NumPy at trace time and enter the computation as float32/int32 constants.

Each public function checks its arguments in Python (at trace time, with the argument's
name and shape in the message) and then calls a small jitted kernel, so eager calls
compile once per shape instead of once per primitive; under an outer ``jit`` the kernels
simply inline.

Shape letters used throughout::

  B = batch size
  T = query length
  S = key length
  N = number of heads
  H = head dimension
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from attention_jax._checks import (
    check_choice,
    check_int,
    describe,
    float_array,
    int_array,
    is_int,
    is_real,
)

__all__ = [
    "RopeScaling",
    "alibi_bias",
    "alibi_slopes",
    "apply_rope",
    "apply_rope_2d",
    "grid_positions",
    "relative_positions",
    "rope_frequencies",
    "sinusoidal_encoding",
    "sinusoidal_encoding_2d",
    "t5_relative_bias",
    "t5_relative_position_bucket",
]

_ROPE_SCALING_KINDS = ("linear", "ntk", "yarn")
# YaRN's ramp boundaries in rotations per original context (Peng et al. 2023, Sec. 3.2;
# the defaults of the reference implementation and of Hugging Face).
_YARN_BETA_FAST = 32.0
_YARN_BETA_SLOW = 1.0


# ----------------------------------------------------------------------------- checks


def _check_base(base, fn: str) -> None:
    if not is_real(base) or not math.isfinite(base) or base <= 1:
        raise ValueError(f"{fn}: base must be a finite number > 1, got {base!r}.")


def _positions_pair(query_positions, key_value_positions, fn: str):
    """Integer ``[T]`` or ``[B, T]`` query and ``[S]`` or ``[B, S]`` key positions."""
    q = int_array(query_positions, "query_positions", fn=fn)
    k = int_array(key_value_positions, "key_value_positions", fn=fn)
    for name, x in (("query_positions", q), ("key_value_positions", k)):
        if x.ndim not in (1, 2):
            raise ValueError(f"{fn}: {name} must be of shape [T] or [B, T], got {describe(x)}.")
    if q.ndim == k.ndim == 2 and q.shape[0] != k.shape[0]:
        raise ValueError(
            f"{fn}: query_positions and key_value_positions must share the batch size, got "
            f"{q.shape} and {k.shape}."
        )
    return q, k


def _relative(query_positions: jax.Array, key_value_positions: jax.Array) -> jax.Array:
    """``[T, S]`` (or ``[B, T, S]`` when either is batched) int32 key minus query position."""
    q = query_positions.astype(jnp.int32)
    k = key_value_positions.astype(jnp.int32)
    return k[..., None, :] - q[..., :, None]


# ------------------------------------------------------------------------- sinusoidal


def sinusoidal_encoding(positions: ArrayLike | int, dim: int, *, base: float = 10000.0):
    r"""Fixed sinusoidal position table (Vaswani et al. 2017, Sec. 3.5).

    .. math::

      PE[p, 2i] = \sin(p / \mathrm{base}^{2i/d}), \qquad
      PE[p, 2i+1] = \cos(p / \mathrm{base}^{2i/d})

    Sine and cosine are interleaved along the last axis exactly as in the paper's formula.

    Args:
      positions: integer array of any shape ``[...]``, or a Python int ``L`` meaning
        ``arange(L)``.
      dim: even model dimension ``d``.
      base: wavelength base (keyword-only, static).

    Returns:
      float32 array ``[..., dim]`` (``[L, dim]`` for an int ``positions``).

    Raises:
      ValueError: ``dim`` is not a positive even int, ``base`` <= 1, or a negative length.
      TypeError: ``positions`` is not integer.
    """
    fn = "sinusoidal_encoding"
    if not is_int(dim) or dim < 2 or dim % 2:
        raise ValueError(f"{fn}: dim must be a positive even int (sin/cos pairs), got {dim!r}.")
    _check_base(base, fn)
    if is_int(positions):
        positions = jnp.arange(check_int(positions, "positions", fn=fn, minimum=0), dtype=jnp.int32)
    else:
        positions = int_array(positions, "positions", fn=fn)
    return _sinusoidal(positions, dim=dim, base=float(base))


@functools.partial(jax.jit, static_argnames=("dim", "base"))
def _sinusoidal(positions: jax.Array, *, dim: int, base: float) -> jax.Array:
    inv_freq = base ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
    # Interleave sin/cos as in the paper's PE[p, 2i], PE[p, 2i+1].
    table = jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1)
    return table.reshape(*positions.shape, dim)


# ------------------------------------------------------------------------------- RoPE


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """How to stretch RoPE beyond the context it was trained on (static, hashable).

    Attributes:
      kind: one of

        * ``"linear"``: position interpolation (Chen et al. 2023): positions are divided
          by ``factor``, i.e. every inverse frequency is divided by ``factor``.
        * ``"ntk"``: NTK-aware base scaling: ``base' = base * factor ** (d / (d - 2))``
          with ``d`` the number of rotated dims; high frequencies barely change while the
          lowest one is interpolated by ``factor``.
        * ``"yarn"``: YaRN (Peng et al. 2023), "NTK-by-parts" interpolation plus an
          attention temperature. For pair ``i`` of ``d`` rotated dims with inverse
          frequency ``theta_i = base ** (-2i/d)``::

            low  = max(floor(c(beta_fast)), 0)
            high = min(ceil(c(beta_slow)), d - 1)
            c(r) = d * ln(original_max_len / (2 pi r)) / (2 ln base)
            ramp_i = clip((i - low) / (high - low), 0, 1)
            theta'_i = theta_i / factor * ramp_i + theta_i * (1 - ramp_i)

          with ``beta_fast = 32`` and ``beta_slow = 1`` (as in the paper's code and in
          Hugging Face ``_compute_yarn_parameters``): pairs that rotate more than 32 times
          over the original context are kept, fewer than once are interpolated, linear in
          between. The temperature ``mscale = 0.1 * ln(factor) + 1`` multiplies the
          *rotated* dims of whatever :func:`apply_rope` is applied to; applied to both
          ``q`` and ``k`` it scales their rotated part of the logits by ``mscale ** 2``
          (the paper's ``sqrt(1/t) = mscale`` on each of ``q`` and ``k``). Pass-through
          dims of a partial rotary are not scaled (as in Hugging Face).

      factor: context extension factor ``s >= 1``; every kind is plain RoPE at 1.
      original_max_len: context length trained on. Required for ``"yarn"`` (it fixes
        which frequencies are interpolated); optional and unused by the other kinds.
    """

    kind: str
    factor: float
    original_max_len: int | None = None

    def __post_init__(self):
        check_choice(self.kind, "kind", _ROPE_SCALING_KINDS, fn="RopeScaling")
        if not is_real(self.factor) or not math.isfinite(self.factor) or self.factor < 1:
            raise ValueError(
                f"RopeScaling: factor must be a finite number >= 1, got {self.factor!r}."
            )
        if self.original_max_len is None:
            if self.kind == "yarn":
                raise ValueError(
                    "RopeScaling: original_max_len must be an int >= 1 for kind='yarn', got None."
                )
        else:
            check_int(self.original_max_len, "original_max_len", fn="RopeScaling")

    @property
    def attention_factor(self) -> float:
        """Multiplier on the rotated dims: ``0.1 * ln(factor) + 1`` for YaRN, else 1."""
        if self.kind == "yarn":
            return 0.1 * math.log(self.factor) + 1.0
        return 1.0


def _yarn_inverse_frequencies(inv_freq: np.ndarray, rot_dim: int, base: float, scaling):
    def correction_dim(num_rotations: float) -> float:
        # Pair index whose wavelength fits `num_rotations` times into the original context.
        return (
            rot_dim
            * math.log(scaling.original_max_len / (num_rotations * 2 * math.pi))
            / (2 * math.log(base))
        )

    low = max(math.floor(correction_dim(_YARN_BETA_FAST)), 0)
    high = min(math.ceil(correction_dim(_YARN_BETA_SLOW)), rot_dim - 1)
    if low == high:
        high += 0.001  # keeps the ramp finite, as in the reference code
    ramp = np.clip((np.arange(rot_dim // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    return inv_freq / scaling.factor * ramp + inv_freq * (1.0 - ramp)


def rope_frequencies(
    rot_dim: int, *, base: float = 10000.0, scaling: RopeScaling | None = None
) -> jax.Array:
    r"""Inverse frequencies of RoPE, ``theta_i = base ** (-2i / rot_dim)``, after scaling.

    Computed in float64 at trace time (everything here is static), returned as float32.
    YaRN's attention temperature is not part of this; see
    :attr:`RopeScaling.attention_factor`.

    Args:
      rot_dim: number of rotated dims ``d`` (even, > 0).
      base: frequency base (keyword-only, static).
      scaling: optional :class:`RopeScaling`.

    Returns:
      float32 array ``[rot_dim // 2]``; pair ``i`` rotates by ``position * theta_i``.
    """
    fn = "rope_frequencies"
    if not is_int(rot_dim) or rot_dim < 2 or rot_dim % 2:
        raise ValueError(f"{fn}: rot_dim must be a positive even int, got {rot_dim!r}.")
    _check_base(base, fn)
    if scaling is not None and not isinstance(scaling, RopeScaling):
        raise TypeError(f"{fn}: scaling must be a RopeScaling or None, got {scaling!r}.")
    kind = None if scaling is None else scaling.kind
    if kind == "ntk" and scaling.factor != 1:
        if rot_dim < 4:
            raise ValueError(f"{fn}: rot_dim must be >= 4 for ntk scaling, got {rot_dim}.")
        base = base * scaling.factor ** (rot_dim / (rot_dim - 2))
    inv_freq = base ** (-np.arange(0, rot_dim, 2, dtype=np.float64) / rot_dim)
    if kind == "linear":
        inv_freq = inv_freq / scaling.factor
    elif kind == "yarn":
        inv_freq = _yarn_inverse_frequencies(inv_freq, rot_dim, base, scaling)
    return jnp.asarray(inv_freq, dtype=jnp.float32)


def rotary_dim(head_dim: int, fraction, fn: str) -> int:
    """Number of rotated dims ``fraction * head_dim`` (an even int >= 2), validated.

    Used by :func:`apply_rope` and by the modules that check a RoPE config up front; ``fn``
    names the caller in the error message.
    """
    if not is_real(fraction) or not 0 < fraction <= 1:
        raise ValueError(f"{fn}: fraction must be a number in (0, 1], got {fraction!r}.")
    if fraction == 1:
        if head_dim % 2:
            raise ValueError(
                f"{fn}: head dim H must be even to rotate pairs of dims, got H={head_dim}."
            )
        return head_dim
    rot = fraction * head_dim
    rot_int = round(rot)
    if abs(rot - rot_int) > 1e-9 or rot_int < 2 or rot_int % 2:
        raise ValueError(
            f"{fn}: fraction * H must be a positive even integer (rotated dims come in "
            f"pairs), got fraction={fraction}, H={head_dim} -> {rot:g} rotated dims."
        )
    return rot_int


def apply_rope(
    x: ArrayLike,
    positions: ArrayLike,
    *,
    base: float = 10000.0,
    fraction: float = 1.0,
    interleaved: bool = False,
    scaling: RopeScaling | None = None,
) -> jax.Array:
    r"""Rotary position embedding (Su et al. 2021) of queries or keys.

    Each pair of dims :math:`(a, b)` of the first ``rot = fraction * H`` dims is rotated by
    the angle :math:`p \theta_i` of its position :math:`p`, with
    :math:`\theta_i = \mathrm{base}^{-2i/\mathrm{rot}}`:

    .. math::

      \begin{pmatrix} a' \\ b' \end{pmatrix} =
      \begin{pmatrix} \cos p\theta_i & -\sin p\theta_i \\
                      \sin p\theta_i & \cos p\theta_i \end{pmatrix}
      \begin{pmatrix} a \\ b \end{pmatrix}

    so that :math:`\langle \mathrm{rope}(q, m), \mathrm{rope}(k, n) \rangle` depends on the
    positions only through :math:`m - n`. The rotation is a norm-preserving linear map;
    negative positions rotate backwards.

    Args:
      x: floating array ``[B, T, N, H]`` or ``[T, N, H]``.
      positions: integer array ``[B, T]`` or ``[T]`` (``[T]`` is shared across the batch).
        May be traced.
      base: frequency base (keyword-only, static).
      fraction: share of the head dim that is rotated (partial rotary, GPT-NeoX/GPT-J);
        ``fraction * H`` must be an even integer. The remaining dims pass through
        unchanged.
      interleaved: ``False`` rotates pairs ``(x[i], x[i + rot/2])`` (GPT-NeoX / LLaMA);
        ``True`` rotates ``(x[2i], x[2i+1])`` (RoFormer paper).
      scaling: optional :class:`RopeScaling` (linear, ntk or yarn). With ``"yarn"`` the
        rotated dims are also multiplied by ``scaling.attention_factor``.

    Returns:
      array with the shape and dtype of ``x``; the rotation is computed in float32.

    Raises:
      TypeError: ``x`` is not floating, ``positions`` not integer, or ``scaling`` has the
        wrong type.
      ValueError: wrong rank, positions shape not matching ``x``, odd ``H``, or ``fraction``
        giving an odd or zero number of rotated dims.
    """
    fn = "apply_rope"
    x = float_array(x, "x", fn=fn)
    if x.ndim not in (3, 4):
        raise ValueError(f"{fn}: x must be of shape [B, T, N, H] or [T, N, H], got {describe(x)}.")
    positions = int_array(positions, "positions", fn=fn)
    seq_len, head_dim = x.shape[-3], x.shape[-1]
    if positions.shape not in ((seq_len,), x.shape[:-2]):
        expected = "[B, T] or [T]" if x.ndim == 4 else "[T]"
        raise ValueError(
            f"{fn}: positions must be of shape {expected} matching x {x.shape}, "
            f"got {describe(positions)}."
        )
    rot = rotary_dim(head_dim, fraction, fn)
    rope_frequencies(rot, base=base, scaling=scaling)  # validates base and scaling up front
    return _rope(
        x, positions, rot=rot, base=float(base), interleaved=bool(interleaved), scaling=scaling
    )


@functools.partial(jax.jit, static_argnames=("rot", "base", "interleaved", "scaling"))
def _rope(x, positions, *, rot: int, base: float, interleaved: bool, scaling) -> jax.Array:
    head_dim = x.shape[-1]
    inv_freq = rope_frequencies(rot, base=base, scaling=scaling)
    # [..., T, 1, rot/2]: one angle per position and pair, shared by all heads.
    angles = positions.astype(jnp.float32)[..., None, None] * inv_freq
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    if scaling is not None and scaling.attention_factor != 1.0:
        cos = cos * scaling.attention_factor
        sin = sin * scaling.attention_factor

    xr = x[..., :rot].astype(jnp.float32)
    if interleaved:
        first, second = xr[..., 0::2], xr[..., 1::2]
    else:
        first, second = xr[..., : rot // 2], xr[..., rot // 2 :]
    out_first = first * cos - second * sin
    out_second = second * cos + first * sin
    if interleaved:
        rotated = jnp.stack([out_first, out_second], axis=-1).reshape(xr.shape)
    else:
        rotated = jnp.concatenate([out_first, out_second], axis=-1)
    rotated = rotated.astype(x.dtype)
    if rot == head_dim:
        return rotated
    # Pass-through dims are copied, not round-tripped through float32.
    return jnp.concatenate([rotated, x[..., rot:]], axis=-1)


# --------------------------------------------------------------- 2-D (image patches)


def grid_positions(height: int, width: int) -> tuple[jax.Array, jax.Array]:
    """Row and column of each cell of a ``height x width`` grid, in row-major order.

    Cell ``t`` sits at row ``t // width`` and column ``t % width``: the token order of
    :func:`attention_jax.vision.patchify` and of :func:`sinusoidal_encoding_2d`, so
    ``apply_rope_2d(q, *grid_positions(h, w))`` rotates the queries of an ``h x w`` patch
    grid.

    Args:
      height: number of grid rows (static int >= 1).
      width: number of grid columns (static int >= 1).

    Returns:
      ``(rows, cols)``, two int32 arrays ``[height * width]``.
    """
    fn = "grid_positions"
    height = check_int(height, "height", fn=fn)
    width = check_int(width, "width", fn=fn)
    cells = np.arange(height * width)
    return jnp.asarray(cells // width, jnp.int32), jnp.asarray(cells % width, jnp.int32)


def sinusoidal_encoding_2d(height: int, width: int, dim: int, *, base: float = 10000.0):
    r"""Fixed 2-D sin-cos position table of a ``height x width`` grid (ViT/MAE style).

    The first half of the channels is the 1-D :func:`sinusoidal_encoding` of the row
    :math:`r`, the second half that of the column :math:`c`, each with ``dim / 2`` channels
    and sine and cosine interleaved as in the 1-D table: for :math:`i < d/4`

    .. math::

      PE[t, 2i] = \sin(r / \mathrm{base}^{4i/d}), \quad
      PE[t, 2i+1] = \cos(r / \mathrm{base}^{4i/d}),

      PE[t, d/2 + 2i] = \sin(c / \mathrm{base}^{4i/d}), \quad
      PE[t, d/2 + 2i+1] = \cos(c / \mathrm{base}^{4i/d}),

    with token :math:`t = r \cdot \mathrm{width} + c` (row-major, the order of
    :func:`attention_jax.vision.patchify`). The frequencies are those of MAE's
    ``get_2d_sincos_pos_embed``; the channel order differs (MAE concatenates all sines
    before all cosines and, through its ``meshgrid``, puts the column half first), a fixed
    permutation of the channels that makes no difference to a model trained from scratch.

    Args:
      height: number of grid rows (static int >= 1).
      width: number of grid columns (static int >= 1).
      dim: model dimension ``d``, a positive multiple of 4 (sin/cos pairs for rows and
        for columns).
      base: wavelength base (keyword-only, static).

    Returns:
      float32 array ``[height * width, dim]``.

    Raises:
      ValueError: ``height`` or ``width`` not an int >= 1, ``dim`` not a positive multiple
        of 4, or ``base`` <= 1.
    """
    fn = "sinusoidal_encoding_2d"
    if not is_int(dim) or dim < 4 or dim % 4:
        raise ValueError(
            f"{fn}: dim must be a positive multiple of 4 (sin/cos pairs for rows and "
            f"columns), got {dim!r}."
        )
    _check_base(base, fn)
    height = check_int(height, "height", fn=fn)
    width = check_int(width, "width", fn=fn)
    return _sinusoidal_2d(height=height, width=width, dim=dim, base=float(base))


@functools.partial(jax.jit, static_argnames=("height", "width", "dim", "base"))
def _sinusoidal_2d(*, height: int, width: int, dim: int, base: float) -> jax.Array:
    rows = jnp.arange(height, dtype=jnp.int32)
    cols = jnp.arange(width, dtype=jnp.int32)
    row_table = _sinusoidal(rows, dim=dim // 2, base=base)  # [height, dim/2]
    col_table = _sinusoidal(cols, dim=dim // 2, base=base)  # [width, dim/2]
    table = jnp.concatenate(
        [
            jnp.broadcast_to(row_table[:, None, :], (height, width, dim // 2)),
            jnp.broadcast_to(col_table[None, :, :], (height, width, dim // 2)),
        ],
        axis=-1,
    )
    return table.reshape(height * width, dim)


def apply_rope_2d(
    x: ArrayLike,
    rows: ArrayLike,
    cols: ArrayLike,
    *,
    base: float = 100.0,
    interleaved: bool = False,
) -> jax.Array:
    r"""Axial 2-D rotary position embedding (Heo et al. 2024, "RoPE-Axial").

    The head dim is split in two halves: the first ``H/2`` dims get :func:`apply_rope`
    at the row positions, the second ``H/2`` dims at the column positions, both with the
    frequencies of a head dim of ``H/2``, :math:`\theta_i = \mathrm{base}^{-4i/H}`,
    :math:`i < H/4`. With :math:`R_\phi` the rotation by angle :math:`\phi`, the pairs
    :math:`(a_i, b_i)` of the first half and :math:`(a'_i, b'_i)` of the second become

    .. math::

      (a_i, b_i) \mapsto R_{r \theta_i} (a_i, b_i), \qquad
      (a'_i, b'_i) \mapsto R_{c \theta_i} (a'_i, b'_i),

    so half of the rotated pairs turn with the row index and half with the column index,
    and :math:`\langle \mathrm{rope2d}(q, r_1, c_1), \mathrm{rope2d}(k, r_2, c_2) \rangle`
    depends on the positions only through :math:`(r_1 - r_2, c_1 - c_2)`. Norms are
    preserved. The default ``base = 100`` is the paper's (patch grids are short).

    Pairing within each half follows :func:`apply_rope`: ``interleaved=False`` pairs
    ``(x[i], x[i + H/4])`` of the half (GPT-NeoX / LLaMA), ``True`` pairs
    ``(x[2i], x[2i+1])``. The paper's reference code (``naver-ai/rope-vit``,
    ``compute_axial_cis``) pairs adjacent dims and turns its first half with the column
    (``x``) index: its exact layout is ``apply_rope_2d(x, cols, rows, interleaved=True)``.

    Args:
      x: floating array ``[B, T, N, H]`` or ``[T, N, H]``, with ``H`` a multiple of 4.
      rows: integer array ``[B, T]`` or ``[T]`` (``[T]`` is shared across the batch); row
        index of each token, e.g. from :func:`grid_positions`. May be traced.
      cols: integer array ``[B, T]`` or ``[T]``; column index of each token. May be traced.
      base: frequency base (keyword-only, static).
      interleaved: pairing of dims within each half (keyword-only, static); see above.

    Returns:
      array with the shape and dtype of ``x``; the rotation is computed in float32.

    Raises:
      TypeError: ``x`` is not floating, or ``rows`` / ``cols`` not integer.
      ValueError: wrong rank, ``rows`` / ``cols`` shape not matching ``x``, ``H`` not a
        multiple of 4, or ``base`` <= 1.
    """
    fn = "apply_rope_2d"
    x = float_array(x, "x", fn=fn)
    if x.ndim not in (3, 4):
        raise ValueError(f"{fn}: x must be of shape [B, T, N, H] or [T, N, H], got {describe(x)}.")
    seq_len, head_dim = x.shape[-3], x.shape[-1]
    expected = "[B, T] or [T]" if x.ndim == 4 else "[T]"
    checked = []
    for name, p in (("rows", rows), ("cols", cols)):
        p = int_array(p, name, fn=fn)
        if p.shape not in ((seq_len,), x.shape[:-2]):
            raise ValueError(
                f"{fn}: {name} must be of shape {expected} matching x {x.shape}, got {describe(p)}."
            )
        checked.append(p)
    if head_dim % 4:
        raise ValueError(
            f"{fn}: head dim H must be a multiple of 4 (half of the pairs for rows, half "
            f"for columns), got H={head_dim}."
        )
    _check_base(base, fn)
    return _rope_2d(x, *checked, base=float(base), interleaved=bool(interleaved))


@functools.partial(jax.jit, static_argnames=("base", "interleaved"))
def _rope_2d(x, rows, cols, *, base: float, interleaved: bool) -> jax.Array:
    half = x.shape[-1] // 2
    kw = dict(rot=half, base=base, interleaved=interleaved, scaling=None)
    return jnp.concatenate(
        [_rope(x[..., :half], rows, **kw), _rope(x[..., half:], cols, **kw)], axis=-1
    )


# ------------------------------------------------------------------------------ ALiBi


def alibi_slopes(num_heads: int) -> jax.Array:
    r"""Per-head ALiBi slopes (Press et al. 2022).

    For :math:`N` a power of two the slopes are the geometric sequence
    :math:`2^{-8k/N}`, :math:`k = 1..N` (for 8 heads :math:`1/2, 1/4, \dots, 1/256`).
    Otherwise, with :math:`n` the largest power of two below :math:`N`: the :math:`n`
    slopes for :math:`n` heads followed by every other slope for :math:`2n` heads,
    ``get_slopes(2n)[0::2][: N - n]`` (the paper's recipe).

    Args:
      num_heads: number of heads ``N >= 1`` (static).

    Returns:
      float32 array ``[N]``.
    """
    check_int(num_heads, "num_heads", fn="alibi_slopes")

    def power_of_two(n: int) -> list[float]:
        return [2.0 ** (-8.0 * k / n) for k in range(1, n + 1)]

    n = 1 << (num_heads.bit_length() - 1)
    slopes = power_of_two(n)
    if n < num_heads:
        slopes += power_of_two(2 * n)[0::2][: num_heads - n]
    return jnp.asarray(np.asarray(slopes), dtype=jnp.float32)


def alibi_bias(
    slopes: ArrayLike, query_positions: ArrayLike, key_value_positions: ArrayLike
) -> jax.Array:
    r"""ALiBi attention bias :math:`b[h, i, j] = -m_h \, |p_i - p_j|`.

    Added to the logits together with a causal mask this is the paper's linear bias;
    without one it is its symmetric (bidirectional) variant. It is also a ``bias_fn``:
    ``functools.partial(alibi_bias, slopes)`` maps the ``(query_positions,
    key_value_positions)`` of any block to that block's bias.

    Args:
      slopes: ``[N]`` per-head slopes, e.g. :func:`alibi_slopes`.
      query_positions: integer ``[T]``, or ``[B, T]`` per example (may be traced).
      key_value_positions: integer ``[S]`` or ``[B, S]`` (may be traced).

    Returns:
      float32 ``[N, T, S]``, or ``[B, N, T, S]`` when either positions array is batched.
    """
    fn = "alibi_bias"
    slopes = float_array(slopes, "slopes", fn=fn)
    if slopes.ndim != 1:
        raise ValueError(f"{fn}: slopes must be of shape [N], got {describe(slopes)}.")
    q, k = _positions_pair(query_positions, key_value_positions, fn)
    return _alibi(slopes, q, k)


@jax.jit
def _alibi(slopes: jax.Array, q: jax.Array, k: jax.Array) -> jax.Array:
    distance = jnp.abs(_relative(q, k)).astype(jnp.float32)[..., None, :, :]
    return -slopes.astype(jnp.float32)[:, None, None] * distance


# --------------------------------------------------------------- relative positions, T5


def relative_positions(q_len: int, kv_len: int, *, offset: ArrayLike = 0) -> jax.Array:
    r"""Key position minus query position, :math:`r[i, j] = j - (i + \mathrm{offset})`.

    Queries sit at positions ``offset .. offset + q_len - 1`` and keys at ``0 .. kv_len - 1``;
    ``offset = kv_len - q_len`` puts the queries at the end of a longer (cached) key
    sequence.

    Args:
      q_len: number of queries ``T`` (static int >= 0).
      kv_len: number of keys ``S`` (static int >= 0).
      offset: integer scalar (keyword-only; may be traced).

    Returns:
      int32 array ``[T, S]``.
    """
    fn = "relative_positions"
    check_int(q_len, "q_len", fn=fn, minimum=0)
    check_int(kv_len, "kv_len", fn=fn, minimum=0)
    offset = int_array(offset, "offset", fn=fn, shape=())
    return _relative_positions(offset, q_len=q_len, kv_len=kv_len)


@functools.partial(jax.jit, static_argnames=("q_len", "kv_len"))
def _relative_positions(offset: jax.Array, *, q_len: int, kv_len: int) -> jax.Array:
    q = jnp.arange(q_len, dtype=jnp.int32) + offset.astype(jnp.int32)
    return _relative(q, jnp.arange(kv_len, dtype=jnp.int32))


def check_t5_config(num_buckets, max_distance, bidirectional, fn: str) -> int:
    """Validates T5's static bucket config (as :func:`t5_relative_position_bucket` takes it);
    returns the buckets per direction. ``fn`` names the caller in the error message."""
    if not isinstance(bidirectional, bool):
        raise TypeError(f"{fn}: bidirectional must be a bool, got {bidirectional!r}.")
    check_int(num_buckets, "num_buckets", fn=fn, minimum=4 if bidirectional else 2)
    per_direction = num_buckets // 2 if bidirectional else num_buckets
    max_exact = per_direction // 2
    if not is_int(max_distance) or max_distance <= max_exact:
        raise ValueError(
            f"{fn}: max_distance must be an int > {max_exact} (the exactly bucketed "
            f"distances for num_buckets={num_buckets}, bidirectional={bidirectional}), "
            f"got {max_distance!r}."
        )
    return per_direction


@functools.lru_cache(maxsize=64)
def _t5_distance_buckets(per_direction: int, max_distance: int) -> np.ndarray:
    """Bucket of each distance ``0 .. max_distance`` (larger distances share the last).

    Evaluated once in float64 so that distances where the formula is an exact integer
    (16, 32, 64 for the default config) never fall a bucket short through float32 `log`.
    """
    n = np.arange(max_distance + 1, dtype=np.float64)
    max_exact = per_direction // 2
    log_ratio = np.log(np.maximum(n, max_exact) / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + np.floor(log_ratio * (per_direction - max_exact))
    buckets = np.where(n < max_exact, n, np.minimum(large, per_direction - 1)).astype(np.int32)
    buckets.setflags(write=False)
    return buckets


@functools.partial(jax.jit, static_argnames=("bidirectional", "num_buckets", "max_distance"))
def _t5_buckets(
    relative_position: jax.Array, *, bidirectional: bool, num_buckets: int, max_distance: int
) -> jax.Array:
    per_direction = num_buckets // 2 if bidirectional else num_buckets
    relative_position = relative_position.astype(jnp.int32)
    if bidirectional:
        # Keys after the query use the upper half of the buckets.
        shift = jnp.where(relative_position > 0, per_direction, 0)
        distance = jnp.abs(relative_position)
    else:
        # Keys after the query all share bucket 0 with distance 0.
        shift = 0
        distance = jnp.maximum(-relative_position, 0)
    table = jnp.asarray(_t5_distance_buckets(per_direction, max_distance))
    return shift + table[jnp.minimum(distance, max_distance)]


def t5_relative_position_bucket(
    relative_position: ArrayLike,
    *,
    bidirectional: bool = True,
    num_buckets: int = 32,
    max_distance: int = 128,
) -> jax.Array:
    r"""T5's relative-position buckets (Raffel et al. 2020; Mesh TF / Hugging Face).

    With ``relative_position = key position - query position``: when ``bidirectional``,
    half the buckets serve keys after the query (offset by ``num_buckets // 2``) and
    distances are absolute; otherwise keys after the query all map to bucket 0. Within a
    direction with :math:`n_b` buckets and :math:`e = \lfloor n_b / 2 \rfloor` exact ones, distance
    :math:`n` maps to

    .. math::

      n \ \text{if } n < e, \quad \text{else} \quad
      \min\left(e + \left\lfloor \frac{\ln(n / e)}{\ln(\mathrm{max\_distance} / e)}
      (n_b - e) \right\rfloor,\ n_b - 1\right).

    The ids equal Hugging Face's ``_relative_position_bucket``; the logarithm is taken in
    float64 at trace time (a table over distances ``0..max_distance``), so boundary
    distances are never off by one from the formula. An odd ``num_buckets`` with
    ``bidirectional`` is allowed as in T5 (the last bucket is then unused).

    Args:
      relative_position: integer array of any shape ``[...]``.
      bidirectional: see above (keyword-only, static).
      num_buckets: total buckets, >= 4 bidirectional or >= 2 otherwise (static).
      max_distance: distances at and beyond it share the last bucket of their direction;
        must exceed the exact range :math:`e` (static).

    Returns:
      int32 array ``[...]`` with values in ``[0, num_buckets)``.
    """
    fn = "t5_relative_position_bucket"
    check_t5_config(num_buckets, max_distance, bidirectional, fn)
    relative_position = int_array(relative_position, "relative_position", fn=fn)
    return _t5_buckets(
        relative_position,
        bidirectional=bidirectional,
        num_buckets=num_buckets,
        max_distance=max_distance,
    )


def t5_relative_bias(
    table: ArrayLike,
    query_positions: ArrayLike,
    key_value_positions: ArrayLike,
    *,
    bidirectional: bool = True,
    max_distance: int = 128,
) -> jax.Array:
    r"""T5 attention bias: a learned table gathered at the bucket of ``k - q``.

    :math:`b[h, i, j] = \mathrm{table}[\mathrm{bucket}(p^k_j - p^q_i), h]` with the buckets of
    :func:`t5_relative_position_bucket` (``num_buckets = table.shape[0]``). As a
    ``bias_fn``: ``functools.partial(t5_relative_bias, table)``.

    Args:
      table: floating ``[num_buckets, N]``.
      query_positions: integer ``[T]`` or ``[B, T]`` (may be traced).
      key_value_positions: integer ``[S]`` or ``[B, S]`` (may be traced).
      bidirectional: keyword-only, static; see :func:`t5_relative_position_bucket`.
      max_distance: keyword-only, static.

    Returns:
      ``[N, T, S]`` (``[B, N, T, S]`` when either positions array is batched) in ``table``'s
      dtype.
    """
    fn = "t5_relative_bias"
    table = float_array(table, "table", fn=fn)
    if table.ndim != 2:
        raise ValueError(f"{fn}: table must be of shape [num_buckets, N], got {describe(table)}.")
    check_t5_config(table.shape[0], max_distance, bidirectional, fn)
    q, k = _positions_pair(query_positions, key_value_positions, fn)
    return _t5_bias(table, q, k, bidirectional=bidirectional, max_distance=max_distance)


@functools.partial(jax.jit, static_argnames=("bidirectional", "max_distance"))
def _t5_bias(table, q, k, *, bidirectional: bool, max_distance: int) -> jax.Array:
    buckets = _t5_buckets(
        _relative(q, k),
        bidirectional=bidirectional,
        num_buckets=table.shape[0],
        max_distance=max_distance,
    )
    return jnp.moveaxis(jnp.take(table, buckets, axis=0), -1, -3)
