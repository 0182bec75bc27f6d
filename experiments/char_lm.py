"""Character-level language model on Tiny Shakespeare (or any text file).

Defaults reproduce nanoGPT's CPU "baby GPT" (README, "I only have a macbook"):
4 layers, 4 heads, d_model 128, block 64, batch 12, 2000 iterations, lr 1e-3 with 100
warmup steps and cosine decay to 1e-4, AdamW beta2 0.99, weight decay 0.1, gradient
clip 1.0, no dropout, learned positions, LayerNorm, GELU MLP 4x, tied embeddings, no
biases in the linear layers; validation loss on 20 random batches (nanoGPT reports 1.88).

    python experiments/char_lm.py --out out/char_lm              # ~2-3 minutes on 2 cores
    python experiments/char_lm.py --out out/char_lm --resume     # continue a stopped run
    python experiments/char_lm.py --data my.txt --steps 5000 --layers 6 --d-model 384 ...

Bad flags (a missing ``--data`` file, ``--block`` longer than the text, ``--d-model`` not
divisible by ``--heads``, a failed download, ...) end in one line and exit status 2 before
anything is trained. The recipe lives in ``common.py`` (``train_char_lm``), which
``lm_extrapolation.py`` also trains with.

Writes into ``--out``: ``metrics.json`` (final losses, ms/step, tokens/s, compile time,
parameter count, flags), ``metrics.jsonl`` + TensorBoard events, ``loss.png``,
``tokenizer.json``, ``config.json`` and checkpoints in ``ckpt/``.
"""

import common


def parse_args(argv=None, parser=None):
    """The checked flags; a bad one ends in ``parser.error`` (exit status 2)."""
    parser = parser or common.char_lm_parser(__doc__)
    args = parser.parse_args(argv)
    common.check_char_lm_flags(parser, args)
    return args


def main(argv=None):
    parser = common.char_lm_parser(__doc__)
    args = parse_args(argv, parser)
    text = common.read_text(parser, args)
    return common.train_char_lm(parser, args, text)


if __name__ == "__main__":
    main()
