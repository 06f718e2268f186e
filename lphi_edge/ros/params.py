"""vqa_node's parameters: names, defaults, descriptions and their validation (no rclpy here, so tested without ROS).

Every parameter is validated by the node's set-parameter callback, at start-up too (an invalid value is refused
with the reason; at start-up the process exits with status 2), and takes effect: MODEL_PARAMETERS reload the
model between answers, `cameras` / `image_transport` resubscribe, `auto_prompt` / `auto_period_s` re-arm the
timer, the others apply to the next frame, prompt or answer. `autostart` is read once, at start-up.
`frame_reuse_tolerance` and `visual_tokens` are applied to the loaded model between answers (Assistant.configure),
without reloading it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from lphi_edge.assistant import BACKENDS, Assistant
from lphi_edge.errors import ConfigError, LphiError
from lphi_edge.format.shipped import resolve_model_dir
from lphi_edge.ros.frames import DEFAULT_MAX_PIXELS, MAX_SIDE
from lphi_edge.runtime.backend import TORCH_DTYPES
from lphi_edge.runtime.device import DEVICE_HELP, check_threads, cpu_count, parse_device
from lphi_edge.runtime.onnx_backend import PROVIDERS

MAX_NEW_TOKENS = 4096
MAX_CAMERAS = 64
CAMERA_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*(/[A-Za-z][A-Za-z0-9_]*)*")  # relative ROS name: wrist, arm/wrist


# name → (default, description). A list default declares a string array.
PARAMETERS: dict[str, tuple[Any, str]] = {
    "autostart": (True, "configure and activate at start-up (read once); false: wait for a lifecycle manager"),
    "model": ("shapes-demo", "checkpoint / export directory, or a shipped model name"),
    "backend": ("onnxruntime", f"one of {BACKENDS}"),
    "device": ("cpu", DEVICE_HELP),
    "provider": ("", f"onnxruntime execution provider, one of {sorted(PROVIDERS)}; '' = the device's own"),
    "threads": (0, "CPU threads (1..CPU count): torch's (process-wide) and onnxruntime's intra-op; 0 = their defaults"),
    "dtype": ("", f"backend torch: one of {TORCH_DTYPES} (int8: int8 matmuls on the CPU); '' = fp32"),
    "torch_compile": (False, "backend torch: vision encoder and prefill as compiled graphs (tens of seconds to load)"),
    "max_new_tokens": (32, f"tokens per answer at most (1..{MAX_NEW_TOKENS}); a goal may ask for its own"),
    "temperature": (0.0, "0 = greedy; > 0 samples; a goal may ask for its own"),
    "queue_size": (
        4,
        "requests (prompts and goals) waiting at most (1..1000): a prompt drops the oldest prompt, "
        "a goal that does not fit is rejected",
    ),
    "cameras": (
        [],
        "camera names: subscribes <name>/image (or <name>/image/compressed) per camera; empty = one camera on `image`",
    ),
    "image_transport": ("raw", "raw (subscribe `image`) | compressed (subscribe `image/compressed`)"),
    "auto_prompt": ("", "if set, asked about the first camera's newest frame every auto_period_s"),
    "auto_period_s": (5.0, "period of auto_prompt (> 0)"),
    "max_frame_age_s": (2.0, "camera frames older than this are not answered about (> 0)"),
    "max_frame_pixels": (
        DEFAULT_MAX_PIXELS,
        f"frames (raw, compressed, goal images) with more pixels are refused, "
        f"compressed ones before decoding (1..{MAX_SIDE * MAX_SIDE})",
    ),
    "max_prompt_chars": (16384, "longer prompts and goals are refused before tokenizing (1..10000000)"),
    "frame_reuse_tolerance": (
        -1.0,
        "a frame within this frame difference (8-bit levels) of a cached one reuses its features (and a stored "
        "greedy answer to the same question); 0 = exact frames only; -1 = the library's default tolerance",
    ),
    "visual_tokens": (
        0,
        f"image tokens the LM sees per frame, K in 1..N (the model's), chosen by the vision "
        f"tower's attention; 0 = all (1..{MAX_NEW_TOKENS})",
    ),
}

RELOAD_PARAMETERS = ("model", "backend", "device", "threads", "provider", "dtype", "torch_compile")  # reload on change
MODEL_PARAMETERS = (*RELOAD_PARAMETERS, "frame_reuse_tolerance", "visual_tokens")  # the last two: applied in place


def _passes(check: Callable[[Any], Any], value: Any) -> bool:
    """Whether the shared validator `check` (lphi_edge.runtime.device) accepts `value`."""
    try:
        check(value)
    except ConfigError:
        return False
    return True


def _int_in(value: Any, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def _camera_names_problem(names: Any) -> str | None:
    if names is None:  # declared without a value: no names
        return None
    if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
        return "must be a list of camera names"
    bad = [n for n in names if not CAMERA_NAME.fullmatch(n)]
    if bad:
        return f"has invalid names {bad}: each must be a relative ROS name such as wrist or arm/wrist"
    if len(set(names)) != len(names):
        return "names a camera twice"
    if len(names) > MAX_CAMERAS:
        return f"names {len(names)} cameras; at most {MAX_CAMERAS}"
    return None


def check_parameter(name: str, value: Any) -> str | None:
    """None if `value` is valid for `name`, else the reason."""
    if name == "model":
        try:
            resolve_model_dir(value)
        except LphiError as e:
            return str(e)
        return None
    if name == "cameras":
        problem = _camera_names_problem(value)
        return None if problem is None else f"cameras={value!r} {problem}"
    checks = {
        "autostart": (isinstance(value, bool), "must be true or false"),
        "backend": (value in BACKENDS, f"must be one of {BACKENDS}"),
        "device": (_passes(parse_device, value), f"must be {DEVICE_HELP}"),
        "provider": (value == "" or value in PROVIDERS, f"must be '' (the device's own) or one of {sorted(PROVIDERS)}"),
        "threads": (
            (type(value) is int and value == 0) or _passes(check_threads, value),
            f"must be 0 (the libraries' defaults) or an integer in 1..{cpu_count()} (this machine's CPU count)",
        ),
        "dtype": (value == "" or value in TORCH_DTYPES, f"must be '' (fp32) or one of {TORCH_DTYPES}"),
        "torch_compile": (isinstance(value, bool), "must be true or false"),
        "max_new_tokens": (_int_in(value, 1, MAX_NEW_TOKENS), f"must be an integer in 1..{MAX_NEW_TOKENS}"),
        "temperature": (isinstance(value, float) and value >= 0, "must be a float ≥ 0"),
        "queue_size": (_int_in(value, 1, 1000), "must be an integer in 1..1000"),
        "image_transport": (value in ("raw", "compressed"), "must be raw or compressed"),
        "auto_prompt": (isinstance(value, str), "must be a string"),
        "auto_period_s": (isinstance(value, float) and value > 0, "must be a float > 0"),
        "max_frame_age_s": (isinstance(value, float) and value > 0, "must be a float > 0"),
        "max_frame_pixels": (_int_in(value, 1, MAX_SIDE * MAX_SIDE), f"must be an integer in 1..{MAX_SIDE * MAX_SIDE}"),
        "max_prompt_chars": (_int_in(value, 1, 10_000_000), "must be an integer in 1..10000000"),
        "frame_reuse_tolerance": (
            isinstance(value, float) and (value == -1 or (math.isfinite(value) and value >= 0)),
            "must be -1 (the library's default tolerance), 0 (exact frames only) or a float > 0 (8-bit levels)",
        ),
        "visual_tokens": (
            _int_in(value, 0, MAX_NEW_TOKENS),
            "must be 0 (all the image tokens) or an integer K ≥ 1 (at most the model's image tokens)",
        ),
    }
    if name not in checks:
        return None
    ok, reason = checks[name]
    return None if ok else f"{name}={value!r} {reason}"


def assistant_options(frame_reuse_tolerance: float, visual_tokens: int) -> dict[str, Any]:
    """The Assistant's frame_reuse / visual_tokens for the node's parameters: tolerance -1 → True (the library's
    default tolerance), 0 → False (exact frames only), else the tolerance; visual_tokens 0 → None (all)."""
    frame_reuse = True if frame_reuse_tolerance < 0 else (frame_reuse_tolerance or False)
    return {"frame_reuse": frame_reuse, "visual_tokens": visual_tokens or None}


def load_assistant(key: tuple) -> Assistant:
    """The Assistant for a model key (the MODEL_PARAMETERS' values); threads 0 = the libraries' defaults,
    provider '' = the device's own, dtype '' = fp32."""
    model, backend, device, threads, provider, dtype, torch_compile, tolerance, visual_tokens = key
    options = assistant_options(tolerance, visual_tokens)
    if provider:
        if backend != "onnxruntime":
            raise ConfigError(f"provider={provider!r} applies to backend onnxruntime, not {backend!r}: set provider ''")
        options["provider"] = provider
    for name, value in (("dtype", dtype), ("torch_compile", torch_compile)):
        if value and backend != "torch":
            raise ConfigError(f"{name}={value!r} applies to backend torch, not {backend!r} (exports fix theirs)")
    if backend == "torch":
        options |= {"dtype": dtype or None, "torch_compile": torch_compile}
    return Assistant.from_pretrained(model, backend=backend, device=device, threads=threads or None, **options)


def reconfigure_assistant(assistant: Assistant, old_key: tuple, new_key: tuple) -> bool:
    """Apply a new key to the loaded model in place when only frame_reuse_tolerance / visual_tokens changed
    (True); False when the change needs a reload."""
    n = len(RELOAD_PARAMETERS)
    if old_key[:n] != new_key[:n]:
        return False
    assistant.configure(**assistant_options(*new_key[n:]))
    return True


def engine_threads(assistant: Assistant) -> str:
    """The CPU thread pools the engine runs with, read back from its library: "torch=4" / "onnxruntime_intra_op=2,
    onnxruntime_inter_op=1" (0: the library's default) / "" (TensorRT: none)."""
    settings = assistant.backend.thread_settings()
    return ", ".join(f"{k}={v}" for k, v in settings.items() if k != "note")
