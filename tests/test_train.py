"""Tests of attention_jax.train on a tiny stand-in model (any NNX inputs -> logits module)."""

import functools
import json
import math
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import script_helpers
from flax import nnx

from attention_jax import train as T
from attention_jax.data import random_windows

VOCAB = 11
REPO = pathlib.Path(__file__).resolve().parents[1]


class Tiny(nnx.Module):
    """Embedding -> causal running mean -> GELU MLP -> logits, with dropout (holds an Rngs)."""

    def __init__(self, vocab=VOCAB, d=16, *, rngs):
        self.embed = nnx.Embed(vocab, d, rngs=rngs)
        self.hidden = nnx.Linear(d, d, rngs=rngs)
        self.norm = nnx.LayerNorm(d, rngs=rngs)
        self.drop = nnx.Dropout(0.1, rngs=rngs)
        self.out = nnx.Linear(d, vocab, rngs=rngs)

    def __call__(self, x, *, deterministic=True, rngs=None):
        h = self.embed(x)
        h = h + jnp.cumsum(h, axis=1) / jnp.arange(1, x.shape[1] + 1)[:, None]
        h = self.drop(jax.nn.gelu(self.hidden(h)), deterministic=deterministic, rngs=rngs)
        return self.out(self.norm(h))


@functools.cache
def make_tx(lr, accumulate_steps, weight_decay):
    # One transformation object per setting: equal (model, optimizer) graphs let the tests
    # share compiled steps.
    return T.make_optimizer(
        lr,
        warmup_steps=3,
        decay_steps=40,
        end_lr=lr / 10,
        weight_decay=weight_decay,
        accumulate_steps=accumulate_steps,
    )


def make(seed=0, *, lr=1e-2, accumulate_steps=1, weight_decay=0.1):
    model = Tiny(rngs=nnx.Rngs(seed))
    return model, nnx.Optimizer(model, make_tx(lr, accumulate_steps, weight_decay), wrt=nnx.Param)


@nnx.jit
def eval_loss(model, batch):
    return T.lm_loss(model, batch)[0]


DATA = jax.random.randint(jax.random.key(1), (2000,), 0, VOCAB, dtype=jnp.int32)


def batch_fn(step, data):
    return random_windows(
        jax.random.fold_in(jax.random.key(7), step), data, batch_size=8, block_size=12
    )


def params_of(model):
    return jax.tree.leaves(nnx.state(model, nnx.Param))


def max_diff(a, b):
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(a, b, strict=True))


# ------------------------------------------------------------------------- optimizer


def nanogpt_lr(it, lr, warmup, decay, min_lr):
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if it > decay:
        return min_lr
    ratio = (it - warmup) / (decay - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def test_schedule_matches_nanogpt():
    sched = T.make_schedule(1e-3, warmup_steps=100, decay_steps=2000, end_lr=1e-4)
    for it in [0, 1, 50, 99, 100, 101, 500, 1000, 1999, 2000, 2001, 5000]:
        assert float(sched(it)) == pytest.approx(nanogpt_lr(it, 1e-3, 100, 2000, 1e-4), rel=1e-5)


def test_decay_mask_two_dim_only():
    model = Tiny(rngs=nnx.Rngs(0))
    mask = nnx.to_pure_dict(T.decay_mask(nnx.state(model, nnx.Param)))
    assert mask["hidden"]["kernel"] and mask["out"]["kernel"] and mask["embed"]["embedding"]
    assert not mask["hidden"]["bias"] and not mask["norm"]["scale"] and not mask["norm"]["bias"]
    no_embed = nnx.to_pure_dict(T.decay_mask(nnx.state(model, nnx.Param), exclude=("embed",)))
    assert not no_embed["embed"]["embedding"] and no_embed["out"]["kernel"]


def test_weight_decay_only_on_masked_params():
    # With zero gradients Adam's step is 0, so the update is exactly -lr * wd * p on the
    # decayed parameters and nothing elsewhere.
    model, opt = make(weight_decay=0.5)
    before = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    zeros = jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param))
    nnx.jit(lambda m, o, g: o.update(m, g))(model, opt, zeros)
    after = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    lr0 = 1e-2 / 4  # first warmup step: lr * 1 / (warmup + 1)
    np.testing.assert_allclose(
        after["hidden"]["kernel"], before["hidden"]["kernel"] * (1 - lr0 * 0.5), rtol=1e-6
    )
    np.testing.assert_allclose(after["hidden"]["bias"], before["hidden"]["bias"])
    np.testing.assert_allclose(after["norm"]["scale"], before["norm"]["scale"])


def test_clipping_bounds_update():
    tx = T.make_optimizer(
        1.0, warmup_steps=0, decay_steps=1, end_lr=1.0, weight_decay=0.0, clip_norm=1.0
    )
    params = {"w": jnp.zeros((3, 3))}
    state = tx.init(params)
    big = {"w": jnp.full((3, 3), 1e6)}
    small = {"w": jnp.full((3, 3), 1e6 / 1e6 / 3)}  # global norm exactly 1
    u_big, _ = tx.update(big, state, params)
    u_small, _ = tx.update(small, tx.init(params), params)
    np.testing.assert_allclose(u_big["w"], u_small["w"], rtol=1e-5)


# ------------------------------------------------------------------------------ loss


def test_cross_entropy_with_mask_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 7)).astype(np.float32)
    targets = rng.integers(0, 7, size=(3, 5))
    mask = rng.random((3, 5)) < 0.5
    mask[0, 0] = True
    x = logits.astype(np.float64)
    logp = (
        x
        - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - x.max(-1, keepdims=True)
    )
    nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    loss, n = T.cross_entropy(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask))
    assert float(n) == mask.sum()
    np.testing.assert_allclose(float(loss), nll[mask].mean(), rtol=1e-6)
    loss_all, _ = T.cross_entropy(jnp.asarray(logits), jnp.asarray(targets))
    np.testing.assert_allclose(float(loss_all), nll.mean(), rtol=1e-6)
    empty, n0 = T.cross_entropy(jnp.asarray(logits), jnp.asarray(targets), jnp.zeros((3, 5), bool))
    assert float(empty) == 0.0 and float(n0) == 0.0


def test_masked_positions_get_no_gradient():
    model, _ = make()
    x = jax.random.randint(jax.random.key(0), (2, 6), 0, VOCAB)
    y = jnp.roll(x, -1, axis=1)
    mask = jnp.zeros((2, 6), bool).at[:, :3].set(True)
    y_changed = y.at[:, 3:].set((y[:, 3:] + 1) % VOCAB)  # differs only where masked off

    @nnx.jit
    def grads(model, targets):
        return nnx.grad(lambda m: T.lm_loss(m, (x, targets, mask))[0])(model)

    assert (
        max_diff(jax.tree.leaves(grads(model, y)), jax.tree.leaves(grads(model, y_changed))) == 0.0
    )


# ------------------------------------------------------------------------------ step


def test_loss_decreases_on_fixed_batch():
    model, opt = make()
    batch = batch_fn(0, DATA)
    step = T.TrainStep(model, opt)
    losses = [float(step(i, batch)["loss"]) for i in range(40)]
    assert losses[-1] < 0.7 * losses[0]
    step.sync()
    assert float(eval_loss(model, batch)) < 0.7 * losses[0]


def test_gradient_accumulation_equals_big_batch():
    big_model, big_opt = make(accumulate_steps=1)
    acc_model, acc_opt = make(accumulate_steps=2)
    x, y = random_windows(jax.random.key(3), DATA, batch_size=8, block_size=12)
    big = T.TrainStep(big_model, big_opt)
    acc = T.TrainStep(acc_model, acc_opt)
    for i in range(3):
        xi, yi = random_windows(jax.random.key(i), DATA, batch_size=8, block_size=12)
        big(i, (xi, yi))
        acc(2 * i, (xi[:4], yi[:4]))
        acc(2 * i + 1, (xi[4:], yi[4:]))
    big.sync()
    acc.sync()
    assert max_diff(params_of(big_model), params_of(acc_model)) < 1e-6
    del x, y


def test_dropout_rng_is_a_function_of_the_step():
    model_a, opt_a = make()
    model_b, opt_b = make()
    key = jax.random.key(5)
    a = T.TrainStep(model_a, opt_a, batch_fn=batch_fn)
    b = T.TrainStep(model_b, opt_b, batch_fn=batch_fn)
    la = [float(a(i, DATA, key)["loss"]) for i in range(3)]
    lb = [float(b(i, DATA, key)["loss"]) for i in range(3)]
    assert la == lb
    mean_loss = T.make_eval_fn(batch_fn, num_batches=3)
    model_c, _ = make()
    manual = np.mean([float(eval_loss(model_c, batch_fn(i, DATA))) for i in range(3)])
    np.testing.assert_allclose(float(mean_loss(model_c, DATA)), manual, rtol=1e-6)


# ------------------------------------------------------------------- loop, checkpoints


def run(tmp, steps, *, resume=False, seed=0, **kw):
    model, opt = make(seed)
    res = T.train(
        model,
        opt,
        batch_fn,
        data=DATA,
        steps=steps,
        rng=jax.random.key(11),
        checkpoint_dir=None if tmp is None else str(tmp / "ckpt"),
        log_dir=None if tmp is None else str(tmp / "logs"),
        resume=resume,
        progress=False,
        metadata={"seed": seed},
        **kw,
    )
    return model, res


def test_resume_equals_uninterrupted(tmp_path):
    ref_model, ref = run(None, 20, log_interval=3)
    run(tmp_path, 10, log_interval=3)
    model, res = run(tmp_path, 20, resume=True, log_interval=3)
    assert res.start_step == 10
    _, ref_losses = ref.series("train/loss")
    steps, losses = res.series("train/loss")
    assert steps == list(range(20))  # records of the first part are kept
    np.testing.assert_allclose(losses, ref_losses, atol=1e-6)
    assert abs(losses[-1] - ref_losses[-1]) <= 1e-6
    assert max_diff(params_of(model), params_of(ref_model)) <= 1e-6
    lines = (tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == list(range(20))


def test_keep_last_k_and_files(tmp_path):
    _, res = run(tmp_path, 10, checkpoint_interval=2, max_to_keep=3, log_interval=4)
    assert T.Checkpointer(tmp_path / "ckpt").all_steps() == [6, 8, 10]
    assert res.checkpoints == [2, 4, 6, 8, 10]
    logs = tmp_path / "logs"
    assert (logs / "loss.png").stat().st_size > 0
    assert list(logs.glob("events.out.tfevents.*"))
    assert len(T.read_jsonl(logs / "metrics.jsonl")) == 10
    assert res.compile_seconds > 0 and res.tokens_per_step == 8 * 12


def test_incomplete_checkpoint_is_ignored(tmp_path):
    run(tmp_path, 4, checkpoint_interval=2)
    # A save interrupted mid-write leaves orbax's temporary directory behind.
    stray = tmp_path / "ckpt" / "6.orbax-checkpoint-tmp-1700000000"
    (stray / "state").mkdir(parents=True)
    (stray / "state" / "garbage").write_bytes(b"\x00" * 10)
    ckpt = T.Checkpointer(tmp_path / "ckpt")
    assert ckpt.latest_step() == 4
    model, opt = make()
    state, meta = ckpt.restore(nnx.state((model, opt)))
    assert meta["step"] == 4 and meta["seed"] == 0
    ckpt.close()
    _, res = run(tmp_path, 6, resume=True)
    assert res.start_step == 4


def test_checkpoint_roundtrip_keeps_rng_keys(tmp_path):
    model, opt = make()
    state = nnx.state((model, opt))
    with T.Checkpointer(tmp_path) as ckpt:
        ckpt.save(3, state, {"note": "x"})
        other_model, other_opt = make(seed=1)
        restored, meta = ckpt.restore(nnx.state((other_model, other_opt)))
    assert meta == {"note": "x", "step": 3}
    a, b = jax.tree.leaves(state), jax.tree.leaves(restored)
    for x, y in zip(a, b, strict=True):
        assert x.dtype == y.dtype
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(x, y)


def nan_loss(model, batch, rng):
    loss, aux = T.lm_loss(model, batch["xy"], rng)
    return loss * batch["scale"], aux


def nan_batch(step, data):
    return {"xy": batch_fn(step, data), "scale": jnp.where(step >= 7, jnp.nan, 1.0)}


@pytest.mark.parametrize("log_interval", [1, 4])
def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path, log_interval):
    model, opt = make()
    with pytest.raises(
        FloatingPointError, match=r"loss is nan at step 7; last good checkpoint: step 5"
    ):
        T.train(
            model,
            opt,
            nan_batch,
            data=DATA,
            loss_fn=nan_loss,
            steps=20,
            checkpoint_dir=str(tmp_path / "ckpt"),
            checkpoint_interval=5,
            log_interval=log_interval,
            log_dir=str(tmp_path / "logs"),
            progress=False,
        )
    ckpt = T.Checkpointer(tmp_path / "ckpt")
    assert ckpt.all_steps() == [5]
    fresh, fresh_opt = make()
    state, _ = ckpt.restore(nnx.state((fresh, fresh_opt)))
    assert all(
        bool(jnp.all(jnp.isfinite(x)))
        for x in jax.tree.leaves(state)
        if jnp.issubdtype(x.dtype, jnp.floating)
    )
    steps = [r["step"] for r in T.read_jsonl(tmp_path / "logs" / "metrics.jsonl")]
    assert steps == list(range(7))


# ------------------------------------------------------------------------- sharding


def test_fsdp_spec():
    from jax.sharding import PartitionSpec as P

    assert T.fsdp_spec((12, 64), 4) == P(None, "data")
    assert T.fsdp_spec((64, 12), 4) == P("data", None)
    assert T.fsdp_spec((3, 5), 4) == P()
    assert T.fsdp_spec((), 4) == P()
    assert T.fsdp_spec((8, 8), 1) == P()


SHARDED_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    from flax import nnx
    sys.path.insert(0, sys.argv[1])
    import test_train as tt
    from attention_jax import train as T

    assert len(jax.devices()) == 4, jax.devices()
    out = {}
    for name, devices, shard in [("one", jax.devices()[:1], False), ("four", None, False),
                                 ("fsdp", None, True)]:
        model, opt = tt.make()
        step = T.TrainStep(model, opt, batch_fn=tt.batch_fn, mesh=T.data_mesh(devices),
                           shard_params=shard)
        losses = [float(step(i, tt.DATA)["loss"]) for i in range(4)]
        step.sync()
        out[name] = {"losses": losses,
                     "params": [np.asarray(p).tolist() for p in tt.params_of(model)],
                     "batch_sharding": str(jax.tree.leaves(step.leaves)[0].sharding)}
    print(json.dumps(out))
    """
)


def test_four_device_step_equals_one_device():
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=4 "
        + script_helpers.FAST_COMPILE_XLA_FLAGS,
        JAX_PLATFORMS="cpu",
    )
    proc = subprocess.run(
        [sys.executable, "-c", SHARDED_SCRIPT, str(REPO / "tests")],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    one = out["one"]
    for name in ("four", "fsdp"):
        np.testing.assert_allclose(out[name]["losses"], one["losses"], atol=1e-5)
        for a, b in zip(out[name]["params"], one["params"], strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_count_params():
    layer = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
    assert T.count_params(layer) == 3 * 4 + 4
    assert T.count_params(layer, wrt=nnx.Not(nnx.Param)) == 0


@pytest.mark.parametrize("bad", [-1, 1.5, True, "1"])
def test_tune_host_malloc_message(bad):
    with pytest.raises(ValueError, match=r"tune_host_malloc: trim_threshold must be an int >= 0"):
        T.tune_host_malloc(trim_threshold=bad)


def test_tune_host_malloc_applies_on_glibc_and_training_is_unchanged():
    """In a fresh process (the setting is process-wide): applied on glibc Linux, and the
    same training steps give bit-identical losses with and without it."""
    script = textwrap.dedent(
        """
        import sys, platform
        import jax, jax.numpy as jnp, optax
        from attention_jax import train as T

        def losses():
            w = jnp.ones((64, 64)) / 64
            x = jax.random.normal(jax.random.key(0), (256, 64))
            tx = optax.adam(1e-2)
            state = tx.init(w)

            @jax.jit
            def step(w, state):
                loss, g = jax.value_and_grad(lambda w: jnp.mean(jnp.tanh(x @ w) ** 2))(w)
                u, state = tx.update(g, state)
                return optax.apply_updates(w, u), state, loss

            out = []
            for _ in range(5):
                w, state, loss = step(w, state)
                out.append(float(loss))
            return out

        before = losses()
        applied = T.tune_host_malloc()
        glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
        assert applied == glibc, (applied, glibc)
        assert T.tune_host_malloc() == applied  # idempotent
        assert losses() == before
        print("ok", applied)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("ok")
