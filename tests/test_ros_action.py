"""vqa_node's lifecycle, its `ask` action (lphi_edge_interfaces, built by colcon), several cameras and hostile input:
real rclpy across processes. The colcon-installed node answers with a tiny random-weight model whose answers never
end early (4096-position context, torch backend), so goals can be canceled, queued up and deactivated mid-answer
whatever the machine's speed; each check compares with the same model run in this process."""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from action_msgs.msg import GoalStatus  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from rclpy.action import ActionClient  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from test_ros_node import (  # noqa: E402
    Harness,
    import_interfaces,
    new_namespace,
    read_log,
    scenes,
    spawn_node,
    start_node,
    stop_node,
)
from unique_identifier_msgs.msg import UUID  # noqa: E402

from lphi_edge import Assistant  # noqa: E402
from lphi_edge.format.shipped import SHIPPED_EXPORTS  # noqa: E402

Ask, AnswerMsg = import_interfaces()
Q = "What is in front of the robot?"
LONG = 4096  # max_new_tokens of a goal that runs until it is canceled (or reaches the context)


class ActionHarness(Harness):
    """The test's side: also the `ask` client, `answer/stamped`, two cameras and the lifecycle services."""

    def __init__(self, ns: str, context=None) -> None:
        super().__init__(ns, context)
        self.client = ActionClient(self.node, Ask, "ask")
        # feedback read from the action's feedback topic, not through the client's callback: rclpy unhooks a goal's
        # feedback callback once its result has arrived, and the last feedback can arrive after the result (another
        # topic), so a callback could miss it
        self._feedback: dict[bytes, list] = {}  # goal id → its feedback so far
        self.feedback_sub = self.node.create_subscription(
            Ask.Impl.FeedbackMessage, "ask/_action/feedback", self._on_feedback, 1000
        )
        self.stamped: list = []
        self.node.create_subscription(AnswerMsg, "answer/stamped", self.stamped.append, 50)
        self.cams = {name: self.node.create_publisher(Image, f"{name}/image", 5) for name in ("wrist", "head")}
        self.lifecycle = self.node.create_client(ChangeState, f"{ns}/vqa_node/change_state")
        self.get_state = self.node.create_client(GetState, f"{ns}/vqa_node/get_state")

    def close(self) -> None:
        self.client.destroy()
        super().close()

    def _on_feedback(self, msg) -> None:
        got = self._feedback.get(bytes(msg.goal_id.uuid))
        if got is not None:
            got.append(msg.feedback)

    def send(self, goal, feedback: list | None = None):
        """The goal's handle once accepted, or None when rejected; `feedback` receives the goal's feedback."""
        ready = lambda: self.client.server_is_ready() and self.feedback_sub.get_publisher_count() > 0  # noqa: E731
        assert self.spin_until(ready, 30), "no `ask` action server"
        goal_id = UUID(uuid=list(uuid.uuid4().bytes))
        if feedback is not None:
            self._feedback[bytes(goal_id.uuid)] = feedback
        future = self.client.send_goal_async(goal, goal_uuid=goal_id)
        assert self.spin_until(future.done, 30), "no goal response"
        handle = future.result()
        return handle if handle.accepted else None

    def result(self, handle, timeout: float = 120):
        """(status, result) of an accepted goal."""
        future = handle.get_result_async()
        assert self.spin_until(future.done, timeout), "no goal result"
        return future.result().status, future.result().result

    def reject(self, goal, reason: str) -> dict[str, str]:
        """Send a goal that must be rejected; the diagnostics saying why."""
        n = len(self.diags)
        assert self.send(goal) is None, f"goal {goal.prompt[:60]!r} accepted"
        return self.wait_diag(f"ask goal rejected: {reason}", since=n)

    def run(self, goal, feedback: list | None = None):
        handle = self.send(goal, feedback)
        assert handle is not None, f"goal {goal.prompt[:60]!r} rejected"
        return self.result(handle)

    def cancel(self, handle) -> None:
        future = handle.cancel_goal_async()
        assert self.spin_until(future.done, 30), "no cancel response"

    def transition(self, transition_id: int) -> bool:
        assert self.spin_until(self.lifecycle.service_is_ready, 30)
        future = self.lifecycle.call_async(ChangeState.Request(transition=Transition(id=transition_id)))
        assert self.spin_until(future.done, 120), "no change_state response"
        return future.result().success

    def state(self) -> str:
        assert self.spin_until(self.get_state.service_is_ready, 30)
        future = self.get_state.call_async(GetState.Request())
        assert self.spin_until(future.done, 30)
        return future.result().current_state.label


def goal(prompt: str = Q, **fields) -> Ask.Goal:
    g = Ask.Goal(prompt=prompt, temperature=-1.0)  # < 0: the node's temperature (0.0 = greedy)
    for name, value in fields.items():
        setattr(g, name, value)
    return g


@pytest.fixture(scope="module")
def tiny_long(tmp_path_factory) -> Path:
    from lphi_edge.model.tiny import TinySpec, write_tiny_checkpoint

    return write_tiny_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "tiny_long", seed=0, spec=TinySpec(context_length=4096)
    )


@pytest.fixture(scope="module")
def reference(tiny_long) -> Assistant:
    return Assistant.from_pretrained(tiny_long, backend="torch")


@pytest.fixture(scope="module")
def cams(ros, tiny_long):
    """One node for the action checks: cameras wrist and head, room for 3 waiting requests, 8 tokens per answer."""
    proc, h = start_node(
        *("-p", f"model:={tiny_long}", "-p", "backend:=torch", "-p", "cameras:=[wrist, head]"),
        *("-p", "queue_size:=3", "-p", "max_new_tokens:=8", "-p", "max_frame_age_s:=600.0"),
        harness=ActionHarness,
    )
    yield h, proc
    h.close()
    log = stop_node(proc)
    assert "Traceback" not in log


@pytest.fixture(scope="module")
def images() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    (a, *_), (b, *_), (c, *_) = scenes(3, seed=31)
    return a, b, c


@pytest.fixture(scope="module")
def frames(cams, images):
    """Frames A on wrist, B on head (published once: the node keeps the newest), C for goals' own images."""
    h, _ = cams
    a, b, _ = images
    h.show(a, h.cams["wrist"], frame_id="wrist_cam")
    h.show(b, h.cams["head"], frame_id="head_cam")
    return images


def test_the_built_interfaces_have_the_contracted_fields():
    fields = {
        Ask.Goal: "prompt:string image:sensor_msgs/Image camera:string max_new_tokens:uint32 temperature:float",
        Ask.Result: "answer:string finish_reason:string frame_header:std_msgs/Header frame_age_ms:float ttft_ms:float "
        "total_ms:float tokens:uint32",
        Ask.Feedback: "text:string tokens:uint32",
    }
    for cls, spec in fields.items():
        assert cls.get_fields_and_field_types() == dict(f.split(":") for f in spec.split()), cls
    msg = AnswerMsg.get_fields_and_field_types()
    assert {"prompt", "answer", "camera", "frame_header", "ttft_ms", "total_ms", "finish_reason"} <= set(msg)


def test_goals_answer_about_the_chosen_camera_or_their_own_image_with_feedback(cams, frames, reference):
    h, _ = cams
    a, b, c = frames
    n_stamped, n_diags = len(h.stamped), h.answer_diags()
    expected = {name: reference.ask(img, Q, max_new_tokens=8) for name, img in (("a", a), ("b", b), ("c", c))}
    assert len({e.text for e in expected.values()}) == 3  # the answers tell the frames apart
    for camera, key, frame_id in (("wrist", "a", "wrist_cam"), ("head", "b", "head_cam"), ("", "a", "wrist_cam")):
        feedback: list = []
        status, result = h.run(goal(camera=camera), feedback)
        want = expected[key]
        assert status == GoalStatus.STATUS_SUCCEEDED and result.answer == want.text, camera
        assert (result.finish_reason, result.tokens) == (want.finish_reason, len(want.token_ids))
        assert result.frame_header.frame_id == frame_id and result.total_ms >= result.ttft_ms > 0
        # feedback per token: the text so far, counted, ending with the answer (repeated at the end only when the
        # last token's text was released when the answer ended); a stored answer replayed (frame reuse, the third
        # goal asks about the wrist frame again) is one feedback with all its tokens
        assert h.spin_until(lambda fb=feedback, text=result.answer: fb and fb[-1].text == text, 10)
        counts, n = [f.tokens for f in feedback], result.tokens
        replayed = [n] if camera == "" else None
        assert counts == replayed or (counts[:n] == list(range(1, n + 1)) and counts[n:] in ([], [n])), counts
        assert all(result.answer.startswith(f.text) for f in feedback)
    # an image in the goal is answered about, with its own header; the goal's max_new_tokens applies
    stamp = time.time_ns()
    status, result = h.run(goal(image=h.frame_msg(c, stamp, frame_id="gripper"), max_new_tokens=3))
    want = reference.ask(c, Q, max_new_tokens=3)
    assert status == GoalStatus.STATUS_SUCCEEDED and result.answer == want.text and result.tokens == 3
    header = result.frame_header
    assert (header.frame_id, header.stamp.sec * 1_000_000_000 + header.stamp.nanosec) == ("gripper", stamp)
    # every answer also goes to answer/stamped: goals and topic prompts (the first camera's frame). The four goals'
    # own messages first, so that a late one (a loaded machine) is not taken for the prompt's (same question)
    assert h.spin_until(lambda: len(h.stamped) >= n_stamped + 4 and h.answer_diags() >= n_diags + 4, 10)
    assert h.ask(Q) == expected["a"].text
    assert h.spin_until(lambda: len(h.stamped) >= 5, 10)
    got = [(m.source, m.camera, m.frame_header.frame_id, m.answer) for m in h.stamped[-5:]]
    assert got == [
        ("goal", "wrist", "wrist_cam", expected["a"].text),
        ("goal", "head", "head_cam", expected["b"].text),
        ("goal", "wrist", "wrist_cam", expected["a"].text),
        ("goal", "<goal image>", "gripper", want.text),
        ("topic", "wrist", "wrist_cam", expected["a"].text),
    ]
    assert all(m.finish_reason and m.total_ms > 0 and m.tokens > 0 for m in h.stamped[-5:])


def test_cancel_mid_answer_returns_the_partial_text(cams, frames, reference):
    h, _ = cams
    feedback: list = []
    handle = h.send(goal(camera="head", max_new_tokens=LONG), feedback)
    assert handle is not None and h.spin_until(lambda: len(feedback) >= 3, 60)
    h.cancel(handle)
    status, result = h.result(handle)
    assert status == GoalStatus.STATUS_CANCELED and result.finish_reason == "canceled"
    assert 3 <= result.tokens < LONG // 4 and result.answer  # stopped early, with the text so far
    assert h.spin_until(lambda: feedback[-1].text == result.answer, 10)  # the last feedback is the result
    assert feedback[-1].tokens == result.tokens  # per token: the result stopped at the token it was canceled at
    full = reference.ask(frames[1], Q, max_new_tokens=8).text
    assert full.startswith(result.answer) or result.answer.startswith(full)  # the same answer, cut short
    # the model is free again: the next goal is answered in full
    status, result = h.run(goal(camera="head"))
    assert status == GoalStatus.STATUS_SUCCEEDED and result.answer == full


def test_a_full_queue_rejects_goals_and_accepted_goals_are_never_dropped(cams, frames, reference):
    h, _ = cams
    feedback: list = []
    running = h.send(goal(camera="head", max_new_tokens=LONG), feedback)
    assert running is not None and h.spin_until(lambda: len(feedback) >= 1, 60)  # the worker is busy with it
    waiting = [h.send(goal(f"Question {i}?", max_new_tokens=2)) for i in range(3)]
    assert all(w is not None for w in waiting)  # queue_size 3: they fit
    h.reject(goal("One too many?"), "the request queue is full (queue_size 3)")
    dropped = int(h.diags[-1]["prompts_dropped"])
    for _ in range(2):  # topic prompts make room by dropping prompts, never accepted goals: here themselves
        h.prompt.publish(String(data="Dropped?"))
    assert h.spin_until(lambda: int(h.diags[-1]["prompts_dropped"]) >= dropped + 2, 20)
    h.cancel(waiting[0])  # canceled while waiting: ends at once, unanswered
    status, result = h.result(waiting[0])
    assert status == GoalStatus.STATUS_CANCELED and (result.answer, result.tokens) == ("", 0)
    assert not running.get_result_async().done()  # still generating
    h.cancel(running)
    assert h.result(running)[0] == GoalStatus.STATUS_CANCELED
    for i, handle in ((1, waiting[1]), (2, waiting[2])):
        status, result = h.result(handle)
        want = reference.ask(frames[0], f"Question {i}?", max_new_tokens=2)
        assert status == GoalStatus.STATUS_SUCCEEDED and result.answer == want.text
    assert h.spin_until(lambda: h.stamped[-1].prompt == "Question 2?", 10)
    assert [m.prompt for m in h.stamped[-3:]] == [Q, "Question 1?", "Question 2?"]  # in order, nothing dropped


def test_cameras_and_read_only_parameters(cams, frames):
    h, _ = cams
    result = h.set_parameters(cameras=["wrist", "9lives"])
    assert not result[0].successful and "invalid names ['9lives']" in result[0].reason
    result = h.set_parameters(autostart=False)
    assert not result[0].successful and "read-only" in result[0].reason
    h.reject(goal(camera="tail"), "unknown camera 'tail': this node's cameras are ['wrist', 'head']")
    assert h.set_parameters(cameras=["wrist", "head", "tail"])[0].successful  # resubscribes
    try:
        status, result = h.run(goal(camera="tail"))
        assert status == GoalStatus.STATUS_ABORTED and result.finish_reason == "no_frame"
        assert result.answer.startswith(f"[no frame] No camera frame has arrived on {h.ns}/tail/image yet")
        status, result = h.run(goal(camera="head"))  # kept cameras keep their newest frame
        assert status == GoalStatus.STATUS_SUCCEEDED and result.frame_header.frame_id == "head_cam"
    finally:
        assert h.set_parameters(cameras=["wrist", "head"])[0].successful


def test_visual_tokens_apply_in_place_between_answers(cams, frames, tiny_long):
    """visual_tokens changes the loaded model's image tokens without reloading it (the tiny model's 16 → 4)."""
    h, proc = cams
    h.ask(Q)
    before = h.answer_diag()
    assert h.set_parameters(visual_tokens=4)[0].successful
    try:
        h.spin_until(lambda: False, 1.0)  # applied between answers (the worker looks every 0.2 s)
        fewer = Assistant.from_pretrained(tiny_long, backend="torch", visual_tokens=4)
        assert h.ask(Q) == fewer.ask(frames[0], Q, max_new_tokens=8).text
        assert int(h.answer_diag()["prompt_tokens"]) == int(before["prompt_tokens"]) - 12
        assert read_log(proc).count(f"loaded {tiny_long}") == 1  # not reloaded
    finally:
        assert h.set_parameters(visual_tokens=0)[0].successful


def test_hostile_prompts_and_goals_are_refused_before_tokenizing_with_one_short_warning(cams, frames):
    h, proc = cams
    huge = "Describe " + "x" * 400_000
    assert h.ask(huge) == "[error] prompt of 400009 characters refused: longer than max_prompt_chars (16384)"
    assert h.spin_until(lambda: h.stamped and h.stamped[-1].finish_reason == "error", 10)
    assert h.stamped[-1].prompt.startswith("'Describe xxx") and len(h.stamped[-1].prompt) < 140
    h.reject(goal(huge), "prompt of 400009 characters is longer than max_prompt_chars (16384): 'Describe xxx")
    # within max_prompt_chars but beyond the 4096-position context: tokenized, refused by the model, one line
    beyond = "Where " + "z" * 12_000
    assert h.ask(beyond).startswith("[error] ContextLengthError: prompt does not fit the context")
    status, result = h.run(goal(beyond))
    assert status == GoalStatus.STATUS_ABORTED and result.finish_reason == "context"
    h.reject(  # (an image without data: refused from its fields, before anything is read)
        goal(image=Image(encoding="rgb8", height=5000, width=5000, step=15000)),
        "goal image: image 5000x5000 = 25000000 pixels exceeds max_frame_pixels 16777216",
    )
    log = read_log(proc)
    lines = [line for line in log.splitlines() if "refused" in line or "rejected" in line or "cannot answer" in line]
    assert len(lines) >= 4 and all(len(line) < 400 for line in lines), lines
    assert "x" * 200 not in log and "z" * 200 not in log and "Traceback" not in log


def _corrupt_copy(tmp_path: Path) -> Path:
    """shapes-demo's export with one weight byte flipped: resolves as a model directory, fails its checksums."""
    bad = tmp_path / "corrupt_export"
    shutil.copytree(SHIPPED_EXPORTS["shapes-demo"], bad)
    data = bad / "embed_tokens.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0xFF
    data.write_bytes(bytes(raw))
    return bad


def test_lifecycle_driven_through_the_node_services(ros, tiny_long, images, reference, tmp_path):
    """autostart with a model that fails to load → unconfigured, the reason reported; then configure, activate,
    deactivate mid-answer (the answer finishes), cleanup and configure again — goals rejected unless active."""
    ns = new_namespace()
    proc = spawn_node(
        ns, "-p", f"model:={_corrupt_copy(tmp_path)}", "-p", "cameras:=[wrist]", "-p", "max_new_tokens:=8"
    )
    h = ActionHarness(ns)
    try:
        assert h.state() == "unconfigured"
        failure = h.wait_diag("configure failed: cannot load model")
        assert "corrupt_export" in failure["_message"] and failure["lifecycle_state"] == "unconfigured"
        h.reject(goal(), "the node is unconfigured, not active")
        assert h.set_parameters(model=str(tiny_long), backend="torch")[0].successful
        assert h.transition(Transition.TRANSITION_CONFIGURE) and h.state() == "inactive"
        h.reject(goal(), "the node is inactive, not active")  # configured, not active: no goals, no prompts
        assert h.prompt.get_subscription_count() == 0
        assert h.transition(Transition.TRANSITION_ACTIVATE) and h.state() == "active"
        assert h.spin_until(lambda: h.prompt.get_subscription_count() > 0, 30)
        h.show(images[0], h.cams["wrist"], frame_id="wrist_cam")
        feedback: list = []
        answering = h.send(goal(max_new_tokens=1500), feedback)
        assert answering is not None and h.spin_until(lambda: len(feedback) >= 1, 60)
        assert h.transition(Transition.TRANSITION_DEACTIVATE) and h.state() == "inactive"
        h.reject(goal(), "the node is inactive, not active")
        status, result = h.result(answering)  # the answer in progress finished
        assert status == GoalStatus.STATUS_SUCCEEDED and result.finish_reason == "length" and result.tokens == 1500
        n = len(h.diags)
        assert h.transition(Transition.TRANSITION_CLEANUP) and h.state() == "unconfigured"
        assert h.wait_diag("unconfigured (model freed)", since=n)["answers"] == "0"
        assert h.transition(Transition.TRANSITION_CONFIGURE) and h.transition(Transition.TRANSITION_ACTIVATE)
        h.show(images[0], h.cams["wrist"], frame_id="wrist_cam")
        status, result = h.run(goal())
        assert (
            status == GoalStatus.STATUS_SUCCEEDED
            and result.answer == reference.ask(images[0], Q, max_new_tokens=8).text
        )
    finally:
        h.close()
        stop_node(proc)
