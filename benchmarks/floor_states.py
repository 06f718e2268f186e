"""Each engine's decode against its floor, split by the machine's memory state, from an `lphi-bench` JSON.

This VM's copy rate is bimodal (≈ 35 GB/s with busy neighbours, ≈ 53 GB/s without; it switches every few
seconds). `lphi-bench` records every run's decode time and the copy rate measured just before and just after
it; this script puts each run in the fast or slow state (both rates above / not above the threshold) and
gives, per engine and state, the median decode time and the median ratio decode ÷ floor, the floor being
the engine's decode bytes at the rate measured just after that run (beside its decode).

    python benchmarks/floor_states.py benchmarks/results/bench_cpu_phi2-2l_decode.json \
        --json benchmarks/results/bench_cpu_phi2-2l_decode_states.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def states(bench: dict, threshold: float | None = None) -> dict:
    machine = bench["machine"]
    samples = np.asarray(machine["memory_bandwidth_samples_gbs"])
    if threshold is None:  # between the two modes: midway from the 10th to the 90th percentile
        threshold = float(np.mean(np.percentile(samples, [10, 90])))
    out = {"threshold_gbs": round(threshold, 2), "engines": {}}
    for res in [*bench["results"], *([bench["baseline"]] if bench.get("baseline") else [])]:
        decode = np.asarray(res["runs_ms"]["decode_per_token"])
        after, before = np.asarray(res["copy_gbs_beside"]), np.asarray(res["copy_gbs_before"])
        decode_mb = res["decode_floor_ms"] * machine["memory_bandwidth_gbs"]  # bytes per token / 1e6
        ratio = decode / (decode_mb / after)  # each run against the floor at the rate beside its decode
        fast = (after > threshold) & (before > threshold)
        entry = {}
        for name, mask in (("fast", fast), ("slow", ~fast)):
            entry[name] = {
                "runs": int(mask.sum()),
                "decode_ms_p50": round(float(np.median(decode[mask])), 3) if mask.any() else None,
                "copy_gbs_p50": round(float(np.median(after[mask])), 2) if mask.any() else None,
                "decode_over_floor_p50": round(float(np.median(ratio[mask])), 3) if mask.any() else None,
            }
        out["engines"][res["key"]] = entry
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("bench_json")
    p.add_argument("--threshold", type=float, help="GB/s between the slow and fast states (default: from the data)")
    p.add_argument("--json", help="write the result here")
    args = p.parse_args()
    result = states(json.loads(Path(args.bench_json).read_text()), args.threshold)
    result["source"] = args.bench_json
    print(f"threshold {result['threshold_gbs']} GB/s")
    print(f"{'engine':<56} {'state':<5} {'runs':>4} {'decode ms':>9} {'copy GB/s':>9} {'÷ floor':>8}")
    for key, entry in result["engines"].items():
        for name, s in entry.items():
            if s["runs"]:
                print(
                    f"{key:<56} {name:<5} {s['runs']:>4} {s['decode_ms_p50']:>9.2f} {s['copy_gbs_p50']:>9.1f} "
                    f"{s['decode_over_floor_p50']:>7.2f}×"
                )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
