"""Prefill and decode of two shared-KV decoders side by side (e.g. the fp32 cache vs `--kv-quant int8`).

Runs each export's decoder alone through the onnxruntime backend (its shared cache: one preallocated
buffer per past tensor, bound as past and present), interleaved: a prefill of P positions from an empty
cache for several P, then decode steps after P = 697 (one camera frame + a short prompt).

    python benchmarks/kv_cache_prefill.py .cache/bench/phi2-2l-int4-b256-shared \
        .cache/bench/phi2-2l-int4-b256-shared-kv8 --json benchmarks/results/kv_cache_prefill.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from lphi_edge.format.manifest import Manifest
from lphi_edge.runtime.onnx_backend import OnnxBackend


class _Decoder:
    """An export's decoder through the onnxruntime backend, over one cache it keeps (cropped, never re-made)."""

    def __init__(self, export: str, threads: int):
        self.be = OnnxBackend(Manifest.load(export, verify_checksums=False), threads=threads)
        self.hidden = self.be.spec.hidden_size
        self.cache = self.be.new_cache()
        self.cache.reserve(1024)

    def __call__(self, embeds: np.ndarray, start: int) -> None:
        s = embeds.shape[1]  # embeds (1, S, D) at positions start .. start + S - 1
        self.cache.crop(start)
        self.be.decode(embeds, np.ones((1, start + s), np.int64), np.arange(start, start + s)[None], self.cache)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("exports", nargs=2, help="two export directories with kv_cache 'shared'")
    p.add_argument("--positions", default="64,256,697", help="prefill lengths")
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json")
    args = p.parse_args()
    runners = [_Decoder(e, args.threads) for e in args.exports]
    d = runners[0].hidden
    rng = np.random.default_rng(0)
    result = {"exports": args.exports, "threads": args.threads, "prefill_ms": {}, "decode_ms": {}}
    for n in map(int, args.positions.split(",")):
        x = (rng.standard_normal((1, n, d)) * 0.5).astype(np.float32)  # (1, P, D)
        times = [[], []]
        for r in range(args.repeats + 1):  # the first round warms up
            for k, run in enumerate(runners):
                t0 = time.perf_counter()
                run(x, 0)
                if r:
                    times[k].append((time.perf_counter() - t0) * 1e3)
        result["prefill_ms"][n] = [round(statistics.median(t), 2) for t in times]
        print(f"prefill {n:4d} positions: {result['prefill_ms'][n][0]:8.1f} ms vs {result['prefill_ms'][n][1]:8.1f} ms")
    step = (rng.standard_normal((1, 1, d)) * 0.5).astype(np.float32)  # (1, 1, D)
    blocks = [[], []]
    for _ in range(args.repeats):  # after the 697-position prefill above: blocks of 32 steps, interleaved
        for k, run in enumerate(runners):
            steps = []
            for i in range(32):
                t0 = time.perf_counter()
                run(step, n + i)
                steps.append((time.perf_counter() - t0) * 1e3)
            blocks[k].append(statistics.median(steps))
    result["decode_ms"] = {"blocks": [[round(b, 3) for b in bl] for bl in blocks]}
    result["decode_ms"]["p50"] = [round(statistics.median(b), 3) for b in blocks]
    a, b = result["decode_ms"]["p50"]
    print(f"decode after {n} positions: {a:.2f} ms vs {b:.2f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
