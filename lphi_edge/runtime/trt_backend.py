"""The TensorRT backend: runs the engines `lphi-build-engines DIR` (or `lphi-export ... --trt`) built on this GPU.

Imports neither torch nor transformers: device memory is managed with cuda-python's runtime API
(cudaMalloc / cudaMemcpyAsync on one stream / cudaFree, every cudaError_t checked), and the engines are
driven through TensorRT 10's name-based API (set_input_shape, set_tensor_address, execute_async_v3).
The KV cache stays on the GPU between steps (`TrtCache`): a decode step copies in only the new
embeddings, mask and positions, and copies out only the last position's logits.

The engines run on the process's current GPU (device "cuda" / "cuda:0"); "cuda:N" for N > 0 is refused
rather than half-honoured (the execution contexts, stream and buffers would all have to follow that GPU
from every calling thread): select GPU N with CUDA_VISIBLE_DEVICES=N and device "cuda".
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lphi_edge.errors import CheckpointError, ConfigError, ContextLengthError, LphiError
from lphi_edge.format.engines import (
    BUILD_HINT,
    ENGINE_SUFFIX,
    TRT_DIR,
    TRT_PRECISIONS,
    engine_dir_name,
    engines_complete,
    existing_engine_dirs,
    read_build_info,
    source_hashes,
)
from lphi_edge.format.manifest import PARTS, Manifest, decoder_io_names
from lphi_edge.runtime.backend import ModelSpec
from lphi_edge.runtime.cuda_trt import cuda_call, gpu_info, import_cudart, require_tensorrt, trt_logger
from lphi_edge.runtime.device import parse_device

logger = logging.getLogger(__name__)


# ---- device memory ---------------------------------------------------------------------------------------------------
class CudaMemory:
    """cuda-python runtime calls on one stream; every call's cudaError_t is checked (LphiError naming it)."""

    def __init__(self, cudart: Any = None):
        self.cudart = cudart or import_cudart()
        self.stream = self._call(self.cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.closed = False

    def _call(self, result: tuple, what: str) -> Any:
        return cuda_call(self.cudart, result, what)

    @property
    def stream_handle(self) -> int:
        """The stream as the integer handle TensorRT's execute_async_v3 takes."""
        return int(self.stream)

    def malloc(self, nbytes: int) -> int:
        """Device pointer to ≥ 1 byte: TensorRT wants a distinct, non-null address even for an empty tensor."""
        return int(self._call(self.cudart.cudaMalloc(max(int(nbytes), 1)), f"cudaMalloc({nbytes} bytes)"))

    def free(self, ptr: int) -> None:
        self._call(self.cudart.cudaFree(ptr), "cudaFree")

    def to_device(self, ptr: int, host: np.ndarray) -> None:
        """Queue host → device; `host` must stay alive (and unchanged) until synchronize()."""
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        if host.nbytes:
            self._call(
                self.cudart.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, kind, self.stream),
                "cudaMemcpyAsync(host→device)",
            )

    def to_host(self, host: np.ndarray, ptr: int) -> None:
        """Queue device → host into a C-contiguous array; valid after synchronize()."""
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        if host.nbytes:
            self._call(
                self.cudart.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, kind, self.stream),
                "cudaMemcpyAsync(device→host)",
            )

    def copy_rows(self, dst: int, dst_pitch: int, src: int, src_pitch: int, width: int, rows: int, kind: str) -> None:
        """Queue a strided copy of `rows` rows of `width` bytes (cudaMemcpy2DAsync); kind: "d2d" | "d2h"."""
        kinds = {
            "d2d": self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice,
            "d2h": self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost,
        }
        if width and rows:
            self._call(
                self.cudart.cudaMemcpy2DAsync(dst, dst_pitch, src, src_pitch, width, rows, kinds[kind], self.stream),
                "cudaMemcpy2DAsync",
            )

    def synchronize(self) -> None:
        self._call(self.cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._call(self.cudart.cudaStreamDestroy(self.stream), "cudaStreamDestroy")


@dataclass
class DeviceTensor:
    """A C-contiguous tensor in device memory (owned by whoever holds it; freed with CudaMemory.free)."""

    ptr: int
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


# ---- KV cache --------------------------------------------------------------------------------------------------------
class TrtCache:
    """past_key_values.{i}.key|value of every layer in device buffers: 2 × layers tensors [B, H, P, Dh].

    decode() extends it in place (like the torch backend's cache): the engine's present.* outputs become
    the cache and the previous buffers are freed.
    """

    def __init__(self, mem: CudaMemory, tensors: list[DeviceTensor], seq_len: int):
        self._mem = mem
        self.tensors = tensors  # 2 × layers, each [B, H, P, Dh]
        self._seq_len = seq_len

    @property
    def seq_len(self) -> int:
        return self._seq_len

    @property
    def batch_size(self) -> int:
        return self.tensors[0].shape[0] if self.tensors else 0

    @property
    def closed(self) -> bool:
        return not self.tensors

    def crop(self, length: int) -> None:
        """Keep the first `length` positions: one strided device-to-device copy per tensor (rare: prefix reuse)."""
        if length < 0:
            raise ConfigError(f"TrtCache.crop length must be ≥ 0, got {length}")
        if self.closed or self._mem.closed:
            raise LphiError("this TensorRT KV cache (or its backend) was closed: start a new one with new_cache()")
        if length >= self._seq_len:
            return
        cropped: list[DeviceTensor] = []
        try:
            for t in self.tensors:  # [B, H, P, Dh] → [B, H, length, Dh]
                b, h, p, dh = t.shape
                row = dh * t.dtype.itemsize  # bytes per position
                new = DeviceTensor(self._mem.malloc(b * h * length * row), (b, h, length, dh), t.dtype)
                cropped.append(new)
                self._mem.copy_rows(new.ptr, length * row, t.ptr, p * row, length * row, b * h, "d2d")
            self._mem.synchronize()
        except BaseException:
            self._free(cropped)
            raise
        self.replace(cropped, length)

    def arrays(self) -> list[np.ndarray]:
        """The cache on the host: one copy per tensor [B, H, P, Dh] (inspection and verification, never per token)."""
        if self.closed or self._mem.closed:
            raise LphiError("this TensorRT KV cache (or its backend) was closed: start a new one with new_cache()")
        out = [np.empty(t.shape, t.dtype) for t in self.tensors]
        for host, t in zip(out, self.tensors):
            self._mem.to_host(host, t.ptr)
        self._mem.synchronize()
        return out

    def replace(self, tensors: list[DeviceTensor], seq_len: int) -> None:
        """Take ownership of `tensors` as the cache (seq_len positions); free the previous buffers."""
        old, self.tensors, self._seq_len = self.tensors, tensors, seq_len
        self._free(old)

    def close(self) -> None:
        """Free the device buffers now (the cache is unusable afterwards)."""
        old, self.tensors = self.tensors, []
        self._free(old)

    def _free(self, tensors: list[DeviceTensor]) -> None:
        for t in tensors:
            self._mem.free(t.ptr)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown or a dead CUDA context: nothing left to free
            pass


# ---- one engine ------------------------------------------------------------------------------------------------------
class _Engine:
    """One deserialized engine, its execution context and reusable scratch buffers for its I/O."""

    def __init__(self, trt: Any, runtime: Any, path: Path, mem: CudaMemory):
        self.path, self._mem = path, mem
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise CheckpointError(
                f"TensorRT {trt.__version__} cannot load {path} (built by another TensorRT version or for another "
                f"GPU?): {BUILD_HINT}"
            )
        context = engine.create_execution_context()
        if context is None:
            raise LphiError(f"TensorRT could not create an execution context for {path} (out of GPU memory?)")
        self.engine, self.context = engine, context
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        self._scratch: dict[str, tuple[int, int]] = {}  # tensor name → (device pointer, capacity in bytes)

    def scratch(self, name: str, nbytes: int) -> int:
        """A device buffer of ≥ nbytes for `name`, reused between calls and grown when needed."""
        ptr, capacity = self._scratch.get(name, (0, -1))
        if nbytes > capacity:
            if ptr:
                self._mem.free(ptr)
                del self._scratch[name]
            ptr = self._mem.malloc(nbytes)
            self._scratch[name] = (ptr, max(nbytes, 1))
        return ptr

    def run(
        self,
        host_inputs: dict[str, np.ndarray],
        device_inputs: dict[str, DeviceTensor] | None = None,
        device_outputs: Collection[str] = (),
        last_position: Collection[str] = (),
    ) -> tuple[dict[str, np.ndarray], dict[str, DeviceTensor]]:
        """One execution. Host inputs are cast to the engine's dtypes and copied in; `device_outputs` come back
        as newly allocated DeviceTensors (the caller owns them), the others as numpy arrays — for names in
        `last_position` only the last position of axis 1 ([B, S, ...] → [B, 1, ...])."""
        device_inputs = device_inputs or {}
        self._check_inputs(set(host_inputs) | set(device_inputs))
        keep_alive = [self._bind_host_input(n, a) for n, a in host_inputs.items()]
        for name, t in device_inputs.items():
            if t.dtype != self.dtypes[name]:
                raise LphiError(
                    f"{self.path.name}: {name} is {t.dtype} on the device, the engine wants {self.dtypes[name]}"
                )
            self._set_shape(name, t.shape)
            self.context.set_tensor_address(name, t.ptr)
        allocated: dict[str, DeviceTensor] = {}
        try:
            shapes = {n: self._output_shape(n) for n in self.outputs}
            for name, shape in shapes.items():
                if name in device_outputs:
                    t = DeviceTensor(
                        self._mem.malloc(math.prod(shape) * self.dtypes[name].itemsize), shape, self.dtypes[name]
                    )
                    allocated[name] = t
                    self.context.set_tensor_address(name, t.ptr)
                else:
                    nbytes = math.prod(shape) * self.dtypes[name].itemsize
                    self.context.set_tensor_address(name, self.scratch(name, nbytes))
            if not self.context.execute_async_v3(self._mem.stream_handle):
                raise LphiError(f"TensorRT execution of {self.path.name} failed: see the TensorRT log")
            results = {n: self._fetch(n, s, n in last_position) for n, s in shapes.items() if n not in device_outputs}
            self._mem.synchronize()
        except BaseException:
            self._drain()  # nothing queued may still read the host inputs or write the buffers freed below
            for t in allocated.values():
                self._mem.free(t.ptr)
            raise
        del keep_alive  # the host inputs were in use until the stream synchronized
        return results, allocated

    def _drain(self) -> None:
        try:
            self._mem.synchronize()
        except LphiError as e:  # already failing: keep the first error
            logger.debug("stream synchronize after a failed TensorRT run: %s", e)

    def _check_inputs(self, given: set[str]) -> None:
        if given != set(self.inputs):
            raise CheckpointError(
                f"{self.path.name}: engine inputs do not match the backend's: missing "
                f"{sorted(set(self.inputs) - given)}, unexpected {sorted(given - set(self.inputs))}; {BUILD_HINT}"
            )

    def _bind_host_input(self, name: str, array: np.ndarray) -> np.ndarray:
        host = np.ascontiguousarray(array, dtype=self.dtypes[name])
        self._set_shape(name, host.shape)
        ptr = self.scratch(name, host.nbytes)
        self._mem.to_device(ptr, host)
        self.context.set_tensor_address(name, ptr)
        return host

    def _set_shape(self, name: str, shape: tuple[int, ...]) -> None:
        if not self.context.set_input_shape(name, tuple(int(d) for d in shape)):
            lo, _, hi = self.engine.get_tensor_profile_shape(name, 0)
            raise ConfigError(
                f"{self.path.name}: {name} shape {list(shape)} is outside the engine's profile "
                f"{list(lo)}..{list(hi)}: rebuild the engines with a larger TrtBuildConfig.max_batch / max_context"
            )

    def _output_shape(self, name: str) -> tuple[int, ...]:
        shape = tuple(int(d) for d in self.context.get_tensor_shape(name))
        if any(d < 0 for d in shape):
            raise LphiError(f"{self.path.name}: TensorRT could not infer the shape of {name} ({list(shape)})")
        return shape

    def _fetch(self, name: str, shape: tuple[int, ...], last_only: bool) -> np.ndarray:
        """Queue the copy of output `name` (in its scratch buffer) to a new host array."""
        ptr, dtype = self._scratch[name][0], self.dtypes[name]
        if not last_only or len(shape) < 2 or shape[1] <= 1:
            out = np.empty(shape, dtype)
            self._mem.to_host(out, ptr)
            return out
        b, s, rest = shape[0], shape[1], shape[2:]  # [B, S, ...] → [B, 1, ...]: row b at offset (b·S + S-1)
        row = math.prod(rest) * dtype.itemsize
        out = np.empty((b, 1, *rest), dtype)
        self._mem.copy_rows(out.ctypes.data, row, ptr + (s - 1) * row, s * row, row, b, "d2h")
        return out

    def close(self) -> None:
        for ptr, _ in self._scratch.values():
            self._mem.free(ptr)
        self._scratch.clear()
        self.context = None
        self.engine = None


# ---- backend ---------------------------------------------------------------------------------------------------------
def check_trt_device(device: str) -> str:
    """The device string for "cuda" / "cuda:0"; the CPU and other GPU indices → ConfigError saying what to do."""
    dev = parse_device(device)
    if not dev.is_cuda:
        raise ConfigError(f"the tensorrt backend runs on a GPU, not on {device!r}: use device 'cuda'")
    if dev.index != 0:
        raise ConfigError(
            f"the tensorrt backend runs on the process's first GPU only, not {device!r}: select GPU {dev.index} "
            f"with CUDA_VISIBLE_DEVICES={dev.index} and use device 'cuda'"
        )
    return str(dev)


def find_engine_dir(
    export_dir: str | os.PathLike,
    precision: str | None = None,
    trt_version: str | None = None,
    gpu: tuple[str, tuple[int, int]] | None = None,
) -> Path:
    """DIR/trt/<this GPU>-sm<XY>-trt<this TensorRT>-<precision>/ (first of fp16, fp32, int8 when not given)."""
    if trt_version is None:
        trt_version = require_tensorrt().__version__
    name, sm = gpu or gpu_info()
    if precision is not None and precision not in TRT_PRECISIONS:
        raise ConfigError(f"TensorRT precision must be one of {TRT_PRECISIONS}, got {precision!r}")
    root = Path(export_dir) / TRT_DIR
    for p in [precision] if precision else TRT_PRECISIONS:
        candidate = root / engine_dir_name(name, sm, trt_version, p)
        if engines_complete(candidate) and read_build_info(candidate) is not None:
            return candidate
    wanted = engine_dir_name(name, sm, trt_version, precision or "<precision>")
    found = ", ".join(existing_engine_dirs(export_dir)) or "none"
    raise CheckpointError(
        f"no TensorRT engines for this GPU in {root}: looked for {wanted}, found {found}; "
        f"run `lphi-build-engines {Path(export_dir)}` on this device"
    )


class TrtBackend:
    """Backend protocol over the three TensorRT engines of an export directory (see module docstring)."""

    name = "tensorrt"

    def __init__(self, manifest: Manifest, engine_dir: str | os.PathLike, device: str = "cuda"):
        self.device = check_trt_device(device)
        trt = require_tensorrt()
        self.manifest, self.engine_dir = manifest, Path(engine_dir)
        info = self._check_build(trt)
        self.precision: str = info["precision"]
        self.max_context = int(info["config"]["max_context"])
        self.max_batch = int(info["config"]["max_batch"])
        self.spec = ModelSpec.from_text_config(manifest.text)
        past, present = decoder_io_names(self.spec.num_layers)
        self._past, self._present = past[3:], present[1:]
        self._mem = CudaMemory()
        self._engines: dict[str, _Engine] = {}
        try:
            self._runtime = trt.Runtime(trt_logger(trt))  # kept alive as long as its engines
            for part in PARTS:
                self._engines[part] = _Engine(trt, self._runtime, self.engine_dir / f"{part}{ENGINE_SUFFIX}", self._mem)
        except BaseException:
            self.close()
            raise
        self._kv_dtype = self._engines["decoder_model_merged"].dtypes[self._past[0]]
        logger.info("TensorRT %s: %s engines from %s", trt.__version__, self.precision, self.engine_dir)

    @classmethod
    def from_export_dir(
        cls,
        path: str | os.PathLike,
        engine_dir: str | os.PathLike | None = None,
        *,
        precision: str | None = None,
        verify_checksums: bool = False,
        device: str = "cuda",
    ) -> TrtBackend:
        """Engines under DIR/trt/ for this GPU and TensorRT version (or `engine_dir`). Checksums of the ONNX
        files are not re-hashed by default: the engines, not the ONNX, run here; build.json's source hashes are
        still compared with the manifest's."""
        check_trt_device(device)  # before looking for engines: a wrong device is the error to report
        manifest = Manifest.load(path, verify_checksums=verify_checksums)
        return cls(manifest, engine_dir if engine_dir is not None else find_engine_dir(path, precision), device)

    def _check_build(self, trt: Any) -> dict[str, Any]:
        """build.json must exist, name this TensorRT version and the manifest's current ONNX files."""
        d = self.engine_dir
        info = read_build_info(d)
        if info is None or not engines_complete(d):
            raise CheckpointError(
                f"{d} is not a complete TensorRT engine directory (build.json + 3 engines): {BUILD_HINT}"
            )
        if info.get("tensorrt") != trt.__version__:
            raise CheckpointError(
                f"engines in {d} were built with TensorRT {info.get('tensorrt')}, this is "
                f"{trt.__version__}: {BUILD_HINT}"
            )
        if info.get("sources") != source_hashes(self.manifest):
            raise CheckpointError(
                f"engines in {d} were built from other ONNX files than {self.manifest.path} now "
                f"holds (re-exported?): {BUILD_HINT}"
            )
        return info

    def thread_settings(self) -> dict[str, int]:
        """CPU thread pools this engine runs with: none (the engines run on the GPU)."""
        return {}

    # ---- protocol ----------------------------------------------------------------------------------------------
    def encode_images(self, pixel_values: np.ndarray, with_attention: bool = False):
        """f32 [B, 3, H, W] → f32 [B, N, D]; with_attention: (that, the engine's image_attention f32 [B, N])."""
        out, _ = self._engine("vision_encoder").run({"pixel_values": pixel_values})
        feats = out["image_features"].astype(np.float32, copy=False)
        return (feats, out["image_attention"].astype(np.float32, copy=False)) if with_attention else feats

    def embed(self, input_ids: np.ndarray) -> np.ndarray:
        """i64 [B, S] → f32 [B, S, D]."""
        out, _ = self._engine("embed_tokens").run({"input_ids": input_ids})
        return out["inputs_embeds"].astype(np.float32, copy=False)

    def new_cache(self, batch_size: int = 1) -> TrtCache:
        """An empty cache (P = 0): 2 × layers device tensors [B, H, 0, Dh]."""
        if not 1 <= batch_size <= self.max_batch:
            raise ConfigError(f"batch_size must be 1..{self.max_batch} (the engines' max_batch), got {batch_size}")
        self._engine("decoder_model_merged")  # raises once the backend is closed
        shape = (batch_size, self.spec.num_kv_heads, 0, self.spec.head_dim)
        tensors: list[DeviceTensor] = []
        try:
            for _ in self._past:
                tensors.append(DeviceTensor(self._mem.malloc(0), shape, self._kv_dtype))
        except BaseException:
            for t in tensors:
                self._mem.free(t.ptr)
            raise
        return TrtCache(self._mem, tensors, 0)

    def decode(
        self, inputs_embeds: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray, past: TrtCache
    ) -> tuple[np.ndarray, TrtCache]:
        """→ (logits f32 [B, 1, V] of the last position, `past` extended in place by S positions)."""
        dec = self._engine("decoder_model_merged")
        if not isinstance(past, TrtCache) or past.closed:
            raise LphiError("decode() needs an open TrtCache from this backend's new_cache()")
        b, s = inputs_embeds.shape[:2]
        p = past.seq_len
        if b != past.batch_size:
            raise ConfigError(f"inputs_embeds has batch {b} but the KV cache holds batch {past.batch_size}")
        if attention_mask.shape != (b, p + s) or position_ids.shape != (b, s):
            raise ConfigError(
                f"attention_mask {attention_mask.shape} / position_ids {position_ids.shape} must be "
                f"{(b, p + s)} / {(b, s)} for {s} new positions after {p} cached"
            )
        if p + s > self.max_context:
            raise ContextLengthError(
                f"{p} cached + {s} new positions exceed the TensorRT engines' max_context {self.max_context}: "
                f"rebuild them with a larger TrtBuildConfig.max_context (up to {self.spec.context_length})"
            )
        host = {
            "inputs_embeds": inputs_embeds,  # (B, S, D)
            "attention_mask": attention_mask,  # (B, P + S)
            "position_ids": position_ids,  # (B, S)
        }
        out, present = dec.run(
            host,
            dict(zip(self._past, past.tensors, strict=True)),
            device_outputs=self._present,
            last_position={"logits"},
        )
        past.replace([present[n] for n in self._present], p + s)  # present.* [B, H, P + S, Dh]
        return out["logits"].astype(np.float32, copy=False), past

    # ---- lifetime ------------------------------------------------------------------------------------------------
    def _engine(self, part: str) -> _Engine:
        engine = self._engines.get(part)
        if engine is None:
            raise LphiError("this TrtBackend was closed")
        return engine

    def close(self) -> None:
        """Free the engines' scratch buffers, contexts and stream (caches free their own buffers)."""
        engines, self._engines = getattr(self, "_engines", {}), {}
        for engine in engines.values():
            engine.close()
        self._runtime = None
        mem = getattr(self, "_mem", None)
        if mem is not None:
            mem.close()

    def __enter__(self) -> TrtBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown or a dead CUDA context
            pass
