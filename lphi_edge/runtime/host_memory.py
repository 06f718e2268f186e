"""glibc's malloc set for inference: freed activations are reused, not handed back and page-faulted in again.

Why: glibc serves an allocation above its mmap threshold (128 KiB at start, raised as such blocks are freed, up to
32 MiB) with a fresh mapping, and hands the heap's free top back to the OS beyond its trim threshold; the kernel
then zero-fills every page of the next mapping on first touch. A vision encoder or a prefill on the CPU allocates
and frees megabytes of activations per layer, so with the moving defaults its time depends on which thresholds
earlier work in the process left — the CPU vision attention, for one, ran at less than half its speed while it
page-faulted thousands of pages per call (benchmarks/results/NOTES.md, "Rows padded to 16, and page faults").
Fixed thresholds keep blocks up to 32 MiB on the heap and freed memory in the process for the next call: the
process keeps its high-water mark of activations (which the next answer needs again) instead of returning it
between answers.

Process-wide, like torch.set_num_threads; applied once, by the torch backend on the CPU. Left alone where the
user chose (MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_, or a threshold in GLIBC_TUNABLES) and where the C
library is not glibc.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import platform

logger = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt(3) parameters (malloc.h)
MMAP_THRESHOLD = 32 * 2**20  # the largest glibc takes on 64-bit: blocks up to this come from the heap
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")  # the user chose: left alone
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: the heap's free top is handed back only beyond 2 GiB


@functools.cache
def keep_freed_memory() -> bool:
    """Fix glibc's mmap and trim thresholds (module docstring); True when set now or earlier in this process."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    chosen = [k for k in USER_SETTINGS if k in os.environ] + (["GLIBC_TUNABLES"] * ("_threshold" in tunables))
    if chosen:
        logger.info("malloc left as set in the environment (%s)", ", ".join(chosen))
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not ok:
        logger.warning("glibc refused mallopt: the CPU engines may page-fault their activations on every call")
    return ok
