"""The baseline a user would otherwise run: the same checkpoint through transformers' own pieces, eager —
CLIPImageProcessor (after LLaVA's pad-to-square), CLIPVisionModel + the projector, and
PhiForCausalLM.generate(inputs_embeds=...) — in a given precision (fp32, fp16, bf16), so that an engine is
compared with transformers running the same precision on the same device."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lphi_edge.bench.machine import sync


class HFBaseline:
    """transformers' eager generate() on the checkpoint `ckpt`, on `device` ("cpu", "cuda", "cuda:N") in `dtype`."""

    name = "transformers-eager"

    def __init__(self, ckpt: str | Path, device: str = "cpu", dtype: str = "fp32"):
        from transformers import CLIPImageProcessor

        from lphi_edge.model.checkpoint import load_checkpoint
        from lphi_edge.processing.template import get_template
        from lphi_edge.processing.tokenizer import Tokenizer
        from lphi_edge.runtime.torch_backend import resolve_device

        self.device = device
        self.precision = dtype
        self.model = load_checkpoint(ckpt, dtype=dtype, device=resolve_device(device)).eval()
        self.processor = CLIPImageProcessor(**json.loads((Path(ckpt) / "preprocessor_config.json").read_text()))
        self.pad = self.model.config.image_aspect_ratio == "pad"
        self.tokenizer = Tokenizer.from_dir(ckpt)
        self.template = get_template(self.model.config.template)
        self.eos = self.tokenizer.eos_token_id

    def _pixels(self, image: np.ndarray) -> torch.Tensor:
        img = Image.fromarray(image).convert("RGB")
        if self.pad and img.width != img.height:  # LLaVA's expand2square with the mean colour
            side = max(img.size)
            canvas = Image.new("RGB", (side, side), tuple(int(x * 255) for x in self.processor.image_mean))
            canvas.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
            img = canvas
        pixels = self.processor(images=img, return_tensors="pt")["pixel_values"]  # (1, 3, H, W) f32
        return pixels.to(self.device, self.model.dtype)

    def thread_settings(self) -> dict[str, int]:
        """The CPU threads transformers runs with (torch's process-wide pool)."""
        return {"torch": torch.get_num_threads()}

    @torch.no_grad()
    def run(self, image: np.ndarray, prompt: str, new_tokens: int) -> dict[str, float]:
        from lphi_edge.processing.tokenizer import IMAGE_TOKEN_INDEX

        t0 = time.perf_counter()
        pixels = self._pixels(image)
        sync(self.device)
        t1 = time.perf_counter()
        feats = self.model.encode_images(pixels)[0]  # (N, D)
        sync(self.device)
        t2 = time.perf_counter()
        ids = self.tokenizer.encode_prompt(self.template.prompt([(prompt, None)], image=True))
        k = ids.index(IMAGE_TOKEN_INDEX)
        embed = self.model.embed_tokens
        pre, post = (torch.tensor([x], device=self.device) for x in (ids[:k], ids[k + 1 :]))
        embeds = torch.cat([embed(pre)[0], feats, embed(post)[0]])[None]  # (1, S, D)
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=self.device)
        lm = self.model.language_model
        kw = dict(inputs_embeds=embeds, attention_mask=mask, do_sample=False, pad_token_id=self.eos)
        clock = _StepClock(self.device)  # a timestamp as each step's logits are ready, inside one generate()
        sync(self.device)
        t3 = time.perf_counter()
        lm.generate(**kw, max_new_tokens=new_tokens, min_new_tokens=new_tokens, logits_processor=[clock])
        sync(self.device)
        t4 = time.perf_counter()
        first, last = clock.times[0], clock.times[-1]  # the prefill's logits; the last decode step's
        ms = lambda a, b: (b - a) * 1e3  # noqa: E731
        return {
            "preprocess": ms(t0, t1),
            "vision": ms(t1, t2),
            "prefill": ms(t3, first),
            "ttft": ms(t0, first),
            "decode_per_token": ms(first, last) / (len(clock.times) - 1),  # new_tokens ≥ 2 (validated)
            "end_to_end": ms(t0, t4),
        }


class _StepClock:
    """A logits processor that only records when each generation step's logits are ready (the first: end of
    the prefill), so prefill and decode come from one generate() call, as a user runs it."""

    def __init__(self, device: str):
        self.device, self.times = device, []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        sync(self.device)
        self.times.append(time.perf_counter())
        return scores
