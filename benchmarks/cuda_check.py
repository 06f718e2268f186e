"""One-shot CUDA check for a lent GPU: parity of the torch backend on CUDA and full-size latency.

    python benchmarks/cuda_check.py --out results.json [--runs 5] [--new-tokens 64]

1. Tiny checkpoint: CUDA fp32 tokens vs CPU fp32; fp16/bf16 feature and prefill-logit cosine and
   greedy-token match rate against CPU fp32.
2. Full LLaVA-Phi size (CLIP ViT-L/14-336 + Phi-2 32 layers, random weights): per-stage latency of
   `Assistant.ask` (our generation loop) in fp16 and bf16, next to the same model through
   transformers' own `PhiForCausalLM.generate(inputs_embeds=...)` in the same run.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from lphi_edge import Assistant  # noqa: E402
from lphi_edge.model.checkpoint import default_dtype, resolve_dtype  # noqa: E402
from lphi_edge.model.config import LlavaPhiConfig  # noqa: E402
from lphi_edge.model.modeling import LlavaPhiForCausalLM  # noqa: E402
from lphi_edge.model.tiny import write_tiny_checkpoint  # noqa: E402
from lphi_edge.processing.image import ProcessorConfig  # noqa: E402
from lphi_edge.processing.template import get_template  # noqa: E402
from lphi_edge.processing.tokenizer import Tokenizer  # noqa: E402
from lphi_edge.runtime.torch_backend import TorchBackend  # noqa: E402

from conftest import shapes_frame  # noqa: E402

DEVICE = "cuda"  # --device cpu only to dry-run this script without a GPU
PROMPTS = [
    "What shape is in the image?",
    "How many shapes are there?",
    "Is there a red circle?",
    "Describe the scene in front of the robot.",
]


def cosine(a, b) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def parity(tmp: Path) -> dict:
    ckpt = write_tiny_checkpoint(tmp / "tiny", seed=0)
    cpu = Assistant.from_pretrained(ckpt)
    out: dict = {}
    frames = [shapes_frame(200 + 30 * k, 220 - 20 * k, seed=k) for k in range(4)]
    ref = [cpu.ask(f, q, max_new_tokens=16).token_ids for f, q in zip(frames, PROMPTS, strict=False)]
    for dtype in ("fp32", "fp16", "bf16"):
        gpu = Assistant.from_pretrained(ckpt, device=DEVICE, dtype=dtype)
        got = [gpu.ask(f, q, max_new_tokens=16).token_ids for f, q in zip(frames, PROMPTS, strict=False)]
        px = cpu.processor(frames[0])
        match = [
            sum(x == y for x, y in zip(a, b, strict=False)) / max(len(a), 1) for a, b in zip(ref, got, strict=False)
        ]
        out[dtype] = {
            "identical_answers": sum(a == b for a, b in zip(ref, got, strict=False)),
            "answers": len(ref),
            "token_match_rate": round(float(np.mean(match)), 4),
            "vision_feature_cosine": round(cosine(cpu.backend.encode_images(px), gpu.backend.encode_images(px)), 6),
        }
    return out


def full_size_model(dtype: str) -> LlavaPhiForCausalLM:
    d = {"model_type": "llava_phi", "vision_config": {"vision_tower": {}, "mm_projector": {}}}
    config = LlavaPhiConfig.from_dict(d)  # defaults = LLaVA-Phi: CLIP ViT-L/14-336 + Phi-2
    torch.manual_seed(0)
    with torch.device(DEVICE), default_dtype(resolve_dtype(dtype)):
        model = LlavaPhiForCausalLM(config)
    return model.eval()


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def pct(xs: list[float]) -> dict:
    xs = sorted(xs)
    return {"p50": round(statistics.median(xs), 3), "min": round(xs[0], 3), "max": round(xs[-1], 3)}


@torch.inference_mode()
def latency(tmp: Path, dtype: str, runs: int, new_tokens: int) -> dict:
    model = full_size_model(dtype)
    tok = Tokenizer.from_dir(tmp / "tiny")  # stand-in tokenizer: ids outside it decode to nothing
    backend = TorchBackend(model)
    a = Assistant(backend, tok, ProcessorConfig(), get_template("phi_v0"))
    frame = shapes_frame(640, 480, seed=1)
    stages = {k: [] for k in ("preprocess_ms", "vision_ms", "prefill_ms", "ttft_ms", "decode_ms_per_token", "total_ms")}
    for i in range(runs + 2):
        a.reset()
        sync()
        ans = a.ask(frame, PROMPTS[3], max_new_tokens=new_tokens)
        t = ans.timings
        if i >= 2:  # warm-up
            for k in ("preprocess_ms", "vision_ms", "prefill_ms", "ttft_ms", "total_ms"):
                stages[k].append(getattr(t, k))
            stages["decode_ms_per_token"].append(t.decode_ms / max(t.new_tokens - 1, 1))
    prompt_tokens = ans.timings.prompt_tokens

    # Baseline: transformers' own generate() over the same spliced embeddings.
    px = torch.from_numpy(a.processor(frame)).to(DEVICE)
    ids = tok.encode_prompt(a.template.prompt([(PROMPTS[3], None)]))
    k = ids.index(-200)
    lm = model.language_model
    base = []
    for i in range(runs + 2):
        sync()
        t0 = time.perf_counter()
        feats = model.encode_images(px)
        emb = lm.get_input_embeddings()
        x = torch.cat(
            [emb(torch.tensor([ids[:k]], device=DEVICE)), feats, emb(torch.tensor([ids[k + 1 :]], device=DEVICE))], 1
        )
        lm.generate(
            inputs_embeds=x,
            attention_mask=torch.ones(x.shape[:2], dtype=torch.long, device=DEVICE),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
        )
        sync()
        if i >= 2:
            base.append((time.perf_counter() - t0) * 1e3)
    res = {
        "dtype": dtype,
        "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens,
        "runs": runs,
        "lphi_edge": {k: pct(v) for k, v in stages.items()},
        "hf_generate_end_to_end_ms": pct(base),
        "peak_gpu_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if DEVICE == "cuda" else None,
        "weights_mb": round(sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20, 1),
    }
    res["speedup_end_to_end_vs_hf"] = round(
        res["hf_generate_end_to_end_ms"]["p50"] / res["lphi_edge"]["total_ms"]["p50"], 3
    )
    del model, backend, a
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return res


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtypes", default="fp16,bf16")
    args = p.parse_args()
    global DEVICE
    DEVICE = args.device
    gpu = DEVICE == "cuda"
    import transformers

    result: dict = {
        "machine": {
            "gpu": torch.cuda.get_device_name(0) if gpu else None,
            "capability": list(torch.cuda.get_device_capability(0)) if gpu else None,
            "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "transformers": transformers.__version__,
        },
        "command": " ".join(sys.argv),
    }
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result["parity_tiny"] = parity(Path(tmp)) if gpu else write_tiny_checkpoint(Path(tmp) / "tiny") and None
        result["latency_full_size"] = [
            latency(Path(tmp), d, args.runs, args.new_tokens) for d in args.dtypes.split(",")
        ]
        result["wall_s"] = round(time.perf_counter() - t0, 1)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
