"""Does a compiled graph bring the bf16 vision encoder closer to its compute floor on this CPU? (issue #18)

    .venv/bin/python benchmarks/vision_compile_probe.py --model .cache/bench18/phi2-2l \
        --json benchmarks/results/vision_compile_probe.json

The full CLIP ViT-L/14-336 tower + projector of a phi2-2l checkpoint in bf16 on one 336-px frame: eager (what the
torch backend runs) against torch.compile (inductor) of the same module, interleaved, p50 of --runs; the floor from
the bf16 matmul rate measured in the same run. A probe for the next step, not an engine.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from lphi_edge.bench.costs import Arch
from lphi_edge.bench.machine import compute_gflops, machine_info
from lphi_edge.model.checkpoint import load_checkpoint

logger = logging.getLogger("vision_compile_probe")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="a phi2-2l (or any LLaVA-Phi) checkpoint directory")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model = load_checkpoint(args.model, dtype="bf16").eval()
    size = model.config.vision.image_size
    pixels = torch.randn(1, 3, size, size, dtype=torch.bfloat16)  # (1, 3, H, W)
    eager = model.encode_images
    t0 = time.perf_counter()
    compiled = torch.compile(model.encode_images)
    with torch.inference_mode():
        compiled(pixels)  # compiles
    compile_s = time.perf_counter() - t0
    samples: dict[str, list[float]] = {"eager": [], "compiled": []}
    with torch.inference_mode():
        ref, got = eager(pixels), compiled(pixels)  # (1, N, D) each
        diff = float((ref.float() - got.float()).abs().max())
        cos = float(torch.nn.functional.cosine_similarity(ref.float().flatten(), got.float().flatten(), dim=0))
        for _ in range(args.runs):
            for name, fn in (("eager", eager), ("compiled", compiled)):
                t = time.perf_counter()
                fn(pixels)
                samples[name].append((time.perf_counter() - t) * 1e3)
    gflops = compute_gflops(dtype="bf16")
    floor_ms = Arch.from_config(model.config).vision_flops() / (gflops * 1e9) * 1e3
    p50 = {k: float(np.median(v)) for k, v in samples.items()}
    result = {
        "command": "python benchmarks/vision_compile_probe.py --model " + args.model,
        "machine": machine_info(torch.get_num_threads(), "cpu") | {"compute_gflops_bf16": round(gflops, 1)},
        "compile_s": round(compile_s, 1),
        "vision_ms_p50": {k: round(v, 1) for k, v in p50.items()},
        "runs_ms": {k: [round(x, 1) for x in v] for k, v in samples.items()},
        "vision_floor_ms": round(floor_ms, 1),
        "ratio_to_floor": {k: round(v / floor_ms, 2) for k, v in p50.items()},
        "compiled_vs_eager": {"max_abs_diff": diff, "cosine": cos},
    }
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    logger.info("%s", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
