"""The PyTorch reference backend: the checkpoint itself, fp32 / fp16 / bf16, CPU or CUDA."""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
from transformers import DynamicCache

from lphi_edge.errors import ConfigError
from lphi_edge.model.checkpoint import DTYPE_NAMES, load_checkpoint
from lphi_edge.model.modeling import LlavaPhiForCausalLM
from lphi_edge.runtime.backend import ModelSpec

logger = logging.getLogger(__name__)


class TorchCache:
    """transformers' DynamicCache behind the KVCache protocol."""

    def __init__(self, cache: DynamicCache):
        self.cache = cache

    @property
    def seq_len(self) -> int:
        return self.cache.get_seq_length()

    def crop(self, length: int) -> None:
        extra = self.seq_len - length
        if extra > 0:
            self.cache.crop(-extra)

    def arrays(self) -> list[np.ndarray]:
        """key, value per layer as float32 numpy [B, H, P, Dh] (for verification)."""
        return [
            t.detach().to("cpu", torch.float32).numpy()
            for layer in self.cache.layers
            for t in (layer.keys, layer.values)
        ]


def resolve_device(device: str) -> torch.device:
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ConfigError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but torch sees no CUDA GPU (torch {torch.__version__})")
    return torch.device(device)


class TorchBackend:
    name = "torch"

    def __init__(self, model: LlavaPhiForCausalLM):
        self.model = model.eval().requires_grad_(False)  # inference only
        cfg = model.config
        self.device = model.device.type
        self.precision = DTYPE_NAMES[model.dtype]
        self.spec = ModelSpec(
            hidden_size=cfg.text.hidden_size,
            vocab_size=cfg.text.vocab_size,
            context_length=cfg.text.max_position_embeddings,
            image_tokens=cfg.image_tokens,
            num_layers=cfg.text.num_hidden_layers,
            num_kv_heads=cfg.text.num_key_value_heads,
            head_dim=cfg.head_dim,
        )

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str = "cpu", dtype: str = "fp32") -> TorchBackend:
        return cls(load_checkpoint(path, dtype=dtype, device=resolve_device(device)))

    def _to_torch(self, a: np.ndarray, dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.model.device, dtype)

    @staticmethod
    def _to_numpy(t: torch.Tensor) -> np.ndarray:
        return t.detach().to("cpu", torch.float32).numpy()

    @torch.inference_mode()
    def encode_images(self, pixel_values: np.ndarray) -> np.ndarray:
        """f32 [B, 3, H, W] → f32 [B, N, D]."""
        return self._to_numpy(self.model.encode_images(self._to_torch(pixel_values, self.model.dtype)))

    @torch.inference_mode()
    def embed(self, input_ids: np.ndarray) -> np.ndarray:
        """i64 [B, S] → f32 [B, S, D]."""
        return self._to_numpy(self.model.embed_tokens(self._to_torch(input_ids)))

    def new_cache(self, batch_size: int = 1) -> TorchCache:
        return TorchCache(DynamicCache(config=self.model.config.text))

    @torch.inference_mode()
    def decode(
        self, inputs_embeds: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray, past: TorchCache
    ) -> tuple[np.ndarray, TorchCache]:
        out = self.model(
            inputs_embeds=self._to_torch(inputs_embeds, self.model.dtype),  # (B, S, D)
            attention_mask=self._to_torch(attention_mask),  # (B, P + S)
            position_ids=self._to_torch(position_ids),  # (B, S)
            cache=past.cache,
            logits_to_keep=1,
        )
        return self._to_numpy(out.logits), past  # logits (B, 1, V); cache extended in place
