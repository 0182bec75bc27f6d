"""attention_jax: attention as pure, jit-able JAX functions, with Flax NNX modules on top.

The functional API lives at the top level; modules are in :mod:`attention_jax.nn`.
"""

__version__ = "0.1.0"

# --- functional core (each line re-exports one module's public names) ---
