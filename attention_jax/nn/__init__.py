"""Flax NNX modules: parameters and wiring only; the math lives in the functional core."""
