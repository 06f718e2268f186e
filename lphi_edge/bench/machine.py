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

from lphi_edge.runtime.device import parse_device


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


def _cuda(device: str) -> bool:
    return parse_device(device).is_cuda


def machine_info(threads: int, device: str = "cpu") -> dict[str, Any]:
    """The machine as a benchmark records it; `gpu` names the GPU of `device` (the first one on the CPU)."""
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
            info["gpu"] = torch.cuda.get_device_name(parse_device(device).index)
    except ImportError:
        pass
    return info


def _floats(mb: int, device: str) -> int:
    """Elements of a float32 test buffer: `mb` on the CPU, 4× on a GPU (its caches are tens of MB)."""
    return mb * 2**20 // 4 * (4 if _cuda(device) else 1)


def _best(fn, repeats: int, device: str) -> float:
    """Fastest of `repeats` timed calls after one untimed warm-up (seconds)."""
    fn()
    return min(_timed(fn, device) for _ in range(repeats))


def memory_bandwidth_gbs(mb: int = 512, repeats: int = 5, device: str = "cpu") -> float:
    """Best copy rate over `repeats` (bytes read + bytes written, GB/s), multi-threaded through torch when
    present (as the engines read weights), numpy otherwise. On "cuda" / "cuda:N": a device-to-device copy."""
    n = _floats(mb, device)
    try:
        import torch

        src, dst = torch.ones(n, device=device), torch.empty(n, device=device)
        copy = lambda: dst.copy_(src)  # noqa: E731
    except ImportError:
        src, dst = np.ones(n, np.float32), np.empty(n, np.float32)
        copy = lambda: np.copyto(dst, src)  # noqa: E731
    return 2 * n * 4 / _best(copy, repeats, device) / 1e9


def memory_read_gbs(mb: int = 512, repeats: int = 5, device: str = "cpu") -> float:
    """Best read-only rate over `repeats` (a sum over `mb` of float32, GB/s): what a decode step does with
    its weights, which it reads and never writes. On a VM the rate moves with the neighbours' load, so a
    benchmark measures it in the same run as the engines."""
    n = _floats(mb, device)
    try:
        import torch

        a = torch.ones(n, device=device)
    except ImportError:
        a = np.ones(n, np.float32)
    return n * 4 / _best(a.sum, repeats, device) / 1e9


def compute_gflops(size: int = 2048, repeats: int = 5, dtype: str = "fp32", device: str = "cpu") -> float:
    """Best matmul rate (GFLOP/s, a multiply-add counted as 2) at the current thread count, in fp32 or (torch
    only) bf16 / fp16 / int8 (int8 × int8 → int32, `torch._int_mm`: the product the torch backend's int8 linears
    run). On "cuda": 4× `size` (a 2048³ product is too short to fill a data-centre GPU)."""
    try:
        import torch

        if _cuda(device):
            size *= 4
        if dtype == "int8":
            a, b = (torch.randint(-127, 128, (size, size), dtype=torch.int8, device=device) for _ in range(2))
            mm = lambda: torch._int_mm(a, b)  # noqa: E731
            return 2 * size**3 / _best(mm, repeats, device) / 1e9
        dt = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype, torch.float32)
        a, b = torch.randn(size, size, dtype=dt, device=device), torch.randn(size, size, dtype=dt, device=device)
        mm = lambda: torch.mm(a, b)  # noqa: E731
    except ImportError:
        a, b = np.random.rand(size, size).astype(np.float32), np.random.rand(size, size).astype(np.float32)
        mm = lambda: a @ b  # noqa: E731
    return 2 * size**3 / _best(mm, repeats, device) / 1e9


def sync(device: str) -> None:
    """Wait for the GPU's queued work (wall-clock timing of CUDA code needs it); nothing on the CPU."""
    if _cuda(device):
        import torch

        torch.cuda.synchronize(device)


def _timed(fn, device: str = "cpu") -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
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
