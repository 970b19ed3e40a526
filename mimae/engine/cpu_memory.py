"""Keep freed host memory in the process, so large CPU tensors are not page-faulted anew each step.

glibc's malloc serves large requests (by default from 128 KiB, and never more than 32 MiB)
with ``mmap`` and returns them to the system on ``free``. A CPU training step allocates and
frees the same large activations every iteration, so each one is mapped again and every
page is faulted in and zeroed by the kernel. In a ViT-B step of the 4-view control (32
views) on 2 cores, GELU took 7 times and the whole step 1.6 times as long as with freed
memory kept (docs/benchmarks.md). Serving every request from the heap and never trimming
it lets the next step reuse the same pages.

Trimming must be off, because with a finite trim threshold ``free`` still returns a free
block at the top of the heap once it exceeds the threshold. A 4-view ViT-B step frees
about 2 GiB of activations at its end. With the largest positive threshold (2**31 - 1
bytes), one benchmark run on an AMD EPYC faulted 1.8 to 2.0 GiB in again in most of its
4-view steps.

NOTE: the settings cover glibc's main arena only. The arenas of other threads still free
whole empty heaps and may map large blocks with ``mmap``. CPU autograd runs on the
calling thread, so the large activations come from the main arena.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
OPT_OUT = "MIMAE_KEEP_FREED_MEMORY"


def keep_freed_memory() -> bool:
    """Set glibc's malloc to keep freed memory for reuse; return whether the setting was made.

    Does nothing off Linux/glibc or when the environment variable ``MIMAE_KEEP_FREED_MEMORY``
    is ``0``. The process's resident memory then stays at its peak instead of shrinking
    between steps, which is the point: the peak comes back every step.

    NOTE: over 10 steps the resident memory grew by up to about 5 %; heap fragmentation over
    runs of many hours was not measured. ``MIMAE_KEEP_FREED_MEMORY=0`` turns the setting off.
    """
    if os.environ.get(OPT_OUT, "1") == "0" or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    # mallopt returns 1 on success. glibc stores a trim threshold of -1 as the largest
    # size_t, which turns trimming off (glibc 2.36, tests/test_cpu_memory.py).
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, -1))
