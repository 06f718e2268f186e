"""How close do torch's CPU execution modes bring the bf16 vision encoder and prefill to their compute floor? (#18)

    .venv/bin/python benchmarks/vision_compile_probe.py --model .cache/bench18/phi2-2l \
        --json benchmarks/results/vision_compile_probe.json

The CLIP ViT-L/14-336 tower + projector (one 336-px frame) and the decoder's prefill (--positions positions of
inputs_embeds) of a phi2-2l checkpoint in bf16, each run in these modes, interleaved, p50 of --runs:

- eager: what the torch backend runs (transformers modules, SDPA attention);
- prepacked: every nn.Linear swapped for oneDNN's with its weight reordered once (`torch.utils.mkldnn`), so no
  call repacks the weight;
- compiled: torch.compile (inductor) of the same module;
- compiled+freezing: inductor with `freezing` on — weights become constants, linears prepacked for oneDNN and
  their epilogues (bias, GELU) fused.

Floors from the bf16 matmul rate measured in the same run; every mode's output checked against eager (cosine). A
probe for the next step, not an engine.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.utils.mkldnn

from lphi_edge.bench.costs import Arch
from lphi_edge.bench.machine import compute_gflops, machine_info
from lphi_edge.model.checkpoint import load_checkpoint

logger = logging.getLogger("vision_compile_probe")
MODES = ("eager", "prepacked", "compiled", "compiled+freezing")


def prepacked(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of `module` with every nn.Linear replaced by oneDNN's prepacked bf16 linear."""
    out = copy.deepcopy(module)
    for child in list(out.modules()):
        for attr, sub in list(child.named_children()):
            if type(sub) is torch.nn.Linear:
                setattr(child, attr, torch.utils.mkldnn.to_mkldnn(sub, torch.bfloat16))
    return out


def compiled(fn: Callable, freezing: bool) -> Callable:
    import torch._inductor.config as inductor

    def run(*args):
        inductor.freezing = freezing
        try:
            return compiled_fn(*args)
        finally:
            inductor.freezing = False

    compiled_fn = torch.compile(fn)
    return run


def modes_for(module: torch.nn.Module, call: Callable[[torch.nn.Module], torch.Tensor]) -> dict[str, Callable]:
    packed = prepacked(module)
    # one lambda each: dynamo caches compiled graphs per code object
    return {
        "eager": lambda: call(module),
        "prepacked": lambda: call(packed),
        "compiled": compiled(lambda: call(module), freezing=False),
        "compiled+freezing": compiled(lambda: call(module), freezing=True),
    }


def measure(fns: dict[str, Callable], runs: int) -> tuple[dict[str, list[float]], dict[str, float], dict[str, float]]:
    setup_s, cosine = {}, {}
    with torch.inference_mode():
        ref = fns["eager"]().float().flatten()
        for name, fn in fns.items():
            t = time.perf_counter()
            got = fn().float().flatten()  # first call compiles
            setup_s[name] = round(time.perf_counter() - t, 1)
            cosine[name] = float(torch.nn.functional.cosine_similarity(ref, got, dim=0))
        samples: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(runs):
            for name, fn in fns.items():
                t = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - t) * 1e3)
    return samples, setup_s, cosine


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="a phi2-2l (or any LLaVA-Phi) checkpoint directory")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--positions", type=int, default=697, help="prefill positions (697: 576 image tokens + text)")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model = load_checkpoint(args.model, dtype="bf16").eval()
    arch = Arch.from_config(model.config)
    size = model.config.vision.image_size
    pixels = torch.randn(1, 3, size, size, dtype=torch.bfloat16)  # (1, 3, H, W)
    embeds = torch.randn(1, args.positions, model.config.text.hidden_size, dtype=torch.bfloat16) * 0.02  # (1, T, D)
    lm = model.language_model.model  # the decoder stack without the LM head: what prefill computes for the cache
    parts = {
        "vision": (model, lambda m: m.encode_images(pixels), arch.vision_flops()),
        "prefill": (lm, lambda m: m(inputs_embeds=embeds, use_cache=False).last_hidden_state, None),
    }
    gflops = compute_gflops(dtype="bf16")
    result: dict = {
        "command": "python benchmarks/vision_compile_probe.py --model " + args.model,
        "machine": machine_info(torch.get_num_threads(), "cpu") | {"compute_gflops_bf16": round(gflops, 1)},
        "positions": args.positions,
    }
    for part, (module, call, flops) in parts.items():
        if flops is None:
            flops = arch.prefill_flops(args.positions)
        samples, setup_s, cosine = measure(modes_for(module, call), args.runs)
        floor_ms = flops / (gflops * 1e9) * 1e3
        p50 = {k: float(np.median(v)) for k, v in samples.items()}
        result[part] = {
            "p50_ms": {k: round(v, 1) for k, v in p50.items()},
            "runs_ms": {k: [round(x, 1) for x in v] for k, v in samples.items()},
            "floor_ms": round(floor_ms, 1),
            "ratio_to_floor": {k: round(v / floor_ms, 2) for k, v in p50.items()},
            "first_call_s": setup_s,
            "cosine_vs_eager": cosine,
        }
        logger.info("%s: %s", part, json.dumps(result[part]["ratio_to_floor"]))
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    logger.info("%s", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
