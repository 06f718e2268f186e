"""The export directory's `manifest.json` as a typed, versioned record: self-describing, checksummed.

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

Both the exporter (which writes it) and every runtime (which reads it) use this module; it imports
neither torch nor onnx. `Manifest.load` validates every field it reads and names the one that is wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from lphi_edge.errors import CheckpointError
from lphi_edge.format.hash_cache import VerifiedHashes

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
_UPGRADE = "upgrade lphi-edge or re-export"


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


class _Reader:
    """Typed access to one JSON object, raising CheckpointError that names the manifest and the field."""

    def __init__(self, obj: Any, where: str, file: Path):
        if not isinstance(obj, dict):
            raise CheckpointError(f"{file}: {where} must be an object, got {type(obj).__name__}")
        self.obj, self.where, self.file = obj, where, file

    def _name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        if key not in self.obj:
            if default is ...:
                raise CheckpointError(f"{self.file}: missing field {self._name(key)!r}")
            return default
        value = self.obj[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise CheckpointError(f"{self.file}: field {self._name(key)!r} must be {want}, got {value!r}")
        return value

    def child(self, key: str, default: Any = ...) -> _Reader | None:
        value = self.get(key, dict, default)
        return None if value is None else _Reader(value, self._name(key), self.file)

    def one_of(self, key: str, choices: tuple[str, ...], what: str, default: Any = ...) -> Any:
        value = self.get(key, (str, type(None)) if default is None else str, default)
        if value is not None and value not in choices:
            raise CheckpointError(
                f"{self.file}: {what} {value!r} unknown (this lphi-edge knows {', '.join(choices)}); {_UPGRADE}"
            )
        return value


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int | str, ...]  # ints, or names of dynamic axes ("batch", "past_sequence + sequence")

    @classmethod
    def read(cls, r: _Reader) -> TensorSpec:
        return cls(r.get("name", str), r.get("dtype", str), tuple(r.get("shape", list)))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class KVQuant:
    """A quantized decoder cache: its dtype, the scales file (in the file table) and how it was calibrated."""

    dtype: str
    scales: str
    granularity: str = ""
    calibration: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "scales": self.scales, "granularity": self.granularity,
                "calibration": self.calibration}  # fmt: skip


@dataclass(frozen=True)
class Part:
    file: str
    precision: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    data: str | None = None  # the external-data file beside the graph
    kv_cache: str | None = None  # decoder only: "concat" | "shared" (None: an older manifest, i.e. concat)
    kv_quant: KVQuant | None = None  # decoder only

    @classmethod
    def read(cls, r: _Reader) -> Part:
        tensors = {k: tuple(TensorSpec.read(_Reader(t, f"{r.where}.{k}[{i}]", r.file))
                            for i, t in enumerate(r.get(k, list))) for k in ("inputs", "outputs")}  # fmt: skip
        kv_quant = None
        q = r.child("kv_quant", None)
        if q is not None:
            kv_quant = KVQuant(
                q.one_of("dtype", KV_QUANTS, "decoder kv_quant"), q.obj.get("scales"), q.get("granularity", str, ""),
                q.get("calibration", (dict, type(None)), None),
            )  # fmt: skip
        return cls(
            r.get("file", str), r.one_of("precision", PRECISIONS, f"{r.where} precision"), tensors["inputs"],
            tensors["outputs"], r.get("data", (str, type(None)), None),
            r.one_of("kv_cache", KV_CACHES, "decoder kv_cache", None), kv_quant,
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"file": self.file, "data": self.data, "precision": self.precision,
                             "inputs": [t.to_json() for t in self.inputs],
                             "outputs": [t.to_json() for t in self.outputs]}  # fmt: skip
        if self.kv_cache is not None:
            d["kv_cache"] = self.kv_cache
        if self.kv_quant is not None:
            d["kv_quant"] = self.kv_quant.to_json()
        return d


@dataclass(frozen=True)
class TextConfig:
    """What the runtime needs of the language model (the manifest's `text_config`)."""

    hidden_size: int
    vocab_size: int
    context_length: int
    image_tokens: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    eos_token_id: int

    @classmethod
    def read(cls, r: _Reader) -> TextConfig:
        values = {f.name: r.get(f.name, int) for f in fields(cls)}
        bad = [k for k, v in values.items() if v < (0 if k == "eos_token_id" else 1)]
        if bad:
            raise CheckpointError(f"{r.file}: field {r.where}.{bad[0]} must be ≥ 1, got {values[bad[0]]}")
        return cls(**values)

    def to_json(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    bytes: int


@dataclass(frozen=True)
class Manifest:
    """A parsed, validated manifest. Change one with `dataclasses.replace` and `write()` it."""

    path: Path  # the export directory
    precision: str  # the decoder's: the export's headline precision
    parts: dict[str, Part]
    text: TextConfig
    processor: dict[str, Any]  # preprocessor_config.json's keys + pad_to_square (processing.ProcessorConfig reads it)
    template: str
    files: dict[str, FileEntry]  # every file of the export but the manifest: sha256 and size
    format_version: int = FORMAT_VERSION
    backend: str = "onnxruntime"
    created: str = ""
    export_config: dict[str, Any] = field(default_factory=dict)  # the options it was exported with (a record)
    source: dict[str, Any] = field(default_factory=dict)  # the checkpoint's path and hash
    tools: dict[str, Any] = field(default_factory=dict)  # versions of the tools that wrote it
    verification: dict[str, Any] | None = None  # the export's verification report
    golden: dict[str, Any] | None = None  # {"arrays": …, "meta": …}: the golden verification data (format.golden)

    # ---- typed access ------------------------------------------------------------------------------
    @property
    def decoder(self) -> Part:
        return self.parts["decoder_model_merged"]

    @property
    def kv_cache(self) -> str:
        """The decoder's cache interface; "concat" where older manifests do not say."""
        return self.decoder.kv_cache or "concat"

    @property
    def kv_quant(self) -> KVQuant | None:
        """The quantized cache's description (dtype, scales file, calibration), or None for a float cache."""
        return self.decoder.kv_quant

    def part(self, name: str) -> Part:
        return self.parts[name]

    def part_file(self, name: str) -> Path:
        return self.path / self.part(name).file

    def weight_bytes(self, prefix: str = "") -> int:
        """Bytes of the export's files whose names start with `prefix` (all of them by default)."""
        return sum(f.bytes for name, f in self.files.items() if name.startswith(prefix))

    @property
    def source_checkpoint(self) -> Path | None:
        checkpoint = self.source.get("checkpoint")
        return Path(checkpoint) if isinstance(checkpoint, str) and checkpoint else None

    # ---- JSON --------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": self.format_version,
            "created": self.created,
            "backend": self.backend,
            "precision": self.precision,
            "parts": {name: p.to_json() for name, p in self.parts.items()},
            "text_config": self.text.to_json(),
            "processor": self.processor,
            "template": self.template,
            "export_config": self.export_config,
            "source": self.source,
            "tools": self.tools,
            "files": {name: {"sha256": f.sha256, "bytes": f.bytes} for name, f in self.files.items()},
            "verification": self.verification,
            "golden": self.golden,
        }

    def write(self) -> None:
        (self.path / MANIFEST).write_text(json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n")

    def with_files(self, names: tuple[str, ...] | None = None) -> Manifest:
        """This manifest with the file table of its directory as it is now — every file hashed again, or only
        `names` (files just added or rewritten) when given."""
        if names is None:
            return replace(self, files=file_table(self.path))
        files = self.files | {name: file_entry(self.path / name) for name in names}
        return replace(self, files=dict(sorted(files.items())))

    @classmethod
    def from_json(cls, path: str | os.PathLike, data: Any) -> Manifest:
        """Validate `data` (a parsed manifest.json) against this version of the format."""
        path = Path(path)
        file = path / MANIFEST
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else None
            raise CheckpointError(f"{file}: format is {found!r}, expected {FORMAT!r}")
        r = _Reader(data, "", file)
        version = data.get("format_version")
        if version not in SUPPORTED_VERSIONS:
            raise CheckpointError(
                f"{file}: format_version {version!r} is not supported by this lphi-edge (supports "
                f"{', '.join(map(str, SUPPORTED_VERSIONS))}); re-export the model or upgrade lphi-edge"
            )
        parts_r = r.child("parts")
        missing_parts = [p for p in PARTS if p not in parts_r.obj]
        if missing_parts:
            raise CheckpointError(f"{file}: missing part(s) {missing_parts}")
        parts = {name: Part.read(parts_r.child(name)) for name in PARTS}
        files_r = r.child("files")
        files = {}
        for name in files_r.obj:
            entry = files_r.child(name)
            files[name] = FileEntry(entry.get("sha256", str), entry.get("bytes", int))
        manifest = cls(
            path, r.one_of("precision", PRECISIONS, "precision"), parts, TextConfig.read(r.child("text_config")),
            r.get("processor", dict), r.get("template", str), files, version, r.get("backend", str, "onnxruntime"),
            r.get("created", str, ""), r.get("export_config", dict, {}), r.get("source", dict, {}),
            r.get("tools", dict, {}), r.get("verification", (dict, type(None)), None),
            r.get("golden", (dict, type(None)), None),
        )  # fmt: skip
        manifest._check_kv_quant()
        manifest._check_golden()
        return manifest

    def _check_golden(self) -> None:
        if self.golden is None:
            return
        for key in ("arrays", "meta"):
            name = self.golden.get(key)
            if not isinstance(name, str) or name not in self.files:
                raise CheckpointError(
                    f"{self.path / MANIFEST}: golden {key} file {name!r} is not among the export's files"
                )

    def _check_kv_quant(self) -> None:
        q = self.kv_quant
        if q is None:
            return
        where = self.path / MANIFEST
        if self.kv_cache != "shared":
            raise CheckpointError(
                f"{where}: a quantized KV cache (kv_quant) needs kv_cache 'shared', not {self.kv_cache!r}"
            )
        if not isinstance(q.scales, str) or q.scales not in self.files:
            raise CheckpointError(f"{where}: kv_quant scales file {q.scales!r} is not among the export's files")

    @classmethod
    def load(cls, path: str | os.PathLike, *, verify_checksums: bool = True, rehash: bool = False) -> Manifest:
        """Read and check an export directory's manifest; refuse anything that does not match it.

        verify_checksums: compare every file with its sha256 (False: sizes only). A file this machine already
        hashed and that has not changed since (`hash_cache`) is not hashed again unless `rehash`."""
        path = Path(path)
        f = path / MANIFEST
        if not f.is_file():
            raise CheckpointError(f"{path} is not an lphi-edge export: no {MANIFEST}")
        try:
            data = json.loads(f.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{f} is not valid JSON ({e})") from None
        manifest = cls.from_json(path, data)
        manifest.check_files(verify_checksums, rehash=rehash)
        return manifest

    def check_files(self, verify_checksums: bool, *, rehash: bool = False) -> None:
        verified = VerifiedHashes(self.path) if verify_checksums else None
        for name, meta in self.files.items():
            fp = self.path / name
            if not fp.is_file():
                raise CheckpointError(f"export file missing: {fp} (listed in {MANIFEST})")
            size = fp.stat().st_size
            if size != meta.bytes:
                raise CheckpointError(f"export file {fp} has {size} bytes, manifest says {meta.bytes} (truncated?)")
            if verified is None or (not rehash and verified.known(fp, meta.sha256)):
                continue
            if sha256_file(fp) != meta.sha256:
                raise CheckpointError(
                    f"export file {fp} does not match its sha256 in {MANIFEST} (corrupted or modified)"
                )
            verified.remember(fp, meta.sha256)
        if verified is not None:
            verified.save()


def file_entry(path: Path) -> FileEntry:
    return FileEntry(sha256_file(path), path.stat().st_size)


def file_table(directory: Path) -> dict[str, FileEntry]:
    """sha256 and size of every file in an export directory (the manifest itself excluded)."""
    return {p.name: file_entry(p) for p in sorted(directory.iterdir()) if p.is_file() and p.name != MANIFEST}


def is_export_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST).is_file()
