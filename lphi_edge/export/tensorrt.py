"""TensorRT engines for an export directory, built ON THE TARGET GPU. Imports neither torch nor transformers.

The engines go where `lphi_edge.format.engines` says (DIR/trt/<gpu>-sm<XY>-trt<version>-<precision>/, with
build.json), and `TrtBackend.from_export_dir` picks the directory matching the machine it runs on.
A build with the same settings from the same ONNX files is reused; a build is written to a temporary
sibling directory and renamed into place only once all three engines exist.

TensorRT itself (`tensorrt`) and cuda-python (`cuda.bindings.runtime`, or `cuda.cudart` before
cuda-python 12.6) are imported only when needed, so this module imports anywhere.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from lphi_edge.errors import ConfigError, LphiError
from lphi_edge.format.engines import (
    BUILD_FORMAT_VERSION,
    BUILD_JSON,
    ENGINE_SUFFIX,
    TRT_DIR,
    TRT_PRECISIONS,
    engine_dir_name,
    engines_complete,
    read_build_info,
    source_hashes,
)
from lphi_edge.format.manifest import PARTS, Manifest
from lphi_edge.runtime.cuda_trt import gpu_info, require_tensorrt, trt_logger

logger = logging.getLogger(__name__)

QUANT_ERROR = (
    "TensorRT cannot consume onnxruntime's MatMulNBits int4/int8 weights (lphi-export --quant): "
    "export without --quant for --trt"
)
_QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
_ORT_QUANT_OPS = frozenset({"MatMulNBits", "MatMulInteger", "DynamicQuantizeLinear", "QLinearMatMul"})
SHARED_KV_ERROR = (
    "TensorRT cannot build onnxruntime's GroupQueryAttention (lphi-export --kv-cache shared): "
    "export with --kv-cache concat for --trt"
)


# ---- configuration ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrtBuildConfig:
    """How to build the engines. Validated on construction; every error names the field.

    Attributes:
        precision: "fp16" (default), "fp32", or "int8" (only for parts whose ONNX carries Q/DQ nodes).
        max_batch: largest batch the engines accept (profiles cover 1..max_batch).
        max_context: largest attention length P + S; None = the manifest's context_length.
        opt_prompt: typical prompt length (image tokens + text). The decoder profile is tuned for a decode
            step after such a prompt (S = 1, P = opt_prompt), the per-token hot path.
        workspace_gb: TensorRT builder workspace limit in GiB.
    """

    precision: str = "fp16"
    max_batch: int = 1
    max_context: int | None = None
    opt_prompt: int = 640
    workspace_gb: float = 4.0

    def __post_init__(self) -> None:
        if self.precision not in TRT_PRECISIONS:
            raise ConfigError(f"TrtBuildConfig.precision must be one of {TRT_PRECISIONS}, got {self.precision!r}")
        _check_int("max_batch", self.max_batch, minimum=1)
        if self.max_context is not None:
            _check_int("max_context", self.max_context, minimum=2)
        _check_int("opt_prompt", self.opt_prompt, minimum=1)
        gb = self.workspace_gb
        if isinstance(gb, bool) or not isinstance(gb, (int, float)) or not gb > 0:
            raise ConfigError(f"TrtBuildConfig.workspace_gb must be a positive number of GiB, got {gb!r}")

    def resolve(self, context_length: int) -> TrtBuildConfig:
        """This config with max_context filled in from the model, checked against it; opt_prompt clipped."""
        max_context = context_length if self.max_context is None else self.max_context
        if max_context > context_length:
            raise ConfigError(
                f"TrtBuildConfig.max_context={max_context} exceeds the model's context_length {context_length}"
            )
        return replace(self, max_context=max_context, opt_prompt=min(self.opt_prompt, max_context - 1))


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"TrtBuildConfig.{name} must be an integer ≥ {minimum}, got {value!r}")


# ---- build -----------------------------------------------------------------------------------------------------------
def build_engines(
    export_dir: str | os.PathLike,
    config: TrtBuildConfig | None = None,
    *,
    overwrite: bool = False,
    check: Callable[[Path], None] | None = None,
) -> Path:
    """Build (or reuse) the three engines for this GPU and TensorRT version; returns the engine directory.

    overwrite: build again even when an identical build exists. check: called with the finished build's
    (temporary) directory before it is published — it raises to refuse the engines (nothing is written)."""
    trt = require_tensorrt()
    manifest = Manifest.load(export_dir)
    config = (config or TrtBuildConfig()).resolve(int(manifest.text.context_length))
    graphs = {part: _check_part(manifest, part, config, trt) for part in PARTS}
    gpu, sm = gpu_info()
    key = {  # what build.json must hold, identically, for a build to be reused
        "format_version": BUILD_FORMAT_VERSION,
        "precision": config.precision,
        "config": asdict(config),
        "tensorrt": trt.__version__,
        "gpu": gpu,
        "sm": list(sm),
        "sources": source_hashes(manifest),
    }
    out = manifest.path / TRT_DIR / engine_dir_name(gpu, sm, trt.__version__, config.precision)
    info = read_build_info(out)
    if not overwrite and info is not None and all(info.get(k) == v for k, v in key.items()) and engines_complete(out):
        logger.info("TensorRT engines in %s match this export and these settings: reused", out)
        return out

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        t0 = time.perf_counter()
        profiles, seconds = {}, {}
        for part in PARTS:
            t_part = time.perf_counter()
            profiles[part] = _build_part(trt, manifest, part, config, graphs[part], tmp / f"{part}{ENGINE_SUFFIX}")
            seconds[part] = round(time.perf_counter() - t_part, 2)
        build = {
            **key,
            "profiles": profiles,
            "part_seconds": seconds,
            "build_seconds": round(time.perf_counter() - t0, 2),
        }
        (tmp / BUILD_JSON).write_text(json.dumps(build, indent=2) + "\n")
        if check is not None:
            check(tmp)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("TensorRT %s engines (%s) built in %.1f s: %s", config.precision, gpu, build["build_seconds"], out)
    return out


def build_verified_engines(
    export_dir: str | os.PathLike, config: TrtBuildConfig | None = None, *, overwrite: bool = False
) -> tuple[Path, dict[str, Any]]:
    """Build this GPU's engines and publish them only if they pass the export's own verification, re-run on
    the engines against the golden data the export carries (`lphi-verify --backend tensorrt`). Returns the
    engine directory and the report (also stored in its build.json); VerificationError publishes nothing."""
    from lphi_edge.assistant import Assistant
    from lphi_edge.export.verify import VerificationError, check, report_table
    from lphi_edge.format.golden import Golden

    config = config or TrtBuildConfig()
    require_tensorrt()  # before anything else: what is missing, and how to get it
    if Manifest.load(export_dir).golden is None:
        raise ConfigError(f"{export_dir} carries no golden verification data to check engines against: re-export")
    golden = Golden.load(Path(export_dir))
    reports: list[dict[str, Any]] = []

    def verify_build(engine_dir: Path, fate: str = "no engines were published") -> None:
        exported = Assistant.from_pretrained(export_dir, backend="tensorrt", engine_dir=engine_dir)
        try:
            report = check(exported, golden, config.precision).to_dict()  # the engines' own precision's gates
        finally:
            exported.backend.close()
        logger.info("verification of the TensorRT %s engines:\n%s", config.precision, report_table(report))
        build = json.loads((engine_dir / BUILD_JSON).read_text())
        (engine_dir / BUILD_JSON).write_text(json.dumps(build | {"verification": report}, indent=2) + "\n")
        reports.append(report)
        if not report["passed"]:
            raise VerificationError(
                f"TensorRT {config.precision} engines do not answer like the export's reference: "
                + "; ".join(report["failures"])
                + f" ({fate})",
                report,
            )

    out = build_engines(export_dir, config, overwrite=overwrite, check=verify_build)
    if not reports:  # an identical build was reused: check it as it is
        verify_build(out, "these engines were built earlier: rebuild them with --overwrite")
    return out, reports[-1]


def _replace_dir(src: Path, dst: Path) -> None:
    """Move the finished build `src` to `dst`, replacing an older build there."""
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _part_op_types(path: Path) -> set[str] | None:
    """ONNX op types of a graph (nodes and local functions), read without its external data; None if no onnx."""
    try:
        import onnx
    except ImportError:
        return None
    model = onnx.load(str(path), load_external_data=False)
    ops = {n.op_type for n in model.graph.node}
    for fn in model.functions:
        ops.update(n.op_type for n in fn.node)
    return ops


@dataclass(frozen=True)
class _PartGraph:
    """What the builder needs to know about one ONNX part before parsing it."""

    has_qdq: bool
    fp16_graph: bool  # the export is already half precision


def _check_part(manifest: Manifest, part: str, config: TrtBuildConfig, trt) -> _PartGraph:
    """Refuse what TensorRT cannot build before spending minutes on it."""
    meta = manifest.part(part)
    ops = _part_op_types(manifest.part_file(part))
    if ops is None:  # no onnx package: trust the manifest (lphi-export quantizes with MatMulNBits)
        if meta.precision in ("int8", "int4"):
            raise ConfigError(f"{meta.file}: {QUANT_ERROR}")
        ops = set()
    if ops & _ORT_QUANT_OPS:
        raise ConfigError(f"{meta.file} uses {sorted(ops & _ORT_QUANT_OPS)}: {QUANT_ERROR}")
    if "GroupQueryAttention" in ops or (part == "decoder_model_merged" and manifest.kv_cache != "concat"):
        raise ConfigError(f"{meta.file}: {SHARED_KV_ERROR}")
    graph = _PartGraph(
        has_qdq=bool(ops & _QDQ_OPS),
        fp16_graph=meta.precision == "fp16" or any(t.dtype == "float16" for t in meta.inputs),
    )
    if config.precision == "int8" and part == "decoder_model_merged" and not graph.has_qdq:
        raise ConfigError(
            f"TrtBuildConfig.precision='int8' needs Q/DQ (QuantizeLinear/DequantizeLinear) nodes in {meta.file} "
            f"and it has none; {QUANT_ERROR}, and use precision='fp16'"
        )
    if config.precision == "fp16" and not hasattr(trt.BuilderFlag, "FP16") and not graph.fp16_graph:
        raise ConfigError(
            f"TrtBuildConfig.precision='fp16': TensorRT {trt.__version__} builds strongly typed networks only "
            f"(no FP16 builder flag) and {meta.file} is fp32: export with --fp16 for --trt, or use precision='fp32'"
        )
    if config.precision == "fp32" and graph.fp16_graph:
        logger.warning("%s is an fp16 export: its fp32 engine keeps the fp16 weights and I/O", meta.file)
    return graph


def _build_part(
    trt, manifest: Manifest, part: str, config: TrtBuildConfig, graph: _PartGraph, engine_path: Path
) -> dict[str, dict[str, list[int]]]:
    """Parse one ONNX part, build and write its serialized engine; returns its optimization profile."""
    onnx_path = manifest.part_file(part)
    log = trt_logger(trt)
    builder = trt.Builder(log)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, log)
    logger.info("TensorRT: parsing %s", onnx_path)
    if not parser.parse_from_file(str(onnx_path)):  # from the file, so `.onnx.data` resolves beside it
        errors = "; ".join(_parser_error(parser.get_error(i)) for i in range(parser.num_errors))
        raise LphiError(f"TensorRT {trt.__version__} cannot parse {onnx_path}: {errors or 'no error reported'}")

    build_config = builder.create_builder_config()
    build_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(config.workspace_gb * (1 << 30)))
    _set_precision_flags(trt, build_config, config.precision, graph)
    profile = builder.create_optimization_profile()
    shapes = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        lo, opt, hi = _profile_shapes(manifest, part, tensor.name, tuple(tensor.shape), config)
        profile.set_shape(tensor.name, lo, opt, hi)
        shapes[tensor.name] = {"min": list(lo), "opt": list(opt), "max": list(hi)}
    build_config.add_optimization_profile(profile)

    logger.info("TensorRT: building %s (%s) — this can take minutes", part, config.precision)
    serialized = builder.build_serialized_network(network, build_config)
    if serialized is None:
        raise LphiError(f"TensorRT {trt.__version__} failed to build {part} from {onnx_path}: see the TensorRT log")
    with open(engine_path, "wb") as f:
        f.write(serialized)
    return shapes


def _parser_error(err) -> str:
    desc = err.desc() if hasattr(err, "desc") else str(err)
    node = getattr(err, "node_name", None)
    where = node() if callable(node) else ""
    return f"{desc} (node {where})" if where else str(desc)


def _set_precision_flags(trt, build_config, precision: str, graph: _PartGraph) -> None:
    """TensorRT 10 weak typing: FP16 (and INT8 where the part has Q/DQ) builder flags. TensorRT ≥ 11 has none:
    networks are strongly typed, the precision is the ONNX graph's own (checked in _check_part)."""
    flags = trt.BuilderFlag
    if precision == "fp32" and hasattr(flags, "TF32"):  # on by default: fp32 engines would compute in TF32
        build_config.clear_flag(flags.TF32)
    if precision in ("fp16", "int8") and hasattr(flags, "FP16"):
        build_config.set_flag(flags.FP16)
    if precision == "int8" and graph.has_qdq and hasattr(flags, "INT8"):
        build_config.set_flag(flags.INT8)


def _profile_shapes(
    manifest: Manifest, part: str, name: str, dims: tuple[int, ...], config: TrtBuildConfig
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max) of one network input: its static dims kept, each dynamic (-1) axis given its range.

    Axes: batch 1..max_batch (opt 1); vision H/W = the processor's crop; new positions S 1..max_context
    (decoder opt 1 = a decode step; embed opt = opt_prompt); past P 0..max_context-1 (opt opt_prompt);
    attention length P+S 1..max_context (opt opt_prompt+1).
    """
    ctx, opt_p = int(config.max_context or 0), config.opt_prompt  # resolved: max_context is set
    seq = (1, opt_p if part == "embed_tokens" else 1, ctx)
    ranges: dict[int, tuple[int, int, int]] = {0: (1, 1, config.max_batch)}  # axis → (min, opt, max)
    if name == "pixel_values":  # [B, 3, H, W]
        h, w = _crop_size(manifest.processor)
        ranges.update({2: (h, h, h), 3: (w, w, w)})
    elif name in ("input_ids", "inputs_embeds", "position_ids"):  # [B, S(, D)]
        ranges[1] = seq
    elif name == "attention_mask":  # [B, P + S]
        ranges[1] = (1, opt_p + 1, ctx)
    elif name.startswith("past_key_values."):  # [B, H, P, Dh]
        ranges[2] = (0, opt_p, ctx - 1)
    per_axis = []  # (min, opt, max) per axis
    for axis, d in enumerate(dims):
        if d >= 0:
            per_axis.append((d, d, d))
        elif axis in ranges:
            per_axis.append(ranges[axis])
        else:
            raise LphiError(
                f"{part}: input {name!r} has dynamic axis {axis} of shape {list(dims)} that lphi-edge "
                "does not know how to bound; re-export with lphi-export"
            )
    lo, opt, hi = (tuple(r[k] for r in per_axis) for k in range(3))
    return lo, opt, hi


def _crop_size(processor: dict[str, Any]) -> tuple[int, int]:
    """(height, width) the vision part takes: ProcessorConfig's crop_height/crop_width (or HF's crop_size)."""
    if "crop_height" in processor and "crop_width" in processor:
        return int(processor["crop_height"]), int(processor["crop_width"])
    crop = processor.get("crop_size")
    if isinstance(crop, dict) and "height" in crop and "width" in crop:
        return int(crop["height"]), int(crop["width"])
    raise LphiError(
        f"manifest processor config has no crop_height/crop_width (got keys {sorted(processor)}): "
        "re-export with lphi-export"
    )
