"""ROS 2 lifecycle node `vqa_node`: answers questions about the newest frame of its cameras — on the `prompt` topic
and as the `ask` action (lphi_edge_interfaces/action/Ask: feedback per token, cancel, images in the goal).

    lphi-vqa-node --ros-args -p model:=shapes-demo -p backend:=onnxruntime -r image:=/camera/image_raw
    ros2 launch lphi_edge vqa.launch.py model:=shapes-demo image_topic:=/camera/image_raw

Lifecycle: configure loads the model (a failure fails the transition, with the reason in the log and on
/diagnostics, and the node stays unconfigured); activate subscribes the cameras and `prompt` and opens the `ask`
action to goals; deactivate stops taking prompts and goals (what was accepted is still answered); cleanup stops the
answer in progress after its current token and frees the model. `autostart` (default true) configures and
activates at start-up. Callbacks only store (newest frame per camera, one ordered request queue) — the model runs
in the Answerer's thread, so the executor keeps serving while an answer is generated.
"""

from __future__ import annotations

import functools
import sys
import time
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.exceptions import ParameterUninitializedException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.task import Future
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

from lphi_edge.ros.answerer import (
    Answerer,
    AnswerSettings,
    Cameras,
    Frame,
    Prompt,
    PromptQueue,
    Reply,
    RequestError,
    canceled_reply,
    goal_prompt,
    quote,
    topic_prompt,
)
from lphi_edge.ros.frames import FrameError, check_raw, decode_compressed
from lphi_edge.ros.params import (
    MODEL_PARAMETERS,
    PARAMETERS,
    check_parameter,
    engine_threads,
    load_assistant,
    reconfigure_assistant,
)
from lphi_edge.ros.spin import run_node


def _interfaces() -> tuple[Any, Any, str]:
    """(Ask, Answer, "") from lphi_edge_interfaces, or (None, None, why not): built by colcon from
    ros2_ws/src/lphi_edge_interfaces and found after `source ros2_ws/install/setup.bash`."""
    try:
        from lphi_edge_interfaces.action import Ask
        from lphi_edge_interfaces.msg import Answer

        type(Answer).__import_type_support__()  # the C type support (needs the install's lib on the library path)
        type(Ask).__import_type_support__()
    except Exception as e:  # ImportError, or rosidl's UnsupportedTypeSupport
        return None, None, f"{type(e).__name__}: {e}"
    return Ask, Answer, ""


Ask, AnswerMsg, INTERFACES_MISSING = _interfaces()

STATUS_PERIOD_S = 1.0  # /diagnostics: the node's state and counters this often (and with every answer)

# sensor data: newest only, never block the camera (BEST_EFFORT, depth 1)
IMAGE_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.BEST_EFFORT,
    durability=DurabilityPolicy.VOLATILE,
)


def _stamp_ns(header) -> int:
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


def _set_stamp(header, stamp_ns: int, frame_id: str) -> None:
    header.stamp.sec, header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    header.frame_id = frame_id


def _wake(_: Future) -> None:
    """A done callback: its scheduling wakes the executor, which then resumes the goal awaiting the future."""


class VqaNode(LifecycleNode):
    def __init__(self, **kwargs: Any):
        super().__init__("vqa_node", **kwargs)
        self.worker: Answerer | None = None
        self.add_on_set_parameters_callback(self._on_set_parameters)
        for name, (default, description) in PARAMETERS.items():
            descriptor = ParameterDescriptor(description=description, read_only=name == "autostart")
            value = Parameter.Type.STRING_ARRAY if isinstance(default, list) else default
            self.declare_parameter(name, value, descriptor)
        self.cameras, self.prompts = Cameras(self._p("cameras")), PromptQueue(self._p("queue_size"))
        self.counters = dict.fromkeys(("goals_accepted", "goals_rejected", "goals_canceled", "prompts_refused"), 0)
        self._state = "unconfigured"
        self._problem = ""  # why the last configure failed (repeated by the status until one succeeds)
        self._active = False
        self._pubs: dict[str, Any] = {}
        self._image_subs: list = []
        self._prompt_sub = self._timer = None
        self._accepted: dict[int, Prompt] = {}  # id(goal request) → its prompt, from goal_callback to handle_accepted
        self._goals: dict[bytes, tuple[Prompt, Future]] = {}  # goal id → (its prompt, its reply to be)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._ask = None
        if Ask is None:
            self.get_logger().warning(
                f"lphi_edge_interfaces not found ({INTERFACES_MISSING}): the `ask` action and `answer/stamped` are "
                "off. Build ros2_ws with colcon and `source ros2_ws/install/setup.bash` (ros2_ws/README.md)"
            )
        else:  # for the node's lifetime, so results of goals ended by a cleanup still reach their clients
            self._ask = ActionServer(
                self,
                Ask,
                "ask",
                execute_callback=self._execute,
                goal_callback=self._on_goal,
                handle_accepted_callback=self._on_accepted,
                cancel_callback=self._on_cancel,
            )
        self.create_timer(STATUS_PERIOD_S, self._publish_status)
        if self._p("autostart") and self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            self.trigger_activate()

    # ---- lifecycle ---------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        t0 = time.perf_counter()
        key = self._model_key()
        try:
            worker = Answerer(
                load_assistant,
                reconfigure_assistant,
                key,
                self.cameras,
                self.prompts,
                self._settings,
                self._publish_partial,
                self._publish_reply,
                self._report_error,
            )
        except Exception as e:  # whatever the model's libraries raise: the transition fails with the reason
            self._problem = f"configure failed: cannot load model {key[0]!r} ({key[1]} on {key[2]}): {e}"
            self._report_error(self._problem)
            return TransitionCallbackReturn.FAILURE
        self.worker, self._problem = worker, ""
        self._pubs = {
            "answer": self.create_publisher(String, "answer", 10),
            "stream": self.create_publisher(String, "answer/stream", 10),
        }
        if AnswerMsg is not None:
            self._pubs["stamped"] = self.create_publisher(AnswerMsg, "answer/stamped", 10)
        worker.start()
        be = worker.assistant.backend
        self.get_logger().info(
            f"loaded {key[0]} ({be.name} {be.precision} on {be.device}) in {time.perf_counter() - t0:.1f} s"
        )
        self._state = "inactive"
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._subscribe_images(self.cameras.names, self._p("image_transport"))
        self._prompt_sub = self.create_subscription(String, "prompt", self._on_prompt, 100)
        self._arm_timer()
        self._active, self._state = True, "active"
        topics = ", ".join(self._topics().values())
        ask = f" and action {self.resolve_topic_name('ask')}" if self._ask is not None else ""
        self.get_logger().info(f"active: listening on {topics}, {self.resolve_topic_name('prompt')}{ask}")
        self._publish_diagnostics(DiagnosticStatus.OK, "active", [])
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_intake()
        self._state = "inactive"
        waiting = len(self.prompts)
        self._publish_diagnostics(DiagnosticStatus.OK, f"inactive ({waiting} accepted requests still to answer)", [])
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self._state = "unconfigured"
        self._publish_diagnostics(DiagnosticStatus.OK, "unconfigured (model freed)", [])
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_intake()
        self._release()
        self._state = "finalized"
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_intake()
        self._release()
        self._state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def _stop_intake(self) -> None:
        """No more frames, prompts or goals (the queue is still answered while the model is loaded)."""
        self._active = False
        for sub in [*self._image_subs, self._prompt_sub]:
            if sub is not None:
                self.destroy_subscription(sub)
        self._image_subs, self._prompt_sub = [], None
        self._arm_timer(prompt="")

    def _release(self) -> None:
        """Stop the worker after its current token, end what is still queued, free the model and the publishers."""
        if self.worker is not None:
            self.worker.stop()
            self.worker = None
        for prompt in self.prompts.drain():
            if prompt.on_done is not None:
                prompt.on_done(canceled_reply(prompt, "[canceled] the node was cleaned up before answering"))
        for pub in self._pubs.values():
            self.destroy_publisher(pub)
        self._pubs = {}

    def close(self) -> None:
        """SIGINT / shutdown: stop the worker after its current token."""
        self._stop_intake()
        self._release()

    # ---- parameters ------------------------------------------------------------------------
    def _p(self, name: str) -> Any:
        try:
            return self.get_parameter(name).value
        except ParameterUninitializedException:  # a string array declared without a value (cameras: [])
            return []

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        for p in params:
            if p.name in PARAMETERS:
                reason = check_parameter(p.name, p.value)
                if reason is not None:
                    return SetParametersResult(successful=False, reason=reason)
        if not hasattr(self, "counters"):  # initial declarations: applied by __init__
            return SetParametersResult(successful=True)
        changed = {p.name: p.value for p in params}
        if changed.keys() & set(MODEL_PARAMETERS) and self.worker is not None:  # else: read by the next configure
            self.worker.want_model(tuple(changed.get(n, v) for n, v in zip(MODEL_PARAMETERS, self._model_key())))
        if "queue_size" in changed:
            for dropped in self.prompts.resize(changed["queue_size"]):
                self.get_logger().warning(f"queue_size lowered: dropped prompt {quote(dropped.text)}")
        if "cameras" in changed:
            self.cameras.set_names(changed["cameras"] or [])
        if {"cameras", "image_transport"} & changed.keys() and self._active:
            self._subscribe_images(self.cameras.names, changed.get("image_transport", self._p("image_transport")))
        if {"auto_prompt", "auto_period_s"} & changed.keys() and self._active:
            self._arm_timer(changed.get("auto_prompt"), changed.get("auto_period_s"))
        return SetParametersResult(successful=True)

    def _model_key(self) -> tuple:
        return tuple(self._p(n) for n in MODEL_PARAMETERS)

    def _settings(self) -> AnswerSettings:
        return AnswerSettings(
            self._p("max_new_tokens"), self._p("temperature"), self._p("max_frame_age_s"), self._topics()
        )

    # ---- cameras: store only ---------------------------------------------------------------
    @staticmethod
    def _camera_topic(name: str, transport: str) -> str:
        base = f"{name}/image" if name else "image"
        return f"{base}/compressed" if transport == "compressed" else base

    def _topics(self) -> dict[str, str]:
        transport = self._p("image_transport")
        return {n: self.resolve_topic_name(self._camera_topic(n, transport)) for n in self.cameras.names}

    def _subscribe_images(self, names: list[str], transport: str) -> None:
        for sub in self._image_subs:
            self.destroy_subscription(sub)
        compressed = transport == "compressed"
        msg_type, callback = (CompressedImage, self._on_compressed) if compressed else (Image, self._on_image)
        self._image_subs = [
            self.create_subscription(
                msg_type, self._camera_topic(n, transport), functools.partial(callback, n), IMAGE_QOS
            )
            for n in names
        ]

    def _on_image(self, camera: str, msg: Image) -> None:
        try:
            pixels = check_raw(msg.encoding, msg.height, msg.width, msg.step, msg.data, self._p("max_frame_pixels"))
        except FrameError as e:
            self._malformed(camera, e)
            return
        self._store(camera, pixels, msg.header)

    def _on_compressed(self, camera: str, msg: CompressedImage) -> None:
        try:
            pixels = decode_compressed(msg.format, msg.data, self._p("max_frame_pixels"))
        except FrameError as e:
            self._malformed(camera, e)
            return
        self._store(camera, pixels, msg.header)

    def _store(self, camera: str, pixels, header) -> None:
        slot = self.cameras.slot(camera)
        if slot is not None:  # None: the camera was just removed from `cameras`
            slot.put(Frame(pixels, _stamp_ns(header), header.frame_id, time.time_ns()))

    def _malformed(self, camera: str, error: FrameError) -> None:
        slot = self.cameras.slot(camera)
        n = slot.count_malformed() if slot is not None else 0
        topic = self._topics().get(camera, camera)
        self.get_logger().warning(f"malformed frame #{n} on {topic}: {error}", throttle_duration_sec=1.0)
        self._publish_diagnostics(DiagnosticStatus.WARN, f"malformed frame on {topic}: {error}", [])

    # ---- prompts and goals: checked, then queued -------------------------------------------
    def _on_prompt(self, msg: String) -> None:
        self._enqueue(msg.data, "topic")

    def _arm_timer(self, prompt: str | None = None, period: float | None = None) -> None:
        prompt = self._p("auto_prompt") if prompt is None else prompt
        period = self._p("auto_period_s") if period is None else period
        if self._timer is not None:
            self.destroy_timer(self._timer)
            self._timer = None
        if prompt:
            self._timer = self.create_timer(period, lambda: self._enqueue(prompt, "auto"))

    def _enqueue(self, text: str, source: str) -> None:
        if not text.strip():
            self.get_logger().warning("ignoring an empty prompt")
            return
        prompt = topic_prompt(text, source, self._p("max_prompt_chars"))
        if prompt.refusal:
            self.counters["prompts_refused"] += 1
        for dropped in self.prompts.put(prompt):
            self.get_logger().warning(
                f"request queue full ({self._p('queue_size')}): dropped the oldest prompt {quote(dropped.text)} "
                f"({self.prompts.dropped} dropped so far)"
            )

    def _on_goal(self, goal) -> GoalResponse:
        """Accept a goal only while active, when it is valid and the queue has room (else: rejected, with the
        reason in the log and on /diagnostics)."""
        reason = f"the node is {self._state}, not active"
        if self._active:
            image = None
            if goal.image.height > 0:
                im = goal.image
                image = (im.encoding, im.height, im.width, im.step, im.data, _stamp_ns(im.header), im.header.frame_id)
            try:
                prompt = goal_prompt(
                    goal.prompt,
                    goal.camera,
                    goal.max_new_tokens,
                    goal.temperature,
                    image,
                    [n for n in self.cameras.names if n],
                    self._p("max_prompt_chars"),
                    self._p("max_frame_pixels"),
                )
            except RequestError as e:
                reason = str(e)
            else:
                if self.prompts.has_room():
                    self._accepted[id(goal)] = prompt
                    self.counters["goals_accepted"] += 1
                    return GoalResponse.ACCEPT
                reason = f"the request queue is full (queue_size {self._p('queue_size')})"
        self.counters["goals_rejected"] += 1
        self.get_logger().warning(f"rejected an ask goal: {reason}")
        self._publish_diagnostics(DiagnosticStatus.WARN, f"ask goal rejected: {reason}", [])
        return GoalResponse.REJECT

    def _on_accepted(self, goal_handle) -> None:
        """Right after _on_goal in the same executor task: queue the goal (room was checked there)."""
        prompt = self._accepted.pop(id(goal_handle.request))
        reply: Future = Future(executor=self.executor)
        reply.add_done_callback(_wake)
        prompt.canceled = lambda: goal_handle.is_cancel_requested
        prompt.on_text = lambda text, n: goal_handle.publish_feedback(Ask.Feedback(text=text, tokens=n))
        prompt.on_done = reply.set_result
        self._goals[bytes(goal_handle.goal_id.uuid)] = (prompt, reply)
        goal_handle.execute()
        if not self.prompts.offer(prompt):  # cannot happen: nothing else fills the queue in between
            reply.set_result(Reply(prompt, "[error] the request queue is full", "error", "", None, None, {}, 0,
                                   time.time_ns(), failed=True))  # fmt: skip

    def _on_cancel(self, goal_handle) -> CancelResponse:
        """A waiting goal ends now; the answer in progress stops before its next token."""
        entry = self._goals.get(bytes(goal_handle.goal_id.uuid))
        if entry is None:
            return CancelResponse.REJECT
        prompt, reply = entry
        self.counters["goals_canceled"] += 1
        if self.prompts.remove(prompt):
            reply.set_result(canceled_reply(prompt, ""))
        return CancelResponse.ACCEPT

    async def _execute(self, goal_handle):
        key = bytes(goal_handle.goal_id.uuid)
        try:
            reply: Reply = await self._goals[key][1]
        finally:
            self._goals.pop(key, None)
        timings = reply.timings
        result = Ask.Result(
            answer=reply.text,
            finish_reason=reply.finish_reason,
            frame_age_ms=(reply.frame_age_s or 0.0) * 1e3,
            ttft_ms=float(timings.get("ttft_ms", 0.0)),
            total_ms=float(timings.get("total_ms", 0.0)),
            tokens=reply.tokens,
        )
        if reply.frame is not None:
            _set_stamp(result.frame_header, reply.frame.stamp_ns, reply.frame.frame_id)
        if reply.finish_reason == "canceled":
            goal_handle.canceled() if goal_handle.is_cancel_requested else goal_handle.abort()
        elif reply.ok:
            goal_handle.succeed()
        else:
            goal_handle.abort()
        return result

    # ---- outputs (called from the worker thread) ------------------------------------------
    def _publish_partial(self, text: str) -> None:
        if "stream" in self._pubs:
            self._pubs["stream"].publish(String(data=text))

    def _publish_reply(self, reply: Reply) -> None:
        pubs = self._pubs
        p, f, t = reply.prompt, reply.frame, reply.timings
        waited_ms = (reply.finished_ns - p.queued_ns) / 1e6 - t.get("total_ms", 0.0)
        frame_to_answer_ms = (reply.finished_ns - (f.stamp_ns or f.received_ns)) / 1e6 if f is not None else 0.0
        if "answer" in pubs:
            pubs["answer"].publish(String(data=reply.text))
        if "stamped" in pubs:
            msg = AnswerMsg(
                prompt=p.text,
                source=p.source,
                answer=reply.text,
                finish_reason=reply.finish_reason,
                camera=reply.camera,
                frame_age_ms=(reply.frame_age_s or 0.0) * 1e3,
                queue_wait_ms=waited_ms,
                ttft_ms=float(t.get("ttft_ms", 0.0)),
                total_ms=float(t.get("total_ms", 0.0)),
                frame_to_answer_ms=frame_to_answer_ms,
                tokens=reply.tokens,
            )
            _set_stamp(msg.header, reply.finished_ns, f.frame_id if f is not None else "")
            if f is not None:
                _set_stamp(msg.frame_header, f.stamp_ns, f.frame_id)
            pubs["stamped"].publish(msg)
        values = {"prompt": p.text, "prompt_source": p.source, "answer": reply.text}
        values |= {"finish_reason": reply.finish_reason, "camera": reply.camera, "queue_wait_ms": f"{waited_ms:.1f}"}
        if self.worker is not None:
            values["engine_threads"] = engine_threads(self.worker.assistant)  # this thread owns it: no reload now
        if f is not None:
            values["frame_stamp"] = f"{f.stamp_ns // 1_000_000_000}.{f.stamp_ns % 1_000_000_000:09d}"
            values["frame_id"] = f.frame_id
            values["frame_age_ms"] = f"{(reply.frame_age_s or 0.0) * 1e3:.1f}"
            values["frame_to_answer_ms"] = f"{frame_to_answer_ms:.1f}"
        for key in ("preprocess_ms", "vision_ms", "prefill_ms", "decode_ms", "ttft_ms", "total_ms", "convert_ms"):
            if key in t:
                values[key] = f"{t[key]:.2f}"
        for key in ("prompt_tokens", "frame_reused", "answer_reused"):
            if key in t:
                values[key] = str(t[key])
        if t.get("frame_difference") is not None:
            values["frame_difference"] = f"{t['frame_difference']:.2f}"
        if "decode_tokens_per_s" in t:
            values["tokens_per_s"] = f"{t['decode_tokens_per_s']:.2f}"
            values["new_tokens"] = str(t.get("new_tokens", 0))
        level = DiagnosticStatus.OK if reply.ok else DiagnosticStatus.WARN
        self._publish_diagnostics(level, "answered" if reply.ok else reply.text, list(values.items()))

    def _publish_status(self) -> None:
        """Every STATUS_PERIOD_S: the lifecycle state and the counters (a failed configure stays an ERROR)."""
        if self._problem:
            self._publish_diagnostics(DiagnosticStatus.ERROR, self._problem, [])
        else:
            self._publish_diagnostics(DiagnosticStatus.OK, self._state, [])

    def _report_error(self, message: str) -> None:
        self.get_logger().error(message)
        self._publish_diagnostics(DiagnosticStatus.ERROR, message, [])

    def _publish_diagnostics(self, level: bytes, message: str, values: list[tuple[str, str]]) -> None:
        counters = {
            **self.cameras.totals(),
            "prompts_dropped": self.prompts.dropped,
            "queue_length": len(self.prompts),
            "answers": self.worker.answered if self.worker is not None else 0,
            "frames_reused": self.worker.frames_reused if self.worker is not None else 0,
            "answers_reused": self.worker.answers_reused if self.worker is not None else 0,
            **self.counters,
            "lifecycle_state": self._state,
            "cameras": ",".join(self.cameras.names),
        }
        model, backend, device, *_ = self._model_key()
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


def main(args: list[str] | None = None) -> int:
    return run_node(VqaNode, "vqa_node", args)


if __name__ == "__main__":
    sys.exit(main())
