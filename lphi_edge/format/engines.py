"""Where an export directory keeps its TensorRT engines, and what a build leaves beside them.

    DIR/trt/<gpu>-sm<XY>-trt<version>-<precision>/
        vision_encoder.engine  embed_tokens.engine  decoder_model_merged.engine
        build.json             settings, optimization profiles, TensorRT version, GPU, source hashes, seconds

Engines are specific to the GPU model, its compute capability and the TensorRT version, so the directory
name carries all three and the TensorRT backend picks the one matching the machine it runs on. The
builder (`lphi_edge.export.tensorrt`) writes this layout; the backend reads it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from lphi_edge.format.manifest import PARTS, Manifest

TRT_DIR = "trt"  # DIR/trt/<engine dir>/
BUILD_JSON = "build.json"
ENGINE_SUFFIX = ".engine"
BUILD_FORMAT_VERSION = 1
TRT_PRECISIONS = ("fp16", "fp32", "int8")  # also the preference order when several builds exist
BUILD_HINT = "build on the target device (Jetson/GPU host) with `lphi-build-engines DIR`"


def engine_dir_name(gpu_name: str, sm: tuple[int, int], trt_version: str, precision: str) -> str:
    """ "NVIDIA H100 80GB HBM3", (9, 0), "10.3.0", "fp16" → "nvidia-h100-80gb-hbm3-sm90-trt10.3.0-fp16"."""
    return f"{_slug(gpu_name) or 'gpu'}-sm{sm[0]}{sm[1]}-trt{_slug(trt_version)}-{_slug(precision)}"


def _slug(text: str) -> str:
    """Lowercase; runs of anything but [a-z0-9.] become one '-'; no leading/trailing '-' or '.'."""
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-.")


def source_hashes(manifest: Manifest) -> dict[str, str]:
    """sha256 (from the manifest's file table) of each part's ONNX file and its external data."""
    part_files = [manifest.part(p).file for p in PARTS]
    return {
        name: meta.sha256
        for name, meta in sorted(manifest.files.items())
        if any(name == f or name.startswith(f + ".") for f in part_files)
    }


def read_build_info(engine_dir: Path) -> dict[str, Any] | None:
    """The engine directory's build.json, or None when it is missing or unreadable."""
    try:
        data = json.loads((engine_dir / BUILD_JSON).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def engines_complete(engine_dir: Path) -> bool:
    return all((engine_dir / f"{part}{ENGINE_SUFFIX}").is_file() for part in PARTS)


def existing_engine_dirs(export_dir: str | os.PathLike) -> list[str]:
    """Names of the directories under DIR/trt/ that hold a build.json (any GPU, version, precision)."""
    root = Path(export_dir) / TRT_DIR
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / BUILD_JSON).is_file())
