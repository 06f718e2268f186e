"""The native LLaVA-Phi `config.json`, read and written exactly as the original code base does.

Layout (llava_phi/model/language_model/configuration_llava_phi.py):
    {"model_type": "llava_phi", "architectures": ["LlavaPhiForCausalLM"], <PhiConfig fields>,
     "image_aspect_ratio": "pad", ...,
     "vision_config": {"vision_tower": {<CLIP vision fields>, "mm_vision_select_layer": -2,
                                        "mm_vision_select_feature": "patch"},
                       "mm_projector": {"mm_projector_type": "mlp2x_gelu", "mm_hidden_size": 1024,
                                        "hidden_size": 2560}}}
Fields are mapped explicitly into transformers' PhiConfig / CLIPVisionConfig: nothing is guessed
from another transformers version's defaults (partial_rotary_factor in particular).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import CLIPVisionConfig, PhiConfig

from lphi_edge.errors import CheckpointError, ConfigError

MODEL_TYPE = "llava_phi"
ARCHITECTURE = "LlavaPhiForCausalLM"
PROJECTOR_TYPES = ("mlp2x_gelu", "linear")
ASPECT_RATIOS = ("pad", "square")

# PhiConfig fields of the original (transformers 4.36 naming) and their Phi-2 defaults.
_PHI_FIELDS: dict[str, Any] = {
    "vocab_size": 51200,
    "hidden_size": 2560,
    "intermediate_size": 10240,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": None,
    "resid_pdrop": 0.1,
    "embd_pdrop": 0.0,
    "attention_dropout": 0.0,
    "hidden_act": "gelu_new",
    "max_position_embeddings": 2048,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-5,
    "use_cache": True,
    "tie_word_embeddings": False,
    "rope_theta": 10000.0,
    "partial_rotary_factor": 0.4,
    "qk_layernorm": False,
    "bos_token_id": 50256,
    "eos_token_id": 50256,
}
# CLIP ViT-L/14-336 vision tower fields.
_CLIP_FIELDS: dict[str, Any] = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "projection_dim": 768,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "num_channels": 3,
    "image_size": 336,
    "patch_size": 14,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "initializer_factor": 1.0,
}


@dataclass
class LlavaPhiConfig:
    """A parsed native config.

    Attributes:
        text: Phi language-model config (transformers PhiConfig).
        vision: CLIP vision-tower config (transformers CLIPVisionConfig).
        select_layer: hidden_states index the image features come from (-2).
        select_feature: "patch" drops CLS; "cls_patch" keeps it.
        projector_type: "mlp2x_gelu" (Linear·GELU·Linear) or "linear".
        image_aspect_ratio: "pad" pads frames to square with the mean colour first; "square" does not.
        template: chat template name (lphi-edge setting; LLaVA-Phi uses phi_v0).
        extra: other top-level keys of config.json, written back unchanged on save.
    """

    text: PhiConfig
    vision: CLIPVisionConfig
    select_layer: int = -2
    select_feature: str = "patch"
    projector_type: str = "mlp2x_gelu"
    image_aspect_ratio: str = "pad"
    template: str = "phi_v0"
    extra: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.projector_type not in PROJECTOR_TYPES:
            raise ConfigError(
                f"mm_projector_type {self.projector_type!r} is not supported: expected one of {PROJECTOR_TYPES}"
            )
        if self.select_feature not in ("patch", "cls_patch"):
            raise ConfigError(f"mm_vision_select_feature must be 'patch' or 'cls_patch', got {self.select_feature!r}")
        n = self.vision.num_hidden_layers
        if not -(n + 1) <= self.select_layer <= n:
            raise ConfigError(f"mm_vision_select_layer {self.select_layer} is out of range for {n} vision layers")
        if self.image_aspect_ratio not in ASPECT_RATIOS:
            raise ConfigError(f"image_aspect_ratio must be one of {ASPECT_RATIOS}, got {self.image_aspect_ratio!r}")
        rotary = int(self.text.rope_parameters["partial_rotary_factor"] * self.head_dim)  # as Phi computes it
        if rotary % 2:
            raise ConfigError(
                f"partial_rotary_factor × head_dim gives {rotary} rotary dims (head_dim {self.head_dim}): must be even"
            )

    @property
    def head_dim(self) -> int:
        return self.text.hidden_size // self.text.num_attention_heads

    @property
    def image_tokens(self) -> int:
        n = (self.vision.image_size // self.vision.patch_size) ** 2
        return n + (self.select_feature == "cls_patch")

    # ---- native dict ------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LlavaPhiConfig:
        mt = d.get("model_type")
        if mt != MODEL_TYPE:
            raise CheckpointError(
                f"unknown model_type {mt!r} in config.json: expected {MODEL_TYPE!r} (a LLaVA-Phi checkpoint); "
                "for a llava-hf model run `lphi-convert SRC DST` first"
            )
        vc = d.get("vision_config")
        if not isinstance(vc, dict) or "vision_tower" not in vc or "mm_projector" not in vc:
            raise CheckpointError("config.json: vision_config must hold 'vision_tower' and 'mm_projector' sections")
        tower, proj = vc["vision_tower"], vc["mm_projector"]
        rope = d.get("rope_parameters") or {}
        phi_kwargs = {
            k: d.get(k, default)
            for k, default in _PHI_FIELDS.items()
            if k not in ("rope_theta", "partial_rotary_factor")
        }
        text = PhiConfig(
            **phi_kwargs,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": float(d.get("rope_theta", rope.get("rope_theta", _PHI_FIELDS["rope_theta"]))),
                "partial_rotary_factor": float(
                    d.get(
                        "partial_rotary_factor", rope.get("partial_rotary_factor", _PHI_FIELDS["partial_rotary_factor"])
                    )
                ),
            },
        )
        vision = CLIPVisionConfig(**{k: tower.get(k, default) for k, default in _CLIP_FIELDS.items()})
        mm_hidden = proj.get("mm_hidden_size", vision.hidden_size)
        if mm_hidden != vision.hidden_size or proj.get("hidden_size", text.hidden_size) != text.hidden_size:
            raise CheckpointError(
                f"config.json: projector {mm_hidden}→{proj.get('hidden_size')} does not connect vision width "
                f"{vision.hidden_size} to LM width {text.hidden_size}"
            )
        known = set(_PHI_FIELDS) | {
            "model_type",
            "vision_config",
            "architectures",
            "rope_parameters",
            "image_aspect_ratio",
            "lphi_edge_template",
            "torch_dtype",
            "dtype",
            "transformers_version",
        }
        return cls(
            text=text,
            vision=vision,
            select_layer=int(tower.get("mm_vision_select_layer", -2)),
            select_feature=tower.get("mm_vision_select_feature", "patch"),
            projector_type=proj.get("mm_projector_type", "mlp2x_gelu"),
            image_aspect_ratio=d.get("image_aspect_ratio", "pad"),
            template=d.get("lphi_edge_template", "phi_v0"),
            extra={k: v for k, v in d.items() if k not in known},
        )

    def to_dict(self, dtype: str = "float32") -> dict[str, Any]:
        t, v = self.text, self.vision
        d: dict[str, Any] = {"architectures": [ARCHITECTURE], "model_type": MODEL_TYPE}
        for k in _PHI_FIELDS:
            if k in ("rope_theta", "partial_rotary_factor"):
                d[k] = t.rope_parameters[k]
            else:
                d[k] = getattr(t, k)
        d["rope_scaling"] = None
        d.update(self.extra or {})
        d["image_aspect_ratio"] = self.image_aspect_ratio
        d["lphi_edge_template"] = self.template
        d["torch_dtype"] = dtype
        tower = {k: getattr(v, k) for k in _CLIP_FIELDS}
        tower.update(
            model_type="llava_phi_clip_vision_model",
            mm_vision_select_layer=self.select_layer,
            mm_vision_select_feature=self.select_feature,
        )
        d["vision_config"] = {
            "vision_tower": tower,
            "mm_projector": {
                "model_type": "llava_phi_projector",
                "mm_projector_type": self.projector_type,
                "mm_hidden_size": v.hidden_size,
                "hidden_size": t.hidden_size,
            },
        }
        return d

    @classmethod
    def from_dir(cls, path: str | Path) -> LlavaPhiConfig:
        f = Path(path) / "config.json"
        if not f.is_file():
            raise CheckpointError(f"no config.json in {path}: expected a LLaVA-Phi checkpoint directory")
        try:
            d = json.loads(f.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{f} is not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise CheckpointError(f"{f} must hold a JSON object")
        try:
            return cls.from_dict(d)
        except (TypeError, ValueError, KeyError) as e:
            if isinstance(e, ConfigError):
                raise CheckpointError(f"{f}: {e}") from None
            raise CheckpointError(f"{f}: invalid LLaVA-Phi config ({e})") from None
