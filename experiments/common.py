"""What the experiment scripts share: flags and their checks, text data, model configs,
optimizer and batches, evaluation on whole splits, outputs, and the character-level LM
recipe (``char_lm.py``, and ``lm_extrapolation.py`` once per positional encoding).

A script imports it as ``import common``: Python puts a script's own folder first on
``sys.path``, so this works from any working directory.

Flags. ``add_model_flags``, ``add_optimizer_flags``, ``add_data_flags`` and
``add_run_flags`` declare the flags several scripts share, each with the script's
defaults. ``check_flags(parser, args)`` checks every flag of the parsed namespace that
this module knows (ranges, head arithmetic, the ``--data`` file) and reports the first bad
one with ``parser.error``: one line naming the flag and what to do, exit status 2, before
any data is read or downloaded and before JAX compiles anything. Checks that need the data
(``check_block``) end the same way.
"""

import argparse
import importlib.util
import math
import os
import pathlib
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from attention_jax import train as T
from attention_jax.data import (
    TINYSHAKESPEARE_URL,
    CharTokenizer,
    load_tinyshakespeare,
    random_windows,
    sequential_windows,
    train_val_split,
)
from attention_jax.dispatch import IMPLEMENTATIONS
from attention_jax.nn import TransformerConfig, TransformerLM, generate
from attention_jax.nn import config as nn_config
from attention_jax.nn.mlp import MLP_KINDS
from attention_jax.parallel import CONTEXT_PARALLEL_STRATEGIES

__all__ = [
    "CORPUS",
    "POSITIONALS",
    "make_parser",
    "add_model_flags",
    "add_optimizer_flags",
    "add_data_flags",
    "add_run_flags",
    "check_flags",
    "check_int",
    "check_number",
    "check_file",
    "check_implementation",
    "read_text",
    "check_block",
    "model_config",
    "write_config",
    "read_config",
    "make_optimizer",
    "window_batches",
    "task_batches",
    "window_loss",
    "output_dir",
    "environment",
    "pyplot",
    "save_figure",
    "char_lm_parser",
    "parse_with_preset",
    "check_char_lm_flags",
    "train_char_lm",
    "sample_text",
]

CORPUS = "tinyshakespeare"
"""``--data`` value that selects the Tiny Shakespeare corpus (downloaded once)."""

POSITIONALS = nn_config.POSITIONALS
"""The ``--positional`` choices (``TransformerConfig.positional``'s)."""


# ----------------------------------------------------------------------------------------
# Flags
# ----------------------------------------------------------------------------------------


def make_parser(doc: str) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` whose ``--help`` shows the script's docstring as written."""
    return argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def parse_with_preset(parser, argv, *, flag: str, preset: dict, known: bool = False):
    """``parser.parse_args(argv)``; when the boolean flag ``flag`` (``"quick"``, ``"demo"``)
    is set, parses again with ``preset`` as the defaults, so that flags given explicitly
    still override the preset. ``known=True``: ``parse_known_args``, returning
    ``(args, rest)`` (for scripts that pass unknown flags on to another script)."""
    parse = parser.parse_known_args if known else parser.parse_args
    result = parse(argv)
    if getattr(result[0] if known else result, flag):
        parser.set_defaults(**preset)
        result = parse(argv)
    return result


def add_model_flags(
    parser,
    *,
    layers: int,
    d_model: int,
    heads: int,
    mlp_ratio: float = 4.0,
    positional: str | None = "learned",
    norm: bool = True,
):
    """``--layers --d-model --heads --mlp-ratio`` and, unless None/False, ``--positional``
    and ``--norm``; returns the argument group (for a script's own model flags)."""
    g = parser.add_argument_group("model")
    g.add_argument("--layers", type=int, default=layers, help="Transformer blocks")
    g.add_argument("--d-model", type=int, default=d_model, help="residual width")
    g.add_argument("--heads", type=int, default=heads, help="attention heads (divide --d-model)")
    g.add_argument("--mlp-ratio", type=float, default=mlp_ratio, help="MLP width / d_model")
    if positional is not None:
        g.add_argument("--positional", default=positional, choices=POSITIONALS)
    if norm:
        g.add_argument("--norm", default="layernorm", choices=nn_config.NORMS)
    return g


def add_optimizer_flags(
    parser, *, steps: int, batch: int, lr: float, warmup: int = 100, weight_decay: float
):
    """``--steps --batch --lr --warmup --weight-decay``; returns the argument group."""
    g = parser.add_argument_group("optimization")
    g.add_argument("--steps", type=int, default=steps, help="training steps")
    g.add_argument("--batch", type=int, default=batch, help="sequences per step")
    g.add_argument("--lr", type=float, default=lr, help="peak learning rate")
    g.add_argument("--warmup", type=int, default=warmup, help="linear warmup steps")
    g.add_argument("--weight-decay", type=float, default=weight_decay, help="AdamW decay")
    return g


def add_data_flags(parser):
    """``--data --cache-dir --download-url``: a text file, or the Tiny Shakespeare corpus."""
    g = parser.add_argument_group("data")
    g.add_argument(
        "--data",
        default=CORPUS,
        metavar="PATH",
        help=f"a UTF-8 text file, or '{CORPUS}' (the default: downloaded once)",
    )
    g.add_argument(
        "--cache-dir", default=None, help=f"download cache for {CORPUS} (~/.cache/attention_jax)"
    )
    g.add_argument(
        "--download-url",
        default=TINYSHAKESPEARE_URL,
        help=f"where {CORPUS} is downloaded from (a mirror or a file: URL)",
    )
    return g


def add_run_flags(parser, *, out: str, seed: int | None = None):
    """``--out``, ``--no-progress`` and, unless ``seed`` is None, ``--seed``."""
    g = parser.add_argument_group("run")
    g.add_argument("--out", default=out, help="output folder")
    if seed is not None:
        g.add_argument("--seed", type=int, default=seed)
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    return g


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_int(parser, args, name: str, minimum: int = 1) -> None:
    """``--name`` (attribute ``name``) must be None or an int ``>= minimum``."""
    value = getattr(args, name)
    if value is not None and value < minimum:
        parser.error(f"{_flag(name)} must be an int >= {minimum}, got {value}")


def check_number(
    parser, args, name: str, *, low: float = 0.0, high: float | None = None, open_low=False
) -> None:
    """``--name`` must be None or a finite number in ``[low, high)`` (``(low, high)`` with
    ``open_low``; no upper bound when ``high`` is None)."""
    value = getattr(args, name)
    if value is None:
        return
    ok = math.isfinite(value) and (value > low if open_low else value >= low)
    ok = ok and (high is None or value < high)
    if not ok:
        if high is not None:
            rule = f"a number in {'(' if open_low else '['}{low:g}, {high:g})"
        else:
            rule = f"a finite number {'>' if open_low else '>='} {low:g}"
        parser.error(f"{_flag(name)} must be {rule}, got {value}")


# The flags several scripts share: name -> ("int", minimum) or ("number", low, high, open_low).
_RULES = {
    # model
    "layers": ("int", 1),
    "heads": ("int", 1),
    "kv_heads": ("int", 1),
    "d_model": ("int", 1),
    "mlp_ratio": ("number", 0.0, None, True),
    "dropout": ("number", 0.0, 1.0, False),
    "t5_buckets": ("int", 1),
    "t5_max_distance": ("int", 1),
    "kv_latent_dim": ("int", 1),
    "rope_head_dim": ("int", 1),
    "conv_size": ("int", 2),
    "linear_chunk_size": ("int", 1),
    # optimization
    "steps": ("int", 1),
    "batch": ("int", 1),
    "block": ("int", 1),
    "lr": ("number", 0.0, None, True),
    "min_lr": ("number", 0.0, None, False),
    "warmup": ("int", 0),
    "decay_steps": ("int", 0),
    "weight_decay": ("number", 0.0, None, False),
    "clip": ("number", 0.0, None, False),
    "beta1": ("number", 0.0, 1.0, False),
    "beta2": ("number", 0.0, 1.0, False),
    "accumulate": ("int", 1),
    # run
    "eval_interval": ("int", 0),
    "eval_iters": ("int", 1),
    "eval_size": ("int", 1),
    "log_interval": ("int", 1),
    "checkpoint_interval": ("int", 0),
    "keep": ("int", 1),
    "sample": ("int", 0),
    "temperature": ("number", 0.0, None, False),
    "seeds": ("int", 1),
}


def check_flags(parser, args) -> None:
    """Checks every flag of ``args`` that this module knows; ``parser.error`` on the first
    bad one. Reads no data: ``--data`` is checked to be a readable, non-empty file."""
    for name, rule in _RULES.items():
        if not hasattr(args, name):
            continue
        if rule[0] == "int":
            check_int(parser, args, name, rule[1])
        else:
            check_number(parser, args, name, low=rule[1], high=rule[2], open_low=rule[3])
    _check_heads(parser, args)
    if getattr(args, "data", CORPUS) != CORPUS:
        check_file(parser, "--data", args.data, what="a UTF-8 text file")
    cache_dir = getattr(args, "cache_dir", None)
    if cache_dir is not None and pathlib.Path(cache_dir).expanduser().is_file():
        parser.error(f"--cache-dir {cache_dir}: is a file, not a folder; pass a folder")


def _check_heads(parser, args) -> None:
    if not all(hasattr(args, n) for n in ("d_model", "heads")):
        return
    d, n = args.d_model, args.heads
    if d % n:
        parser.error(
            f"--d-model {d} must be divisible by --heads {n} (each head gets d_model / heads "
            "dimensions)"
        )
    k = getattr(args, "kv_heads", None)
    if k is not None and n % k:
        parser.error(f"--heads {n} must be divisible by --kv-heads {k} (heads share kv heads)")
    positional = getattr(args, "positional", None)
    if positional == "sinusoidal" and d % 2:
        parser.error(f"--positional sinusoidal needs an even --d-model, got {d}")
    if positional == "rope" and (d // n) % 2:
        parser.error(
            f"--positional rope needs an even head size --d-model / --heads, got {d} / {n} "
            f"= {d // n}"
        )


def check_file(parser, flag: str, path, *, what: str = "a file") -> None:
    """``path`` must be a readable, non-empty file; otherwise ``parser.error`` says why and
    to pass ``flag PATH`` to ``what``."""
    path = pathlib.Path(path)
    hint = f"pass {flag} PATH to {what}"
    if not path.exists():
        parser.error(f"{flag} {path}: no such file; {hint}")
    if not path.is_file():
        parser.error(f"{flag} {path}: not a file; {hint}")
    if not os.access(path, os.R_OK):
        parser.error(f"{flag} {path}: not readable (permission denied); {hint}")
    if path.stat().st_size == 0:
        parser.error(f"{flag} {path}: the file is empty; {hint}")


def check_implementation(parser, args) -> None:
    """``--implementation`` must be available here: ``cudnn`` needs an NVIDIA GPU,
    ``tokamax`` its package (the other options it cannot serve are reported when the model
    is traced)."""
    impl = getattr(args, "implementation", None)
    hint = "leave the flag out to choose automatically"
    if impl == "cudnn" and jax.default_backend() not in ("gpu", "cuda"):
        parser.error(
            f"--implementation cudnn needs an NVIDIA GPU, this machine runs on "
            f"{jax.default_backend()}; {hint}"
        )
    if impl == "tokamax" and importlib.util.find_spec("tokamax") is None:
        parser.error(
            "--implementation tokamax needs the tokamax package (pip install "
            f"'attention_jax[tokamax]'); {hint}"
        )


# ----------------------------------------------------------------------------------------
# Text data
# ----------------------------------------------------------------------------------------


def read_text(parser, args) -> str:
    """The text of ``--data``: a UTF-8 file, or Tiny Shakespeare (cached in ``--cache-dir``,
    downloaded from ``--download-url`` when absent). Failures end in ``parser.error``."""
    if args.data == CORPUS:
        url = getattr(args, "download_url", TINYSHAKESPEARE_URL)
        try:
            return load_tinyshakespeare(args.cache_dir, url=url)
        except ValueError as e:  # a download or a cached copy that is not the corpus
            parser.error(f"{e} Or pass --data PATH to a local copy")
        except OSError as e:
            reason = getattr(e, "reason", None) or e.strerror or e
            parser.error(
                f"could not download Tiny Shakespeare from {url} ({reason}); pass --data PATH "
                "to a local copy"
            )
    check_file(parser, "--data", args.data, what="a UTF-8 text file")
    try:
        return pathlib.Path(args.data).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        parser.error(
            f"--data {args.data}: not UTF-8 text ({e.reason} at byte {e.start}); pass --data "
            "PATH to a UTF-8 text file"
        )
    except OSError as e:
        parser.error(f"--data {args.data}: {e.strerror or e}; pass --data PATH to a text file")


def check_block(parser, args, num_tokens: int, train_fraction: float = 0.9) -> None:
    """``--block`` must be below the length of both splits of a ``num_tokens`` stream (a
    window needs ``block + 1`` tokens: inputs and next-token targets)."""
    train, val = train_val_split(range(num_tokens), train_fraction)
    if args.block >= min(len(train), len(val)):
        parser.error(
            f"--block {args.block} must be below the length of each split of --data "
            f"{args.data} ({len(train):,} training and {len(val):,} validation characters); "
            "lower --block or pass --data PATH to a longer text"
        )


# ----------------------------------------------------------------------------------------
# Model, optimizer, batches, evaluation
# ----------------------------------------------------------------------------------------


def model_config(
    args, *, vocab_size: int, max_len: int, parser=None, **fields
) -> TransformerConfig:
    """A ``TransformerConfig`` from the model flags of ``args`` (``--d-model --layers
    --heads --mlp-ratio`` and, where the script has them, ``--positional --norm``) and
    ``fields``. With a ``parser``, a config the flags cannot make ends in
    ``parser.error``; without one, in the config's ValueError."""
    kw = dict(
        vocab_size=vocab_size,
        d_model=args.d_model,
        num_layers=args.layers,
        num_heads=args.heads,
        mlp_ratio=args.mlp_ratio,
        max_len=max_len,
    )
    for flag in ("positional", "norm"):
        if hasattr(args, flag):
            kw[flag] = getattr(args, flag)
    try:
        return TransformerConfig(**{**kw, **fields})
    except ValueError as e:
        if parser is None:
            raise
        parser.error(f"the model flags make no valid model: {e}")


def write_config(path, config: TransformerConfig) -> dict:
    """Writes ``config.to_json()`` (every field) to ``path``; returns ``config.to_dict()``
    for the metadata of checkpoints and metrics."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config.to_json(indent=2) + "\n")
    return config.to_dict()


def read_config(path) -> TransformerConfig:
    """The ``TransformerConfig`` that :func:`write_config` wrote to ``path``."""
    return TransformerConfig.from_json(pathlib.Path(path).read_text())


def make_optimizer(model, args, *, end_lr: float, decay_steps: int | None = None):
    """``(nnx.Optimizer, schedule)``: AdamW with nanoGPT's warmup + cosine schedule from
    ``--lr --warmup --weight-decay`` (and ``--beta1 --beta2 --clip --accumulate`` where
    the script has them), decaying to ``end_lr`` at ``decay_steps`` (default ``--steps``)."""
    schedule_kw = dict(
        warmup_steps=args.warmup,
        decay_steps=args.steps if decay_steps is None else decay_steps,
        end_lr=end_lr,
    )
    extra = {
        key: getattr(args, flag)
        for flag, key in (
            ("beta1", "b1"),
            ("beta2", "b2"),
            ("clip", "clip_norm"),
            ("accumulate", "accumulate_steps"),
        )
        if hasattr(args, flag)
    }
    tx = T.make_optimizer(args.lr, **schedule_kw, weight_decay=args.weight_decay, **extra)
    return nnx.Optimizer(model, tx, wrt=nnx.Param), T.make_schedule(args.lr, **schedule_kw)


def window_batches(key: jax.Array, *, batch_size: int, block_size: int):
    """``batch_fn(step, data)``: random windows ``(x, y)`` of the token stream ``data``,
    drawn with ``fold_in(key, step)``."""

    def batch_fn(step, data):
        return random_windows(
            jax.random.fold_in(key, step), data, batch_size=batch_size, block_size=block_size
        )

    return batch_fn


def task_batches(task, key: jax.Array, *, batch_size: int, max_length: int, min_length=None):
    """``batch_fn(step, data)``: a batch of the synthetic ``task`` drawn with
    ``fold_in(key, step)`` (``data`` is unused)."""

    def batch_fn(step, data):
        del data
        return task.sample(
            jax.random.fold_in(key, step),
            batch_size=batch_size,
            max_length=max_length,
            min_length=min_length,
        )

    return batch_fn


def window_loss(model, ids, *, length: int, rows: int) -> tuple[float, int]:
    """Mean next-token loss over non-overlapping windows of ``length`` tokens of ``ids``
    (``sequential_windows``), ``rows`` windows per batch (fewer if ``ids`` has fewer);
    windows that do not fill a last batch are left out.

    Returns ``(loss, number of predicted tokens)``.
    """
    windows = jnp.asarray(sequential_windows(ids, block_size=length))
    rows = min(rows, windows.shape[0])
    num_batches = windows.shape[0] // rows

    def batch(i, w):
        w = jax.lax.dynamic_slice_in_dim(w, i * rows, rows)
        return w[:, :-1], w[:, 1:]

    loss = T.make_eval_fn(batch, num_batches=num_batches)(model, windows)
    return float(loss), num_batches * rows * length


# ----------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------


def output_dir(path) -> pathlib.Path:
    """``path`` as a folder that exists."""
    out = pathlib.Path(path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def environment() -> dict:
    """Where a run ran: JAX version, devices, processor, Python version."""
    return {
        "jax": jax.__version__,
        "devices": [str(d) for d in jax.devices()],
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, *, dpi: int = 120) -> None:
    """Lays out ``fig``, writes it to ``path`` and closes it."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)


# ----------------------------------------------------------------------------------------
# Character-level language model (char_lm.py; lm_extrapolation.py trains one per arm)
# ----------------------------------------------------------------------------------------


def char_lm_parser(doc: str) -> argparse.ArgumentParser:
    """The flags of ``char_lm.py`` with nanoGPT's CPU "baby GPT" as defaults."""
    p = make_parser(doc)
    add_data_flags(p)
    g = add_model_flags(p, layers=4, d_model=128, heads=4, positional="learned")
    g.add_argument("--kv-heads", type=int, default=None, help="key/value heads (default --heads)")
    g.add_argument("--t5-buckets", type=int, default=32, help="T5 bias: number of buckets")
    g.add_argument(
        "--t5-max-distance",
        type=int,
        default=128,
        help="T5 bias: distances from this on share the last bucket",
    )
    g.add_argument("--mlp", default="gelu", choices=(*MLP_KINDS, "none"))
    g.add_argument(
        "--implementation",
        default=None,
        choices=IMPLEMENTATIONS,
        help="attention implementation (default: automatic)",
    )
    g.add_argument("--dropout", type=float, default=0.0, help="residual and embedding dropout")
    g.add_argument("--bias", action="store_true", help="biases in the linear layers")
    add_variant_flags(p)
    g = add_optimizer_flags(p, steps=2000, batch=12, lr=1e-3, warmup=100, weight_decay=0.1)
    g.add_argument("--block", type=int, default=64, help="context length (characters)")
    g.add_argument("--min-lr", type=float, default=1e-4, help="learning rate at the end")
    g.add_argument(
        "--decay-steps", type=int, default=None, help="end of the cosine (default: --steps)"
    )
    g.add_argument("--clip", type=float, default=1.0, help="gradient-norm clip (0: none)")
    g.add_argument("--beta1", type=float, default=0.9)
    g.add_argument("--beta2", type=float, default=0.99)
    g.add_argument("--accumulate", type=int, default=1, help="gradient accumulation micro-steps")
    g = add_run_flags(p, out="out/char_lm", seed=1337)
    g.add_argument("--eval-interval", type=int, default=250, help="steps between evaluations")
    g.add_argument("--eval-iters", type=int, default=20, help="batches per evaluation")
    g.add_argument("--log-interval", type=int, default=10)
    g.add_argument("--checkpoint-interval", type=int, default=500, help="0: at the end only")
    g.add_argument("--keep", type=int, default=3, help="checkpoints kept")
    g.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    g.add_argument("--sample", type=int, default=300, help="characters to generate at the end")
    g.add_argument("--temperature", type=float, default=0.8, help="of the sample (0: greedy)")
    g.add_argument("--shard-params", action="store_true", help="FSDP-style parameter sharding")
    g.add_argument(
        "--mesh",
        default=None,
        help="DATAxSEQUENCE device mesh, e.g. 2x4 (default: all devices on the data axis)",
    )
    g.add_argument(
        "--context-parallel",
        default=None,
        choices=CONTEXT_PARALLEL_STRATEGIES,
        help="attention over the mesh's sequence axis (needs --mesh with SEQUENCE > 1)",
    )
    return p


def parse_mesh(parser, args, *, check_devices: bool = True):
    """``--mesh DxS`` as ``(data, sequence)`` (None without the flag), checked against
    ``--batch``, ``--block``, ``--context-parallel`` and, with ``check_devices`` (after
    ``maybe_initialize_distributed``: counting devices starts JAX), the devices."""
    if args.mesh is None:
        if args.context_parallel is not None:
            parser.error("--context-parallel needs --mesh DATAxSEQUENCE with SEQUENCE > 1")
        return None
    try:
        data, sequence = (int(x) for x in args.mesh.lower().split("x"))
        if data < 1 or sequence < 1:
            raise ValueError
    except ValueError:
        parser.error(
            f"--mesh must be DATAxSEQUENCE with positive sizes (e.g. 2x4), got {args.mesh!r}"
        )
    n = jax.device_count() if check_devices else data * sequence
    if data * sequence != n:
        parser.error(
            f"--mesh {args.mesh} needs {data * sequence} devices, this job has {n} "
            "(on one CPU: XLA_FLAGS=--xla_force_host_platform_device_count=N)"
        )
    if args.batch % data:
        parser.error(f"--batch {args.batch} must be divisible by the data axis {data} of --mesh")
    if sequence > 1 and args.context_parallel is None:
        parser.error(f"--mesh {args.mesh} splits sequences: choose --context-parallel")
    if sequence > 1 and args.block % (2 * sequence):
        parser.error(
            f"--block {args.block} must be divisible by 2 x the sequence axis = {2 * sequence} "
            "(the load-balanced layout cuts each sequence into 2 chunks per device)"
        )
    return data, sequence


def add_variant_flags(parser):
    """The attention variants of ``TransformerConfig`` (see ``AttentionConfig``), one flag
    each: ``--attention --kv-latent-dim --rope-head-dim --sinks --attention-gate
    --value-residual --talking-heads``."""
    g = parser.add_argument_group("attention variant")
    g.add_argument(
        "--attention", default="softmax", choices=nn_config.ATTENTION_KINDS, help="variant"
    )
    g.add_argument("--kv-latent-dim", type=int, default=None, help="MLA: latent width")
    g.add_argument("--rope-head-dim", type=int, default=None, help="MLA: RoPE key width")
    g.add_argument("--sinks", action="store_true", help="a learned sink logit per head")
    g.add_argument(
        "--attention-gate",
        default=None,
        choices=nn_config.ATTENTION_GATES,
        help="sigmoid gate on each head's output (Qiu et al. 2025)",
    )
    g.add_argument("--value-residual", action="store_true", help="mix the first layer's values in")
    g.add_argument("--talking-heads", action="store_true", help="mix heads' logits/weights")
    g.add_argument(
        "--layer-attention",
        default=None,
        help="one kind per layer for hybrids, comma-separated (e.g. gla,gla,gla,softmax)",
    )
    g.add_argument("--conv-size", type=int, default=None, help="linear mixers: short conv")
    g.add_argument("--linear-chunk-size", type=int, default=64, help="linear mixers: chunk")
    g.add_argument(
        "--linear-gate-activation",
        default="silu",
        choices=nn_config.LINEAR_GATE_ACTIVATIONS,
        help="output gate of gla / gated_deltanet",
    )
    return g


def variant_fields(args) -> dict:
    """The ``TransformerConfig`` fields of :func:`add_variant_flags`."""
    return dict(
        attention=args.attention,
        kv_latent_dim=args.kv_latent_dim,
        rope_head_dim=args.rope_head_dim,
        sinks=args.sinks,
        attention_gate=args.attention_gate,
        value_residual=args.value_residual,
        talking_heads=args.talking_heads,
        layer_attention=(
            None
            if args.layer_attention is None
            else tuple(k.strip() for k in args.layer_attention.split(","))
        ),
        conv_size=args.conv_size,
        linear_chunk_size=args.linear_chunk_size,
        linear_gate_activation=args.linear_gate_activation,
    )


def _char_lm_config(parser, args, *, vocab_size: int, max_len: int) -> TransformerConfig:
    return model_config(
        args,
        parser=parser,
        vocab_size=vocab_size,
        max_len=max_len,
        num_kv_heads=args.kv_heads,
        t5_num_buckets=args.t5_buckets,
        t5_max_distance=args.t5_max_distance,
        mlp=args.mlp,
        dropout=args.dropout,
        tie_embeddings=True,
        use_bias=args.bias,
        implementation=args.implementation,
        context_parallel=args.context_parallel,
        **variant_fields(args),
    )


def check_char_lm_flags(parser, args) -> None:
    """:func:`check_flags`, the implementation, and a config built from the flags (with a
    placeholder vocabulary): every flag is checked before the text is read."""
    parse_mesh(parser, args, check_devices=False)
    check_flags(parser, args)
    check_implementation(parser, args)
    _char_lm_config(parser, args, vocab_size=2, max_len=args.block)


def sample_text(model, tokenizer, *, num_chars, block, key, temperature, prompt="\n"):
    """``num_chars`` characters from ``generate``, sliding the context window by half a
    block when the model's ``max_len`` is reached (as nanoGPT crops to block)."""
    ids = list(tokenizer.encode(prompt))
    keep = max(block // 2, 1)
    while len(ids) - len(prompt) < num_chars:
        context = ids[-keep:]
        n = min(block - len(context), num_chars - (len(ids) - len(prompt)))
        key, sub = jax.random.split(key)
        out = generate(
            model, jnp.asarray([context], jnp.int32), n, rng=sub, temperature=temperature
        )
        ids += [int(t) for t in np.asarray(out[0, len(context) :])]
    return tokenizer.decode(np.asarray(ids[len(prompt) :]))


def train_char_lm(parser, args, text: str) -> dict:
    """Trains the character-level LM of ``args`` (:func:`char_lm_parser`) on ``text`` and
    writes its run folder ``--out``; returns the metrics it writes to ``metrics.json``.

    The flags must have passed :func:`check_char_lm_flags`; ``--block`` is checked here
    against the splits of ``text`` (``parser.error``).
    """
    check_block(parser, args, len(text))
    T.maybe_initialize_distributed()
    mesh_shape = parse_mesh(parser, args)
    out = output_dir(args.out)
    tokenizer = CharTokenizer.from_text(text)
    train_ids, val_ids = train_val_split(tokenizer.encode(text), 0.9)
    train_data, val_data = jnp.asarray(train_ids), jnp.asarray(val_ids)
    tokenizer.save(out / "tokenizer.json")

    config = _char_lm_config(parser, args, vocab_size=tokenizer.vocab_size, max_len=args.block)
    config_dict = write_config(out / "config.json", config)
    key = jax.random.key(args.seed)
    k_init, k_data, k_eval, k_drop, k_sample = jax.random.split(key, 5)
    model = TransformerLM(config, rngs=nnx.Rngs(params=k_init, dropout=k_drop))
    num_params = T.count_params(model)

    decay_steps = args.steps if args.decay_steps is None else args.decay_steps
    optimizer, schedule = make_optimizer(model, args, end_lr=args.min_lr, decay_steps=decay_steps)
    batch_fn = window_batches(k_data, batch_size=args.batch, block_size=args.block)
    eval_batch = window_batches(k_eval, batch_size=args.batch, block_size=args.block)
    eval_loss = T.make_eval_fn(eval_batch, num_batches=args.eval_iters)

    def eval_fn(model, step):
        return {
            "eval/train_loss": eval_loss(model, train_data),
            "eval/val_loss": eval_loss(model, val_data),
        }

    metadata = {"config": config_dict, "tokenizer": tokenizer.to_json(), "args": vars(args)}
    print(
        f"{num_params:,} parameters; {len(train_ids):,} train / {len(val_ids):,} val characters; "
        f"vocab {tokenizer.vocab_size}; devices {jax.devices()}",
        file=sys.stderr,
    )
    t0 = time.perf_counter()
    result = T.train(
        model,
        optimizer,
        batch_fn,
        data=train_data,
        steps=args.steps,
        rng=k_drop if args.dropout > 0 else None,
        eval_fn=eval_fn,
        eval_interval=args.eval_interval,
        log_interval=args.log_interval,
        log_dir=str(out),
        checkpoint_dir=str(out / "ckpt"),
        checkpoint_interval=args.checkpoint_interval,
        max_to_keep=args.keep,
        resume=args.resume,
        metadata=metadata,
        lr_schedule=schedule,
        accumulate_steps=args.accumulate,
        shard_params=args.shard_params,
        mesh=None
        if mesh_shape is None
        else T.make_mesh(data=mesh_shape[0], sequence=mesh_shape[1]),
        progress=not args.no_progress,
        desc="char_lm",
    )
    wall = time.perf_counter() - t0

    # The whole validation split, each character predicted once (a low-variance number
    # beside nanoGPT's 20 random batches).
    val_full, _ = window_loss(model, val_ids, length=args.block, rows=64)

    sample = ""
    if args.sample > 0:
        sample = sample_text(
            model,
            tokenizer,
            num_chars=args.sample,
            block=args.block,
            key=k_sample,
            temperature=args.temperature,
        )
        print(sample)
    metrics = {
        "steps": args.steps,
        "train_loss": result.last("eval/train_loss"),
        "val_loss": result.last("eval/val_loss"),
        "val_loss_full": val_full,
        "last_step_loss": result.last("train/loss"),
        "ms_per_step_median": result.median_step_ms,
        "tokens_per_sec": result.tokens_per_second,
        "compile_seconds": result.compile_seconds,
        "wall_seconds": wall,
        "num_params": num_params,
        "resumed_from": result.start_step,
        "devices": [str(d) for d in jax.devices()],
        "jax_version": jax.__version__,
        "config": config_dict,
        "args": vars(args),
        "sample": sample,
    }
    T.write_json(out / "metrics.json", metrics)
    ms = metrics["ms_per_step_median"]
    val, train = metrics["val_loss"], metrics["train_loss"]
    print(
        (f"val loss {val:.4f} ({args.eval_iters} batches), " if val is not None else "val loss ")
        + f"{val_full:.4f} (whole split); "
        + (f"train loss {train:.4f}; " if train is not None else "")
        + (f"{ms:.1f} ms/step, {metrics['tokens_per_sec']:,.0f} tokens/s; " if ms else "")
        + f"compile {result.compile_seconds:.1f} s; wrote {out}/metrics.json, {out}/loss.png, {out}/ckpt",
        file=sys.stderr,
    )
    return metrics
