"""TensorRT and CUDA through cuda-python: imported only when needed, so this module imports anywhere.

Shared by the TensorRT backend (which runs engines) and the engine builder (lphi-export --trt).
cuda-python is `cuda.bindings.runtime`, or `cuda.cudart` before cuda-python 12.6.
"""

from __future__ import annotations

import logging
from typing import Any

from lphi_edge.errors import LphiError
from lphi_edge.format.engines import BUILD_HINT


def import_cudart():
    """cuda-python's runtime API module: `cuda.bindings.runtime` (≥ 12.6) or `cuda.cudart` (older)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError:
            raise LphiError(
                f"TensorRT needs cuda-python (`pip install cuda-python`), which is not installed here: {BUILD_HINT}"
            ) from None
    return cudart


def cuda_call(cudart, result: tuple, what: str) -> Any:
    """Unpack a cuda-python result `(cudaError_t, *values)`; raise LphiError naming the call if it failed."""
    err, *values = result
    if err != cudart.cudaError_t.cudaSuccess:
        raise LphiError(f"CUDA call {what} failed: {cuda_error_name(cudart, err)}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def cuda_error_name(cudart, err) -> str:
    try:
        status, name = cudart.cudaGetErrorName(err)
        if status == cudart.cudaError_t.cudaSuccess:
            return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # noqa: BLE001 - the name is only for the message
        pass
    return str(err)


def gpu_info(cudart=None) -> tuple[str, tuple[int, int]]:
    """(name, (major, minor)) of the current CUDA device, e.g. ("NVIDIA H100 80GB HBM3", (9, 0))."""
    cudart = cudart or import_cudart()
    device = cuda_call(cudart, cudart.cudaGetDevice(), "cudaGetDevice")
    props = cuda_call(cudart, cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name
    if isinstance(name, bytes):
        name = name.split(b"\0", 1)[0].decode(errors="replace")
    return str(name).strip(), (int(props.major), int(props.minor))


def require_tensorrt():
    """The `tensorrt` module, once it imports and a CUDA GPU is visible; LphiError (one line) otherwise."""
    try:
        import tensorrt as trt
    except (ImportError, OSError):  # not installed, or its libraries (libnvinfer) do not load
        raise LphiError(
            "TensorRT is not installed here (`import tensorrt` failed): on a Jetson it comes with JetPack "
            "(`sudo apt install nvidia-jetpack`, then use the system Python or a venv with --system-site-packages); "
            f"elsewhere `pip install tensorrt`. Then {BUILD_HINT}"
        ) from None
    cudart = import_cudart()
    try:
        count = cuda_call(cudart, cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
    except LphiError as e:
        raise LphiError(f"TensorRT needs a CUDA GPU and none is visible ({e}): {BUILD_HINT}") from None
    if not count:
        raise LphiError(f"TensorRT needs a CUDA GPU and none is visible (cudaGetDeviceCount = 0): {BUILD_HINT}")
    return trt


_TRT_LOGGER = None  # one for the process: TensorRT wants it alive as long as anything it created


def trt_logger(trt):
    """A trt.ILogger that forwards TensorRT's messages to Python `logging` (logger 'lphi_edge.tensorrt')."""
    global _TRT_LOGGER
    if _TRT_LOGGER is None:
        log = logging.getLogger("lphi_edge.tensorrt")
        sev = trt.ILogger.Severity
        levels = {
            sev.INTERNAL_ERROR: logging.CRITICAL,
            sev.ERROR: logging.ERROR,
            sev.WARNING: logging.WARNING,
            sev.INFO: logging.DEBUG,
            sev.VERBOSE: logging.DEBUG,
        }

        class _LoggingBridge(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)

            def log(self, severity, msg: str) -> None:
                log.log(levels.get(severity, logging.INFO), "%s", msg)

        _TRT_LOGGER = _LoggingBridge()
    return _TRT_LOGGER
