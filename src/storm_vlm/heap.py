"""Keep freed memory mapped in a ``storm-vlm`` process, so large tensors reuse warm pages.

glibc's malloc serves every block over 32 MiB with its own ``mmap`` and unmaps it on ``free``.
A model's activations at 128 frames are such blocks (in_proj's output alone is 84 MiB in the
small preset), allocated and freed on every layer, so each one's pages are faulted in afresh,
inside the GEMM or kernel that first writes them, by all its threads at once. Measured side by
side (``benchmarks/heap.py``, small preset, 128 frames, 2-core CPU): end to end 1.08-1.10x faster,
the Mamba module 1.08-1.28x, for a peak RSS 28-29 % higher (docs/bench/cpu-scan.md).

What PyTorch's CPU tuning guides get by preloading jemalloc or tcmalloc, done in-process with
``mallopt``: no block is ``mmap``-ed, and the heap's free top is not given back to the system
below 2 GiB. The process's resident size then stays at its peak (as with CUDA's caching
allocator) rather than falling between calls. ``STORM_MALLOC=system`` keeps glibc's defaults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 2**31 - 1  # bytes of free heap top kept before any is returned (mallopt's int)

ENV = "STORM_MALLOC"


def keep_freed_memory() -> bool:
    """Tune glibc's malloc as above; True if it was (False off Linux/glibc or when opted out).

    The ``storm-vlm`` command calls this once at start-up; a Python program that runs the model
    itself may call it first thing too.
    """
    choice = os.environ.get(ENV, "keep").strip().lower()
    if choice not in ("keep", "system"):
        raise ValueError(f"{ENV} must be 'keep' or 'system', got {choice!r}")
    if choice == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs without mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
