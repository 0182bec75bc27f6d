"""Attention maps of a pretrained Hugging Face checkpoint: per layer and head, rollout, sinks.

Loads a checkpoint directory (``config.json`` + ``model.safetensors``: Llama family, GPT-2 or
BERT, see ``attention_jax.nn.load_hf_checkpoint``), runs one prompt with the weights sown,
and draws:

- ``attention_maps.png``: the weights of every head of every layer (rows: layers, columns:
  heads; queries down, keys across);
- ``rollout.png``: attention rollout (Abnar & Zuidema 2020) through the layers;
- ``sinks.png`` and ``results.json``: the attention-sink share of each head, the mean weight
  its queries (after the first token) give the first token (Xiao et al. 2023 find most heads
  of trained LMs park their attention there).

The prompt is token ids (``--tokens 15496,11,995``), or text (``--prompt``) with the
checkpoint's ``tokenizer.json`` through the ``tokenizers`` package when it is installed.

    python experiments/hf_attention_maps.py --checkpoint path/to/gpt2 --prompt "Hello world" \\
        --out out/gpt2_maps
"""

import json
import pathlib
import sys

import common  # experiments/common.py, beside this script
import jax.numpy as jnp
import numpy as np
from flax import nnx

import attention_jax as aj
from attention_jax.nn import TransformerEncoder, load_hf_checkpoint


def parse_args(argv=None):
    p = common.make_parser(__doc__)
    p.add_argument("--checkpoint", required=True, help="a Hugging Face checkpoint directory")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--tokens", help="comma-separated token ids")
    g.add_argument("--prompt", help="text, tokenized by the checkpoint's tokenizer.json")
    p.add_argument("--max-heads", type=int, default=16, help="heads drawn per layer")
    common.add_run_flags(p, out="out/hf_attention_maps")
    args = p.parse_args(argv)
    if not (pathlib.Path(args.checkpoint) / "config.json").is_file():
        p.error(
            f"--checkpoint {args.checkpoint}: no config.json there; pass --checkpoint DIR to a "
            "Hugging Face checkpoint directory (config.json + model.safetensors)"
        )
    common.check_int(p, args, "max_heads")
    if args.tokens is not None:
        try:
            args.ids = [int(t) for t in args.tokens.split(",")]
        except ValueError:
            p.error(f"--tokens must be comma-separated ints, got {args.tokens!r}")
        if not args.ids or min(args.ids) < 0:
            p.error(f"--tokens must be non-negative ints, got {args.tokens!r}")
    else:
        args.ids = tokenize(p, args.checkpoint, args.prompt)
    return p, args


def tokenize(parser, checkpoint: str, text: str) -> list[int]:
    try:
        from tokenizers import Tokenizer
    except ImportError:
        parser.error(
            "--prompt needs the tokenizers package (pip install tokenizers); or pass --tokens"
        )
    path = f"{checkpoint}/tokenizer.json"
    try:
        return Tokenizer.from_file(path).encode(text).ids
    except Exception as e:  # a missing or unreadable tokenizer.json
        parser.error(f"--prompt: cannot read {path} ({e}); pass --tokens instead")


def attention_weights(model, tokens) -> list[np.ndarray]:
    """Per layer ``[N, T, T]`` weights of the prompt (batch of one)."""
    _, inter = nnx.capture(model, nnx.Intermediate)(tokens, sow_weights=True)
    blocks = inter["encoder"]["blocks"] if "encoder" in inter else inter["blocks"]
    return [
        # The first (only) sown value, [B, N, T, T]; batch row 0.
        np.asarray(blocks[i]["attention"]["attention_weights"].get_value()[0][0])
        for i in sorted(blocks)
    ]


def sink_share(weights: list[np.ndarray]) -> np.ndarray:
    """``[L, N]``: the mean weight on token 0 of the queries after it."""
    return np.stack([w[:, 1:, 0].mean(axis=-1) for w in weights])


def main(argv=None):
    parser, args = parse_args(argv)
    model = load_hf_checkpoint(args.checkpoint)
    cfg = model.config
    if len(args.ids) > cfg.max_len:
        parser.error(f"the prompt has {len(args.ids)} tokens, the model takes {cfg.max_len}")
    if max(args.ids) >= cfg.vocab_size:
        parser.error(f"token id {max(args.ids)} is outside the vocabulary of {cfg.vocab_size}")
    out = common.output_dir(args.out)
    tokens = jnp.asarray([args.ids], jnp.int32)
    weights = attention_weights(model, tokens)
    sinks = sink_share(weights)
    rollout = np.asarray(aj.attention_rollout([jnp.asarray(w)[None] for w in weights]))[0]
    kind = "encoder" if isinstance(model, TransformerEncoder) else "decoder"
    layers, heads = len(weights), weights[0].shape[0]
    n = len(args.ids)
    # The share uniform weights would give: 1/(t+1) for causal query t, 1/T bidirectional.
    uniform = np.mean([1 / (t + 1) for t in range(1, n)]) if kind == "decoder" else 1 / n
    print(
        f"{args.checkpoint}: {kind}, {layers} layers x {heads} heads, {n} tokens; "
        f"mean sink share {sinks.mean():.3f} (uniform attention: {uniform:.3f})",
        file=sys.stderr,
    )
    result = {
        "checkpoint": str(args.checkpoint),
        "model": kind,
        "tokens": args.ids,
        "sink_share": sinks.tolist(),
        "sink_share_mean": float(sinks.mean()),
        "sink_share_uniform": float(uniform),
        "config": cfg.to_dict(),
        "environment": common.environment(),
    }
    (out / "results.json").write_text(json.dumps(result, indent=1))

    plt = common.pyplot()
    shown = min(heads, args.max_heads)
    fig, axes = plt.subplots(layers, shown, figsize=(1.6 * shown, 1.6 * layers), squeeze=False)
    for i in range(layers):
        for h in range(shown):
            ax = axes[i, h]
            ax.imshow(weights[i][h], cmap="viridis", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"head {h}", fontsize=8)
            if h == 0:
                ax.set_ylabel(f"layer {i}", fontsize=8)
    fig.suptitle("attention weights (queries down, keys across)")
    common.save_figure(fig, out / "attention_maps.png")

    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(rollout, cmap="magma")
    ax.set_title("attention rollout")
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    common.save_figure(fig, out / "rollout.png")

    fig, ax = plt.subplots(figsize=(1 + 0.4 * heads, 1 + 0.4 * layers))
    im = ax.imshow(sinks, cmap="Reds", vmin=0, vmax=1)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title("attention-sink share (weight on token 0)")
    fig.colorbar(im, ax=ax)
    common.save_figure(fig, out / "sinks.png")
    print(f"wrote {out}/results.json, attention_maps.png, rollout.png, sinks.png", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
