"""Token-for-token agreement with an independent transformers reference (tests/reference.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lphi_edge import Assistant
from lphi_edge.model.checkpoint import load_checkpoint, save_checkpoint
from lphi_edge.model.checkpoint import processor_config as read_processor_config

from conftest import shapes_frame
from reference import ReferenceLlavaPhi, phi_v0_prompt

PROMPTS = ["What shape is in the image?", "How many shapes are there?", "Is there a red circle? Answer yes or no."]
FRAMES = [(224, 224), (320, 200), (120, 260)]  # square, wide, tall
MAX_NEW = 24


@pytest.fixture(scope="module", params=["pad", "square"])
def ckpt(request, tiny_ckpt, tiny_ckpt_square) -> Path:
    return tiny_ckpt if request.param == "pad" else tiny_ckpt_square


@pytest.fixture(scope="module")
def pair(ckpt):
    return Assistant.from_pretrained(ckpt), ReferenceLlavaPhi(ckpt)


@pytest.mark.parametrize("wh", FRAMES)
@pytest.mark.parametrize("prompt", PROMPTS)
def test_ask_matches_reference(pair, wh, prompt):
    assistant, ref = pair
    img = shapes_frame(*wh, seed=wh[0] + len(prompt))
    expected = ref.generate(img, phi_v0_prompt([(prompt, None)]), MAX_NEW)
    ans = assistant.ask(img, prompt, max_new_tokens=MAX_NEW)
    assert ans.token_ids == expected
    assert ans.text == assistant.tokenizer.decode(expected).strip()
    assert ans.finish_reason == "length" and len(ans.token_ids) == MAX_NEW


def test_answers_depend_on_image_and_prompt(pair):
    """Guards the parity test against a degenerate model that ignores its inputs."""
    assistant, _ = pair
    a = assistant.ask(shapes_frame(224, 224, 1), PROMPTS[0], max_new_tokens=8).token_ids
    b = assistant.ask(shapes_frame(224, 224, 2), PROMPTS[0], max_new_tokens=8).token_ids
    c = assistant.ask(shapes_frame(224, 224, 1), PROMPTS[1], max_new_tokens=8).token_ids
    assert a != b and a != c


def test_eos_stops_like_generate(tiny_ckpt):
    """Declare a token the model emits mid-answer as an extra eos: both stop at the same place."""
    ref = ReferenceLlavaPhi(tiny_ckpt)
    img = shapes_frame(200, 200, 11)
    full = ref.generate(img, phi_v0_prompt([(PROMPTS[0], None)]), MAX_NEW)
    stop_tok = full[5]
    ref.eos = stop_tok
    expected = ref.generate(img, phi_v0_prompt([(PROMPTS[0], None)]), MAX_NEW)
    base = Assistant.from_pretrained(tiny_ckpt)
    a = Assistant(base.backend, base.tokenizer, base.processor.config, base.template, {stop_tok})
    ans = a.ask(img, PROMPTS[0], max_new_tokens=MAX_NEW)
    assert ans.token_ids == expected == full[: full.index(stop_tok)]
    assert ans.finish_reason == "eos" and ans.timings.new_tokens == len(expected) + 1


def test_repeated_asks_reuse_prefix_and_agree(tiny_ckpt, frame):
    a = Assistant.from_pretrained(tiny_ckpt)
    first = a.ask(frame, PROMPTS[0], max_new_tokens=12)
    again = a.ask(frame, PROMPTS[0], max_new_tokens=12)
    other = a.ask(frame, PROMPTS[1], max_new_tokens=12)
    fresh = Assistant.from_pretrained(tiny_ckpt).ask(frame, PROMPTS[1], max_new_tokens=12)
    assert first.token_ids == again.token_ids
    assert other.token_ids == fresh.token_ids
    assert first.timings.cached_tokens == 0 and first.timings.vision_ms > 0
    assert again.timings.cached_tokens == again.timings.prompt_tokens - 1  # all but the last position reused
    assert again.timings.vision_ms == 0  # frame features cached
    assert other.timings.cached_tokens > 16  # system prompt + image reused


def test_chat_equals_replay_from_scratch(tiny_ckpt, frame):
    a = Assistant.from_pretrained(tiny_ckpt)
    ref = ReferenceLlavaPhi(tiny_ckpt)
    chat = a.chat(frame)
    turns: list[tuple[str, str | None]] = []
    for q in ["What is in the image?", "What colour is it?", "How many are there?"]:
        ans = chat.ask(q, max_new_tokens=10)
        expected = ref.generate(frame, phi_v0_prompt([*turns, (q, None)]), 10)
        assert ans.token_ids == expected
        turns.append((q, ans.text))
        if len(turns) > 1:
            assert ans.timings.cached_tokens > 16  # earlier turns and the image came from the KV cache
    assert chat.turns == turns


def test_stream_pieces_join_to_text(tiny_ckpt, frame):
    a = Assistant.from_pretrained(tiny_ckpt)
    pieces = list(a.stream(frame, PROMPTS[2], max_new_tokens=20))
    answer = Assistant.from_pretrained(tiny_ckpt).ask(frame, PROMPTS[2], max_new_tokens=20)
    assert len(pieces) > 1
    assert "".join(pieces) == answer.text == a.last_answer.text
    got: list[str] = []
    via_callback = a.ask(frame, PROMPTS[2], max_new_tokens=20, on_text=got.append)
    assert "".join(got) == via_callback.text == answer.text


def test_stream_closed_early_leaves_assistant_usable(tiny_ckpt, frame):
    a = Assistant.from_pretrained(tiny_ckpt)
    s = a.stream(frame, PROMPTS[0], max_new_tokens=20)
    next(s)
    s.close()
    fresh = Assistant.from_pretrained(tiny_ckpt).ask(frame, PROMPTS[1], max_new_tokens=10)
    assert a.ask(frame, PROMPTS[1], max_new_tokens=10).token_ids == fresh.token_ids


def test_save_load_round_trip_and_shards(tiny_ckpt, tmp_path, frame):
    model = load_checkpoint(tiny_ckpt)
    expected = Assistant.from_pretrained(tiny_ckpt).ask(frame, PROMPTS[0], max_new_tokens=16).token_ids
    proc = read_processor_config(tiny_ckpt, model.config)
    single = save_checkpoint(model, tmp_path / "single", tokenizer_dir=tiny_ckpt, processor=proc)
    sharded = save_checkpoint(
        model, tmp_path / "sharded", tokenizer_dir=tiny_ckpt, processor=proc, max_shard_size="200KB"
    )
    shards = sorted(p.name for p in sharded.glob("*.safetensors"))
    assert len(shards) > 2 and (sharded / "model.safetensors.index.json").is_file()
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    assert json.loads((single / "config.json").read_text()) == json.loads((tiny_ckpt / "config.json").read_text())
    for d in (single, sharded):
        assert Assistant.from_pretrained(d).ask(frame, PROMPTS[0], max_new_tokens=16).token_ids == expected


def test_native_key_names(tiny_ckpt):
    from safetensors import safe_open

    with safe_open(str(tiny_ckpt / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    for k in (
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.self_attn.dense.bias",
        "model.layers.0.mlp.fc1.weight",
        "model.layers.0.input_layernorm.weight",
        "model.final_layernorm.weight",
        "lm_head.weight",
        "lm_head.bias",
        "model.mm_projector.0.weight",
        "model.mm_projector.2.bias",
        "model.vision_tower.vision_model.embeddings.patch_embedding.weight",
        "model.vision_tower.vision_model.pre_layrnorm.weight",
        "model.vision_tower.vision_model.encoder.layers.0.self_attn.k_proj.weight",
        "model.vision_tower.vision_model.post_layernorm.weight",
    ):
        assert k in keys, k
    cfg = json.loads((tiny_ckpt / "config.json").read_text())
    assert cfg["model_type"] == "llava_phi" and cfg["partial_rotary_factor"] == 0.4
    assert cfg["vision_config"]["mm_projector"]["mm_projector_type"] == "mlp2x_gelu"
    assert cfg["vision_config"]["vision_tower"]["mm_vision_select_layer"] == -2


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_reduced_precision_runs_close_to_fp32(tiny_ckpt, frame, dtype):
    fp32 = Assistant.from_pretrained(tiny_ckpt)
    low = Assistant.from_pretrained(tiny_ckpt, dtype=dtype)
    assert low.backend.precision == dtype
    px = fp32.processor(frame)
    f32, flow = fp32.backend.encode_images(px), low.backend.encode_images(px)
    cos = float((f32 * flow).sum() / np.linalg.norm(f32) / np.linalg.norm(flow))
    assert cos > 0.99
    ans = low.ask(frame, PROMPTS[0], max_new_tokens=8)
    assert len(ans.token_ids) == 8


def test_lphi_ask_json_matches_reference(tiny_ckpt, tmp_path):
    img = shapes_frame(300, 180, 21)
    path = tmp_path / "frame.jpg"
    Image.fromarray(img).save(path, quality=95)
    decoded = np.asarray(Image.open(path).convert("RGB"))
    expected = ReferenceLlavaPhi(tiny_ckpt).generate(decoded, phi_v0_prompt([(PROMPTS[1], None)]), MAX_NEW)
    exe = Path(sys.executable).with_name("lphi-ask")
    out = subprocess.run(
        [
            str(exe),
            "--model",
            str(tiny_ckpt),
            "--image",
            str(path),
            "--prompt",
            PROMPTS[1],
            "--max-new-tokens",
            str(MAX_NEW),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["token_ids"] == expected
    assert result["backend"] == "torch"
    assert {"preprocess_ms", "vision_ms", "prefill_ms", "decode_ms", "ttft_ms"} <= set(result["timings_ms"])
    assert result["text"] == Assistant.from_pretrained(tiny_ckpt).tokenizer.decode(expected).strip()
