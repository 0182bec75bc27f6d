"""The Vision Transformer: images as sequences of patches through the library's encoder blocks.

Shape letters: ``B`` batch, ``H, W, C`` image height, width, channels, ``p_h, p_w`` patch
size, ``L = (H / p_h) (W / p_w)`` patches, ``T`` tokens (``L``, or ``L + 1`` with a class
token), ``D`` model width, ``N`` heads, ``K`` classes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from attention_jax._checks import check_choice, check_int, check_positive, check_rate, describe
from attention_jax.nn.block import TransformerBlock, make_norm
from attention_jax.nn.checks import check_images
from attention_jax.nn.config import CAUSAL_ONLY_ATTENTION, AttentionConfig
from attention_jax.nn.dense import Dense
from attention_jax.nn.positional import LearnedPositionalEmbedding
from attention_jax.positional import grid_positions, sinusoidal_encoding_2d
from attention_jax.vision import _pair, patchify

__all__ = ["VIT_POOLINGS", "VIT_POSITIONALS", "VisionTransformer"]

VIT_POSITIONALS = ("learned", "sinusoidal_2d", "rope_2d", "none")
VIT_POOLINGS = ("cls", "mean")


class VisionTransformer(nnx.Module):
    r"""Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words"):
    images ``[B, H, W, C]`` -> class logits ``[B, K]``.

    The forward pass, every piece of it one the library already has:

    1. :func:`attention_jax.vision.patchify`: ``[B, H, W, C]`` -> ``[B, L, p_h p_w C]``,
       patches in row-major grid order; the patch embedding is an ``nnx.Linear`` of it
       (the paper's linear projection ``E``, equal to a stride-``p`` convolution).
    2. ``pooling="cls"``: a learned class token is prepended (token 0, so ``T = L + 1``);
       ``"mean"``: none (``T = L``), the output averages the patch tokens.
    3. Positions (``positional``):

       * ``"learned"``: a learned table ``[T, D]``
         (:class:`attention_jax.nn.LearnedPositionalEmbedding`) added to the tokens, the
         class token included (the paper's ``E_pos``).
       * ``"sinusoidal_2d"``: the fixed :func:`attention_jax.sinusoidal_encoding_2d` table of
         the ``(H / p_h) x (W / p_w)`` grid added to the patch embeddings; the class token
         gets zeros (as MAE). ``D`` must be a multiple of 4.
       * ``"rope_2d"``: nothing is added; every layer's attention rotates q and k with
         axial 2-D RoPE (Heo et al. 2024, "Rotary Position Embedding for Vision
         Transformer"; :func:`attention_jax.apply_rope_2d`) at each token's ``(row, col)``
         on the patch grid (:func:`attention_jax.grid_positions`), through the layers'
         ``AttentionConfig(positional="rope_2d")``. The class token sits at ``(0, 0)``:
         its rotation is the identity, the same as leaving it unrotated as the paper's
         code does, and it sees a patch at ``(r, c)`` at the offset ``(-r, -c)``.
         ``head_dim`` must be a multiple of 4; ``rope_base`` defaults to the paper's 100.
       * ``"none"``: no position information (a bag of patches).

       then embedding dropout.
    4. ``num_layers`` bidirectional :class:`attention_jax.nn.TransformerBlock` built from
       one :class:`attention_jax.nn.AttentionConfig` (the encoder's blocks: pre-norm by
       default, MLP width ``mlp_ratio * D``), a final norm (pre-norm), pooling, and the
       linear head: float32 logits ``[B, K]``.

    Attention weights are sown as in the other models: with ``sow_weights=True`` every
    layer's ``[B, N, T, T]`` weights become ``nnx.Intermediate`` ``"attention_weights"``, e.g.
    for :func:`attention_jax.attention_rollout` (row 0 of the rollout with
    ``pooling="cls"`` is the class token's map over the patches)::

        logits, inter = nnx.capture(vit, nnx.Intermediate)(images, sow_weights=True)
        weights = jnp.stack(
            [inter["blocks"][i]["attention"]["attention_weights"].get_value()[0]
             for i in range(vit.num_layers)]
        )  # [num_layers, B, N, T, T]
        rollout = aj.attention_rollout(weights)  # [B, T, T]

    Args:
      num_classes: ``K``.
      image_size: ``(H, W)``, or an int for square images.
      patch_size: ``p`` (square patches) or ``(p_h, p_w)``; must divide ``image_size``.
      channels: ``C``.
      d_model: ``D``.
      num_layers: number of blocks.
      num_heads: ``N``.
      positional: ``"learned"``, ``"sinusoidal_2d"``, ``"rope_2d"`` or ``"none"`` (above).
      pooling: ``"cls"`` (class token) or ``"mean"`` (average of the patch tokens).
      mlp_ratio: MLP hidden width is ``int(mlp_ratio * D)``.
      mlp: ``"gelu"`` (the paper's), ``"swiglu"``, ``"relu"`` or ``"none"``.
      norm: ``"layernorm"`` (the paper's) or ``"rmsnorm"``.
      prenorm: pre-norm blocks and a final norm (the paper's), or post-norm blocks.
      dropout: embedding and residual dropout rate (attention-weight dropout is the
        ``attention_dropout`` option).
      rngs: ``nnx.Rngs`` (``params``; ``dropout`` when a dropout rate is > 0).
      **attention_options: the other :class:`attention_jax.nn.AttentionConfig` fields of
        every layer (``head_dim``, default ``D // N``; ``num_kv_heads``, ``qk_norm``,
        ``use_bias``, ``attention_dropout``, ``rope_base``, ``dtype``, ``param_dtype``,
        ``sinks``, ``attention_gate``, ...); the patch embedding, norms and head take its
        ``dtype`` and ``param_dtype``. The causal-only kinds (forgetting, stick-breaking,
        the linear mixers) are rejected.

    Attributes:
      patch_embedding: ``nnx.Linear`` ``[p_h p_w C, D]``.
      cls_token: ``nnx.Param`` ``[D]`` (``pooling="cls"``) or None.
      position: :class:`LearnedPositionalEmbedding` ``[T, D]`` (``"learned"``) or None.
      blocks: ``nnx.List`` of :class:`TransformerBlock`.
      final_norm: the norm of a pre-norm stack, or None.
      head: ``nnx.Linear`` ``[D, K]``.
      config: the layers' :class:`AttentionConfig`.
      grid_size: ``(H / p_h, W / p_w)``; ``num_patches`` ``L`` and ``num_tokens`` ``T``.

    Raises:
      ValueError: in the shared style, naming ``VisionTransformer`` and the argument, e.g. a
        patch size that does not divide the image size, ``D`` not a multiple of 4 with
        ``"sinusoidal_2d"``, ``head_dim`` not a multiple of 4 with ``"rope_2d"``.
    """

    def __init__(
        self,
        num_classes: int,
        image_size: int | tuple[int, int],
        patch_size: int | tuple[int, int],
        channels: int,
        d_model: int,
        num_layers: int,
        num_heads: int,
        *,
        positional: str = "learned",
        pooling: str = "cls",
        mlp_ratio: float = 4.0,
        mlp: str = "gelu",
        norm: str = "layernorm",
        prenorm: bool = True,
        dropout: float = 0.0,
        rngs: nnx.Rngs,
        **attention_options,
    ):
        fn = "VisionTransformer"
        self.num_classes = check_int(num_classes, "num_classes", fn=fn)
        self.channels = check_int(channels, "channels", fn=fn)
        self.d_model = check_int(d_model, "d_model", fn=fn)
        self.num_layers = check_int(num_layers, "num_layers", fn=fn)
        num_heads = check_int(num_heads, "num_heads", fn=fn)
        self.positional = check_choice(positional, "positional", VIT_POSITIONALS, fn=fn)
        self.pooling = check_choice(pooling, "pooling", VIT_POOLINGS, fn=fn)
        check_positive(mlp_ratio, "mlp_ratio", fn=fn)
        dropout = check_rate(dropout, "dropout", fn=fn)
        if not isinstance(prenorm, bool):
            raise ValueError(f"{fn}: prenorm must be a bool, got {describe(prenorm)}.")

        self.image_size = _pair(image_size, "image_size", fn)
        self.patch_size = _pair(patch_size, "patch_size", fn)
        (height, width), (ph, pw) = self.image_size, self.patch_size
        if height % ph or width % pw:
            raise ValueError(
                f"{fn}: image_size must be divisible by patch_size {(ph, pw)}, got "
                f"{(height, width)}."
            )
        self.grid_size = (height // ph, width // pw)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.num_tokens = self.num_patches + int(pooling == "cls")
        if positional == "sinusoidal_2d" and d_model % 4:
            raise ValueError(
                f"{fn}: d_model must be a multiple of 4 with positional='sinusoidal_2d' "
                f"(sin/cos pairs for rows and for columns), got {d_model}."
            )

        if "head_dim" not in attention_options and d_model % num_heads:
            raise ValueError(
                f"{fn}: d_model must be divisible by num_heads={num_heads} when head_dim is "
                f"not given, got {d_model}."
            )
        options = {"head_dim": d_model // num_heads, **attention_options}
        if positional == "rope_2d":
            options.setdefault("rope_base", 100.0)  # Heo et al. 2024: short patch grids
        config = AttentionConfig.checked(
            fn,
            num_heads=num_heads,
            positional="rope_2d" if positional == "rope_2d" else "none",
            **options,
        )
        if config.attention in CAUSAL_ONLY_ATTENTION:
            raise ValueError(
                f"{fn}: attention must not be {config.attention!r} in a bidirectional encoder "
                f"(it is defined causally), got {config.attention!r}."
            )
        mlp_hidden = int(mlp_ratio * d_model)
        if mlp_hidden < 1:
            raise ValueError(
                f"{fn}: mlp_ratio must give an MLP width int(mlp_ratio * d_model) >= 1, got "
                f"{mlp_ratio!r}."
            )
        self.config = config

        kw = dict(dtype=config.dtype, param_dtype=config.param_dtype, rngs=rngs)
        self.patch_embedding = Dense(ph * pw * self.channels, d_model, **kw)
        init = nnx.initializers.normal(stddev=0.02)
        self.cls_token = (
            nnx.Param(init(rngs.params(), (d_model,), config.param_dtype))
            if pooling == "cls"
            else None
        )
        self.position = (
            LearnedPositionalEmbedding(
                self.num_tokens, d_model, rngs=rngs, param_dtype=config.param_dtype
            )
            if positional == "learned"
            else None
        )
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.blocks = nnx.List(
            [
                TransformerBlock(
                    d_model,
                    config,
                    mlp_hidden=mlp_hidden,
                    mlp=mlp,
                    norm=norm,
                    prenorm=prenorm,
                    dropout=dropout,
                    layer_index=i,
                    rngs=rngs,
                )
                for i in range(self.num_layers)
            ]
        )
        self.final_norm = make_norm(norm, d_model, **kw, fn=fn) if prenorm else None
        self.head = Dense(d_model, self.num_classes, **kw)

    def token_positions(self) -> jax.Array:
        """The ``(row, col)`` of every token on the patch grid, int32 ``[T, 2]``: patches in
        row-major order (:func:`attention_jax.grid_positions`), the class token (first, with
        ``pooling="cls"``) at ``(0, 0)``. ``positional="rope_2d"`` rotates q and k at these."""
        positions = jnp.stack(grid_positions(*self.grid_size), axis=-1)
        if self.cls_token is not None:
            positions = jnp.concatenate([jnp.zeros((1, 2), jnp.int32), positions])
        return positions

    def embed(
        self,
        images: jax.Array,
        *,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:
        """The input of the first block: ``images [B, H, W, C]`` -> ``[B, T, D]`` (patch
        embedding, class token, absolute positions, dropout)."""
        images = self._check_images(images, "VisionTransformer.embed")
        return self._embed(images, deterministic, rngs)

    def encode(
        self,
        images: jax.Array,
        *,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
        sow_weights: bool = False,
    ) -> jax.Array:
        """``images [B, H, W, C]`` -> the final hidden states ``[B, T, D]`` (after the final
        norm of a pre-norm stack; token 0 is the class token with ``pooling="cls"``)."""
        images = self._check_images(images, "VisionTransformer.encode")
        return self._encode(images, deterministic, rngs, sow_weights)

    def __call__(
        self,
        images: jax.Array,
        *,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
        sow_weights: bool = False,
    ) -> jax.Array:
        """Classifies images.

        Args:
          images: floating ``[B, H, W, C]`` with ``(H, W) = image_size`` and ``C = channels``.
          deterministic: disable dropout (default). Training passes ``False``.
          rngs: dropout randomness (default: the modules' own ``dropout`` streams).
          sow_weights: sow every layer's attention weights ``[B, N, T, T]``
            (``nnx.Intermediate`` ``"attention_weights"``; collect them with
            ``nnx.capture(model, nnx.Intermediate)``).

        Returns:
          float32 logits ``[B, K]``.

        Raises:
          TypeError: ``images`` not floating.
          ValueError: ``images`` not of shape ``[B, H, W, C]`` for this model, e.g.
            ``"VisionTransformer: images must be of shape [B, H, W, C]=(B, 32, 32, 3), got
            float32 array of shape (2, 16, 16, 3)."``
        """
        images = self._check_images(images, "VisionTransformer")
        h = self._encode(images, deterministic, rngs, sow_weights)
        if self.pooling == "cls":
            pooled = h[:, 0]
        else:
            pooled = jnp.mean(h.astype(jnp.float32), axis=1).astype(h.dtype)
        return self.head(pooled).astype(jnp.float32)

    def _check_images(self, images, fn: str) -> jax.Array:
        (height, width), c = self.image_size, self.channels
        return check_images(images, "images", fn=fn, height=height, width=width, channels=c)

    def _embed(self, images, deterministic, rngs) -> jax.Array:
        x = self.patch_embedding(patchify(images, self.patch_size))  # [B, L, D]
        if self.positional == "sinusoidal_2d":
            table = sinusoidal_encoding_2d(*self.grid_size, self.d_model)  # [L, D]
            x = x + table.astype(x.dtype)
        if self.cls_token is not None:
            cls = self.cls_token[...].astype(x.dtype)
            x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.d_model)), x], 1)
        if self.position is not None:
            x = x + self.position(jnp.arange(self.num_tokens)).astype(x.dtype)
        return self.dropout(x, deterministic=deterministic, rngs=rngs)

    def _encode(self, images, deterministic, rngs, sow_weights) -> jax.Array:
        x = self._embed(images, deterministic, rngs)
        positions = self.token_positions() if self.positional == "rope_2d" else None
        value_residual = self.config.value_residual
        first_values = None
        for i, block in enumerate(self.blocks):
            x = block(
                x,
                positions=positions,
                first_values=first_values,
                return_values=value_residual and i == 0,
                deterministic=deterministic,
                rngs=rngs,
                sow_weights=sow_weights,
            )
            if value_residual and i == 0:
                x, first_values = x
        return x if self.final_norm is None else self.final_norm(x)
