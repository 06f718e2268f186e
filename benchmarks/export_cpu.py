"""Exported engines vs the torch backend on this CPU, at Phi-2 width (issue #3's speed targets).

    python benchmarks/export_cpu.py --layers 2 --out benchmarks/results/export_cpu.json

1. Writes a random checkpoint `phi2-<N>l` (full CLIP ViT-L/14-336 + Phi-2 widths, N decoder layers).
2. Runs `lphi-export` for fp32, fp16, int8 and int4 in subprocesses, recording wall time and peak
   resident memory of each (the 24 GiB-machine requirement).
3. Loads the torch backend (fp32) and all four exports in this one process and measures, interleaved:
   vision encoder (1 image), prefill of a 600-position prompt, and decode per token with 600
   positions cached (median of --runs). Decode at 32 layers is extrapolated per layer, and labelled.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = {
    "fp32": [],
    "fp16": ["--fp16"],
    "int8": ["--quant", "int8"],
    "int4": ["--quant", "int4"],
    "int8-vision": ["--quant", "int8", "--quant-vision"],  # vision encoder's MatMuls int8 too
}


def run_export(ckpt: Path, out: Path, flags: list[str], pairs: int, reuse: bool) -> dict:
    """Export in a subprocess (peak RSS and wall time recorded beside it); with `reuse`, an export already
    made by this script is kept and its recorded stats returned."""
    stats_file = out.with_name(out.name + ".stats.json")
    if reuse and (out / "manifest.json").is_file() and stats_file.is_file():
        return json.loads(stats_file.read_text())
    cmd = [
        str(Path(sys.executable).with_name("lphi-export")),
        str(ckpt),
        "--out",
        str(out),
        "--overwrite",
        "--verify-pairs",
        str(pairs),
        *flags,
    ]
    wrapper = (
        "import resource, subprocess, sys, time; t = time.time(); rc = subprocess.call(sys.argv[1:]); "
        "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
        "'WALL_S', round(time.time() - t, 1), 'RC', rc)"
    )
    proc = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True)
    tail = proc.stdout.strip().splitlines()[-1].split()
    stats = dict(zip(tail[::2], tail[1::2]))
    if stats["RC"] != "0":
        raise SystemExit(f"export failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    return {
        "command": " ".join(cmd[1:]),
        "wall_s": float(stats["WALL_S"]),
        "peak_rss_mb": round(int(stats["PEAK_RSS_KB"]) / 1024, 1),
        "files_mb": round(sum(f["bytes"] for f in manifest["files"].values()) / 2**20, 1),
        "verification": manifest["verification"],
    }


def measure(backends: dict, processor, runs: int, cached: int, steps: int) -> dict:
    from lphi_edge.data.shapes import sample_frames
    from lphi_edge.runtime.generation import Session

    pixels = processor(sample_frames(1, seed=0)[0])  # (1, 3, 336, 336)
    results = {name: {"vision_ms": [], "prefill_ms": [], "decode_ms_per_token": []} for name in backends}
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, 300, cached).tolist()
    for _ in range(runs):  # interleaved: each round measures every backend once
        for name, be in backends.items():
            r = results[name]
            t0 = time.perf_counter()
            be.encode_images(pixels)
            t1 = time.perf_counter()
            s = Session(be, None)
            s.prefill(prompt, [])
            t2 = time.perf_counter()
            for k in range(steps):
                s.step(int(prompt[k]))
            t3 = time.perf_counter()
            r["vision_ms"].append((t1 - t0) * 1e3)
            r["prefill_ms"].append((t2 - t1) * 1e3)
            r["decode_ms_per_token"].append((t3 - t2) * 1e3 / steps)
    return {name: {k: round(statistics.median(v), 2) for k, v in r.items()} for name, r in results.items()}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--work", default=str(ROOT / ".cache" / "bench"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "export_cpu.json"))
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--cached", type=int, default=600)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--verify-pairs", type=int, default=4)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--reuse", action="store_true", help="keep exports this script already made")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from lphi_edge.bench.machine import cpu_model
    from lphi_edge.model.checkpoint import processor_config
    from lphi_edge.model.synthetic import write_synthetic_checkpoint
    from lphi_edge.processing.image import ImageProcessor
    from lphi_edge.runtime.onnx_backend import OnnxBackend
    from lphi_edge.runtime.torch_backend import TorchBackend

    work = Path(args.work)
    name = f"phi2-{args.layers}l"
    ckpt = work / name
    if not (ckpt / "config.json").is_file():
        write_synthetic_checkpoint(ckpt, name)
    exports = {
        prec: run_export(ckpt, work / f"{name}-{prec}", flags, args.verify_pairs, args.reuse)
        for prec, flags in PRECISIONS.items()
    }

    torch_be = TorchBackend.from_checkpoint(ckpt)
    backends = {"torch/fp32": torch_be}
    for prec in PRECISIONS:
        backends[f"onnxruntime/{prec}"] = OnnxBackend.from_export_dir(work / f"{name}-{prec}", threads=args.threads)
    processor = ImageProcessor(processor_config(ckpt, torch_be.model.config))
    lat = measure(backends, processor, args.runs, args.cached, args.steps)
    base = lat["torch/fp32"]
    for r in lat.values():
        r["decode_tokens_per_s"] = round(1e3 / r["decode_ms_per_token"], 2)
        r["speedup_vs_torch_fp32"] = {
            k: round(base[k] / r[k], 2) for k in ("vision_ms", "prefill_ms", "decode_ms_per_token")
        }
    import onnxruntime
    import transformers

    result = {
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "threads": args.threads,
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "model": f"{name}: random weights, CLIP ViT-L/14-336 (24 layers) + Phi-2 widths, {args.layers} decoder layers",
        "decode_setting": f"{args.cached} positions cached, {args.steps} steps, median of {args.runs} rounds",
        "exports": exports,
        "latency": lat,
        "peak_rss_mb_this_process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result["latency"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
