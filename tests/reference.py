"""An independent LLaVA-Phi reference written only with transformers' own pieces.

It deliberately shares no code with lphi_edge: CLIPImageProcessor for pixels (its PIL backend,
`CLIPImageProcessorPil`, which is what the original code base ran: transformers 5's torchvision
backend resizes differently, by up to 0.03 after normalisation), CLIPVisionModel,
an nn.Sequential projector, PhiForCausalLM.generate(inputs_embeds=...) and the `tokenizers` library,
with the original prompt format and key names written out here by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from tokenizers import Tokenizer
from torch import nn
from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel, PhiConfig, PhiForCausalLM

SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def phi_v0_prompt(turns: list[tuple[str, str | None]]) -> str:
    """conv_phi_v0.get_prompt() for [(question, answer)], image in the first question."""
    out = SYSTEM + " "
    for k, (q, a) in enumerate(turns):
        q = f"<image>\n{q}" if k == 0 else q
        out += f"USER: {q} "
        out += f"ASSISTANT: {a}<|endoftext|>" if a is not None else "ASSISTANT:"
    return out


def expand2square(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    w, h = img.size
    if w == h:
        return img
    if w > h:
        result = Image.new(img.mode, (w, w), background)
        result.paste(img, (0, (w - h) // 2))
        return result
    result = Image.new(img.mode, (h, h), background)
    result.paste(img, ((h - w) // 2, 0))
    return result


def clip_processor(ckpt: Path) -> CLIPImageProcessorPil:
    return CLIPImageProcessorPil(**json.loads((ckpt / "preprocessor_config.json").read_text()))


def reference_pixels(ckpt: Path, image: np.ndarray, pad: bool) -> torch.Tensor:
    proc = clip_processor(ckpt)
    img = Image.fromarray(image).convert("RGB")
    if pad:
        img = expand2square(img, tuple(int(x * 255) for x in proc.image_mean))
    return torch.tensor(np.asarray(proc(img, return_tensors="np")["pixel_values"]))


class ReferenceLlavaPhi:
    def __init__(self, ckpt: Path):
        self.ckpt = ckpt
        cfg = json.loads((ckpt / "config.json").read_text())
        self.cfg = cfg
        tower = cfg["vision_config"]["vision_tower"]
        self.select_layer = tower["mm_vision_select_layer"]
        vision_keys = (
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "image_size",
            "patch_size",
            "hidden_act",
            "layer_norm_eps",
            "num_channels",
        )
        self.vision = CLIPVisionModel(CLIPVisionConfig(**{k: tower[k] for k in vision_keys})).eval()
        text_keys = (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "hidden_act",
            "max_position_embeddings",
            "layer_norm_eps",
            "partial_rotary_factor",
            "rope_theta",
            "qk_layernorm",
        )
        self.phi = PhiForCausalLM(PhiConfig(**{k: cfg[k] for k in text_keys})).eval()
        d_v, d_t = tower["hidden_size"], cfg["hidden_size"]
        self.projector = nn.Sequential(nn.Linear(d_v, d_t), nn.GELU(), nn.Linear(d_t, d_t)).eval()

        weights: dict[str, torch.Tensor] = {}
        for f in sorted(ckpt.glob("*.safetensors")):
            weights.update(load_file(str(f)))
        vp, pp = "model.vision_tower.vision_model.", "model.mm_projector."
        self.vision.load_state_dict({k[len(vp) :]: v for k, v in weights.items() if k.startswith(vp)})
        self.projector.load_state_dict({k[len(pp) :]: v for k, v in weights.items() if k.startswith(pp)})
        self.phi.load_state_dict({k: v for k, v in weights.items() if not k.startswith((vp, pp))})
        assert self.phi.lm_head.bias is not None and self.phi.lm_head.bias.abs().sum() > 0
        self.tokenizer = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
        self.eos = self.tokenizer.token_to_id("<|endoftext|>")

    @torch.no_grad()
    def generate(self, image: np.ndarray, prompt: str, max_new_tokens: int) -> list[int]:
        pixels = reference_pixels(self.ckpt, image, pad=self.cfg["image_aspect_ratio"] == "pad")
        hidden = self.vision(pixels, output_hidden_states=True).hidden_states[self.select_layer][:, 1:]
        feats = self.projector(hidden)  # (1, N, D)
        before, after = prompt.split("<image>")
        emb = self.phi.get_input_embeddings()
        ids_b = torch.tensor([self.tokenizer.encode(before, add_special_tokens=False).ids])
        ids_a = torch.tensor([self.tokenizer.encode(after, add_special_tokens=False).ids])
        embeds = torch.cat([emb(ids_b), feats, emb(ids_a)], dim=1)
        out = self.phi.generate(
            inputs_embeds=embeds,
            attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=self.eos,
            pad_token_id=self.eos,
        )
        ids = out[0].tolist()
        return ids[: ids.index(self.eos)] if self.eos in ids else ids
