"""How close the Hugging Face checkpoints of tests/fixtures/hf/ load: the largest absolute
difference between our float32 logits (BERT: last hidden state) and those ``transformers``
recorded for them, and the greedy tokens. Needs neither torch nor transformers.

    python benchmarks/hf_parity.py
"""

import json
import pathlib

import jax.numpy as jnp
import numpy as np

from attention_jax.nn import generate, load_hf_checkpoint

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "hf"


def main():
    print("| checkpoint | model_type | max abs diff | max abs value | greedy tokens equal |")
    print("|---|---|---:|---:|---|")
    for path in sorted(p for p in FIXTURES.iterdir() if (p / "config.json").exists()):
        model = load_hf_checkpoint(path)
        e = np.load(path / "expected.npz")
        tokens = jnp.asarray(e["tokens"])
        if "hidden" in e:
            got = model(
                tokens,
                padding_mask=jnp.asarray(e["mask"], bool),
                token_types=jnp.asarray(e["token_types"]),
            )
            valid = e["mask"].astype(bool)
            diff = np.abs(np.asarray(got)[valid] - e["hidden"][valid]).max()
            ref, greedy = e["hidden"], "-"
        else:
            diff = np.abs(np.asarray(model(tokens)) - e["logits"]).max()
            out = generate(model, tokens[:1, :5], e["greedy"].shape[1], temperature=0.0)
            ref, greedy = e["logits"], str(bool((np.asarray(out[:, 5:]) == e["greedy"]).all()))
        kind = json.loads((path / "config.json").read_text())["model_type"]
        print(f"| {path.name} | {kind} | {diff:.1e} | {np.abs(ref).max():.2f} | {greedy} |")


if __name__ == "__main__":
    main()
