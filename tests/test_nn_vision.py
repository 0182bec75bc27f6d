"""VisionTransformer: shapes for every positional encoding and pooling, the first layer's input
and 2-D RoPE attention weights against float64 NumPy, grid-shift invariance of 2-D RoPE,
sown weights and attention rollout, gradients, jit, and the error messages (including
2-D RoPE where it has no meaning: causal attention, caches, token models)."""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from nnx_helpers import dense, fast_jit

import attention_jax as aj
from attention_jax import nn as ajnn

# Non-square images cut into a 2 x 3 grid of 4 x 4 patches.
B, IMG_H, IMG_W, C, P, D, NUM_HEADS, NUM_CLASSES = 2, 8, 12, 3, 4, 16, 2, 5
GRID_H, GRID_W = IMG_H // P, IMG_W // P
L = GRID_H * GRID_W
HEAD_DIM = D // NUM_HEADS


# One jitted forward for every test (compiled once per model structure).
logits_of = fast_jit(lambda model, images: model(images))


def vit(num_layers=1, *, seed=0, **kw):
    return ajnn.VisionTransformer(
        NUM_CLASSES, (IMG_H, IMG_W), P, C, D, num_layers, NUM_HEADS, rngs=nnx.Rngs(seed), **kw
    )


@pytest.fixture(scope="module")
def images():
    return jax.random.normal(jax.random.key(1), (B, IMG_H, IMG_W, C), jnp.float32)


@pytest.fixture(scope="module")
def rope_vit():
    """Two layers, 2-D RoPE, a class token: T = 7 tokens."""
    return vit(2, positional="rope_2d", pooling="cls", seed=4)


@pytest.fixture(scope="module")
def rope_run(rope_vit, images):
    """One jitted pass of ``rope_vit`` with and without sown weights, its first layer's input
    and the rollout of the sown weights."""

    def run(model, images):
        logits, inter = nnx.capture(model, nnx.Intermediate)(images, sow_weights=True)
        weights = sown_weights(inter, model.num_layers)
        return dict(
            plain=model(images),
            logits=logits,
            x=model.embed(images),
            weights=weights,
            rollout=aj.attention_rollout(weights),
        )

    return fast_jit(run)(rope_vit, images)


def forward_shape(model, images, **kw):
    """``model(images, **kw)`` traced (not compiled), with its sown intermediates."""
    graphdef, state = nnx.split(model)

    def run(state, images):
        return nnx.capture(nnx.merge(graphdef, state), nnx.Intermediate)(images, **kw)

    return jax.eval_shape(run, state, images)


def raises(exc, message):
    return pytest.raises(exc, match="^" + re.escape(message) + "$")


def sown_weights(inter, num_layers):
    """The ``[L, B, N, T, T]`` stack of the layers' sown attention weights."""
    blocks = inter["blocks"]
    return jnp.stack(
        [blocks[i]["attention"]["attention_weights"].get_value()[0] for i in range(num_layers)]
    )


# ------------------------------------------------------------------- float64 references


def ref_patchify(images, p):
    """``[B, H, W, C]`` -> ``[B, L, p * p * C]`` by a loop over every pixel (row-major grid,
    each patch flattened as (row-in-patch, col-in-patch, channel))."""
    images = np.asarray(images, np.float64)
    b_, h, w, c_ = images.shape
    gw = w // p
    out = np.zeros((b_, (h // p) * gw, p * p * c_))
    for b, y, x, c in np.ndindex(*images.shape):
        i, u = divmod(y, p)
        j, v = divmod(x, p)
        out[b, i * gw + j, (u * p + v) * c_ + c] = images[b, y, x, c]
    return out


def ref_sinusoidal_2d(gh, gw, d, base=10000.0):
    """Rows in the first ``d / 2`` channels, columns in the second, sin/cos interleaved."""
    out = np.zeros((gh * gw, d))
    for t in range(gh * gw):
        r, c = divmod(t, gw)
        for i in range(d // 4):
            freq = base ** (-4.0 * i / d)
            out[t, 2 * i], out[t, 2 * i + 1] = np.sin(r * freq), np.cos(r * freq)
            half = d // 2
            out[t, half + 2 * i], out[t, half + 2 * i + 1] = np.sin(c * freq), np.cos(c * freq)
    return out


def ref_rope_2d(x, rows, cols, base):
    """Axial 2-D RoPE of ``x [B, T, N, H]``: in the first half of each head the pairs
    ``(i, i + H/4)`` turn by ``row * base^(-4i/H)``, in the second half by ``col * ...``."""
    x = np.asarray(x, np.float64)
    h = x.shape[-1]
    half, quarter = h // 2, h // 4
    out = x.copy()
    for offset, pos in ((0, rows), (half, cols)):
        for i in range(quarter):
            angle = np.asarray(pos, np.float64)[None, :, None] * base ** (-4.0 * i / h)
            a, b = x[..., offset + i], x[..., offset + quarter + i]
            out[..., offset + i] = a * np.cos(angle) - b * np.sin(angle)
            out[..., offset + quarter + i] = b * np.cos(angle) + a * np.sin(angle)
    return out


def ref_layer_norm(norm, x):
    x = np.asarray(x, np.float64)
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    y = (x - mean) / np.sqrt(var + norm.epsilon)
    return y * np.asarray(norm.scale[...], np.float64) + np.asarray(norm.bias[...], np.float64)


# ------------------------------------------------------------------------------ shapes


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("positional", ["learned", "sinusoidal_2d", "rope_2d", "none"])
def test_logits_shape_every_positional_and_pooling(positional, pooling, images):
    model = vit(positional=positional, pooling=pooling)
    tokens = L + (pooling == "cls")
    assert (model.grid_size, model.num_patches, model.num_tokens) == ((GRID_H, GRID_W), L, tokens)
    assert model.config.positional == ("rope_2d" if positional == "rope_2d" else "none")

    logits, _ = forward_shape(model, images)
    assert (logits.shape, logits.dtype) == ((B, NUM_CLASSES), jnp.float32)


def test_rectangular_patches_square_image_and_attention_options():
    # 4 x 6 patches of 2 channels on a 12 x 12 image: a 3 x 2 grid.
    model = ajnn.VisionTransformer(
        NUM_CLASSES,
        12,
        (4, 6),
        2,
        D,
        2,
        NUM_HEADS,
        positional="rope_2d",
        qk_norm=True,
        value_residual=True,
        rngs=nnx.Rngs(0),
    )
    assert (model.image_size, model.patch_size, model.grid_size) == ((12, 12), (4, 6), (3, 2))
    cfg = model.blocks[1].attention.config
    assert (cfg.head_dim, cfg.qk_norm, cfg.value_residual, cfg.rope_base) == (8, True, True, 100.0)
    logits = logits_of(model, jax.random.normal(jax.random.key(2), (B, 12, 12, 2)))
    chex.assert_shape(logits, (B, NUM_CLASSES))
    chex.assert_tree_all_finite(logits)


# ------------------------------------------------------------------- first layer input


@pytest.mark.parametrize(
    "positional, pooling", [("none", "mean"), ("learned", "cls"), ("sinusoidal_2d", "cls")]
)
def test_first_layer_input_equals_numpy_reference(positional, pooling, images):
    model = vit(positional=positional, pooling=pooling, seed=3)
    want = dense(model.patch_embedding, ref_patchify(images, P))  # [B, L, D]
    if positional == "sinusoidal_2d":
        want = want + ref_sinusoidal_2d(GRID_H, GRID_W, D)
    if pooling == "cls":  # the class token first; it gets no sinusoidal encoding
        cls = np.asarray(model.cls_token[...], np.float64)
        want = np.concatenate([np.broadcast_to(cls, (B, 1, D)), want], 1)
    if positional == "learned":
        want = want + np.asarray(model.position.embedding[...], np.float64)
    got = model.embed(images)
    chex.assert_shape(got, want.shape)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------ 2-D RoPE


def test_rope_2d_attention_weights_equal_numpy_reference(rope_vit, rope_run):
    # A class token at (0, 0) and 6 patches on the 2 x 3 grid: the first layer's sown
    # weights are softmax(rope2d(q) . rope2d(k) / sqrt(H)) of the first block's input.
    x, weights = rope_run["x"], rope_run["weights"][0]
    block = rope_vit.blocks[0]
    attention = block.attention
    h = ref_layer_norm(block.attention_norm, x)
    t = L + 1
    q = dense(attention.query, h).reshape(B, t, NUM_HEADS, HEAD_DIM)
    k = dense(attention.key, h).reshape(B, t, NUM_HEADS, HEAD_DIM)
    rows = np.array([0] + [i // GRID_W for i in range(L)])
    cols = np.array([0] + [i % GRID_W for i in range(L)])
    q, k = ref_rope_2d(q, rows, cols, 100.0), ref_rope_2d(k, rows, cols, 100.0)
    logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(HEAD_DIM)
    want = np.exp(logits - logits.max(-1, keepdims=True))
    want /= want.sum(-1, keepdims=True)
    chex.assert_shape(weights, (B, NUM_HEADS, t, t))
    np.testing.assert_allclose(weights, want, atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(rope_vit.token_positions(), np.stack([rows, cols], -1))


def test_rope_2d_block_depends_only_on_relative_grid_positions():
    config = ajnn.AttentionConfig(num_heads=NUM_HEADS, head_dim=HEAD_DIM, positional="rope_2d")
    block = ajnn.TransformerBlock(D, config, rngs=nnx.Rngs(5))
    x = jax.random.normal(jax.random.key(6), (B, L, D))
    rows, cols = aj.grid_positions(GRID_H, GRID_W)
    grid = jnp.stack([rows, cols], -1)  # [T, 2]
    shifted = jnp.broadcast_to(grid + jnp.array([3, 5]), (B, L, 2))  # [B, T, 2]

    def run(block, x):
        return block(x, positions=grid), block(x, positions=shifted)

    base, moved = fast_jit(run)(block, x)
    chex.assert_trees_all_close(moved, base, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ weights and rollout


def test_sown_weights_feed_attention_rollout(rope_vit, rope_run):
    num_layers, t = 2, L + 1  # the class token and the patches
    weights, rollout = rope_run["weights"], rope_run["rollout"]
    chex.assert_trees_all_close(rope_run["logits"], rope_run["plain"], atol=1e-6, rtol=1e-6)
    chex.assert_shape(weights, (num_layers, B, NUM_HEADS, t, t))
    chex.assert_trees_all_close(weights.sum(-1), jnp.ones(weights.shape[:-1]), atol=1e-5)
    chex.assert_shape(rollout, (B, t, t))
    chex.assert_trees_all_close(rollout.sum(-1), jnp.ones((B, t)), atol=1e-5)
    assert np.all(np.asarray(rollout) >= 0)


def test_sown_weights_without_class_token_cover_the_patches(images):
    model = vit(2, positional="learned", pooling="mean")
    _, inter = forward_shape(model, images, sow_weights=True)
    weights = [inter["blocks"][i]["attention"]["attention_weights"].get_value() for i in (0, 1)]
    assert [w[0].shape for w in weights] == [(B, NUM_HEADS, L, L)] * 2
    graphdef, state = nnx.split(model)
    hidden = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s).encode(x), state, images)
    assert hidden.shape == (B, L, D)


# ------------------------------------------------------------------- gradients and jit


def test_gradients_are_finite_with_dropout(images):
    model = vit(positional="rope_2d", dropout=0.1, seed=8)
    labels = jnp.array([1, 4])

    def run(model, images, labels):
        def loss(model):
            logits = model(images, deterministic=False)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        return nnx.grad(loss)(model)

    grads = fast_jit(run)(model, images, labels)
    leaves = jax.tree.leaves(nnx.state(grads, nnx.Param))
    assert leaves and all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    for grad in (grads["patch_embedding"]["kernel"], grads["cls_token"]):
        assert float(jnp.abs(grad[...]).max()) > 0


class JitTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_jit_and_eager_agree(self):
        model = vit(positional="rope_2d", seed=9)
        images = jax.random.normal(jax.random.key(10), (B, IMG_H, IMG_W, C))
        graphdef, state = nnx.split(model)

        def forward(state, images):
            return nnx.merge(graphdef, state)(images)

        got = self.variant(forward)(state, images)
        chex.assert_shape(got, (B, NUM_CLASSES))
        chex.assert_tree_all_finite(got)
        want = logits_of(model, images)
        chex.assert_trees_all_close(got, want, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------ errors


def test_wrong_image_size_names_the_expected_shape(images):
    model = vit()
    expected = f"[B, H, W, C]=(B, {IMG_H}, {IMG_W}, {C})"
    for bad in (images[:, :, :8], images[..., :1], images[0]):
        with raises(
            ValueError,
            f"VisionTransformer: images must be of shape {expected}, got float32 array of "
            f"shape {tuple(bad.shape)}.",
        ):
            model(bad)
    with raises(
        ValueError,
        f"VisionTransformer.embed: images must be of shape {expected}, got float32 array of "
        "shape (2, 12, 8, 3).",
    ):
        model.embed(jnp.swapaxes(images, 1, 2))
    with raises(
        TypeError,
        "VisionTransformer: images must be a floating-point array, got int32 array of shape "
        f"(2, {IMG_H}, {IMG_W}, {C}).",
    ):
        model(jnp.zeros(images.shape, jnp.int32))


@pytest.mark.parametrize(
    "args, kw, message",
    [
        (
            dict(patch_size=5),
            {},
            "image_size must be divisible by patch_size (5, 5), got (8, 12).",
        ),
        (
            dict(image_size=(8, 0)),
            {},
            "image_size must be an int >= 1 or a (height, width) pair of them, got (8, 0).",
        ),
        (
            {},
            dict(positional="rope"),
            "positional must be one of ('learned', 'sinusoidal_2d', 'rope_2d', 'none'), "
            "got 'rope'.",
        ),
        ({}, dict(pooling="attention"), "pooling must be one of ('cls', 'mean'), got 'attention'."),
        (
            dict(d_model=18, num_heads=3),
            dict(positional="sinusoidal_2d"),
            "d_model must be a multiple of 4 with positional='sinusoidal_2d' (sin/cos pairs for "
            "rows and for columns), got 18.",
        ),
        (
            dict(d_model=12),
            dict(positional="rope_2d"),
            "head_dim must be a multiple of 4 with positional='rope_2d' (half of the rotated "
            "pairs turn with the row, half with the column), got 6.",
        ),
        (
            {},
            dict(attention="forgetting"),
            "attention must not be 'forgetting' in a bidirectional encoder (it is defined "
            "causally), got 'forgetting'.",
        ),
    ],
)
def test_constructor_messages(args, kw, message):
    full = dict(
        num_classes=NUM_CLASSES,
        image_size=(IMG_H, IMG_W),
        patch_size=P,
        channels=C,
        d_model=D,
        num_layers=1,
        num_heads=NUM_HEADS,
    )
    with raises(ValueError, "VisionTransformer: " + message):
        ajnn.VisionTransformer(**(full | args), rngs=nnx.Rngs(0), **kw)


@pytest.mark.parametrize(
    "kw, message",
    [
        (
            dict(local_window_size=2),
            "local_window_size must be None with positional='rope_2d' (axial 2-D RoPE rotates "
            "whole heads at (row, col) positions), got (2, 2).",
        ),
        (
            dict(rope_fraction=0.5),
            "rope_fraction must be 1.0 with positional='rope_2d' (axial 2-D RoPE rotates whole "
            "heads at (row, col) positions), got 0.5.",
        ),
        (
            dict(attention="mla", kv_latent_dim=8),
            "attention must be 'softmax' with positional='rope_2d' (the variants place tokens "
            "at 1-D positions), got 'mla'.",
        ),
    ],
)
def test_rope_2d_config_rules(kw, message):
    with raises(ValueError, "AttentionConfig: " + message):
        ajnn.AttentionConfig(num_heads=NUM_HEADS, head_dim=HEAD_DIM, positional="rope_2d", **kw)


def test_rope_2d_is_rejected_where_positions_are_1d():
    # Token models (the causal LM among them) take 1-D positions only.
    with raises(
        ValueError,
        "TransformerConfig: positional must be one of ('learned', 'sinusoidal', 'rope', "
        "'alibi', 't5', 'none') (token positions are 1-D; 'rope_2d' places image patches on a "
        "2-D grid: VisionTransformer), got 'rope_2d'.",
    ):
        ajnn.TransformerConfig(
            vocab_size=8, d_model=D, num_layers=1, num_heads=2, max_len=8, positional="rope_2d"
        )
    layer = ajnn.MultiHeadAttention.create(D, NUM_HEADS, positional="rope_2d", rngs=nnx.Rngs(0))
    x = jnp.zeros((B, L, D))
    grid = jnp.stack(aj.grid_positions(GRID_H, GRID_W), -1)
    with raises(
        ValueError,
        "MultiHeadAttention: is_causal must be False with positional='rope_2d' (tokens on a "
        "2-D grid have no causal order), got True.",
    ):
        layer(x, query_positions=grid, is_causal=True)
    with raises(
        ValueError,
        "MultiHeadAttention.init_cache: a positional='rope_2d' layer has no cache (cached "
        "decoding appends tokens at 1-D positions; a patch grid is attended to whole).",
    ):
        layer.init_cache(B, L)
    cache = ajnn.MultiHeadAttention.create(D, NUM_HEADS, rngs=nnx.Rngs(0)).init_cache(B, L)
    with raises(
        ValueError,
        "MultiHeadAttention: cache must be None with positional='rope_2d' (cached decoding "
        "appends tokens at 1-D positions), got AttentionCache.",
    ):
        layer(x, query_positions=grid, cache=cache)
    rule = f"an integer array of shape [{L}, 2] or [{B}, {L}, 2] (row, col)"
    with raises(ValueError, f"MultiHeadAttention: query_positions must be {rule}, got None."):
        layer(x)
    with raises(
        ValueError,
        f"MultiHeadAttention: query_positions must be {rule}, got int32 array of shape ({L},).",
    ):
        layer(x, query_positions=jnp.arange(L))
    with raises(
        ValueError, f"MultiHeadAttention.project_query: query_positions must be {rule}, got None."
    ):
        layer.project_query(x)
