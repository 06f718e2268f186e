"""ROS 2 node `vqa_node`: answers instructions on `prompt` about the newest frame on `image`.

    lphi-vqa-node --ros-args -p model:=shapes-demo -p backend:=onnxruntime -r image:=/camera/image_raw
    ros2 launch lphi_edge vqa.launch.py model:=shapes-demo image_topic:=/camera/image_raw

Callbacks only store (newest frame, bounded prompt queue) — the model runs in the Answerer's thread, so
the executor keeps serving while an answer is generated. Every parameter is validated by a
set-parameter callback and takes effect: model / backend / device / threads reload the model between answers,
image_transport resubscribes, auto_prompt / auto_period_s re-arm the timer, the rest apply per answer.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

from lphi_edge.assistant import BACKENDS, Assistant
from lphi_edge.errors import ConfigError, LphiError
from lphi_edge.format.shipped import resolve_model_dir
from lphi_edge.ros.answerer import Answerer, AnswerSettings, Frame, FrameSlot, Prompt, PromptQueue, Reply
from lphi_edge.ros.frames import FrameError, check_raw, decode_compressed
from lphi_edge.ros.spin import run_node
from lphi_edge.runtime.device import DEVICE_HELP, check_threads, cpu_count, parse_device

logger = logging.getLogger(__name__)

# sensor data: newest only, never block the camera (BEST_EFFORT, depth 1)
IMAGE_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.BEST_EFFORT,
    durability=DurabilityPolicy.VOLATILE,
)

PARAMETERS: dict[str, tuple[Any, str]] = {
    "model": ("shapes-demo", "checkpoint / export directory, or a shipped model name"),
    "backend": ("onnxruntime", f"one of {BACKENDS}"),
    "device": ("cpu", DEVICE_HELP),
    "threads": (0, "CPU threads (1..CPU count): torch's (process-wide) and onnxruntime's intra-op; 0 = their defaults"),
    "max_new_tokens": (32, "tokens per answer at most (1..4096)"),
    "temperature": (0.0, "0 = greedy; > 0 samples"),
    "queue_size": (4, "pending prompts kept; overflow drops the oldest (1..1000)"),
    "image_transport": ("raw", "raw (subscribe `image`) | compressed (subscribe `image/compressed`)"),
    "auto_prompt": ("", "if set, asked about the newest frame every auto_period_s"),
    "auto_period_s": (5.0, "period of auto_prompt (> 0)"),
    "max_frame_age_s": (2.0, "frames older than this are not answered about (> 0)"),
}


MODEL_PARAMETERS = ("model", "backend", "device", "threads")  # a change reloads the model


def _passes(check: Callable[[Any], Any], value: Any) -> bool:
    """Whether the shared validator `check` (lphi_edge.runtime.device) accepts `value`."""
    try:
        check(value)
    except ConfigError:
        return False
    return True


def check_parameter(name: str, value: Any) -> str | None:
    """None if `value` is valid for `name`, else the reason."""
    checks = {
        "backend": (value in BACKENDS, f"must be one of {BACKENDS}"),
        "device": (_passes(parse_device, value), f"must be {DEVICE_HELP}"),
        "threads": (
            (type(value) is int and value == 0) or _passes(check_threads, value),
            f"must be 0 (the libraries' defaults) or an integer in 1..{cpu_count()} (this machine's CPU count)",
        ),
        "max_new_tokens": (isinstance(value, int) and 1 <= value <= 4096, "must be an integer in 1..4096"),
        "temperature": (isinstance(value, float) and value >= 0, "must be a float ≥ 0"),
        "queue_size": (isinstance(value, int) and 1 <= value <= 1000, "must be an integer in 1..1000"),
        "image_transport": (value in ("raw", "compressed"), "must be raw or compressed"),
        "auto_prompt": (isinstance(value, str), "must be a string"),
        "auto_period_s": (isinstance(value, float) and value > 0, "must be a float > 0"),
        "max_frame_age_s": (isinstance(value, float) and value > 0, "must be a float > 0"),
    }
    if name == "model":
        try:
            resolve_model_dir(value)
        except LphiError as e:
            return str(e)
        return None
    if name not in checks:
        return None
    ok, reason = checks[name]
    return None if ok else f"{name}={value!r} {reason}"


def engine_threads(assistant: Assistant) -> str:
    """The CPU thread pools the engine runs with, read back from its library: "torch=4" / "onnxruntime_intra_op=2,
    onnxruntime_inter_op=1" (0: the library's default) / "" (TensorRT: none)."""
    settings = assistant.backend.thread_settings()
    return ", ".join(f"{k}={v}" for k, v in settings.items() if k != "note")


def load_assistant(key: tuple) -> Assistant:
    """The Assistant for a model key (the MODEL_PARAMETERS' values); threads 0 = the libraries' defaults."""
    model, backend, device, threads = key
    return Assistant.from_pretrained(model, backend=backend, device=device, threads=threads or None)


class VqaNode(Node):
    def __init__(self, **kwargs: Any):
        super().__init__("vqa_node", **kwargs)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        for name, (default, description) in PARAMETERS.items():
            self.declare_parameter(name, default, ParameterDescriptor(description=description))
        self.frames, self.prompts = FrameSlot(), PromptQueue(self._p("queue_size"))
        self.answer_pub = self.create_publisher(String, "answer", 10)
        self.stream_pub = self.create_publisher(String, "answer/stream", 10)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_subscription(String, "prompt", self._on_prompt, 100)
        self._image_sub = None
        self._subscribe_images(self._p("image_transport"))
        self._timer = None
        t0 = time.perf_counter()
        self.worker = Answerer(
            load_assistant,
            self._model_key(),
            self.frames,
            self.prompts,
            self._settings,
            self._publish_partial,
            self._publish_reply,
            self._report_error,
        )
        be = self.worker.assistant.backend
        self.get_logger().info(
            f"loaded {self._p('model')} ({be.name} {be.precision} on {be.device}) in {time.perf_counter() - t0:.1f} s; "
            f"listening on {self._image_topic()} and {self.resolve_topic_name('prompt')}"
        )
        self._arm_timer()
        self.worker.start()

    # ---- parameters ------------------------------------------------------------------------
    def _p(self, name: str) -> Any:
        return self.get_parameter(name).value

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        for p in params:
            if p.name in PARAMETERS:
                reason = check_parameter(p.name, p.value)
                if reason is not None:
                    return SetParametersResult(successful=False, reason=reason)
        if not hasattr(self, "worker"):  # initial declarations: applied by __init__
            return SetParametersResult(successful=True)
        changed = {p.name: p.value for p in params}
        if changed.keys() & set(MODEL_PARAMETERS):
            self.worker.want_model(tuple(changed.get(n, v) for n, v in zip(MODEL_PARAMETERS, self._model_key())))
        if "queue_size" in changed:
            for dropped in self.prompts.resize(changed["queue_size"]):
                self.get_logger().warning(f"queue_size lowered: dropped prompt {dropped.text!r}")
        if "image_transport" in changed:
            self._subscribe_images(changed["image_transport"])
        if {"auto_prompt", "auto_period_s"} & changed.keys():
            self._arm_timer(changed.get("auto_prompt"), changed.get("auto_period_s"))
        return SetParametersResult(successful=True)

    def _model_key(self) -> tuple:
        return tuple(self._p(n) for n in MODEL_PARAMETERS)

    def _settings(self) -> AnswerSettings:
        return AnswerSettings(
            self._p("max_new_tokens"), self._p("temperature"), self._p("max_frame_age_s"), self._image_topic()
        )

    # ---- subscriptions: store only ---------------------------------------------------------
    def _image_topic(self) -> str:
        return self.resolve_topic_name("image/compressed" if self._p("image_transport") == "compressed" else "image")

    def _subscribe_images(self, transport: str) -> None:
        if self._image_sub is not None:
            self.destroy_subscription(self._image_sub)
        if transport == "compressed":
            self._image_sub = self.create_subscription(
                CompressedImage, "image/compressed", self._on_compressed, IMAGE_QOS
            )
        else:
            self._image_sub = self.create_subscription(Image, "image", self._on_image, IMAGE_QOS)

    def _on_image(self, msg: Image) -> None:
        try:
            pixels = check_raw(msg.encoding, msg.height, msg.width, msg.step, msg.data)
        except FrameError as e:
            self._malformed(e)
            return
        self._store(pixels, msg.header)

    def _on_compressed(self, msg: CompressedImage) -> None:
        try:
            pixels = decode_compressed(msg.format, msg.data)
        except FrameError as e:
            self._malformed(e)
            return
        self._store(pixels, msg.header)

    def _store(self, pixels, header) -> None:
        stamp = header.stamp.sec * 1_000_000_000 + header.stamp.nanosec
        self.frames.put(Frame(pixels, stamp, header.frame_id, time.time_ns()))

    def _malformed(self, error: FrameError) -> None:
        n = self.frames.count_malformed()
        self.get_logger().warning(f"malformed frame #{n} on {self._image_topic()}: {error}", throttle_duration_sec=1.0)
        self._publish_diagnostics(DiagnosticStatus.WARN, f"malformed frame: {error}", [])

    def _on_prompt(self, msg: String) -> None:
        self._enqueue(Prompt(msg.data, "topic"))

    def _arm_timer(self, prompt: str | None = None, period: float | None = None) -> None:
        prompt = self._p("auto_prompt") if prompt is None else prompt
        period = self._p("auto_period_s") if period is None else period
        if self._timer is not None:
            self.destroy_timer(self._timer)
            self._timer = None
        if prompt:
            self._timer = self.create_timer(period, lambda: self._enqueue(Prompt(prompt, "auto")))

    def _enqueue(self, prompt: Prompt) -> None:
        if not prompt.text.strip():
            self.get_logger().warning("ignoring an empty prompt")
            return
        for dropped in self.prompts.put(prompt):
            self.get_logger().warning(
                f"prompt queue full ({self._p('queue_size')}): dropped the oldest prompt {dropped.text!r} "
                f"({self.prompts.dropped} dropped so far)"
            )

    # ---- outputs (called from the worker thread) ------------------------------------------
    def _publish_partial(self, text: str) -> None:
        self.stream_pub.publish(String(data=text))

    def _publish_reply(self, reply: Reply) -> None:
        self.answer_pub.publish(String(data=reply.text))
        values = {"prompt": reply.prompt.text, "prompt_source": reply.prompt.source, "answer": reply.text}
        values["engine_threads"] = engine_threads(self.worker.assistant)  # this thread owns it: no reload now
        waited_ms = (reply.finished_ns - reply.prompt.queued_ns) / 1e6 - reply.timings.get("total_ms", 0.0)
        values["queue_wait_ms"] = f"{waited_ms:.1f}"
        if reply.frame is not None:
            f = reply.frame
            values["frame_stamp"] = f"{f.stamp_ns // 1_000_000_000}.{f.stamp_ns % 1_000_000_000:09d}"
            values["frame_id"] = f.frame_id
            values["frame_age_ms"] = f"{(reply.frame_age_s or 0.0) * 1e3:.1f}"
            values["frame_to_answer_ms"] = f"{(reply.finished_ns - (f.stamp_ns or f.received_ns)) / 1e6:.1f}"
        for key in ("preprocess_ms", "vision_ms", "prefill_ms", "decode_ms", "ttft_ms", "total_ms", "convert_ms"):
            if key in reply.timings:
                values[key] = f"{reply.timings[key]:.2f}"
        if "decode_tokens_per_s" in reply.timings:
            values["tokens_per_s"] = f"{reply.timings['decode_tokens_per_s']:.2f}"
            values["new_tokens"] = str(reply.timings.get("new_tokens", 0))
        level = DiagnosticStatus.OK if reply.ok else DiagnosticStatus.WARN
        self._publish_diagnostics(level, "answered" if reply.ok else reply.text, list(values.items()))

    def _report_error(self, message: str) -> None:
        self.get_logger().error(message)
        self._publish_diagnostics(DiagnosticStatus.ERROR, message, [])

    def _publish_diagnostics(self, level: bytes, message: str, values: list[tuple[str, str]]) -> None:
        counters = {
            "frames_received": self.frames.received,
            "frames_dropped": self.frames.dropped,
            "frames_malformed": self.frames.malformed,
            "prompts_dropped": self.prompts.dropped,
            "queue_length": len(self.prompts),
            "answers": self.worker.answered if hasattr(self, "worker") else 0,
        }
        model, backend, device, _ = self._model_key()
        status = DiagnosticStatus(
            level=level,
            name=f"{self.get_fully_qualified_name()}: vqa",
            message=message[:500],
            hardware_id=f"{backend}/{device}",
            values=[KeyValue(key=k, value=str(v)) for k, v in [*values, *counters.items(), ("model", model)]],
        )
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(msg)

    def close(self) -> None:
        self.worker.stop()


def main(args: list[str] | None = None) -> int:
    return run_node(VqaNode, "vqa_node", args)


if __name__ == "__main__":
    sys.exit(main())
