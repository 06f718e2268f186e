"""The onnxruntime backend: runs an export directory. Imports neither torch nor transformers.

CPU: numpy feeds, the KV cache kept as numpy arrays. CUDA: IO binding, the KV cache kept as
OrtValues on the GPU, so a decode step copies only the new token's embedding in and its logits out.
The provider that really runs is checked: asking for CUDA never falls back to CPU silently.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from lphi_edge.errors import CheckpointError, ConfigError
from lphi_edge.export.manifest import PARTS, Manifest, decoder_io_names
from lphi_edge.runtime.backend import ModelSpec

logger = logging.getLogger(__name__)

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64}
PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def _import_ort():
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError("the onnxruntime backend needs onnxruntime: pip install 'lphi-edge[onnx]'") from None
    return onnxruntime


class OrtCache:
    """past_key_values.{i}.key|value for every layer: numpy arrays (CPU) or OrtValues (CUDA)."""

    def __init__(self, tensors: list[Any], seq_len: int):
        self.tensors = tensors  # 2 × layers, each [B, H, P, Dh]
        self._seq_len = seq_len

    @property
    def seq_len(self) -> int:
        return self._seq_len

    def crop(self, length: int) -> None:
        if length >= self._seq_len:
            return
        cropped = []
        for t in self.tensors:
            if isinstance(t, np.ndarray):
                cropped.append(np.ascontiguousarray(t[:, :, :length]))
            else:  # OrtValue on a device: through the host (prefix reuse only, never per token)
                import onnxruntime as ort

                arr = np.ascontiguousarray(t.numpy()[:, :, :length])
                cropped.append(ort.OrtValue.ortvalue_from_numpy(arr, t.device_name(), 0))
        self.tensors, self._seq_len = cropped, length

    def arrays(self) -> list[np.ndarray]:
        return [t if isinstance(t, np.ndarray) else t.numpy() for t in self.tensors]


class OnnxBackend:
    """Backend protocol over the three ONNX parts of an export directory."""

    name = "onnxruntime"

    def __init__(
        self, manifest: Manifest, device: str = "cpu", provider: str | None = None, threads: int | None = None
    ):
        ort = _import_ort()
        self.manifest = manifest
        self.device = device
        self.precision = manifest.precision
        provider = provider or device
        if provider not in PROVIDERS:
            raise ConfigError(f"onnxruntime provider {provider!r} unknown: expected one of {sorted(PROVIDERS)}")
        wanted = PROVIDERS[provider]
        available = ort.get_available_providers()
        if wanted[0] not in available:
            raise ConfigError(
                f"{wanted[0]} is not available in this onnxruntime ({ort.__version__}; has {available}): "
                "install onnxruntime-gpu for CUDA/TensorRT, or use device='cpu'"
            )
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.sessions = {}
        for part in PARTS:
            path = manifest.part_file(part)
            try:
                sess = ort.InferenceSession(str(path), sess_options=options, providers=wanted)
            except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
                raise CheckpointError(f"onnxruntime cannot load {path}: {e}") from None
            if sess.get_providers()[0] != wanted[0]:
                raise ConfigError(f"{path.name} runs on {sess.get_providers()[0]}, not {wanted[0]} as asked")
            self._check_io(part, sess)
            self.sessions[part] = sess
        self.provider = wanted[0]
        logger.info("onnxruntime %s: %s parts on %s", ort.__version__, self.precision, self.provider)
        self.spec = ModelSpec.from_dict(manifest.text)
        dec = self.sessions["decoder_model_merged"]
        self._dtypes = {i.name: _ORT_TYPES[i.type] for s in self.sessions.values() for i in s.get_inputs()}
        self._past_names = decoder_io_names(self.spec.num_layers)[0][3:]  # past_key_values.{i}.key|value
        self._out_names = [o.name for o in dec.get_outputs()]
        self._kv_dtype = self._dtypes[self._past_names[0]]
        self._cuda = self.provider != "CPUExecutionProvider"

    @classmethod
    def from_export_dir(
        cls, path: str | os.PathLike, device: str = "cpu", *, verify_checksums: bool = True, **kwargs: Any
    ) -> OnnxBackend:
        return cls(Manifest.load(path, verify_checksums=verify_checksums), device=device, **kwargs)

    def _check_io(self, part: str, sess) -> None:
        """The graph's tensor names must be those the manifest declares (and DESIGN.md fixes)."""
        meta = self.manifest.part(part)
        for kind, actual in (("inputs", sess.get_inputs()), ("outputs", sess.get_outputs())):
            want = [t["name"] for t in meta[kind]]
            got = [t.name for t in actual]
            if got != want:
                missing = [n for n in want if n not in got]
                extra = [n for n in got if n not in want]
                raise CheckpointError(
                    f"{meta['file']}: graph {kind} do not match {self.manifest.path / 'manifest.json'}: "
                    f"missing {missing}, unexpected {extra}"
                )

    # ---- protocol ----------------------------------------------------------------------------------
    def encode_images(self, pixel_values: np.ndarray) -> np.ndarray:
        """f32 [B, 3, H, W] → f32 [B, N, D]."""
        sess = self.sessions["vision_encoder"]
        (feats,) = sess.run(None, {"pixel_values": pixel_values.astype(self._dtypes["pixel_values"], copy=False)})
        return feats.astype(np.float32, copy=False)

    def embed(self, input_ids: np.ndarray) -> np.ndarray:
        """i64 [B, S] → f32 [B, S, D]."""
        (emb,) = self.sessions["embed_tokens"].run(None, {"input_ids": input_ids.astype(np.int64, copy=False)})
        return emb.astype(np.float32, copy=False)

    def new_cache(self, batch_size: int = 1) -> OrtCache:
        shape = (batch_size, self.spec.num_kv_heads, 0, self.spec.head_dim)
        empty = np.zeros(shape, dtype=self._kv_dtype)
        if self._cuda:
            import onnxruntime as ort

            return OrtCache([ort.OrtValue.ortvalue_from_numpy(empty, "cuda", 0) for _ in self._past_names], 0)
        return OrtCache([empty for _ in self._past_names], 0)

    def decode(
        self, inputs_embeds: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray, past: OrtCache
    ) -> tuple[np.ndarray, OrtCache]:
        """→ (logits f32 [B, S, V], the cache extended by S positions)."""
        feeds = {
            "inputs_embeds": inputs_embeds.astype(self._dtypes["inputs_embeds"], copy=False),  # (B, S, D)
            "attention_mask": attention_mask.astype(np.int64, copy=False),  # (B, P + S)
            "position_ids": position_ids.astype(np.int64, copy=False),  # (B, S)
        }
        sess = self.sessions["decoder_model_merged"]
        s = inputs_embeds.shape[1]
        if not self._cuda:
            feeds.update(zip(self._past_names, past.tensors))
            logits, *present = sess.run(self._out_names, feeds)
            return logits.astype(np.float32, copy=False), OrtCache(present, past.seq_len + s)
        binding = sess.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        for name, value in zip(self._past_names, past.tensors):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits", "cpu")
        for name in self._out_names[1:]:
            binding.bind_output(name, "cuda")  # present stays on the GPU
        sess.run_with_iobinding(binding)
        logits, *present = binding.get_outputs()
        return logits.numpy().astype(np.float32, copy=False), OrtCache(present, past.seq_len + s)
