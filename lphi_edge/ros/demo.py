"""`lphi-ros-demo` (run by `make demo`): the VQA node on shapes-demo via onnxruntime and the synthetic camera
holding one scene in view; prints the scene the camera shows (its ground truth, from the camera's `scene` topic),
then each question about it, the answer, the true answer and the frame → answer latency, then shuts both nodes
down (SIGINT) and exits."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from std_msgs.msg import String

from lphi_edge.data.shapes import Shape, questions
from lphi_edge.ros.camera_node import SCENE_QOS, describe

RETRY_S = 5.0  # ask again after this long without a reply
OPEN_PROMPT = "Describe the image briefly."  # asked after the scene's own questions (no single true answer)


def scene_questions(scene_json: str, seed: int = 0) -> list[tuple[str, str | None]]:
    """(question, true answer) about the camera's scene: the shapes task's questions for it, then OPEN_PROMPT."""
    shapes = [Shape(**s) for s in json.loads(scene_json)]
    return [(qa.question, qa.answer) for qa in questions(shapes, np.random.default_rng(seed))] + [(OPEN_PROMPT, None)]


def _spawn(module: str, *ros_args: str) -> subprocess.Popen:
    log = tempfile.TemporaryFile("w+")  # not a pipe: a chatty node must never block on it
    proc = subprocess.Popen([sys.executable, "-m", module, "--ros-args", *ros_args], stderr=log, text=True)
    proc.log = log  # type: ignore[attr-defined]
    return proc


def _ask(q: str, prompts, diags: list[dict[str, str]], streamed: list[str], spin_for, timeout: float) -> dict[str, str]:
    """Publish `q` until the VQA node's diagnostics report an answer to it about a camera frame.

    Discovery is per endpoint and asymmetric, so the first prompt can reach a node whose diagnostics publisher has
    not yet matched this subscriber (or whose image subscription has not yet matched the camera, answered "[no frame]"):
    ask again after a no-frame answer, or after RETRY_S seconds with neither a reply nor a streamed token (a slow
    model that is streaming its answer is not asked twice), until `timeout`."""
    deadline = time.time() + timeout

    def wait(seconds: float, until) -> None:
        spin_for(min(seconds, max(0.0, deadline - time.time())), until)

    while time.time() < deadline:
        start = len(diags)
        prompts.publish(String(data=q))
        replied = lambda start=start: next((d for d in diags[start:] if d.get("prompt") == q), None)  # noqa: E731
        n_streamed = -1
        while replied() is None and len(streamed) > n_streamed and time.time() < deadline:  # streaming: wait
            n_streamed = len(streamed)
            wait(RETRY_S, lambda r=replied: r() is not None)
        reply = replied()
        if reply is None:
            print(f"lphi-ros-demo: no reply to {q!r} yet, asking again", file=sys.stderr)
        elif reply["answer"].startswith("[no frame]"):
            wait(0.5, lambda: False)
        else:
            return reply
    raise RuntimeError(f"no answer about a camera frame to {q!r} within {timeout:g} s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lphi-ros-demo", description=__doc__)
    p.add_argument("--model", default="shapes-demo")
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--rate-hz", type=float, default=15.0, help="camera frame rate")
    p.add_argument("--prompt", action="append", help="ask this instead of the built-in prompts (repeatable)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each answer")
    args = p.parse_args(argv)
    os.environ.setdefault("ROS_DOMAIN_ID", str(100 + os.getpid() % 100))  # keep clear of other graphs
    vqa = _spawn("lphi_edge.ros.vqa_node", "-p", f"model:={args.model}", "-p", f"backend:={args.backend}")
    cam = _spawn(
        "lphi_edge.ros.camera_node", "-p", "source:=shapes", "-p", f"rate_hz:={args.rate_hz}", "-p", "seed:=7",
        "-p", "scene_period_s:=3600.0",  # one scene for the whole demo: every answer can be checked against it
    )  # fmt: skip
    rclpy.init(args=[])
    node = Node("lphi_ros_demo")
    diags: list[dict[str, str]] = []  # the node's replies: prompt, answer and timings in one message

    def on_diag(msg: DiagnosticArray) -> None:
        for s in msg.status:
            values = {kv.key: kv.value for kv in s.values}
            if "answer" in values:
                diags.append(values)

    scenes: list[str] = []
    node.create_subscription(String, "scene", lambda m: scenes.append(m.data), SCENE_QOS)
    streamed: list[str] = []
    node.create_subscription(String, "answer/stream", lambda m: streamed.append(m.data), 10)
    diag_sub = node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    prompts = node.create_publisher(String, "prompt", 10)

    def spin_for(seconds: float, until=lambda: False) -> None:
        end = time.time() + seconds
        while time.time() < end and not until():
            rclpy.spin_once(node, timeout_sec=0.05)
            if vqa.poll() is not None or cam.poll() is not None:
                raise RuntimeError("a node exited")

    def ready() -> bool:  # every link of the graph discovered, from this side
        return (
            prompts.get_subscription_count() > 0
            and diag_sub.get_publisher_count() > 0
            and node.count_publishers("image") > 0
            and bool(scenes)
        )

    status = 0
    try:
        spin_for(args.timeout, ready)
        if not ready():
            raise RuntimeError(f"the vqa and camera nodes were not discovered within {args.timeout:g} s")
        spin_for(1.0)  # let a few frames arrive
        print(f"vqa_node ({args.model}, {args.backend}) + camera_node (synthetic shapes, {args.rate_hz:g} Hz)")
        print(f"The camera shows {describe([Shape(**s) for s in json.loads(scenes[-1])])}.")
        asked = [(q, None) for q in args.prompt] if args.prompt else scene_questions(scenes[-1])
        for q, truth in asked:
            spin_for(0.3)  # a fresh frame for each question
            reply = _ask(q, prompts, diags, streamed, spin_for, args.timeout)
            print(f"Q: {q}")
            print(f"A: {reply['answer']}" + ("" if truth is None else f"   (true answer: {truth})"))
            print(
                f"   frame → answer {reply.get('frame_to_answer_ms', '?')} ms (frame age at start "
                f"{reply.get('frame_age_ms', '?')} ms, vision {reply.get('vision_ms', '?')} ms, "
                f"{reply.get('tokens_per_s', '?')} tokens/s)"
            )
    except RuntimeError as e:
        print(f"lphi-ros-demo: {e}", file=sys.stderr)
        status = 1
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        for proc in (cam, vqa):
            proc.send_signal(signal.SIGINT)
        for name, proc in (("camera_node", cam), ("vqa_node", vqa)):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.log.seek(0)
            err = proc.log.read()
            if proc.returncode != 0 or status != 0:
                print(f"{name} exited with {proc.returncode}; its log ends:\n{err[-2000:]}", file=sys.stderr)
                status = status or 1
    return status


if __name__ == "__main__":
    sys.exit(main())
