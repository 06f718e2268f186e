"""CUDA paths of the torch backend (skipped without a GPU; run on a lent H100/H200, see README)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lphi_edge import Assistant

from conftest import shapes_frame

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

PROMPTS = ["What shape is in the image?", "How many shapes are there?", "Is there a red circle?"]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def cpu(tiny_ckpt):
    return Assistant.from_pretrained(tiny_ckpt)


def test_cuda_fp32_matches_cpu_tokens(tiny_ckpt, cpu):
    gpu = Assistant.from_pretrained(tiny_ckpt, device="cuda")
    assert gpu.backend.device == "cuda"
    for k, q in enumerate(PROMPTS):
        img = shapes_frame(200 + 40 * k, 180, seed=k)
        assert gpu.ask(img, q, max_new_tokens=16).token_ids == cpu.ask(img, q, max_new_tokens=16).token_ids


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_cuda_half_precision_parity(tiny_ckpt, cpu, dtype):
    gpu = Assistant.from_pretrained(tiny_ckpt, device="cuda", dtype=dtype)
    img = shapes_frame(224, 224, seed=5)
    px = cpu.processor(img)
    f32, f16 = cpu.backend.encode_images(px), gpu.backend.encode_images(px)
    assert cosine(f32, f16) >= 0.999
    # prefill logits over the same spliced prompt
    ids = cpu.tokenizer.encode_prompt(cpu.template.prompt([(PROMPTS[0], None)]))
    from lphi_edge.runtime.generation import ImageInput, Session

    logits = []
    for a in (cpu, gpu):
        s = Session(a.backend, a.tokenizer)
        emb = s._prompt_embeds(ids, [ImageInput("f", f32[0])], start=0)
        out, _ = a.backend.decode(
            emb, np.ones((1, emb.shape[1]), np.int64), np.arange(emb.shape[1])[None], a.backend.new_cache()
        )
        logits.append(out[0, -1])
    assert cosine(*logits) >= 0.999
    assert len(gpu.ask(img, PROMPTS[0], max_new_tokens=8).token_ids) > 0


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_cuda_graph_decode_answers_like_eager_decode(tiny_ckpt, dtype):
    graphs = Assistant.from_pretrained(tiny_ckpt, device="cuda", dtype=dtype)  # graphs: the CUDA default
    eager = Assistant.from_pretrained(tiny_ckpt, device="cuda", dtype=dtype, cuda_graphs=False)
    assert graphs.backend.cuda_graphs and not eager.backend.cuda_graphs
    for k, q in enumerate(PROMPTS):
        img = shapes_frame(200 + 40 * k, 180, seed=k)
        for _ in range(2):  # a second ask reuses the backend's static cache and its captured graph
            want = eager.ask(img, q, max_new_tokens=24, min_new_tokens=24).token_ids
            assert graphs.ask(img, q, max_new_tokens=24, min_new_tokens=24).token_ids == want
    a, b = eager.chat(shapes_frame(224, 224, seed=9)), graphs.chat(shapes_frame(224, 224, seed=9))
    for q in PROMPTS:  # multi-turn: crop to the shared prefix, extend, replay
        assert b.ask(q, max_new_tokens=12).token_ids == a.ask(q, max_new_tokens=12).token_ids


def test_cuda_n_selects_the_gpu_and_out_of_range_is_refused(tiny_ckpt, cpu):
    from lphi_edge.errors import ConfigError

    gpu0 = Assistant.from_pretrained(tiny_ckpt, device="cuda:0", dtype="fp16")  # graphs captured on GPU 0
    assert gpu0.backend.device == "cuda" and gpu0.backend.model.device == torch.device("cuda", 0)
    img = shapes_frame(224, 224, seed=1)
    assert len(gpu0.ask(img, PROMPTS[0], max_new_tokens=8).token_ids) > 0
    count = torch.cuda.device_count()
    with pytest.raises(ConfigError, match=f"torch sees {count} CUDA GPU"):
        Assistant.from_pretrained(tiny_ckpt, device=f"cuda:{count}")


def test_fp16_baseline_runs_transformers_in_fp16(tiny_ckpt):
    from lphi_edge.bench.hf import HFBaseline

    hf = HFBaseline(tiny_ckpt, "cuda:0", "fp16")
    assert hf.model.dtype == torch.float16 and hf.precision == "fp16"
    stages = hf.run(shapes_frame(224, 224, seed=2), PROMPTS[0], 4)
    assert stages["decode_per_token"] > 0 and stages["vision"] > 0
