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

from lphi_edge.errors import ConfigError
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


def cls_attention(layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The attention weights of a CLIP encoder layer's [CLS] query (position 0), averaged over heads.

    hidden (B, T, Dv): the layer's input. Recomputes what the layer's softmax(q·kᵀ·scale) gives in its first
    row (CLIP's vision attention has no mask), without materialising the other T − 1 rows. → (B, T)."""
    attn = layer.self_attn
    h = layer.layer_norm1(hidden)  # (B, T, Dv)
    b, t, _ = h.shape
    q = attn.q_proj(h[:, :1]).view(b, 1, attn.num_heads, attn.head_dim).transpose(1, 2)  # (B, H, 1, Dh)
    k = attn.k_proj(h).view(b, t, attn.num_heads, attn.head_dim).transpose(1, 2)  # (B, H, T, Dh)
    weights = torch.softmax((q @ k.transpose(-1, -2)) * attn.scale, dim=-1)  # (B, H, 1, T)
    return weights.mean(dim=1)[:, 0]  # (B, T)


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
        return self._project(out.hidden_states[self.config.select_layer])  # (B, N, D)

    def _project(self, feats: torch.Tensor) -> torch.Tensor:
        """The selected layer's hidden states (B, 1 + P, Dv), before post_layernorm → features (B, N, D)."""
        if self.config.select_feature == "patch":
            feats = feats[:, 1:]  # (B, N, Dv), CLS dropped
        return self.mm_projector(feats)  # (B, N, D)

    def image_attention_layer(self) -> int:
        """The vision layer whose output the features are (mm_vision_select_layer), whose [CLS] attention
        `encode_images_with_attention` reports; ConfigError when the features are the embeddings (no layer)."""
        n = self.config.vision.num_hidden_layers
        entry = self.config.select_layer % (n + 1)  # hidden_states index: 0 = embeddings, i = layer i - 1's output
        if entry == 0:
            raise ConfigError(
                f"mm_vision_select_layer {self.config.select_layer} takes the features from the vision embeddings, "
                "before any attention layer: this model's tower gives no attention to select visual tokens by"
            )
        return entry - 1

    def encode_images_with_attention(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pixel_values [B, 3, H, W] → (features [B, N, D], attention [B, N]): each image token's share of the
        [CLS] token's attention (mean over heads) in the layer the features come from — the signal
        VisionZip-style visual-token reduction selects by (runtime/visual_tokens.py). With select_feature
        "cls_patch" the [CLS] token itself scores 2 (above any share), so it is always kept."""
        layer = self.image_attention_layer()
        out = self.vision_tower(pixel_values.to(self.dtype), output_hidden_states=True)
        attention = cls_attention(self.vision_tower.encoder.layers[layer], out.hidden_states[layer])  # (B, 1 + P)
        if self.config.select_feature == "patch":
            attention = attention[:, 1:]  # (B, N)
        else:
            attention = torch.cat([torch.full_like(attention[:, :1], 2.0), attention[:, 1:]], dim=1)  # (B, N)
        return self._project(out.hidden_states[self.config.select_layer]), attention

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
