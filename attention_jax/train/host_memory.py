"""Host allocator settings for training on XLA:CPU.

Every XLA:CPU execution allocates its buffers with ``malloc`` and frees them when it ends;
the largest is one block for all temporaries (47 MB for the char-LM's training step).
glibc serves any block over 32 MB (its largest ``mmap`` threshold) with a fresh ``mmap``
and returns it with ``munmap`` on ``free``, so every step faults in, zero-filled, 11,000
new pages: on the char-LM (``experiments/char_lm.py``) that is a third of the step's time
(``benchmarks/RESULTS.md``, "Char-LM training"). Serving large blocks from the heap, and
keeping freed memory at its top, removes the faults. The cost: the process's resident
memory stays at its peak instead of shrinking between steps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

__all__ = ["DEFAULT_MALLOC_TRIM_THRESHOLD", "tune_host_malloc"]

DEFAULT_MALLOC_TRIM_THRESHOLD = 1 << 30  # free bytes at the heap's top kept before trimming

# glibc's mallopt parameter numbers (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def tune_host_malloc(*, trim_threshold: int = DEFAULT_MALLOC_TRIM_THRESHOLD) -> bool:
    """Makes glibc's ``malloc`` reuse freed step buffers instead of returning them.

    Sets ``M_MMAP_MAX = 0`` (large blocks come from the heap, not from ``mmap``) and
    ``M_TRIM_THRESHOLD`` with ``mallopt``: process-wide, the same as starting Python with
    ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1073741824``. Called by
    :func:`attention_jax.train.train` on the CPU backend; call it yourself before a
    hand-written loop of jitted steps. Safe to call more than once.

    Args:
      trim_threshold: free bytes (``>= 0``) at the top of the heap kept before they are
        returned to the operating system; above one step's buffers.

    Returns:
      True if the settings were applied; False where the C library is not glibc (macOS,
      Windows, musl), which is then left unchanged.

    Raises:
      ValueError: if ``trim_threshold`` is negative or not an int.
    """
    if (
        isinstance(trim_threshold, bool)
        or not isinstance(trim_threshold, int)
        or trim_threshold < 0
    ):
        raise ValueError(
            f"tune_host_malloc: trim_threshold must be an int >= 0, got {trim_threshold!r}."
        )
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    ok = mallopt(_M_MMAP_MAX, 0) == 1
    return mallopt(_M_TRIM_THRESHOLD, min(trim_threshold, 2**31 - 1)) == 1 and ok
