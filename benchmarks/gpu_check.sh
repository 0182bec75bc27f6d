#!/usr/bin/env bash
# The GPU check of benchmarks/gpu_check.py, on one NVIDIA GPU in under 8 minutes.
#
#   bash benchmarks/gpu_check.sh --out "$OUT" [--nanogpt PATH]   # on the GPU machine
#   bash benchmarks/gpu_check.sh --cpu --out out/gpu_check       # dry run, no GPU needed
#
# Uses the python3 on PATH with the packages it already has (jax with CUDA, flax, optax,
# chex, orbax, torch): the repository is put on PYTHONPATH, nothing is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# Several processes (the test workers) share the GPU: allocate on demand.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
PY="${PYTHON:-python3}"
exec timeout 470 "$PY" benchmarks/gpu_check.py "$@"
