"""The models shipped inside the package, and how a `--model` argument becomes a directory."""

from __future__ import annotations

import os
from pathlib import Path

from lphi_edge.errors import CheckpointError

_ASSETS = Path(__file__).resolve().parents[1] / "assets"
SHIPPED_MODELS = {"shapes-demo": _ASSETS / "shapes_demo"}  # name → checkpoint
SHIPPED_EXPORTS = {"shapes-demo": _ASSETS / "shapes_demo_onnx"}  # name → its ONNX export


def resolve_model_dir(model: str | os.PathLike, backend: str | None = None) -> Path:
    """A checkpoint / export directory, or the name of a shipped model (`shapes-demo`; its ONNX export
    when `backend` is onnxruntime)."""
    if isinstance(model, str) and model in SHIPPED_MODELS:
        path = SHIPPED_EXPORTS[model] if backend == "onnxruntime" else SHIPPED_MODELS[model]
        if not (path / "config.json").is_file() and not (path / "manifest.json").is_file():
            raise CheckpointError(f"the shipped model {model!r} is missing from this install ({path})")
        return path
    path = Path(model)
    if path.is_dir():
        return path
    raise CheckpointError(
        f"model not found: {str(model)!r} is not a directory; expected a LLaVA-Phi checkpoint directory "
        f"(config.json + safetensors + tokenizer), an lphi-export directory, or one of {sorted(SHIPPED_MODELS)}"
    )
