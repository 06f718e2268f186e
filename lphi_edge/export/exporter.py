"""`lphi-export`: checkpoint → verified export directory, published atomically.

    export_model("ckpt", "out", ExportConfig(fp16=True))

Steps (a progress bar over them): export the three parts (fp32) → fp16 / weight-only int8|int4 →
(an int8 KV cache: scales calibrated on the PyTorch model) → tokenizer and manifest → verification
against the PyTorch model → move into place. The loaded fp32 model is the export's source, the
calibration's and the verification's reference: one copy in memory. Everything is written in a hidden
`.<out>.partial-*` directory next to `out` (`lphi_edge.atomic`); a failure or a kill leaves no `out` that
looks finished, and the next export clears stale partial directories.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx
from tqdm.auto import tqdm

import lphi_edge
from lphi_edge.atomic import atomic_directory
from lphi_edge.errors import ConfigError, LphiError
from lphi_edge.export import onnx_parts
from lphi_edge.export.kv_quant import (
    KVCalibrationConfig,
    calibrate,
    check_graph_scales,
    kv_scales,
    quantize_kv_cache,
    write_scales,
)
from lphi_edge.export.manifest import (
    FORMAT,
    FORMAT_VERSION,
    FORMAT_VERSION_INT8_KV,
    KV_CACHES,
    KV_QUANTS,
    KV_SCALES_FILE,
    PARTS,
    Manifest,
    file_table,
    sha256_file,
)
from lphi_edge.export.quantize import QuantConfig, quantize_weights, to_fp16
from lphi_edge.model.checkpoint import load_checkpoint, processor_config, weight_files
from lphi_edge.processing.tokenizer import Tokenizer, tokenizer_files

if TYPE_CHECKING:
    from lphi_edge.assistant import Assistant

logger = logging.getLogger(__name__)

_ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.INT8: "int8",
}


_EXPORTERS = {
    "vision_encoder": onnx_parts.export_vision,
    "embed_tokens": onnx_parts.export_embed,
    "decoder_model_merged": onnx_parts.export_decoder,
}
GQA_HEAD_MULTIPLE = 8  # onnxruntime's GroupQueryAttention needs head_dim % 8 == 0


class VerificationError(LphiError):
    """The exported parts do not answer like the PyTorch model; `report` holds the numbers."""

    def __init__(self, message: str, report: dict[str, Any]):
        super().__init__(message)
        self.report = report


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


def export_model(model_dir: str | os.PathLike, out: str | os.PathLike, config: ExportConfig = ExportConfig()) -> Path:
    """Export a native checkpoint to `out`; returns `out`. Raises VerificationError (nothing published)."""
    model_dir, out = Path(model_dir), Path(out)
    if out.exists() and not config.overwrite:
        raise ConfigError(f"{out} already exists: choose a new --out or pass --overwrite")
    model = load_checkpoint(model_dir)  # fp32 reference and export source
    if config.kv_cache == "shared" and model.config.head_dim % GQA_HEAD_MULTIPLE:
        raise ConfigError(
            f"--kv-cache shared needs a head dimension divisible by {GQA_HEAD_MULTIPLE} (onnxruntime "
            f"GroupQueryAttention); {model_dir} has {model.config.head_dim}: export with --kv-cache concat"
        )
    tokenizer = Tokenizer.from_dir(model_dir)

    @functools.cache
    def reference():  # the PyTorch model behind the generation loop, for calibration and verification
        from lphi_edge.assistant import Assistant
        from lphi_edge.runtime.torch_backend import TorchBackend

        return Assistant.from_torch_backend(TorchBackend(model), model_dir, tokenizer)

    calibration: dict[str, Any] | None = None
    for noisy in ("onnx_ir", "torch.onnx._internal.exporter._registration"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    with atomic_directory(out) as tmp:
        stages = [*PARTS, "precision", *["kv-calibration"] * (config.kv_quant is not None), "manifest"]
        stages += ["verify"] * config.verify
        bar = tqdm(stages, desc="lphi-export", unit="stage")
        timings: dict[str, float] = {}
        for stage in bar:
            bar.set_postfix_str(stage)
            t0 = time.perf_counter()
            if stage in PARTS:
                _EXPORTERS[stage](model, tmp / f"{stage}.onnx", config)
            elif stage == "precision":
                _convert_precision(tmp, config)
            elif stage == "kv-calibration":
                calibration = _quantize_kv(tmp, reference(), config)
            elif stage == "manifest":
                for f in tokenizer_files(model_dir):
                    shutil.copy2(f, tmp / f.name)
                _write_manifest(tmp, model_dir, model, tokenizer, config, calibration)
            else:
                _verify(tmp, reference(), config)
            timings[stage] = round(time.perf_counter() - t0, 2)
        logger.info("export stages (s): %s", timings)
        if config.trt:
            from lphi_edge.export.tensorrt import TrtBuildConfig, build_engines

            build_engines(tmp, TrtBuildConfig())
    return out


def _convert_precision(tmp: Path, config: ExportConfig) -> None:
    quant = QuantConfig(config.quant, config.block_size) if config.quant else None
    for part, precision in config.part_precisions.items():
        path = tmp / f"{part}.onnx"
        if precision in ("int8", "int4"):
            assert quant is not None
            quantize_weights(path, quant)
        elif precision == "fp16":
            to_fp16(path, keep_io_types=part != "decoder_model_merged")


def _quantize_kv(tmp: Path, reference: Assistant, config: ExportConfig) -> dict[str, Any]:
    """Calibrate the cache's scales on the PyTorch model and make the decoder keep an int8 cache."""
    absmax, summary = calibrate(reference, config.kv_calibration)
    scales = kv_scales(absmax, config.kv_calibration.headroom)  # (2·L, H, Dh)
    quantize_kv_cache(tmp / "decoder_model_merged.onnx", scales, config.kv_quant)
    write_scales(tmp, scales)
    check_graph_scales(tmp / "decoder_model_merged.onnx", scales)  # the graph and the npy: one array
    logger.info(
        "int8 KV cache calibrated on %d frames (%d positions): max |key| %.3g, max |value| %.3g",
        summary["frames"], summary["positions"], summary["absmax"]["key"], summary["absmax"]["value"],
    )  # fmt: skip
    return summary


def _io(values) -> list[dict[str, Any]]:
    out = []
    for v in values:
        t = v.type.tensor_type
        shape = [d.dim_param or d.dim_value for d in t.shape.dim]
        out.append({"name": v.name, "dtype": _ONNX_DTYPES.get(t.elem_type, str(t.elem_type)), "shape": shape})
    return out


def _source_hash(model_dir: Path) -> str:
    h = hashlib.sha256()
    for f in [model_dir / "config.json", *weight_files(model_dir)]:
        h.update(f.name.encode())
        h.update(bytes.fromhex(sha256_file(f)))
    return h.hexdigest()


def _write_manifest(
    tmp: Path, model_dir: Path, model, tokenizer: Tokenizer, config: ExportConfig, calibration: dict[str, Any] | None
) -> None:
    import onnxruntime
    import torch
    import transformers

    cfg = model.config
    parts = {}
    for part, precision in config.part_precisions.items():
        graph = onnx.load(str(tmp / f"{part}.onnx"), load_external_data=False).graph
        parts[part] = {
            "file": f"{part}.onnx",
            "data": f"{part}.onnx.data",
            "precision": precision,
            "inputs": _io(graph.input),
            "outputs": _io(graph.output),
        }
    parts["decoder_model_merged"]["kv_cache"] = config.kv_cache
    if config.kv_quant is not None:
        parts["decoder_model_merged"]["kv_quant"] = {
            "dtype": config.kv_quant,
            "scales": KV_SCALES_FILE,
            "granularity": "per (layer, key|value, head, channel); static, symmetric",
            "calibration": calibration,
        }
    proc = processor_config(model_dir, cfg)
    data = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION_INT8_KV if config.kv_quant else FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "backend": "onnxruntime",
        "precision": config.precision,
        "parts": parts,
        "text_config": {
            "hidden_size": cfg.text.hidden_size,
            "vocab_size": cfg.text.vocab_size,
            "context_length": cfg.text.max_position_embeddings,
            "image_tokens": cfg.image_tokens,
            "num_layers": cfg.text.num_hidden_layers,
            "num_heads": cfg.text.num_attention_heads,
            "num_kv_heads": cfg.text.num_key_value_heads,
            "head_dim": cfg.head_dim,
            "eos_token_id": tokenizer.eos_token_id,
        },
        "processor": {**proc.to_preprocessor_dict(), "pad_to_square": proc.pad_to_square},
        "template": cfg.template,
        "export_config": asdict(config),
        "source": {"checkpoint": str(model_dir.resolve()), "sha256": _source_hash(model_dir)},
        "tools": {
            "lphi_edge": lphi_edge.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "opset": config.opset,
        },
        "files": file_table(tmp),
        "verification": None,
    }
    Manifest(tmp, data).write()


def _verify(tmp: Path, reference: Assistant, config: ExportConfig) -> None:
    from lphi_edge.assistant import Assistant
    from lphi_edge.export.verify import report_table, verify

    exported = Assistant.from_pretrained(tmp, backend="onnxruntime")
    report = verify(
        reference,
        exported,
        config.precision,
        pairs=config.verify_pairs,
        min_token_match=config.min_token_match,
        kv_quant=config.kv_quant,
    ).to_dict()
    logger.info("verification of the %s export:\n%s", config.precision, report_table(report))
    manifest = Manifest.load(tmp, verify_checksums=False)
    manifest.data["verification"] = report
    manifest.write()
    if not report["passed"]:
        raise VerificationError(
            f"exported {config.precision} model does not match the PyTorch model: "
            + "; ".join(report["failures"])
            + " (nothing was published)",
            report,
        )
