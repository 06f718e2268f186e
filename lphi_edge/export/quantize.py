"""Precision conversion of exported ONNX parts with onnxruntime's own tools.

- fp16: `onnxruntime.transformers.float16.convert_float_to_float16` (weights and compute in fp16).
  The vision encoder and embedding keep fp32 inputs/outputs (the graph casts at its edges); the
  decoder takes and returns fp16 tensors (its KV cache stays half-size) and the runtime casts.
- int8 / int4: weight-only `MatMulNBits` via `MatMulNBitsQuantizer` (symmetric blocks), compute in
  fp32 activations; `accuracy_level=4` lets the CPU kernels use int8 dot products.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import onnx

from lphi_edge.errors import ConfigError

logger = logging.getLogger(__name__)

QUANT_BITS = {"int8": 8, "int4": 4}


BLOCK_SIZES = (16, 32, 64, 128, 256)


@dataclass(frozen=True)
class QuantConfig:
    """Weight-only quantization of MatMul weights.

    Attributes:
        precision: "int8" | "int4".
        block_size: weights per quantization block along K: 16, 32, 64, 128 or 256 (what onnxruntime's
            MatMulNBits quantizer takes). Larger blocks read fewer scales per token; on AVX-512 CPUs 256
            also selects a faster kernel (benchmarks/int4_gemv.py).
        symmetric: symmetric blocks (no zero point).
        accuracy_level: MatMulNBits compute accuracy (0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8).
    """

    precision: str = "int4"
    block_size: int = 32
    symmetric: bool = True
    accuracy_level: int = 4

    def __post_init__(self) -> None:
        if self.precision not in QUANT_BITS:
            raise ConfigError(f"QuantConfig.precision must be one of {sorted(QUANT_BITS)}, got {self.precision!r}")
        if self.block_size not in BLOCK_SIZES:
            raise ConfigError(f"QuantConfig.block_size must be one of {BLOCK_SIZES}, got {self.block_size}")
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise ConfigError(f"QuantConfig.accuracy_level must be 0..4, got {self.accuracy_level}")

    @property
    def bits(self) -> int:
        return QUANT_BITS[self.precision]


def save_with_data(model: onnx.ModelProto, path: Path) -> None:
    """Save `path` + one `path.data` external-data file (replacing both)."""
    data = path.with_name(path.name + ".data")
    for f in (path, data):
        f.unlink(missing_ok=True)
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data.name,
        size_threshold=1024,
    )


def to_fp16(path: Path, keep_io_types: bool) -> None:
    """Convert an ONNX part in place to fp16 weights and compute."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(path))  # external data loaded alongside
    model = convert_float_to_float16(model, keep_io_types=keep_io_types, disable_shape_infer=True)
    save_with_data(model, path)


def quantize_weights(path: Path, config: QuantConfig) -> int:
    """Quantize the MatMul weights of an ONNX part in place; returns how many MatMuls changed."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(path))
    before = sum(n.op_type == "MatMul" for n in model.graph.node)
    q = MatMulNBitsQuantizer(
        model,
        bits=config.bits,
        block_size=config.block_size,
        is_symmetric=config.symmetric,
        accuracy_level=config.accuracy_level,
    )
    q.process()
    quantized = q.model.model
    n = sum(node.op_type == "MatMulNBits" for node in quantized.graph.node)
    if n == 0:
        raise ConfigError(f"{path.name}: no MatMul weights could be quantized to {config.precision}")
    logger.info(
        "%s: %d of %d MatMuls → MatMulNBits (%d bits, block %d)", path.name, n, before, config.bits, config.block_size
    )
    save_with_data(quantized, path)
    return n
