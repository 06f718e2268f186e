"""`lphi-export`: checkpoint → verified export directory, published atomically.

    export_model("ckpt", "out", ExportConfig(fp16=True))

Steps (a progress bar over them): export the three parts (fp32) → fp16 / weight-only int8|int4 →
(an int8 KV cache: scales calibrated on the PyTorch model) → tokenizer and manifest → golden data (what the
PyTorch model is fed and answers; always, so any machine can `lphi-verify` the export) → verification of the
export against it (unless --no-verify) → move into place. The loaded fp32 model is the export's source, the
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
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx
from tqdm.auto import tqdm

from lphi_edge._version import __version__
from lphi_edge.atomic import atomic_directory
from lphi_edge.errors import ConfigError
from lphi_edge.export import onnx_parts
from lphi_edge.export.config import GQA_HEAD_MULTIPLE, ExportConfig
from lphi_edge.export.kv_quant import calibrate, check_graph_scales, kv_scales, quantize_kv_cache, write_scales
from lphi_edge.export.quantize import QuantConfig, quantize_weights, to_fp16
from lphi_edge.export.verify import VerificationError
from lphi_edge.format.golden import GOLDEN_ARRAYS, GOLDEN_FILES, GOLDEN_META, Golden
from lphi_edge.format.manifest import (
    FORMAT_VERSION,
    FORMAT_VERSION_INT8_KV,
    KV_SCALES_FILE,
    PARTS,
    KVQuant,
    Manifest,
    Part,
    TensorSpec,
    TextConfig,
    file_table,
    sha256_file,
)
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


def export_model(model_dir: str | os.PathLike, out: str | os.PathLike, config: ExportConfig | None = None) -> Path:
    """Export a native checkpoint to `out` (default ExportConfig()); returns `out`. Raises VerificationError
    (nothing published)."""
    config = config or ExportConfig()
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
        stages = [*PARTS, "precision", *["kv-calibration"] * (config.kv_quant is not None), "manifest", "golden"]
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
            elif stage == "golden":
                _golden(tmp, reference(), config)
            else:
                _verify(tmp, config)
            timings[stage] = round(time.perf_counter() - t0, 2)
        logger.info("export stages (s): %s", timings)
        if config.trt:  # lphi-build-engines on the new export: built, verified against its golden data
            from lphi_edge.export.tensorrt import build_verified_engines

            build_verified_engines(tmp)
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


def _tensors(values) -> tuple[TensorSpec, ...]:
    """A graph's inputs or outputs as the manifest records them."""
    out = []
    for v in values:
        t = v.type.tensor_type
        shape = tuple(d.dim_param or d.dim_value for d in t.shape.dim)
        out.append(TensorSpec(v.name, _ONNX_DTYPES.get(t.elem_type, str(t.elem_type)), shape))
    return tuple(out)


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
        io = _tensors(graph.input), _tensors(graph.output)
        parts[part] = Part(f"{part}.onnx", precision, *io, data=f"{part}.onnx.data")
    kv_quant = None
    if config.kv_quant is not None:
        granularity = "per (layer, key|value, head, channel); static, symmetric"
        kv_quant = KVQuant(config.kv_quant, KV_SCALES_FILE, granularity, calibration)
    parts["decoder_model_merged"] = replace(parts["decoder_model_merged"], kv_cache=config.kv_cache, kv_quant=kv_quant)
    proc = processor_config(model_dir, cfg)
    text = TextConfig(
        hidden_size=cfg.text.hidden_size,
        vocab_size=cfg.text.vocab_size,
        context_length=cfg.text.max_position_embeddings,
        image_tokens=cfg.image_tokens,
        num_layers=cfg.text.num_hidden_layers,
        num_heads=cfg.text.num_attention_heads,
        num_kv_heads=cfg.text.num_key_value_heads,
        head_dim=cfg.head_dim,
        eos_token_id=tokenizer.eos_token_id,
    )
    tools = {
        "lphi_edge": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "opset": config.opset,
    }
    Manifest(
        tmp,
        precision=config.precision,
        parts=parts,
        text=text,
        processor={**proc.to_preprocessor_dict(), "pad_to_square": proc.pad_to_square},
        template=cfg.template,
        files=file_table(tmp),
        format_version=FORMAT_VERSION_INT8_KV if config.kv_quant else FORMAT_VERSION,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        export_config=asdict(config),
        source={"checkpoint": str(model_dir.resolve()), "sha256": _source_hash(model_dir)},
        tools=tools,
    ).write()


def _golden(tmp: Path, reference: Assistant, config: ExportConfig) -> None:
    """What the PyTorch model is fed and answers on the verification's inputs, stored in the export and listed
    (hashed) in its manifest, so `lphi-verify` can re-check the export anywhere."""
    from lphi_edge.export.verify import make_golden

    make_golden(reference, pairs=config.verify_pairs).save(tmp)
    manifest = Manifest.load(tmp, verify_checksums=False)
    golden = replace(manifest, golden={"arrays": GOLDEN_ARRAYS, "meta": GOLDEN_META})
    golden.with_files(GOLDEN_FILES).write()  # the parts were hashed when the manifest was written


def _verify(tmp: Path, config: ExportConfig) -> None:
    from lphi_edge.assistant import Assistant
    from lphi_edge.export.verify import check, report_table

    exported = Assistant.from_pretrained(tmp, backend="onnxruntime")
    golden = Golden.load(tmp)
    report = check(
        exported, golden, config.precision, min_token_match=config.min_token_match, kv_quant=config.kv_quant
    ).to_dict()
    logger.info("verification of the %s export:\n%s", config.precision, report_table(report))
    replace(Manifest.load(tmp, verify_checksums=False), verification=report).write()
    if not report["passed"]:
        raise VerificationError(
            f"exported {config.precision} model does not match the PyTorch model: "
            + "; ".join(report["failures"])
            + " (nothing was published)",
            report,
        )
