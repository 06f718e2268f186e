"""Device strings and CPU thread counts, checked in one place for every backend, CLI and the ROS node.

Imports neither torch nor onnxruntime: the strings are validated before any engine is loaded, so a typo
costs one line and exit status 2, not a model load.

    parse_device("cuda:1")  → Device(kind="cuda", index=1)
    check_threads(4)        → 4   (None stays None: each library's own default)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from lphi_edge.errors import ConfigError

DEVICE_HELP = "cpu | cuda | cuda:N (N: GPU index, 0 = the first)"
_CUDA = re.compile(r"cuda(?::(\d+))?")


@dataclass(frozen=True)
class Device:
    """Where an engine runs: kind "cpu" or "cuda", and the GPU index (0 for the CPU and for plain "cuda")."""

    kind: str
    index: int = 0

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"

    def __str__(self) -> str:
        """Canonical spelling: "cpu", "cuda" (GPU 0, as torch's "cuda" is by default) or "cuda:N"."""
        if not self.is_cuda:
            return "cpu"
        return "cuda" if self.index == 0 else f"cuda:{self.index}"


def parse_device(value: object) -> Device:
    """The device string "cpu", "cuda" or "cuda:N" → Device; anything else → ConfigError naming the value
    and what is accepted."""
    if isinstance(value, Device):
        return value
    if value == "cpu":
        return Device("cpu")
    m = _CUDA.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        raise ConfigError(f"device must be 'cpu' or 'cuda' / 'cuda:N' (N a GPU index ≥ 0), got {value!r}")
    return Device("cuda", int(m.group(1) or 0))


def cpu_count() -> int:
    """Logical CPUs of this machine (os.cpu_count(); 1 when unknown): the upper bound of a thread count."""
    return os.cpu_count() or 1


def check_threads(value: object, name: str = "threads") -> int | None:
    """An intra-op thread count in 1..cpu_count(), or None (the library's default). More threads than
    CPUs only oversubscribe them, and 0 / negative counts mean nothing consistent across torch and
    onnxruntime, so both are refused with the range."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= cpu_count():
        raise ConfigError(f"{name} must be an integer in 1..{cpu_count()} (this machine's CPU count), got {value!r}")
    return value
