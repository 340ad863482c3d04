"""glibc ``malloc`` settings for training on a CPU: keep freed memory for the next step.

A training step frees and allocates the same few hundred tensors every step. With glibc's
defaults, a freed block of more than 128 KiB (every weight-sized tensor) is unmapped and handed
back to the kernel, and a freed top of the heap is trimmed, so the next step page-faults the same
megabytes in again: on the project's 2-core VM that was a quarter of a plain step on ``tiny_10m``
at 1×16 tokens, and it fell on some steps more than others (the optimizer's temporaries after the
two-task step's frees), which made the two-task step look 10-15 % slower than plain GD when it is
not (``docs/performance.md``). PyTorch's CPU tuning guide gives the same advice with jemalloc or
tcmalloc preloaded; these two ``mallopt`` calls need nothing installed:

- ``M_MMAP_THRESHOLD`` = 32 MiB (glibc's maximum on 64-bit): blocks below it come from the heap;
- ``M_TRIM_THRESHOLD`` = 1 GiB: a free top of the heap is kept up to that size.

The process keeps its peak memory instead of returning it between steps; the peak itself does not
change. Left alone: a system without glibc (macOS, musl), and a process started with any
``MALLOC_*`` variable set (the user's own settings, e.g. ``MALLOC_ARENA_MAX``, win).
"""

from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD = -1  # <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # glibc refuses more than HEAP_MAX_SIZE / 2 = 32 MiB on 64-bit
TRIM_THRESHOLD = 2**30


def keep_freed_memory() -> bool:
    """Apply the two settings above; True when glibc took both."""
    if platform.system() != "Linux" or any(k.startswith("MALLOC_") for k in os.environ):
        return False
    libc = ctypes.CDLL(None)  # the process's own symbols: no library search at start-up
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return False  # not glibc (musl has a mallopt that does nothing)
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
