"""Training logs: JSON lines, TensorBoard events, loss-curve plots, metrics files.

Shared by the training loop and the experiment scripts, so every run directory has the
same layout: ``metrics.jsonl`` (one JSON object per record: ``{"step": s, key: value,
...}``), TensorBoard event files, ``loss.png`` and the experiment's ``metrics.json``.
"""

import json
import math
import os
import pathlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
from flax import nnx

__all__ = ["MetricsLogger", "count_params", "read_jsonl", "write_json", "plot_history"]

METRICS_FILE = "metrics.jsonl"


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The records of a JSON-lines file (a torn last line from a crash is skipped)."""
    path = pathlib.Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def count_params(model: nnx.Module, wrt: Any = nnx.Param) -> int:
    """Number of scalars in the variables of ``model`` that ``wrt`` (an NNX filter) selects,
    as reported in the experiments' ``metrics.json``."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, wrt)))


def _jsonable(x):
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and getattr(x, "ndim", 1) == 0:
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)  # JSON has no nan/inf
    if isinstance(x, pathlib.PurePath):
        return str(x)
    return x


def write_json(path: str | os.PathLike, obj: Mapping[str, Any]) -> None:
    """Writes ``obj`` as indented JSON (NumPy/JAX scalars converted), atomically."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_jsonable(obj), indent=2) + "\n")
    os.replace(tmp, path)


def _summary_writer_class():
    """``tensorboardX.SummaryWriter``, imported without PyTorch.

    tensorboardX imports ``torch`` when it is installed, only to accept torch tensors,
    which costs seconds at start-up; a ``None`` entry in ``sys.modules`` makes that import
    fail fast so it falls back to NumPy. Left alone if torch is already loaded.
    """
    import sys

    if "tensorboardX" in sys.modules or "torch" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class MetricsLogger:
    """Appends metric records to ``<log_dir>/metrics.jsonl`` and TensorBoard.

    Args:
      log_dir: output directory (created).
      start_step: a resumed run's first step; existing records with ``step >=
        start_step`` (written after the checkpoint it resumes from) are dropped, and
        TensorBoard purges its events from that step on, so the logs read as one
        uninterrupted run. 0 starts fresh (existing records removed).
      tensorboard: also write TensorBoard events (``tensorboardX.SummaryWriter``).
    """

    def __init__(
        self, log_dir: str | os.PathLike, *, start_step: int = 0, tensorboard: bool = True
    ):
        self.log_dir = pathlib.Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.log_dir / METRICS_FILE
        old = read_jsonl(self.path) if start_step > 0 else []
        self.records: list[dict] = [r for r in old if r.get("step", 0) < start_step]
        with open(self.path, "w") as f:
            for r in self.records:
                f.write(json.dumps(r) + "\n")
        self._file = open(self.path, "a")  # noqa: SIM115 (closed in close())
        self._tb = None
        if tensorboard:
            SummaryWriter = _summary_writer_class()
            self._tb = SummaryWriter(
                str(self.log_dir), purge_step=start_step if start_step > 0 else None
            )

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Writes one record ``{"step": step, **metrics}`` (values: numbers or strings)."""
        record = {"step": int(step), **_jsonable(dict(metrics))}
        self.records.append(record)
        self._file.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, int | float):
                    self._tb.add_scalar(k, v, int(step))

    def flush(self) -> None:
        self._file.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _series(records: Iterable[Mapping], key: str):
    pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), int | float)]
    return [p[0] for p in pts], [p[1] for p in pts]


def _ema(values: Sequence[float], alpha: float) -> list[float]:
    out, m = [], None
    for v in values:
        m = v if m is None else alpha * m + (1 - alpha) * v
        out.append(m)
    return out


def plot_history(
    records: Sequence[Mapping],
    path: str | os.PathLike,
    *,
    loss_keys: Sequence[str] | None = None,
    other_keys: Sequence[str] | None = None,
    title: str | None = None,
) -> None:
    """Saves a PNG of the loss curves (and, in a second panel, e.g. accuracies).

    Args:
      records: metric records ``{"step": s, key: value}`` (:attr:`MetricsLogger.records`).
      path: output PNG.
      loss_keys: keys plotted in the loss panel (default: every key ending in ``loss``).
        Dense series (one point per step) are drawn faintly with an EMA on top.
      other_keys: keys for a second panel (default: keys containing ``accuracy``).
      title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display needed; safe to call repeatedly
    import matplotlib.pyplot as plt

    keys = sorted({k for r in records for k in r if k != "step"})
    if loss_keys is None:
        loss_keys = [k for k in keys if k.endswith("loss")]
    if other_keys is None:
        other_keys = [k for k in keys if "accuracy" in k]
    panels = [(loss_keys, "loss")] + ([(other_keys, "value")] if other_keys else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.2), squeeze=False)
    for ax, (ks, ylabel) in zip(axes[0], panels, strict=True):
        for k in ks:
            steps, vals = _series(records, k)
            if not steps:
                continue
            if len(steps) > 50:
                (line,) = ax.plot(steps, vals, alpha=0.25, lw=0.8)
                ax.plot(steps, _ema(vals, 0.9), color=line.get_color(), lw=1.5, label=f"{k} (EMA)")
            else:
                ax.plot(steps, vals, marker="o", ms=3, lw=1.5, label=k)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
