"""lphi-convert: a llava-hf LlavaForConditionalGeneration (Phi text config) → native, same tokens."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import AddedToken, Tokenizer
from transformers import CLIPImageProcessorPil, CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, PhiConfig

from lphi_edge import Assistant
from lphi_edge.errors import CheckpointError
from lphi_edge.model.convert import convert_llava_hf

from conftest import shapes_frame
from reference import phi_v0_prompt

IMAGE_SIZE, N_IMAGE_TOKENS = 56, 16


@pytest.fixture(scope="module")
def llava_hf(tmp_path_factory, tiny_ckpt) -> Path:
    """A tiny random llava-hf model saved by transformers itself, with an `<image>` added token."""
    out = tmp_path_factory.mktemp("hf") / "llava-hf-tiny"
    tok = Tokenizer.from_file(str(tiny_ckpt / "tokenizer.json"))
    tok.add_special_tokens([AddedToken("<image>", special=True, normalized=False)])
    image_id = tok.token_to_id("<image>")
    eos = tok.token_to_id("<|endoftext|>")
    text = PhiConfig(
        vocab_size=384,
        hidden_size=80,
        intermediate_size=320,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=256,
        partial_rotary_factor=0.4,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    vision = CLIPVisionConfig(
        hidden_size=48,
        intermediate_size=192,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=14,
        projection_dim=48,
    )
    config = LlavaConfig(
        text_config=text,
        vision_config=vision,
        image_token_index=image_id,
        image_seq_length=N_IMAGE_TOKENS,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3) if p.dim() >= 2 else None
    model.save_pretrained(out)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    ).save_pretrained(out)
    return out


def hf_generate(src: Path, image: np.ndarray, prompt: str, max_new_tokens: int) -> list[int]:
    model = LlavaForConditionalGeneration.from_pretrained(src).eval()
    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    proc = CLIPImageProcessorPil.from_pretrained(src)
    pixels = torch.tensor(np.asarray(proc(image, return_tensors="np")["pixel_values"]))
    before, after = prompt.split("<image>")
    ids = (
        tok.encode(before, add_special_tokens=False).ids
        + [model.config.image_token_id] * N_IMAGE_TOKENS
        + tok.encode(after, add_special_tokens=False).ids
    )
    input_ids = torch.tensor([ids])
    eos = tok.token_to_id("<|endoftext|>")
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids,
            pixel_values=pixels,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=eos,
        )
    new = out[0, len(ids) :].tolist()
    return new[: new.index(eos)] if eos in new else new


def test_converted_model_matches_llava_generate(llava_hf, tmp_path):
    dst = tmp_path / "native"
    exe = Path(sys.executable).with_name("lphi-convert")
    subprocess.run([str(exe), str(llava_hf), str(dst)], check=True, capture_output=True, text=True)
    cfg = json.loads((dst / "config.json").read_text())
    assert cfg["model_type"] == "llava_phi" and cfg["image_aspect_ratio"] == "square"
    assistant = Assistant.from_pretrained(dst)
    assert float(assistant.backend.model.language_model.lm_head.bias.abs().sum()) == 0.0
    for wh, q in [((224, 224), "What shape is in the image?"), ((300, 160), "How many shapes are there?")]:
        img = shapes_frame(*wh, seed=wh[1])
        expected = hf_generate(llava_hf, img, phi_v0_prompt([(q, None)]), 20)
        assert assistant.ask(img, q, max_new_tokens=20).token_ids == expected


def test_convert_refuses_non_llava(tiny_ckpt, tmp_path):
    with pytest.raises(CheckpointError, match="expected 'llava'"):
        convert_llava_hf(tiny_ckpt, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    from lphi_edge.cli.convert import main

    assert main([str(tmp_path / "absent"), str(tmp_path / "out")]) != 0
    assert not (tmp_path / "out").exists()
