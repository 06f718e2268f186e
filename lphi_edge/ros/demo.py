"""`lphi-ros-demo` (run by `make demo`): the VQA node on shapes-demo via onnxruntime, the synthetic camera,
and a few prompts; prints each question, the answer and the frame → answer latency, then shuts both
nodes down (SIGINT) and exits."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from std_msgs.msg import String

PROMPTS = ("How many shapes are there?", "Describe the image briefly.", "Is there a red circle?")


def _spawn(module: str, *ros_args: str) -> subprocess.Popen:
    log = tempfile.TemporaryFile("w+")  # not a pipe: a chatty node must never block on it
    proc = subprocess.Popen([sys.executable, "-m", module, "--ros-args", *ros_args], stderr=log, text=True)
    proc.log = log  # type: ignore[attr-defined]
    return proc


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
    cam = _spawn("lphi_edge.ros.camera_node", "-p", "source:=shapes", "-p", f"rate_hz:={args.rate_hz}", "-p", "seed:=7")
    rclpy.init(args=[])
    node = Node("lphi_ros_demo")
    answers: list[str] = []
    diags: list[dict[str, str]] = []
    node.create_subscription(String, "answer", lambda m: answers.append(m.data), 10)

    def on_diag(msg: DiagnosticArray) -> None:
        for s in msg.status:
            values = {kv.key: kv.value for kv in s.values}
            if "answer" in values:
                diags.append(values)

    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    prompts = node.create_publisher(String, "prompt", 10)
    status = 0
    try:
        deadline = time.time() + args.timeout
        while time.time() < deadline and (prompts.get_subscription_count() == 0 or node.count_publishers("image") == 0):
            rclpy.spin_once(node, timeout_sec=0.1)
            if vqa.poll() is not None or cam.poll() is not None:
                raise RuntimeError("a node exited during start-up")
        t_wait = time.time() + 1.0
        while time.time() < t_wait:  # let a few frames arrive
            rclpy.spin_once(node, timeout_sec=0.05)
        print(f"vqa_node ({args.model}, {args.backend}) + camera_node (synthetic shapes, {args.rate_hz:g} Hz)")
        for q in args.prompt or PROMPTS:
            t_next = time.time() + 0.3  # a fresh frame for each question
            while time.time() < t_next:
                rclpy.spin_once(node, timeout_sec=0.05)
            n = len(answers)
            prompts.publish(String(data=q))
            t_end = time.time() + args.timeout
            while time.time() < t_end and (len(answers) == n or len(diags) <= n):
                rclpy.spin_once(node, timeout_sec=0.05)
            if len(answers) == n:
                raise RuntimeError(f"no answer to {q!r} within {args.timeout:g} s")
            d = diags[n] if len(diags) > n else {}
            print(f"Q: {q}")
            print(f"A: {answers[n]}")
            print(
                f"   frame → answer {d.get('frame_to_answer_ms', '?')} ms (frame age at start "
                f"{d.get('frame_age_ms', '?')} ms, vision {d.get('vision_ms', '?')} ms, "
                f"{d.get('tokens_per_s', '?')} tokens/s)"
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
            if proc.returncode != 0:
                print(f"{name} exited with {proc.returncode}:\n{err[-2000:]}", file=sys.stderr)
                status = status or 1
    return status


if __name__ == "__main__":
    sys.exit(main())
