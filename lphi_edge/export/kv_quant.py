"""An int8 KV cache: `lphi-export --kv-cache shared --kv-quant int8`.

The shared decoder's GroupQueryAttention (see `rewrites.fuse_kv_attention`) can keep the cache as int8 and
quantize each new position as it writes it: x_q = round(x / s), saturated to int8, with one static scale s per
(layer, key|value, head, channel); attention reads x_q · s. Decoding reads the whole cache every token —
at Phi-2 width and 700 positions 14 MB per layer in fp32, a third of an int4 layer's weights — so int8
reads a quarter of those bytes (benchmarks/README.md has the per-token gain).

The scales are static, so they are calibrated: the PyTorch model answers a few frames (the keys as they
are cached, after the rotary embedding), each channel's largest |value| over every position is taken, times
a headroom for frames not seen, / 127. Calibration frames are a directory of the deployment's own images
(`--kv-calibration-images`) or, by default, synthetic scenes other than the verification's. The export's
verification then puts the PyTorch model's cache for its own frames through the same rounding
(`lphi_edge.format.kv_int8.round_trip`) and fails the export below `verify.KV_COSINE_MIN` (too many values
clipped or too coarse a grid) — the int8 cache's own error, apart from any weight quantization's.

The scales live twice, from one array: inside the decoder graph (the op's k_scale / v_scale inputs) and in
`kv_cache_scales.npy` [2·L, H, Dh] (past_key_values order), which the onnxruntime backend reads to
dequantize the cache for inspection without parsing the graph.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from lphi_edge.errors import ConfigError
from lphi_edge.export.rewrites import AttentionPatternError
from lphi_edge.format.kv_int8 import QMAX
from lphi_edge.format.manifest import KV_QUANTS, KV_SCALES_FILE

if TYPE_CHECKING:
    from lphi_edge.assistant import Assistant

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_K_SCALE_INPUT, _V_SCALE_INPUT = 12, 13  # GroupQueryAttention's k_scale / v_scale input slots
_QUANT_ATTRIBUTES = ("k_quant_type", "v_quant_type", "kv_cache_bit_width")
_PAST_KEY = re.compile(r"past_key_values\.(\d+)\.key")


@dataclass(frozen=True)
class KVCalibrationConfig:
    """How the int8 KV cache's scales are calibrated.

    Attributes:
        images: a directory of frames like the deployment's (png/jpg/bmp/webp; the first `frames` in name
            order); None: synthetic shapes scenes (a seed other than the verification's).
        frames: how many frames the PyTorch model answers.
        new_tokens: tokens generated per frame (their positions are calibrated too).
        headroom: the scale covers this multiple of the largest |value| seen (values beyond are clipped).
    """

    images: str | None = None
    frames: int = 8
    new_tokens: int = 16
    headroom: float = 1.25

    def __post_init__(self) -> None:
        for name in ("frames", "new_tokens"):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                raise ConfigError(f"KVCalibrationConfig.{name} must be a whole number, got {getattr(self, name)!r}")
        if self.frames < 1:
            raise ConfigError(f"KVCalibrationConfig.frames must be ≥ 1, got {self.frames}")
        if self.new_tokens < 1:
            raise ConfigError(f"KVCalibrationConfig.new_tokens must be ≥ 1, got {self.new_tokens}")
        if not 1.0 <= self.headroom <= 4.0:
            raise ConfigError(f"KVCalibrationConfig.headroom must be in [1, 4], got {self.headroom}")
        if self.images is not None:
            calibration_images(Path(self.images), self.frames)  # fail at configuration, not after the export

    def frames_to_run(self) -> list[Any]:
        """Paths of the chosen images, or synthetic frames (H×W×3 uint8)."""
        if self.images is not None:
            return calibration_images(Path(self.images), self.frames)
        from lphi_edge.data.shapes import sample_frames

        return sample_frames(self.frames, seed=1)  # verification uses seed 0


def calibration_images(directory: Path, limit: int) -> list[Path]:
    if not directory.is_dir():
        raise ConfigError(f"KV calibration images: {directory} is not a directory")
    found = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise ConfigError(f"KV calibration images: no {'/'.join(s[1:] for s in IMAGE_SUFFIXES)} files in {directory}")
    return found[:limit]


def calibrate(reference: Assistant, config: KVCalibrationConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """(largest |value| per cached channel, f32 [2·L, H, Dh] in past_key_values order; a summary).

    `reference` is the PyTorch model's Assistant; each frame is answered greedily with the verification's
    prompts and every cached position counted (image, prompt and answer)."""
    from lphi_edge.export.verify import PROMPTS
    from lphi_edge.runtime.generation import GenerationConfig

    absmax: np.ndarray | None = None
    positions = 0
    frames = config.frames_to_run()
    for k, frame in enumerate(frames):
        prompt_ids, images = reference.prompt_inputs(frame, PROMPTS[k % len(PROMPTS)])
        session = reference.new_session()
        session.generate(prompt_ids, images, GenerationConfig(config.new_tokens))
        tensors = session.cache.arrays()  # 2·L × (1, H, P, Dh)
        frame_max = np.stack([np.abs(t).max(axis=(0, 2)) for t in tensors]).astype(np.float32)  # (2·L, H, Dh)
        absmax = frame_max if absmax is None else np.maximum(absmax, frame_max)
        positions += session.cache.seq_len
    assert absmax is not None
    summary = {
        "source": str(Path(config.images).resolve()) if config.images else "synthetic shapes scenes (seed 1)",
        "frames": len(frames),
        "positions": positions,
        "headroom": config.headroom,
        "absmax": {"key": float(absmax[0::2].max()), "value": float(absmax[1::2].max())},
    }
    return absmax, summary


def kv_scales(absmax: np.ndarray, headroom: float) -> np.ndarray:
    """Per-channel scales: headroom · max|x| / 127 (channels never seen non-zero get a tiny positive scale)."""
    return np.maximum(absmax * headroom / QMAX, np.float32(1e-8)).astype(np.float32)


def _attention_layers(path: Path, graph: onnx.GraphProto):
    """(node, layer) for each GroupQueryAttention of the shared decoder, its layer from its past key input."""
    for node in graph.node:
        if node.op_type != "GroupQueryAttention":
            continue
        match = _PAST_KEY.fullmatch(node.input[3])
        if match is None:
            raise AttentionPatternError(
                f"{path.name}: GroupQueryAttention {node.name!r} does not read a past_key_values.<i>.key input "
                f"directly (past input {node.input[3]!r})"
            )
        yield node, int(match.group(1))


def _scale_slots(layer: int) -> tuple[tuple[int, str, int], ...]:
    """(input slot, "key" | "value", row of the [2·L, H, Dh] scales) of one layer's k_scale and v_scale."""
    return (_K_SCALE_INPUT, "key", 2 * layer), (_V_SCALE_INPUT, "value", 2 * layer + 1)


def quantize_kv_cache(path: Path, scales: np.ndarray, dtype: str = "int8") -> int:
    """Make the shared decoder at `path` keep an int8 cache with `scales` [2·L, H, Dh]; returns the layer count.

    Each GroupQueryAttention gets its layer's scales as (1, H, 1, Dh) initializers (per-channel quantization)
    and the past / present tensors become int8. Only the small graph file is rewritten: the weights stay in
    their external data file."""
    if dtype not in KV_QUANTS:
        raise ConfigError(f"KV cache quantization must be one of {KV_QUANTS}, got {dtype!r}")
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    layers = 0
    for node, layer in _attention_layers(path, graph):
        if any(a.name in _QUANT_ATTRIBUTES for a in node.attribute):
            raise AttentionPatternError(f"{path.name}: layer {layer}'s attention already keeps a quantized cache")
        inputs = list(node.input) + [""] * (_V_SCALE_INPUT + 1 - len(node.input))
        for slot, kind, row in _scale_slots(layer):
            name = f"kv_cache_scale.{layer}.{kind}"
            graph.initializer.append(numpy_helper.from_array(scales[row][None, :, None, :], name))  # (1, H, 1, Dh)
            inputs[slot] = name
        del node.input[:]
        node.input.extend(inputs)
        node.attribute.extend(
            [
                helper.make_attribute("k_quant_type", "PER_CHANNEL"),
                helper.make_attribute("v_quant_type", "PER_CHANNEL"),
                helper.make_attribute("kv_cache_bit_width", 8),
            ]
        )
        layers += 1
    if layers * 2 != len(scales):
        raise AttentionPatternError(
            f"{path.name}: {layers} GroupQueryAttention layers for {len(scales)} scale tables: the int8 KV cache "
            "needs the shared decoder (--kv-cache shared)"
        )
    for value in [*graph.input, *graph.output]:
        if value.name.startswith(("past_key_values.", "present.")):
            value.type.tensor_type.elem_type = onnx.TensorProto.INT8
    onnx.save(model, str(path))
    logger.info("%s: %d layers keep an int8 KV cache (per-channel static scales)", path.name, layers)
    return layers


def check_graph_scales(path: Path, scales: np.ndarray) -> None:
    """The decoder's k_scale / v_scale initializers must be `scales` [2·L, H, Dh], layer by layer."""
    model = onnx.load(str(path), load_external_data=False)
    tables = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name.startswith("kv_cache_scale.")}
    for node, layer in _attention_layers(path, model.graph):
        for slot, _, row in _scale_slots(layer):
            got = tables.get(node.input[slot]) if len(node.input) > slot else None
            if got is None or not np.array_equal(got, scales[row][None, :, None, :]):
                raise AttentionPatternError(f"{path.name}: layer {layer}'s attention lacks its calibrated scales")


def write_scales(directory: Path, scales: np.ndarray) -> Path:
    out = directory / KV_SCALES_FILE
    np.save(out, scales)
    return out
