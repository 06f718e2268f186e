"""The machine a benchmark ran on, and its measured limits: memory bandwidth (a copy test) and compute
rate (a matmul test)."""

from __future__ import annotations

import os
import platform
import re
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    return m.group(1).strip() if m else platform.machine()


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine_info(threads: int) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": threads,
        "memory": f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB",
        "gpu": None,
        "python": platform.python_version(),
        "libraries": {n: _version(n) for n in ("lphi-edge", "torch", "transformers", "onnxruntime", "numpy")},
    }
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def memory_bandwidth_gbs(mb: int = 512, repeats: int = 5) -> float:
    """Best copy rate over `repeats` (bytes read + bytes written, GB/s), multi-threaded through torch when
    present (as the engines read weights), numpy otherwise."""
    n = mb * 2**20 // 4
    try:
        import torch

        src, dst = torch.ones(n), torch.empty(n)
        copy = lambda: dst.copy_(src)  # noqa: E731
    except ImportError:
        src, dst = np.ones(n, np.float32), np.empty(n, np.float32)
        copy = lambda: np.copyto(dst, src)  # noqa: E731
    copy()
    best = min(_timed(copy) for _ in range(repeats))
    return 2 * n * 4 / best / 1e9


def compute_gflops(size: int = 2048, repeats: int = 5, dtype: str = "fp32") -> float:
    """Best matmul rate (GFLOP/s) at the current thread count, in fp32 or (torch only) bf16."""
    try:
        import torch

        dt = torch.bfloat16 if dtype == "bf16" else torch.float32
        a, b = torch.randn(size, size, dtype=dt), torch.randn(size, size, dtype=dt)
        mm = lambda: torch.mm(a, b)  # noqa: E731
    except ImportError:
        a, b = np.random.rand(size, size).astype(np.float32), np.random.rand(size, size).astype(np.float32)
        mm = lambda: a @ b  # noqa: E731
    mm()
    best = min(_timed(mm) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def rss_mb() -> float:
    """Current resident memory of this process (MB)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
