"""The onnxruntime backend: runs an export directory. Imports neither torch nor transformers.

CPU: numpy feeds, the KV cache kept as numpy arrays. CUDA: IO binding, the KV cache kept as
OrtValues on the GPU, so a decode step copies only the new token's embedding in and its logits out.
The provider that really runs is checked: asking for CUDA never falls back to CPU silently.
`device="cuda:N"` runs on GPU N (the CUDA / TensorRT providers' device_id, and every OrtValue the backend
allocates lives there); `threads=N` sets the sessions' intra-op thread pool (inter-op: 1, the graphs run
sequentially).

Exports made with `--kv-cache shared` (GroupQueryAttention decoder): the cache is one preallocated
buffer per past tensor, bound through IO binding as both the decoder's past input and its present
output, so a step writes only its new positions instead of copying the whole cache (`SharedKVCache`).
With `--kv-quant int8` those buffers are int8: the decoder quantizes what it writes with the export's
calibrated scales (kv_cache_scales.npy, read here only to dequantize the cache for inspection).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from lphi_edge.errors import CheckpointError, ConfigError, ContextLengthError, LphiError
from lphi_edge.format.engines import TRT_DIR, engine_dir_name
from lphi_edge.format.kv_int8 import dequantize, load_scales, quantize
from lphi_edge.format.manifest import MANIFEST, PARTS, Manifest, decoder_io_names
from lphi_edge.runtime.backend import ModelSpec, check_cache_arrays
from lphi_edge.runtime.cuda_trt import gpu_info
from lphi_edge.runtime.device import check_threads, parse_device

logger = logging.getLogger(__name__)

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int8)": np.int8,
}
PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def providers_for(
    provider: str, device_id: int = 0, trt_options: dict[str, str] | None = None
) -> list[str | tuple[str, dict[str, str]]]:
    """The execution providers to ask onnxruntime for, most preferred first; the GPU ones on `device_id`
    (the TensorRT provider with `trt_options` too: its engine cache, see trt_ep_options)."""
    if provider not in PROVIDERS:
        raise ConfigError(f"onnxruntime provider {provider!r} unknown: expected one of {sorted(PROVIDERS)}")
    out: list[str | tuple[str, dict[str, str]]] = []
    for name in PROVIDERS[provider]:
        if name == "CPUExecutionProvider":
            out.append(name)
        else:
            extra = (trt_options or {}) if name == "TensorrtExecutionProvider" else {}
            out.append((name, {"device_id": str(device_id), **extra}))
    return out


def trt_ep_options(
    manifest: Manifest, gpu: tuple[str, tuple[int, int]] | None = None, trt_version: str | None = None
) -> dict[str, str]:
    """onnxruntime's TensorRT provider builds engines when a session starts (minutes at full size); these
    options keep them, and its timing cache, inside the export directory — one directory per GPU model,
    compute capability, TensorRT version and precision, like lphi-build-engines' — so a robot builds once.
    `gpu` / `trt_version` default to this machine's (cuda-python, tensorrt), "unknown" where they cannot be
    read. An fp16 export asks for fp16 kernels; an fp32 one keeps fp32."""
    if gpu is None:
        try:
            gpu = gpu_info()
        except LphiError:
            gpu = ("unknown-gpu", (0, 0))
    if trt_version is None:
        try:
            import tensorrt

            trt_version = tensorrt.__version__
        except (ImportError, OSError):
            trt_version = "unknown"
    cache = manifest.path / TRT_DIR / f"ort-{engine_dir_name(*gpu, trt_version, manifest.precision)}"
    return {
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(cache),
        "trt_fp16_enable": str(manifest.precision == "fp16"),
    }


def _import_ort():
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError("the onnxruntime backend needs onnxruntime: pip install 'lphi-edge[onnx]'") from None
    return onnxruntime


class OrtCache:
    """past_key_values.{i}.key|value for every layer: numpy arrays (CPU) or OrtValues (CUDA, on GPU `device_id`)."""

    def __init__(self, tensors: list[Any], seq_len: int, device_id: int = 0):
        self.tensors = tensors  # 2 × layers, each [B, H, P, Dh]
        self._seq_len = seq_len
        self.device_id = device_id

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
                cropped.append(ort.OrtValue.ortvalue_from_numpy(arr, t.device_name(), self.device_id))
        self.tensors, self._seq_len = cropped, length

    def arrays(self) -> list[np.ndarray]:
        return [t if isinstance(t, np.ndarray) else t.numpy() for t in self.tensors]


class SharedKVCache:
    """past_key_values.{i}.key|value as preallocated buffers [B, H, capacity, Dh] that the decoder's
    GroupQueryAttention updates in place. Positions ≥ seq_len are stale and never read (the op attends to
    the first P + S). Capacity starts at a power of two ≥ the first request (≥ 256) and doubles when a
    step needs more, up to the context length; growing copies the held positions once. An int8 cache has
    `scales` [2·L, H, Dh]: the values it stands for are buffer · scale."""

    MIN_CAPACITY = 256

    def __init__(
        self,
        shape: tuple[int, int, int],
        count: int,
        dtype: np.dtype,
        device: str,
        limit: int,
        scales: np.ndarray | None = None,
        device_id: int = 0,
    ):
        self._shape = shape  # (B, H, Dh)
        self.scales = scales  # (count, H, Dh) for an int8 cache
        self._count, self._dtype, self._device, self._limit = count, dtype, device, limit
        self._device_id = device_id  # the GPU the buffers live on (device "cuda")
        self._seq_len, self.capacity = 0, 0
        self.buffers: list[np.ndarray] = []  # CPU: the memory the OrtValues wrap
        self.values: list[Any] = []  # OrtValues [B, H, capacity, Dh]
        self.binding: Any = None  # the decoder's IO binding with these buffers bound (reset when they change)

    @property
    def seq_len(self) -> int:
        return self._seq_len

    def crop(self, length: int) -> None:
        self._seq_len = min(self._seq_len, max(length, 0))

    def advance(self, n: int) -> None:
        self._seq_len += n

    def reserve(self, total: int) -> None:
        """Make room for `total` positions (keeping the held ones)."""
        if total <= self.capacity:
            return
        if total > self._limit:
            raise ContextLengthError(f"{total} positions exceed the context length {self._limit}")
        if self.capacity:
            logger.debug("shared KV cache grows from %d positions", self.capacity)
        self._allocate(total, [h[:, :, : self._seq_len] for h in self._host()])

    def load(self, arrays: list[np.ndarray]) -> None:
        """Hold exactly these positions: f32 [B, H, P, Dh] per tensor, as the values they stand for (quantized
        here for an int8 cache) — a cache computed by another engine, handed over once."""
        length = check_cache_arrays(arrays, self._count, self._shape)
        if self.scales is None:
            held = [a.astype(self._dtype) for a in arrays]
        else:
            held = [quantize(a, scale) for a, scale in zip(arrays, self.scales)]
        if length > self._limit:
            raise ContextLengthError(f"{length} positions exceed the context length {self._limit}")
        self._allocate(max(length, 1), held)
        self._seq_len = length

    def _allocate(self, total: int, held: list[np.ndarray]) -> None:
        """New buffers of a power-of-two capacity ≥ total (≥ MIN_CAPACITY), holding `held` [B, H, P, Dh] at 0..P."""
        capacity = min(self._limit, max(self.MIN_CAPACITY, 1 << (total - 1).bit_length()))
        import onnxruntime as ort

        b, h, dh = self._shape
        buffers, values = [], []
        for k in range(self._count):
            arr = np.zeros((b, h, capacity, dh), dtype=self._dtype)
            if held:
                arr[:, :, : held[k].shape[2]] = held[k]
            values.append(ort.OrtValue.ortvalue_from_numpy(arr, self._device, self._device_id))
            if self._device == "cpu":
                buffers.append(arr)  # the OrtValue wraps this memory
        self.buffers, self.values, self.capacity, self.binding = buffers, values, capacity, None

    def _host(self) -> list[np.ndarray]:
        """The whole buffers on the host: the CPU memory itself, or copies from the device."""
        return self.buffers or [v.numpy() for v in self.values]

    def arrays(self) -> list[np.ndarray]:
        """The held positions [B, H, P, Dh] per tensor as the values they stand for (copies; for verification)."""
        held = [a[:, :, : self._seq_len] for a in self._host()]
        if self.scales is None:
            return [np.array(a) for a in held]
        return [dequantize(a, s) for a, s in zip(held, self.scales)]


class OnnxBackend:
    """Backend protocol over the three ONNX parts of an export directory.

    device: "cpu", "cuda" or "cuda:N" (the provider defaults to its kind); provider: cpu | cuda | tensorrt
    to choose the execution provider explicitly; threads: intra-op threads of every session (1..CPU count;
    None: onnxruntime's default, one per physical core).
    """

    name = "onnxruntime"

    def __init__(
        self, manifest: Manifest, device: str = "cpu", provider: str | None = None, threads: int | None = None
    ):
        dev = parse_device(device)
        threads = check_threads(threads)
        ort = _import_ort()
        self.manifest = manifest
        self.device = str(dev)
        self.precision = manifest.precision
        provider = provider or dev.kind
        wanted = providers_for(provider, dev.index, trt_ep_options(manifest) if provider == "tensorrt" else None)
        first = wanted[0] if isinstance(wanted[0], str) else wanted[0][0]
        available = ort.get_available_providers()
        if first not in available:
            raise ConfigError(
                f"{first} is not available in this onnxruntime ({ort.__version__}; has {available}): "
                "install onnxruntime-gpu for CUDA/TensorRT, or use device='cpu'"
            )
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1  # sequential execution: the inter-op pool is not used
        self.sessions = {}
        for part in PARTS:
            path = manifest.part_file(part)
            try:
                sess = ort.InferenceSession(str(path), sess_options=options, providers=wanted)
            except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
                where = f" on {first} device_id {dev.index}" if first != "CPUExecutionProvider" else ""
                raise CheckpointError(f"onnxruntime cannot load {path}{where}: {e}") from None
            if sess.get_providers()[0] != first:
                raise ConfigError(f"{path.name} runs on {sess.get_providers()[0]}, not {first} as asked")
            self._check_io(part, sess)
            self.sessions[part] = sess
        self.provider = first
        self._device_id = dev.index  # where OrtValues and bound outputs live on a GPU provider
        logger.info("onnxruntime %s: %s parts on %s", ort.__version__, self.precision, self.provider)
        self.spec = ModelSpec.from_text_config(manifest.text)
        dec = self.sessions["decoder_model_merged"]
        self._dtypes = {i.name: _ORT_TYPES[i.type] for s in self.sessions.values() for i in s.get_inputs()}
        self._past_names = decoder_io_names(self.spec.num_layers)[0][3:]  # past_key_values.{i}.key|value
        self._out_names = [o.name for o in dec.get_outputs()]
        self._kv_dtype = self._dtypes[self._past_names[0]]
        self._cuda = self.provider != "CPUExecutionProvider"
        self.kv_cache = manifest.kv_cache
        self.kv_quant = manifest.kv_quant
        self.kv_scales = self._load_kv_scales() if self.kv_quant else None  # (2·L, H, Dh) of an int8 cache

    def _load_kv_scales(self) -> np.ndarray:
        path = self.manifest.path / self.kv_quant.scales
        if self._kv_dtype != np.int8:
            raise CheckpointError(
                f"{path}: int8 KV cache scales for a decoder cache of {np.dtype(self._kv_dtype).name}: re-export"
            )
        return load_scales(path, (len(self._past_names), self.spec.num_kv_heads, self.spec.head_dim))

    def thread_settings(self) -> dict[str, Any]:
        """The thread pools the sessions actually run with, read back from onnxruntime. 0 is onnxruntime's
        default: one intra-op thread per physical core (recorded as 0, with a note)."""
        opts = self.sessions["decoder_model_merged"].get_session_options()
        out: dict[str, Any] = {
            "onnxruntime_intra_op": opts.intra_op_num_threads,
            "onnxruntime_inter_op": opts.inter_op_num_threads,
        }
        if not opts.intra_op_num_threads:
            out["note"] = "0 = onnxruntime's default (one intra-op thread per physical core)"
        return out

    @classmethod
    def from_export_dir(
        cls, path: str | os.PathLike, device: str = "cpu", *, verify_checksums: bool = True, **kwargs: Any
    ) -> OnnxBackend:
        return cls(Manifest.load(path, verify_checksums=verify_checksums), device=device, **kwargs)

    def _check_io(self, part: str, sess) -> None:
        """The graph's tensor names must be those the manifest declares (and DESIGN.md fixes)."""
        meta = self.manifest.part(part)
        for kind, actual in (("inputs", sess.get_inputs()), ("outputs", sess.get_outputs())):
            want = [t.name for t in getattr(meta, kind)]
            got = [t.name for t in actual]
            if got != want:
                missing = [n for n in want if n not in got]
                extra = [n for n in got if n not in want]
                raise CheckpointError(
                    f"{meta.file}: graph {kind} do not match {self.manifest.path / MANIFEST}: "
                    f"missing {missing}, unexpected {extra}"
                )

    # ---- protocol ----------------------------------------------------------------------------------
    def encode_images(self, pixel_values: np.ndarray, with_attention: bool = False):
        """f32 [B, 3, H, W] → f32 [B, N, D]; with_attention: (that, the export's image_attention f32 [B, N])."""
        sess = self.sessions["vision_encoder"]
        names = ["image_features", "image_attention"] if with_attention else ["image_features"]
        outs = sess.run(names, {"pixel_values": pixel_values.astype(self._dtypes["pixel_values"], copy=False)})
        feats, *attention = (o.astype(np.float32, copy=False) for o in outs)
        return (feats, *attention) if with_attention else feats

    def embed(self, input_ids: np.ndarray) -> np.ndarray:
        """i64 [B, S] → f32 [B, S, D]."""
        (emb,) = self.sessions["embed_tokens"].run(None, {"input_ids": input_ids.astype(np.int64, copy=False)})
        return emb.astype(np.float32, copy=False)

    def new_cache(self, batch_size: int = 1) -> OrtCache | SharedKVCache:
        if self.kv_cache == "shared":
            shape = (batch_size, self.spec.num_kv_heads, self.spec.head_dim)
            device = "cuda" if self._cuda else "cpu"
            return SharedKVCache(
                shape,
                len(self._past_names),
                self._kv_dtype,
                device,
                self.spec.context_length,
                self.kv_scales,
                self._device_id,
            )
        shape = (batch_size, self.spec.num_kv_heads, 0, self.spec.head_dim)
        empty = np.zeros(shape, dtype=self._kv_dtype)
        if self._cuda:
            import onnxruntime as ort

            values = [ort.OrtValue.ortvalue_from_numpy(empty, "cuda", self._device_id) for _ in self._past_names]
            return OrtCache(values, 0, self._device_id)
        return OrtCache([empty for _ in self._past_names], 0)

    def cache_from_arrays(self, arrays: list[np.ndarray]) -> OrtCache | SharedKVCache:
        """A cache of this engine holding these positions (f32 [B, H, P, Dh] per tensor, past_key_values order),
        in its own format: the in-place buffers, in int8 for an int8 cache; on its device."""
        cache = self.new_cache(arrays[0].shape[0] if arrays else 1)
        if isinstance(cache, SharedKVCache):
            cache.load(arrays)
            return cache
        shape = (self.spec.num_kv_heads, self.spec.head_dim)
        length = check_cache_arrays(arrays, len(self._past_names), (arrays[0].shape[0], *shape))
        held = [np.ascontiguousarray(a, dtype=self._kv_dtype) for a in arrays]
        if self._cuda:
            import onnxruntime as ort

            held = [ort.OrtValue.ortvalue_from_numpy(a, "cuda", self._device_id) for a in held]
        return OrtCache(held, length, self._device_id)

    def decode(
        self,
        inputs_embeds: np.ndarray,
        attention_mask: np.ndarray,
        position_ids: np.ndarray,
        past: OrtCache | SharedKVCache,
    ) -> tuple[np.ndarray, OrtCache | SharedKVCache]:
        """→ (logits f32 [B, S, V], the cache extended by S positions)."""
        feeds = self._feeds(inputs_embeds, attention_mask, position_ids)
        if isinstance(past, SharedKVCache):
            return self._decode_shared(feeds, past)
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
            binding.bind_output(name, "cuda", self._device_id)  # present stays on the GPU
        sess.run_with_iobinding(binding)
        logits, *present = binding.get_outputs()
        return logits.numpy().astype(np.float32, copy=False), OrtCache(present, past.seq_len + s, self._device_id)

    def _feeds(
        self, inputs_embeds: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray
    ) -> dict[str, np.ndarray]:
        return {
            "inputs_embeds": inputs_embeds.astype(self._dtypes["inputs_embeds"], copy=False),  # (B, S, D)
            "attention_mask": attention_mask.astype(np.int64, copy=False),  # (B, P + S)
            "position_ids": position_ids.astype(np.int64, copy=False),  # (B, S)
        }

    def _decode_shared(self, feeds: dict[str, np.ndarray], past: SharedKVCache) -> tuple[np.ndarray, SharedKVCache]:
        """One step over the shared buffers: past.i.* and present.i.* are bound to the same OrtValue, so
        GroupQueryAttention writes positions [P, P + S) in place; the cache object is returned advanced."""
        attention_mask = feeds["attention_mask"]
        b, s = feeds["inputs_embeds"].shape[:2]
        total = past.seq_len + s
        if attention_mask.shape != (b, total):
            raise ConfigError(
                f"attention_mask has shape {attention_mask.shape}, expected {(b, total)} "
                f"({past.seq_len} cached + {s} new positions)"
            )
        start = np.arange(past.seq_len, total, dtype=np.int64)
        if not np.array_equal(feeds["position_ids"], np.broadcast_to(start, (b, s))):
            raise ConfigError(
                "this export's decoder (kv_cache 'shared') takes positions from the cache length: position_ids "
                f"must be {past.seq_len}..{total - 1} in every row, got {feeds['position_ids'].tolist()}"
            )
        if not attention_mask.all():
            raise ConfigError(
                "this export's decoder (kv_cache 'shared') attends to every cached position: attention_mask must "
                "be all ones (no padding); re-export with --kv-cache concat for padded batches"
            )
        past.reserve(total)
        sess = self.sessions["decoder_model_merged"]
        binding = past.binding
        if binding is None:  # bound once per buffer set: a step rebinds only its three inputs and the logits
            binding = past.binding = sess.io_binding()
            binding.bind_output("logits", "cpu")  # output 0 (rebinding a name keeps its place)
            for name, value in zip(self._past_names, past.values):
                binding.bind_ortvalue_input(name, value)  # (B, H, capacity, Dh)
            for name, value in zip(self._out_names[1:], past.values):
                binding.bind_ortvalue_output(name, value)  # the same buffer: written in place
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        binding.bind_output("logits", "cpu")
        sess.run_with_iobinding(binding)
        logits = binding.get_outputs()[0].numpy()
        past.advance(s)
        return logits.astype(np.float32, copy=False), past
