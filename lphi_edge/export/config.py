"""What `lphi-export` builds: `ExportConfig`, validated on construction (every error names the field)."""

from __future__ import annotations

from dataclasses import dataclass

from lphi_edge.errors import ConfigError
from lphi_edge.export.kv_quant import KVCalibrationConfig
from lphi_edge.export.quantize import QuantConfig
from lphi_edge.format.manifest import KV_CACHES, KV_QUANTS

GQA_HEAD_MULTIPLE = 8  # onnxruntime's GroupQueryAttention needs head_dim % 8 == 0


@dataclass(frozen=True)
class ExportConfig:
    """What `lphi-export` builds.

    Attributes:
        fp16: fp16 weights and compute for the vision encoder, embeddings and (unless quantized) decoder.
        quant: None | "int8" | "int4": weight-only MatMulNBits quantization of the decoder's MatMuls.
        block_size: quantization block size along K.
        quant_vision: also quantize the vision encoder's MatMuls (default: only the decoder).
        opset: ONNX opset of the exported graphs.
        verify: compare against the PyTorch model before publishing (on by default).
        verify_pairs: frame/prompt pairs of the end-to-end check.
        min_token_match: also fail verification below this greedy token-match rate (e.g. to gate int4).
        kv_cache: "concat" (the decoder returns past + new as new tensors: any runtime, TensorRT included) or
            "shared" (onnxruntime GroupQueryAttention: the backend keeps one preallocated buffer per layer and
            the decoder writes only the new positions into it — no whole-cache copy per token; onnxruntime
            only, unpadded attention masks).
        kv_quant: None | "int8": keep the shared cache as int8 with per-channel scales calibrated on the
            PyTorch model (a quarter of the bytes each decode step reads; `kv_quant.py`). Needs kv_cache="shared".
        kv_calibration: the frames and headroom of that calibration.
        trt: also build TensorRT engines on this machine's GPU.
        overwrite: replace an existing export directory.
    """

    fp16: bool = False
    quant: str | None = None
    block_size: int = 32
    quant_vision: bool = False
    opset: int = 20
    verify: bool = True
    verify_pairs: int = 8
    min_token_match: float | None = None
    kv_cache: str = "concat"
    kv_quant: str | None = None
    kv_calibration: KVCalibrationConfig = KVCalibrationConfig()
    trt: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.quant is not None:
            QuantConfig(self.quant, self.block_size)  # validates precision and block size
        elif self.quant_vision:
            raise ConfigError("ExportConfig.quant_vision needs quant='int8' or 'int4'")
        if not 18 <= self.opset <= 23:
            raise ConfigError(f"ExportConfig.opset must be in 18..23 (torch.onnx dynamo export), got {self.opset}")
        if self.verify_pairs < 1:
            raise ConfigError(f"ExportConfig.verify_pairs must be ≥ 1, got {self.verify_pairs}")
        if self.min_token_match is not None and not 0 <= self.min_token_match <= 1:
            raise ConfigError(f"ExportConfig.min_token_match must be in [0, 1], got {self.min_token_match}")
        if self.kv_cache not in KV_CACHES:
            raise ConfigError(f"ExportConfig.kv_cache must be one of {KV_CACHES}, got {self.kv_cache!r}")
        if self.kv_quant is not None and self.kv_quant not in KV_QUANTS:
            raise ConfigError(f"ExportConfig.kv_quant must be one of {KV_QUANTS} or None, got {self.kv_quant!r}")
        if self.kv_quant is not None and self.kv_cache != "shared":
            raise ConfigError(
                f"a {self.kv_quant} KV cache (--kv-quant) is quantized by GroupQueryAttention as it writes the cache: "
                "it needs kv_cache='shared' (--kv-cache shared)"
            )
        if self.kv_cache == "shared" and self.trt:
            raise ConfigError(
                "kv_cache='shared' uses onnxruntime's GroupQueryAttention, which TensorRT cannot build: "
                "export with kv_cache='concat' (--kv-cache concat) for --trt"
            )

    @property
    def part_precisions(self) -> dict[str, str]:
        base = "fp16" if self.fp16 else "fp32"
        return {
            "vision_encoder": self.quant if self.quant and self.quant_vision else base,
            "embed_tokens": base,
            "decoder_model_merged": self.quant or base,
        }

    @property
    def precision(self) -> str:
        """The export's headline precision: the decoder's."""
        return self.part_precisions["decoder_model_merged"]
