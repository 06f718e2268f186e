"""llava-hf (`LlavaForConditionalGeneration` with a Phi text config) → native LLaVA-Phi.

Both transformers 4.x key names (`language_model.model.*`, `vision_tower.vision_model.*`) and 5.x
names (`model.language_model.*`, `model.vision_tower.*`) are mapped explicitly. llava-hf drops Phi's
lm_head bias; the native model gets zeros there, which gives the same logits.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import torch
from transformers import CLIPVisionConfig, PhiConfig

from lphi_edge.errors import CheckpointError
from lphi_edge.model.checkpoint import CONFIG_DTYPE, iter_tensors, weight_files, write_native
from lphi_edge.model.config import LlavaPhiConfig
from lphi_edge.model.modeling import LlavaPhiForCausalLM
from lphi_edge.processing.image import ProcessorConfig

logger = logging.getLogger(__name__)

# (llava-hf key pattern, native replacement); the optional `model.` prefix covers 4.x and 5.x names.
_KEY_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p), r)
    for p, r in (
        (r"^(?:model\.)?vision_tower\.(?:vision_model\.)?", "model.vision_tower.vision_model."),
        (r"^(?:model\.)?multi_modal_projector\.linear_1\.", "model.mm_projector.0."),
        (r"^(?:model\.)?multi_modal_projector\.linear_2\.", "model.mm_projector.2."),
        (r"^(?:model\.language_model\.|language_model\.model\.)", "model."),
        (r"^(?:language_model\.)?lm_head\.", "lm_head."),
    )
)


def native_key(hf_key: str) -> str | None:
    for pattern, repl in _KEY_RULES:
        if pattern.match(hf_key):
            return pattern.sub(repl, hf_key, count=1)
    return None


def read_llava_hf_config(src: Path) -> tuple[LlavaPhiConfig, dict]:
    f = src / "config.json"
    if not f.is_file():
        raise CheckpointError(f"no config.json in {src}: expected a llava-hf model directory")
    d = json.loads(f.read_text())
    if d.get("model_type") != "llava":
        raise CheckpointError(f"{f}: model_type is {d.get('model_type')!r}, expected 'llava' (a llava-hf model)")
    tc, vc = d.get("text_config") or {}, d.get("vision_config") or {}
    if tc.get("model_type") != "phi":
        raise CheckpointError(f"{f}: text_config.model_type is {tc.get('model_type')!r}, expected 'phi'")
    if d.get("projector_hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"{f}: projector_hidden_act {d['projector_hidden_act']!r} is not LLaVA-Phi's 'gelu'")
    layer = d.get("vision_feature_layer", -2)
    if not isinstance(layer, int):
        raise CheckpointError(f"{f}: multi-layer vision_feature_layer {layer!r} is not supported by LLaVA-Phi")
    strategy = d.get("vision_feature_select_strategy", "default")
    text = PhiConfig(
        **{k: v for k, v in tc.items() if k not in ("model_type", "architectures", "transformers_version")}
    )
    vision = CLIPVisionConfig(**{k: v for k, v in vc.items() if k not in ("model_type", "transformers_version")})
    pad = False
    pp = src / "preprocessor_config.json"
    if pp.is_file():
        pad = bool(json.loads(pp.read_text()).get("do_pad", False))
    config = LlavaPhiConfig(
        text=text,
        vision=vision,
        select_layer=layer,
        select_feature="patch" if strategy == "default" else "cls_patch",
        image_aspect_ratio="pad" if pad else "square",
    )
    return config, d


def convert_llava_hf(
    src: str | os.PathLike, dst: str | os.PathLike, *, max_shard_size: str = "5GB", overwrite: bool = False
) -> Path:
    """Convert a llava-hf Phi model directory to a native LLaVA-Phi checkpoint at `dst`."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise CheckpointError(f"source model directory not found: {src}")
    config, _ = read_llava_hf_config(src)
    with torch.device("meta"):  # shapes only: no memory, no init
        expected = {
            k: tuple(v.shape) for k, v in LlavaPhiForCausalLM(config, init_weights=False).native_state_dict().items()
        }
    state: dict[str, torch.Tensor] = {}
    for name, tensor in iter_tensors(weight_files(src)):
        key = native_key(name)
        if key is None or key not in expected:
            if not name.endswith("position_ids"):
                logger.warning("dropping tensor %r: no LLaVA-Phi counterpart", name)
            continue
        if tuple(tensor.shape) != expected[key]:
            raise CheckpointError(f"tensor {name!r} has shape {tuple(tensor.shape)}, expected {expected[key]}")
        state[key] = tensor
    if "lm_head.bias" not in state:
        state["lm_head.bias"] = torch.zeros(expected["lm_head.bias"], dtype=state["lm_head.weight"].dtype)
    missing = sorted(set(expected) - set(state))
    if missing:
        raise CheckpointError(f"{src} is missing tensor(s) for {', '.join(missing[:5])}")
    dtype = CONFIG_DTYPE[state["lm_head.weight"].dtype]
    processor = ProcessorConfig.from_dir(
        src, image_size=config.vision.image_size, pad_to_square=config.image_aspect_ratio == "pad"
    )
    return write_native(
        state,
        config.to_dict(dtype=dtype),
        dst,
        tokenizer_dir=src,
        processor=processor,
        max_shard_size=max_shard_size,
        overwrite=overwrite,
    )
