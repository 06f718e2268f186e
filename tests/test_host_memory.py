"""The torch backend on the CPU fixes glibc's malloc thresholds so activations reuse freed memory
(runtime/host_memory.py). Process-wide, so each case runs in a fresh interpreter."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

# one CLIP-L/336 attention of the CPU bf16 path, repeated: the median call's minor page faults after warm-up (the
# median: an occasional call may still grow the heap once)
WORKLOAD = """
import json, resource, statistics, sys, torch
from lphi_edge.model.cpu_attention import attention_bf16
from lphi_edge.runtime.host_memory import keep_freed_memory
torch.set_num_threads(1)
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
q, k, v = (torch.randn(1, 16, 577, 64).bfloat16() for _ in range(3))
for _ in range(3):
    attention_bf16(q, k, v, 0.125)
faults = []
for _ in range(11):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    attention_bf16(q, k, v, 0.125)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"kept": kept, "faults": statistics.median(faults), "per_call": faults}))
"""


def run(mode: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run(
        [sys.executable, "-c", WORKLOAD, mode], env=clean | env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_freed_activations_are_reused_instead_of_page_faulted():
    default, kept = run("default"), run("keep")
    assert kept["kept"] is True
    # glibc's moving thresholds map (and zero-fill) the 10 MB score matrices anew on every call
    assert default["faults"] > 500, default
    assert kept["faults"] < default["faults"] / 20, (kept, default)


def test_a_users_own_malloc_settings_are_left_alone():
    assert run("keep", MALLOC_TRIM_THRESHOLD_="1048576")["kept"] is False
    assert run("keep", GLIBC_TUNABLES="glibc.malloc.mmap_threshold=65536")["kept"] is False


def test_the_torch_backend_on_the_cpu_applies_it():
    code = (
        "from lphi_edge.runtime import host_memory; from lphi_edge import Assistant; "
        "Assistant.from_pretrained('shapes-demo'); print(host_memory.keep_freed_memory.cache_info().currsize)"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", code], env=clean, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.split()[-1] == "1", out.stderr[-2000:]
