"""Random-weight LLaVA-Phi at real widths with fewer decoder layers, for measurements.

`phi2-Nl`: CLIP ViT-L/14-336 (all 24 layers, 576 image tokens) + projector + Phi-2 widths
(hidden 2560, 32 heads of 80, vocab 51200, context 2048) with N decoder layers. Per-layer cost is
measured on these and the 32-layer figure extrapolated (and labelled so).
"""

from __future__ import annotations

import re
from pathlib import Path
from tempfile import TemporaryDirectory

import torch

from lphi_edge.errors import ConfigError
from lphi_edge.model.checkpoint import save_checkpoint
from lphi_edge.model.config import LlavaPhiConfig
from lphi_edge.model.modeling import LlavaPhiForCausalLM
from lphi_edge.model.tiny import write_tokenizer
from lphi_edge.processing.image import ProcessorConfig

PHI2_LAYERS = 32


def synthetic_config(name: str) -> LlavaPhiConfig:
    m = re.fullmatch(r"phi2-(\d+)l", name)
    if not m or not 1 <= int(m.group(1)) <= PHI2_LAYERS:
        raise ConfigError(f"unknown synthetic config {name!r}: expected phi2-Nl with N in 1..{PHI2_LAYERS}")
    config = LlavaPhiConfig.from_dict(
        {"model_type": "llava_phi", "vision_config": {"vision_tower": {}, "mm_projector": {}}}
    )
    config.text.num_hidden_layers = int(m.group(1))  # everything else: LLaVA-Phi defaults (Phi-2, CLIP-L/336)
    return config


def write_synthetic_checkpoint(out: str | Path, name: str, seed: int = 0, overwrite: bool = True) -> Path:
    """Write a random checkpoint of `synthetic_config(name)`; the tokenizer is the tiny BPE stand-in."""
    config = synthetic_config(name)
    torch.manual_seed(seed)
    model = LlavaPhiForCausalLM(config).eval()
    with TemporaryDirectory() as tmp:
        write_tokenizer(Path(tmp), 360)
        return save_checkpoint(model, out, tokenizer_dir=tmp, processor=ProcessorConfig(), overwrite=overwrite)
