"""The training loop: steps, evaluation, logging, checkpoints, resumption, NaN stops.

:func:`train` is generic: any NNX model, any ``nnx.Optimizer``, any jit-able batch
function and loss. Experiments build those and call it; see ``experiments/char_lm.py``
and ``experiments/synthetic.py`` for complete uses.

Determinism and resumption. Step ``s`` (0-based) trains on ``batch_fn(s, data)`` with
dropout key ``fold_in(rng, s)``; both are pure functions of ``s``, so a checkpoint needs
only the state and ``s``: a run interrupted and resumed from a checkpoint computes the
same updates, bit for bit on one device, as one that was never interrupted.

Host syncs. Metrics stay on the device and are fetched every ``log_interval`` steps
(and before evaluations and checkpoints); only then are losses checked for NaN/inf, so a
non-finite loss is detected up to ``log_interval - 1`` steps late but always before the
next checkpoint is written: a checkpoint never holds a state produced after a non-finite
loss or gradient.
"""

import dataclasses
import math
import statistics
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from tqdm.std import tqdm  # tqdm.auto warns in notebooks without ipywidgets

from attention_jax.train.checkpoint import Checkpointer
from attention_jax.train.host_memory import tune_host_malloc
from attention_jax.train.logging import MetricsLogger, plot_history
from attention_jax.train.loss import lm_loss, unpack_batch
from attention_jax.train.sharding import place, replicated
from attention_jax.train.step import BatchFn, LossFn, TrainStep

__all__ = ["TrainResult", "train"]


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
      records: every logged record, ``{"step": s, ...}``: per step ``train/loss``,
        ``train/grad_norm`` (and ``lr`` with ``lr_schedule``); every ``log_interval``
        steps ``perf/ms_per_step`` and ``perf/tokens_per_sec``; at evaluations what
        ``eval_fn`` returned. A resumed run with ``log_dir`` includes the records of
        the run it resumes.
      start_step: the step this call started from (0, or the restored checkpoint's).
      final_step: ``steps``.
      compile_seconds: time to compile the training step.
      step_ms: mean milliseconds per step of each logging interval, excluding intervals
        that contained an evaluation or a checkpoint (``[0]`` is the first interval).
      tokens_per_step: input tokens per step (None if the batch has no ``inputs``).
      checkpoints: steps of the checkpoints written by this call.
    """

    records: list[dict]
    start_step: int
    final_step: int
    compile_seconds: float
    step_ms: list[float]
    tokens_per_step: int | None
    checkpoints: list[int]

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """``(steps, values)`` of one metric."""
        pts = [(r["step"], r[key]) for r in self.records if key in r]
        return [p[0] for p in pts], [p[1] for p in pts]

    def last(self, key: str) -> float | None:
        """The latest value of ``key``, or None."""
        return next((r[key] for r in reversed(self.records) if key in r), None)

    @property
    def median_step_ms(self) -> float | None:
        """Median over logging intervals of ms/step, first interval (warm-up) excluded."""
        xs = self.step_ms[1:] or self.step_ms
        return statistics.median(xs) if xs else None

    @property
    def tokens_per_second(self) -> float | None:
        ms = self.median_step_ms
        if ms is None or not self.tokens_per_step:
            return None
        return self.tokens_per_step / (ms / 1000.0)


def _tokens_per_step(batch_fn, start, data) -> int | None:
    try:
        shapes = jax.eval_shape(lambda s, d: batch_fn(s, d), np.int32(start), data)
        inputs, _, _ = unpack_batch(shapes)
        return int(math.prod(inputs.shape))
    except (TypeError, KeyError, AttributeError):
        return None


def train(
    model: nnx.Module,
    optimizer: nnx.Optimizer,
    batch_fn: BatchFn | None,
    *,
    steps: int,
    data: Any = None,
    loss_fn: LossFn = lm_loss,
    rng: jax.Array | None = None,
    eval_fn: Callable[[nnx.Module, int], Mapping[str, float]] | None = None,
    eval_interval: int = 0,
    log_interval: int = 10,
    log_dir: str | None = None,
    checkpoint_dir: str | None = None,
    checkpoint_interval: int = 0,
    max_to_keep: int | None = 3,
    resume: bool = False,
    metadata: Mapping[str, Any] | None = None,
    lr_schedule: Callable | None = None,
    accumulate_steps: int = 1,
    mesh: Mesh | None = None,
    shard_params: bool = False,
    progress: bool = True,
    desc: str | None = None,
    tune_malloc: bool = True,
) -> TrainResult:
    """Trains ``model`` in place for ``steps`` steps.

    Args:
      model: NNX module; updated in place (and synced) when this returns or raises.
      optimizer: ``nnx.Optimizer(model, tx, wrt=nnx.Param)``, e.g. with
        :func:`attention_jax.train.make_optimizer`.
      batch_fn: jit-able ``batch_fn(step, data) -> batch`` (``step`` an int32 tracer),
        e.g. ``lambda s, d: random_windows(fold_in(key, s), d, batch_size=12,
        block_size=64)``; None trains on ``data`` itself every step.
      steps: total number of steps (a resumed run continues up to it).
      data: pytree of arrays passed to ``batch_fn`` (a token stream, ...); placed on the
        devices once, replicated. Passing large arrays here rather than closing over them
        keeps them out of the compiled program.
      loss_fn: ``loss_fn(model, batch, rng) -> (loss, aux)``; default :func:`lm_loss`.
      rng: dropout key; step ``s`` uses ``fold_in(rng, s)``. None: deterministic model.
      eval_fn: ``eval_fn(model, step) -> {name: float}``, called with the current model
        at steps ``0, eval_interval, 2 * eval_interval, ...`` and at ``steps``; names
        like ``"val/loss"``. See :func:`attention_jax.train.make_eval_fn`.
      eval_interval: steps between evaluations (0: no evaluation).
      log_interval: steps between host syncs (metrics fetched, NaN check, progress bar).
      log_dir: where ``metrics.jsonl``, TensorBoard events and ``loss.png`` go (None:
        nothing written).
      checkpoint_dir: checkpoint directory (None: no checkpoints).
      checkpoint_interval: steps between checkpoints (0: only at the end).
      max_to_keep: newest checkpoints kept.
      resume: continue from the latest checkpoint in ``checkpoint_dir`` if there is one.
      metadata: JSON dict saved with each checkpoint (config, tokenizer, seed, flags).
      lr_schedule: optional ``schedule(update) -> lr`` to log the learning rate.
      accumulate_steps: micro-steps per update of the optimizer (must match its
        ``optax.MultiSteps``); only used to log ``lr``.
      mesh, shard_params: data parallelism, see :class:`attention_jax.train.TrainStep`.
      progress: show a tqdm progress bar (loss, tokens/s).
      desc: progress bar label.
      tune_malloc: on the CPU backend, call :func:`attention_jax.train.tune_host_malloc`
        first (glibc keeps freed step buffers instead of faulting them in again every
        step; about 1.4x faster char-LM steps). False leaves the allocator alone.

    Returns:
      A :class:`TrainResult`.

    Raises:
      FloatingPointError: if a loss or gradient norm is NaN/inf, naming the step and the
        last good checkpoint (which is left untouched).
    """
    if steps < 0 or log_interval < 1:
        raise ValueError(f"need steps >= 0 and log_interval >= 1, got {steps}, {log_interval}.")
    if tune_malloc and jax.default_backend() == "cpu":
        tune_host_malloc()
    ts = TrainStep(
        model, optimizer, batch_fn=batch_fn, loss_fn=loss_fn, mesh=mesh, shard_params=shard_params
    )
    main = jax.process_index() == 0
    ckpt = Checkpointer(checkpoint_dir, max_to_keep=max_to_keep) if checkpoint_dir else None
    metadata = dict(metadata or {})
    start, last_good = 0, None
    if ckpt is not None:
        last_good = ckpt.latest_step()
        if resume and last_good is not None:
            state, meta = ckpt.restore(ts.state)
            ts.set_state(state)
            start = int(meta.pop("step"))
            if meta != metadata:
                changed = sorted(
                    k for k in set(meta) | set(metadata) if meta.get(k) != metadata.get(k)
                )
                warnings.warn(
                    f"resuming from step {start} with different metadata: {changed}", stacklevel=2
                )
    if start > steps:
        raise ValueError(f"checkpoint step {start} is beyond steps={steps}.")
    if data is not None:
        data = place(data, replicated(ts.mesh))
    logger = MetricsLogger(log_dir, start_step=start) if (log_dir and main) else None
    tokens_per_step = _tokens_per_step(ts.batch_fn, start, data)
    compile_seconds = ts.compile(start, data, rng)

    bar = tqdm(
        total=steps, initial=start, desc=desc, disable=not (progress and main), dynamic_ncols=True
    )
    pending: list[tuple[int, dict]] = []
    step_ms: list[float] = []
    written: list[int] = []
    t_mark = time.perf_counter()
    clean = True  # no eval/checkpoint since t_mark

    records: list[dict] = list(logger.records) if logger is not None else []

    def log(step, metrics):
        records.append({"step": int(step), **metrics})
        if logger is not None:
            logger.log(step, metrics)

    def flush():
        nonlocal pending, t_mark, clean
        if not pending:
            return
        fetched = jax.device_get([m for _, m in pending])
        now = time.perf_counter()
        n = len(pending)
        steps_ = [s for s, _ in pending]
        lrs = None
        if lr_schedule is not None:
            lrs = np.asarray(lr_schedule(np.asarray(steps_) // accumulate_steps))
        for i, (s, m) in enumerate(zip(steps_, fetched, strict=True)):
            for name in ("loss", "grad_norm"):
                v = float(m[name])
                if not math.isfinite(v):
                    where = f"step {last_good}" if last_good is not None else "none"
                    raise FloatingPointError(
                        f"{'loss' if name == 'loss' else 'gradient norm'} is {v} at step {s}; "
                        f"last good checkpoint: {where}"
                    )
            record = {f"train/{k}": float(v) for k, v in m.items() if k != "tokens"}
            if lrs is not None:
                record["lr"] = float(lrs[i])
            if i == n - 1 and clean:
                ms = (now - t_mark) * 1000.0 / n
                step_ms.append(ms)
                record["perf/ms_per_step"] = ms
                if tokens_per_step:
                    record["perf/tokens_per_sec"] = tokens_per_step / ms * 1000.0
            log(s, record)
        post = {"loss": f"{float(fetched[-1]['loss']):.4f}"}
        if step_ms and tokens_per_step and clean:
            post["tok/s"] = f"{tokens_per_step / step_ms[-1] * 1000.0:,.0f}"
        bar.set_postfix(post, refresh=False)
        bar.update(n)
        if logger is not None:
            logger.flush()
        # Restart the clock after the host-side logging (its first call compiles the
        # schedule), so intervals time the steps.
        pending, t_mark, clean = [], time.perf_counter(), True

    def evaluate(step):
        nonlocal t_mark, clean
        flush()
        ts.sync()
        results = {k: float(v) for k, v in eval_fn(model, step).items()}
        log(step, results)
        bar.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in results.items()))
        t_mark, clean = time.perf_counter(), False

    def save(step):
        nonlocal last_good, t_mark, clean
        flush()
        if ckpt.save(step, ts.state, metadata):
            written.append(step)
        last_good = step
        t_mark, clean = time.perf_counter(), False

    try:
        for step in range(start, steps):
            if eval_fn is not None and eval_interval and step % eval_interval == 0:
                evaluate(step)
            pending.append((step, ts(step, data, rng)))
            done = step + 1
            if done % log_interval == 0:
                flush()
            if (
                ckpt is not None
                and checkpoint_interval
                and done % checkpoint_interval == 0
                and done < steps
            ):
                save(done)
        flush()
        if eval_fn is not None and eval_interval:
            evaluate(steps)
        if ckpt is not None:
            save(steps)
    finally:
        bar.close()
        ts.sync()
        if ckpt is not None:
            ckpt.close()
        if logger is not None:
            if records:
                plot_history(records, logger.log_dir / "loss.png", title=desc)
            logger.close()

    return TrainResult(
        records=records,
        start_step=start,
        final_step=steps,
        compile_seconds=compile_seconds,
        step_ms=step_ms,
        tokens_per_step=tokens_per_step,
        checkpoints=written,
    )
