"""The int8 KV cache's arithmetic, shared by the exporter (calibration, verification) and the runtime.

onnxruntime's GroupQueryAttention keeps the cache as int8 with one static scale per (layer, key|value,
head, channel): it stores round(x / scale) saturated to [-128, 127] and reads q · scale back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lphi_edge.errors import CheckpointError

QMAX = 127  # symmetric int8


def dequantize(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """An int8 cache tensor [B, H, P, Dh] as the values it stands for: q · scale, scale [H, Dh] per channel."""
    return q.astype(np.float32) * scale[None, :, None, :]


def quantize(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """x f32 [B, H, P, Dh] as the int8 cache stores it: round(x / scale) saturated, scale [H, Dh] per channel —
    what GroupQueryAttention writes (used to hand a cache computed elsewhere to an int8-cache decoder)."""
    return np.clip(np.round(x / scale[None, :, None, :]), -(QMAX + 1), QMAX).astype(np.int8)


def round_trip(x: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, float]:
    """(x as the int8 cache keeps it — x / scale rounded, saturated, times scale; the fraction of x that
    saturated). x [B, H, P, Dh], scale [H, Dh]: the arithmetic GroupQueryAttention applies when it writes."""
    q = np.round(x / scale[None, :, None, :])  # (B, H, P, Dh)
    clipped = float(np.mean((q < -(QMAX + 1)) | (q > QMAX)))
    return dequantize(quantize(x, scale), scale), clipped


def load_scales(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    """The scales file of an export's int8 cache, checked: float32 `shape` (2·L, H, Dh), finite, > 0."""
    try:
        scales = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read the int8 KV cache scales ({e}): re-export") from None
    if scales.shape != shape or scales.dtype != np.float32:
        raise CheckpointError(
            f"{path}: int8 KV cache scales {scales.dtype} {scales.shape} for this decoder: expected float32 {shape}; "
            "re-export"
        )
    if not (np.isfinite(scales).all() and (scales > 0).all()):
        raise CheckpointError(f"{path}: int8 KV cache scales must be finite and > 0; re-export")
    return scales
