"""LLaVA-Phi in PyTorch: transformers' CLIPVisionModel + mlp2x_gelu projector + PhiForCausalLM.

The submodules are transformers' own; only the glue lives here. State-dict keys are mapped to and
from the original layout explicitly (see `NATIVE_PREFIXES`), so any transformers 5.x renames stay
contained in one table.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPVisionModel, PhiForCausalLM
from transformers.initialization import no_init_weights

from lphi_edge.model.config import LlavaPhiConfig

# (native checkpoint prefix, module prefix); first match wins, so specific prefixes come first.
# transformers 5.x's CLIPVisionModel has no `vision_model.` level; the original checkpoint does.
NATIVE_PREFIXES: tuple[tuple[str, str], ...] = (
    ("model.vision_tower.vision_model.", "vision_tower."),
    ("model.mm_projector.", "mm_projector."),
    ("model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
)


def native_to_module_key(key: str) -> str | None:
    for native, module in NATIVE_PREFIXES:
        if key.startswith(native):
            return module + key[len(native) :]
    return None


def module_to_native_key(key: str) -> str:
    for native, module in NATIVE_PREFIXES:
        if key.startswith(module):
            return native + key[len(module) :]
    raise KeyError(key)


def build_projector(cfg: LlavaPhiConfig) -> nn.Module:
    d_in, d_out = cfg.vision.hidden_size, cfg.text.hidden_size
    if cfg.projector_type == "linear":
        return nn.Linear(d_in, d_out)
    return nn.Sequential(nn.Linear(d_in, d_out), nn.GELU(), nn.Linear(d_out, d_out))  # mlp2x_gelu


class LlavaPhiForCausalLM(nn.Module):
    """Vision tower → projector → Phi, with Phi's lm_head bias kept."""

    def __init__(self, config: LlavaPhiConfig, *, init_weights: bool = True, attn_implementation: str = "sdpa"):
        super().__init__()
        self.config = config
        config.text._attn_implementation = attn_implementation
        config.vision._attn_implementation = attn_implementation
        if init_weights:
            self._build(config)
        else:
            with no_init_weights():  # weights are about to be loaded: skip the random init
                self._build(config)

    def _build(self, config: LlavaPhiConfig) -> None:
        self.vision_tower = CLIPVisionModel(config.vision)
        self.mm_projector = build_projector(config)
        self.language_model = PhiForCausalLM(config.text)
        if self.language_model.lm_head.bias is None:  # Phi's lm_head has a bias; guard against API drift
            raise RuntimeError("transformers' PhiForCausalLM lost its lm_head bias; LLaVA-Phi needs it")

    @property
    def dtype(self) -> torch.dtype:
        return self.language_model.lm_head.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.language_model.lm_head.weight.device

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [B, 3, H, W] → projected features [B, N, D] (N = 576 for CLIP-L/336)."""
        out = self.vision_tower(pixel_values.to(self.dtype), output_hidden_states=True)
        feats = out.hidden_states[self.config.select_layer]  # (B, 1 + N, Dv), before post_layernorm
        if self.config.select_feature == "patch":
            feats = feats[:, 1:]  # (B, N, Dv), CLS dropped
        return self.mm_projector(feats)  # (B, N, D)

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [B, S] → [B, S, D]."""
        return self.language_model.get_input_embeddings()(input_ids)

    def embed_multimodal(
        self, input_ids: torch.Tensor, image_mask: torch.Tensor, pixel_values: torch.Tensor | None
    ) -> torch.Tensor:
        """Training-time splice: input_ids (B, T) with image slots marked in image_mask (B, T) → (B, T, D).

        The image features (n_images, N, D) fill the marked positions in order (one image per sample)."""
        embeds = self.embed_tokens(input_ids)  # (B, T, D)
        if pixel_values is not None:
            feats = self.encode_images(pixel_values).to(embeds.dtype)  # (n, N, D)
            embeds = embeds.masked_scatter(image_mask[..., None].expand_as(embeds), feats)
        return embeds

    def forward(
        self,
        inputs_embeds: torch.Tensor | None,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        cache=None,
        logits_to_keep: int = 0,
        labels: torch.Tensor | None = None,
        *,
        input_ids: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
    ):
        """One LM pass over spliced embeddings [B, S, D]; returns transformers' CausalLMOutputWithPast.

        Training passes input_ids / image_mask / pixel_values instead of inputs_embeds, so the whole step
        (vision tower, projector, splice, LM) runs inside this forward, as FSDP's root hooks require."""
        if inputs_embeds is None:
            if input_ids is None or image_mask is None:
                raise ValueError("forward needs inputs_embeds, or input_ids + image_mask (+ pixel_values)")
            inputs_embeds = self.embed_multimodal(input_ids, image_mask, pixel_values)  # (B, S, D)
        return self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=cache is not None,
            logits_to_keep=logits_to_keep,
            labels=labels,
        )

    def native_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights under the original LLaVA-Phi key names (non-persistent buffers excluded)."""
        return {module_to_native_key(k): v for k, v in self.state_dict().items()}
