"""The backend protocol every engine implements (torch, onnxruntime, tensorrt).

Tensors cross the boundary as numpy arrays. The KV cache is the one exception: it stays in the
backend's own memory (torch tensors, OrtValues, device buffers) behind the small `KVCache` protocol,
so a decode step never copies the whole cache between host and device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from lphi_edge.errors import ConfigError
from lphi_edge.format.manifest import TextConfig

TORCH_DTYPES = ("fp32", "fp16", "bf16", "int8")  # the torch backend's dtypes (int8: int8 matmuls on the CPU)


@dataclass(frozen=True)
class ModelSpec:
    """What the generation loop needs to know about a model, independent of the engine.

    Attributes:
        hidden_size: LM embedding width D.
        vocab_size: rows of the LM head (may exceed the tokenizer's vocabulary).
        context_length: maximum positions (Phi-2: 2048).
        image_tokens: embeddings one image contributes (CLIP-L/336: 576).
        num_layers / num_kv_heads / head_dim: KV-cache geometry.
    """

    hidden_size: int
    vocab_size: int
    context_length: int
    image_tokens: int
    num_layers: int
    num_kv_heads: int
    head_dim: int

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"ModelSpec.{name} must be a positive integer, got {value!r}")

    @classmethod
    def from_text_config(cls, text: TextConfig) -> ModelSpec:
        """From an export manifest's text_config."""
        return cls(**{name: getattr(text, name) for name in cls.__dataclass_fields__})


@runtime_checkable
class KVCache(Protocol):
    """Past keys/values of one sequence batch, owned by a backend."""

    @property
    def seq_len(self) -> int:  # positions cached
        ...

    def crop(self, length: int) -> None:
        """Keep only the first `length` positions."""
        ...

    def arrays(self) -> list[np.ndarray]:
        """The cached keys and values on the host, as the values they stand for (an int8 cache dequantized):
        2 · layers arrays f32 [B, H, P, Dh] in past_key_values order (key, value per layer). A copy, for
        verification, calibration and inspection — never on the per-token path."""
        ...


@runtime_checkable
class Backend(Protocol):
    """Numpy in, numpy out. Shapes: B batch, S new positions, P cached positions, D hidden, V vocab."""

    name: str  # "torch" | "onnxruntime" | "tensorrt"
    device: str  # "cpu" | "cuda" | "cuda:N" (N > 0; GPU 0 is "cuda")
    precision: str  # "fp32" | "fp16" | "bf16" | "int8" | "int4"
    spec: ModelSpec

    def encode_images(self, pixel_values: np.ndarray) -> np.ndarray:
        """pixel_values f32 [B, 3, H, W] → image features f32 [B, N, D] (tower + projector).

        Backends that can also give the vision tower's [CLS] attention (what visual-token reduction selects
        by; see `image_attention_problem`) take `with_attention=True` and then return (features f32 [B, N, D],
        attention f32 [B, N])."""
        ...

    def embed(self, input_ids: np.ndarray) -> np.ndarray:
        """input_ids i64 [B, S] → inputs_embeds f32 [B, S, D]."""
        ...

    def new_cache(self, batch_size: int = 1) -> KVCache:
        """An empty cache (P = 0)."""
        ...

    def decode(
        self,
        inputs_embeds: np.ndarray,  # f32 [B, S, D]
        attention_mask: np.ndarray,  # i64 [B, P + S]
        position_ids: np.ndarray,  # i64 [B, S]
        past: KVCache,
    ) -> tuple[np.ndarray, KVCache]:
        """One forward pass; returns (logits f32 [B, S', V] with S' ≤ S — at least the last position —,
        the cache extended by S positions)."""
        ...

    # Engines that can continue from a cache another engine computed (engine per phase, runtime/phased.py) also
    # have cache_from_arrays(arrays: list[np.ndarray]) -> KVCache: f32 [B, H, P, Dh] per tensor in
    # past_key_values order, as KVCache.arrays() gives them, turned into this engine's own cache.

    def thread_settings(self) -> dict[str, Any]:
        """The CPU thread pools this engine runs with, read back from its library (e.g. {"torch": 4}); {} when
        it has none (TensorRT). Benchmarks and the ROS node's diagnostics record it."""
        ...


def check_cache_arrays(arrays: list[np.ndarray], count: int, shape: tuple[int, int, int]) -> int:
    """A handed-over cache's tensors must be `count` arrays [B, H, P, Dh] with (B, H, Dh) = `shape` and one P;
    returns P. (What `KVCache.arrays()` of an engine of the same model gives.)"""
    if len(arrays) != count:
        raise ConfigError(f"a handed-over KV cache has {len(arrays)} tensors; this engine keeps {count} (2 · layers)")
    lengths = {a.shape[2] if a.ndim == 4 else -1 for a in arrays}
    bad = [a.shape for a in arrays if a.ndim != 4 or (a.shape[0], a.shape[1], a.shape[3]) != shape]
    if bad or len(lengths) != 1:
        raise ConfigError(
            f"a handed-over KV cache must be {count} arrays [B, H, P, Dh] with (B, H, Dh) = {shape} and one P; "
            f"got shapes {sorted({a.shape for a in arrays})}"
        )
    return lengths.pop()


IMAGE_ATTENTION = "image_attention"  # the vision encoder export's output of the [CLS] attention f32 [B, N]


def image_attention_problem(backend: Backend) -> str | None:
    """Why `backend` cannot return the vision tower's [CLS] attention (encode_images(..., with_attention=True)),
    or None when it can: the torch backend asks its model; an export's vision encoder must have the
    `image_attention` output (exports made before visual-token reduction lack it)."""
    own = getattr(backend, "image_attention_problem", None)
    if callable(own):
        return own()
    manifest = getattr(backend, "manifest", None)
    if manifest is None:
        return f"the {backend.name} backend does not report the vision tower's attention"
    outputs = [t.name for t in manifest.part("vision_encoder").outputs]
    if IMAGE_ATTENTION in outputs:
        return None
    return (
        f"the vision encoder of {manifest.path} has no {IMAGE_ATTENTION!r} output (outputs {outputs}): it was "
        "exported before visual-token reduction; export the model again with lphi-export"
    )
