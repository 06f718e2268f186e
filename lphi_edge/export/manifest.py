"""The export directory's `manifest.json`: self-describing, checksummed, versioned. Torch-free.

DIR/manifest.json
DIR/vision_encoder.onnx (+ .onnx.data)        pixel_values[B,3,H,W] f32 → image_features[B,N,D]
DIR/embed_tokens.onnx (+ .onnx.data)          input_ids[B,S] i64 → inputs_embeds[B,S,D]
DIR/decoder_model_merged.onnx (+ .onnx.data)  inputs_embeds, attention_mask, position_ids,
                                              past_key_values.{i}.key|value → logits, present.{i}.key|value
DIR/tokenizer.json (+ tokenizer_config.json, ...)

parts.decoder_model_merged.kv_cache: "concat" (present = past + new, new tensors; absent in older
manifests) or "shared" (GroupQueryAttention: past and present may be one buffer, written in place).
parts.decoder_model_merged.kv_quant (shared only; absent = the cache in the decoder's float type):
{"dtype": "int8", "scales": "kv_cache_scales.npy" (f32 [2·L, H, Dh], past_key_values order), "calibration": {...}}.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lphi_edge.errors import CheckpointError

FORMAT = "lphi-edge-export"
FORMAT_VERSION = 1
FORMAT_VERSION_INT8_KV = 2  # an export whose decoder keeps an int8 cache: readers before it would misread it
SUPPORTED_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
PARTS = ("vision_encoder", "embed_tokens", "decoder_model_merged")
PRECISIONS = ("fp32", "fp16", "int8", "int4")
KV_CACHES = ("concat", "shared")  # the decoder's cache interface (parts.decoder_model_merged.kv_cache)
KV_QUANTS = ("int8",)  # a quantized cache (parts.decoder_model_merged.kv_quant.dtype; shared only)
KV_SCALES_FILE = "kv_cache_scales.npy"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def decoder_io_names(num_layers: int) -> tuple[list[str], list[str]]:
    """(input names, output names) of decoder_model_merged, as DESIGN.md fixes them."""
    past = [f"past_key_values.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]
    return ["inputs_embeds", "attention_mask", "position_ids", *past], ["logits", *present]


@dataclass
class Manifest:
    """A parsed manifest. `data` is the JSON object itself; properties give typed access."""

    path: Path  # the export directory
    data: dict[str, Any]

    @property
    def precision(self) -> str:
        return self.data["precision"]

    @property
    def text(self) -> dict[str, Any]:
        return self.data["text_config"]

    @property
    def processor(self) -> dict[str, Any]:
        return self.data["processor"]

    @property
    def template(self) -> str:
        return self.data["template"]

    @property
    def kv_cache(self) -> str:
        """The decoder's cache interface; "concat" where older manifests do not say."""
        value = self.part("decoder_model_merged").get("kv_cache", "concat")
        if value not in KV_CACHES:
            raise CheckpointError(
                f"{self.path / MANIFEST}: decoder kv_cache {value!r} unknown (this lphi-edge knows "
                f"{', '.join(KV_CACHES)}); upgrade lphi-edge or re-export"
            )
        return value

    @property
    def kv_quant(self) -> dict[str, Any] | None:
        """The quantized cache's description (dtype, scales file, calibration), or None for a float cache."""
        meta = self.part("decoder_model_merged").get("kv_quant")
        if meta is None:
            return None
        where = self.path / MANIFEST
        if not isinstance(meta, dict) or meta.get("dtype") not in KV_QUANTS:
            found = meta.get("dtype") if isinstance(meta, dict) else meta
            raise CheckpointError(
                f"{where}: decoder kv_quant {found!r} unknown (this lphi-edge knows {', '.join(KV_QUANTS)}); "
                "upgrade lphi-edge or re-export"
            )
        if self.kv_cache != "shared":
            raise CheckpointError(
                f"{where}: a quantized KV cache (kv_quant) needs kv_cache 'shared', not {self.kv_cache!r}"
            )
        if not isinstance(meta.get("scales"), str) or meta["scales"] not in self.data["files"]:
            raise CheckpointError(
                f"{where}: kv_quant scales file {meta.get('scales')!r} is not among the export's files"
            )
        return meta

    @property
    def backend(self) -> str:
        return self.data.get("backend", "onnxruntime")

    def part(self, name: str) -> dict[str, Any]:
        return self.data["parts"][name]

    def part_file(self, name: str) -> Path:
        return self.path / self.part(name)["file"]

    def write(self) -> None:
        (self.path / MANIFEST).write_text(json.dumps(self.data, indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike, *, verify_checksums: bool = True) -> Manifest:
        """Read and check an export directory's manifest; refuse anything that does not match it."""
        path = Path(path)
        f = path / MANIFEST
        if not f.is_file():
            raise CheckpointError(f"{path} is not an lphi-edge export: no {MANIFEST}")
        try:
            data = json.loads(f.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{f} is not valid JSON ({e})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CheckpointError(
                f"{f}: format is {data.get('format') if isinstance(data, dict) else None!r}, expected {FORMAT!r}"
            )
        version = data.get("format_version")
        if version not in SUPPORTED_VERSIONS:
            raise CheckpointError(
                f"{f}: format_version {version!r} is not supported by this lphi-edge (supports "
                f"{', '.join(map(str, SUPPORTED_VERSIONS))}); re-export the model or upgrade lphi-edge"
            )
        for key in ("parts", "files", "text_config", "processor", "template", "precision"):
            if key not in data:
                raise CheckpointError(f"{f}: missing {key!r}")
        missing_parts = [p for p in PARTS if p not in data["parts"]]
        if missing_parts:
            raise CheckpointError(f"{f}: missing part(s) {missing_parts}")
        manifest = cls(path, data)
        manifest.check_files(verify_checksums)
        return manifest

    def check_files(self, verify_checksums: bool) -> None:
        for name, meta in self.data["files"].items():
            fp = self.path / name
            if not fp.is_file():
                raise CheckpointError(f"export file missing: {fp} (listed in {MANIFEST})")
            size = fp.stat().st_size
            if size != meta["bytes"]:
                raise CheckpointError(f"export file {fp} has {size} bytes, manifest says {meta['bytes']} (truncated?)")
            if verify_checksums and sha256_file(fp) != meta["sha256"]:
                raise CheckpointError(
                    f"export file {fp} does not match its sha256 in {MANIFEST} (corrupted or modified)"
                )


def file_table(directory: Path) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file in an export directory (the manifest itself excluded)."""
    return {
        p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name != MANIFEST
    }


def is_export_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST).is_file()
