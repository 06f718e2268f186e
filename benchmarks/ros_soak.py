"""ROS soak: vqa_node under a 30 Hz stream of camera-sized frames for N minutes, a prompt per second → JSON.

    make ros2_ws/install
    .venv/bin/python benchmarks/ros_soak.py --resolution 720p --minutes 10 --out benchmarks/results/ros_soak_720p.json
    .venv/bin/python benchmarks/ros_soak.py --resolution 1080p --minutes 10 --out benchmarks/results/ros_soak_1080p.json

Three processes, as on a robot, all on Fast DDS's LARGE_DATA transports (what vqa.launch.py gives its nodes;
--dds-transports DEFAULT measures without them):
- a camera (this script with --camera) publishing sensor_msgs/Image rgb8 at --rate-hz, cycling --frames distinct
  pre-rendered shapes frames (a prime count, so prompts a second apart see different frames), freshly stamped,
  frame_id `soak/<index>`;
- the colcon-installed vqa_node (ros2_ws/install; started in the environment `source install/setup.bash` gives);
- this client: a prompt every --prompt-period-s on `prompt`, the answers from `answer/stamped`.

It reports prompts answered about a frame, `[no frame]` answers and unanswered prompts; latency percentiles of
prompt → answer (at the client), frame stamp → answer and the node's model time; the node's resident memory over
time; and what the node adds: right after each answer, this process asks the same model (Assistant.ask, the node's
settings) about the very frame the node answered about (its frame_id), so both paths run in the same run, under the
same load. The overhead is median(prompt → answer through ROS) − median(Assistant.ask); the issue's bound is 5 % of
the direct median + 5 ms.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
INSTALL = ROOT / "ros2_ws" / "install"
RESOLUTIONS = {"720p": (1280, 720), "1080p": (1920, 1080)}
QUESTIONS = ("How many shapes are there?", "What shape is in the image?", "Is there a red circle?")
RSS_EVERY_S = 5.0

logger = logging.getLogger("ros_soak")


def render_frames(width: int, height: int, count: int, seed: int) -> list[np.ndarray]:
    """`count` shapes frames of height × height, padded left and right to width × height (light grey)."""
    from lphi_edge.data.shapes import random_scene, render

    rng = np.random.default_rng(seed)
    pad = (width - height) // 2
    frames = []
    for _ in range(count):
        square = render(random_scene(rng, height, 3), rng, height)  # (H, H, 3)
        frames.append(
            np.ascontiguousarray(np.pad(square, ((0, 0), (pad, width - height - pad), (0, 0)), constant_values=200))
        )
    return frames


def camera_main(args: argparse.Namespace) -> int:
    """The camera process: publish the frames at args.rate_hz until SIGINT."""
    import rclpy
    from rclpy.node import Node
    from sensor_msgs.msg import Image

    from lphi_edge.ros.vqa_node import IMAGE_QOS

    width, height = RESOLUTIONS[args.resolution]
    frames = render_frames(width, height, args.frames, args.seed)
    rclpy.init(args=[])
    node = Node("soak_camera")
    pub = node.create_publisher(Image, "image", IMAGE_QOS)
    msgs = []
    for i, f in enumerate(frames):
        msg = Image(encoding="rgb8", height=height, width=width, step=width * 3, data=f.tobytes())
        msg.header.frame_id = f"soak/{i}"
        msgs.append(msg)
    stop = []
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    period, sent = 1.0 / args.rate_hz, 0
    start = next_at = time.perf_counter()
    while not stop:
        msg = msgs[sent % len(msgs)]
        msg.header.stamp = node.get_clock().now().to_msg()
        pub.publish(msg)
        sent += 1
        next_at += period
        delay = next_at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        elif delay < -1.0:  # far behind (a loaded machine): do not burst to catch up
            next_at = time.perf_counter()
    elapsed = time.perf_counter() - start
    print(json.dumps({"frames_published": sent, "seconds": round(elapsed, 3)}), flush=True)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


def percentiles(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0}
    a = np.asarray(values)
    out: dict[str, float | int] = {"n": len(values)}
    for p in (50, 90, 99):
        out[f"p{p}"] = round(float(np.percentile(a, p)), 2)
    out["max"] = round(float(a.max()), 2)
    out["mean"] = round(float(a.mean()), 2)
    return out


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def workspace_env() -> dict[str, str]:
    if not (INSTALL / "setup.bash").is_file():
        raise SystemExit(f"ros_soak: {INSTALL} is not built: run `make ros2_ws/install` first")
    out = subprocess.run(["bash", "-c", f"source {INSTALL / 'setup.bash'} && env -0"], capture_output=True, check=True)
    return dict(kv.split("=", 1) for kv in out.stdout.decode().split("\0") if "=" in kv)


def soak(args: argparse.Namespace) -> dict:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from lphi_edge_interfaces.msg import Answer
    from rclpy.node import Node
    from std_msgs.msg import String

    from lphi_edge import Assistant

    width, height = RESOLUTIONS[args.resolution]
    env = {**os.environ, "ROS_DOMAIN_ID": str(args.domain)}
    if args.dds_transports != "DEFAULT":
        env["FASTDDS_BUILTIN_TRANSPORTS"] = args.dds_transports
    logs = {name: tempfile.TemporaryFile("w+") for name in ("vqa_node", "camera")}
    vqa = subprocess.Popen(
        [str(INSTALL / "lphi_edge/lib/lphi_edge/vqa_node"), "--ros-args", "-p", f"model:={args.model}",
         "-p", f"backend:={args.backend}", "-p", f"max_new_tokens:={args.max_new_tokens}"],
        stdout=logs["vqa_node"], stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    camera = subprocess.Popen(
        [sys.executable, __file__, "--camera", "--resolution", args.resolution, "--rate-hz", str(args.rate_hz),
         "--frames", str(args.frames), "--seed", str(args.seed)],
        stdout=subprocess.PIPE, stderr=logs["camera"], env=env, text=True,
    )  # fmt: skip
    os.environ.update({k: v for k, v in env.items() if k in ("ROS_DOMAIN_ID", "FASTDDS_BUILTIN_TRANSPORTS")})
    rclpy.init(args=[])
    node = Node("soak_client")
    answers: list[tuple[float, object]] = []
    status: dict[str, str] = {}

    def on_diag(msg: DiagnosticArray) -> None:
        for s in msg.status:
            if s.name.startswith("/vqa_node"):
                status.clear()
                status.update({kv.key: kv.value for kv in s.values})

    node.create_subscription(Answer, "answer/stamped", lambda m: answers.append((time.time(), m)), 100)
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    prompts = node.create_publisher(String, "prompt", 10)

    def spin_for(seconds: float, until=lambda: False) -> None:
        end = time.time() + seconds
        while time.time() < end and not until():
            rclpy.spin_once(node, timeout_sec=0.005)
            if vqa.poll() is not None or camera.poll() is not None:
                raise RuntimeError("the node or the camera exited")

    frames = render_frames(width, height, args.frames, args.seed)  # the camera's, for the direct path
    direct = Assistant.from_pretrained(args.model, backend=args.backend, frame_reuse=True)  # the node's defaults
    result: dict = {}
    try:
        spin_for(120, lambda: prompts.get_subscription_count() > 0 and node.count_publishers("image") > 0)
        # warm-up: until an answer about a camera frame comes back (discovery, first inference)
        deadline = time.time() + 120
        while time.time() < deadline and not any(m.finish_reason not in ("no_frame", "error") for _, m in answers):
            prompts.publish(String(data=QUESTIONS[0]))
            spin_for(1.0)
        for q in QUESTIONS:  # warm the direct path too
            direct.ask(frames[0], q, max_new_tokens=args.max_new_tokens)
        answers.clear()
        sent: list[tuple[float, str]] = []
        matched: list[dict] = []
        rss: list[tuple[float, float]] = []  # (seconds, node RSS MB)
        load: list[float] = []  # the machine's 1-minute load average beside each RSS sample
        start = time.time()
        next_prompt, next_rss = start, start
        end = start + args.minutes * 60
        while time.time() < end or (len(matched) < len(sent) and time.time() < end + 30):
            now = time.time()
            if now >= next_prompt and now < end:
                q = QUESTIONS[len(sent) % len(QUESTIONS)]
                prompts.publish(String(data=q))
                sent.append((time.time(), q))
                next_prompt += args.prompt_period_s
            if now >= next_rss:
                rss.append((round(now - start, 1), round(rss_mb(vqa.pid), 1)))
                load.append(round(os.getloadavg()[0], 2))
                next_rss += RSS_EVERY_S
            spin_for(0.01)
            while answers and len(matched) < len(sent):
                received, m = answers.pop(0)
                asked_at, q = sent[len(matched)]
                if m.prompt != q:
                    raise RuntimeError(f"answer to {m.prompt!r} where {q!r} was expected (a prompt was dropped?)")
                row = {
                    "answered": m.finish_reason not in ("no_frame", "error"),
                    "no_frame": m.finish_reason == "no_frame",
                    "prompt_to_answer_ms": (received - asked_at) * 1e3,
                    "node_total_ms": m.total_ms,
                    "queue_wait_ms": m.queue_wait_ms,
                    "frame_age_ms": m.frame_age_ms,
                }
                if row["answered"]:
                    stamp = m.frame_header.stamp.sec + m.frame_header.stamp.nanosec / 1e9
                    row["frame_to_answer_ms"] = (received - stamp) * 1e3
                    frame = frames[int(m.frame_header.frame_id.split("/")[1])]
                    t0 = time.perf_counter()
                    ans = direct.ask(frame, q, max_new_tokens=args.max_new_tokens)
                    row["direct_ms"] = (time.perf_counter() - t0) * 1e3
                    row["same_answer"] = ans.text == m.answer
                matched.append(row)
        spin_for(2.0)  # a last status
        ok = [r for r in matched if r["answered"]]
        ros_median = float(np.median([r["prompt_to_answer_ms"] for r in ok])) if ok else float("nan")
        direct_median = float(np.median([r["direct_ms"] for r in ok])) if ok else float("nan")
        growth = [mb for t, mb in rss if t >= args.minutes * 60 * 0.2]
        result = {
            "scenario": "ros_soak",
            "config": {
                "resolution": args.resolution,
                "width": width,
                "height": height,
                "encoding": "rgb8",
                "frame_mb": round(width * height * 3 / 1e6, 2),
                "rate_hz": args.rate_hz,
                "prompt_period_s": args.prompt_period_s,
                "minutes": args.minutes,
                "model": args.model,
                "backend": args.backend,
                "max_new_tokens": args.max_new_tokens,
                "dds_transports": args.dds_transports,
                "distinct_frames": args.frames,
            },
            "machine": {
                "cpu": _cpu_model(),
                "cores": os.cpu_count(),
                "python": platform.python_version(),
                "load_avg_1min": percentiles(load),  # other work on the machine during the run
            },
            "prompts": {
                "sent": len(sent),
                "answered_about_a_frame": len(ok),
                "no_frame": sum(r["no_frame"] for r in matched),
                "unanswered": len(sent) - len(matched),
                "same_answer_as_direct": sum(r.get("same_answer", False) for r in ok),
            },
            "latency_ms": {
                "prompt_to_answer_ros": percentiles([r["prompt_to_answer_ms"] for r in ok]),
                "direct_assistant_ask": percentiles([r["direct_ms"] for r in ok]),
                "frame_to_answer_ros": percentiles([r["frame_to_answer_ms"] for r in ok]),
                "node_model_total": percentiles([r["node_total_ms"] for r in ok]),
                "node_queue_wait": percentiles([r["queue_wait_ms"] for r in ok]),
                "frame_age_at_start": percentiles([r["frame_age_ms"] for r in ok]),
            },
            "node_overhead": {
                "median_ros_ms": round(ros_median, 2),
                "median_direct_ms": round(direct_median, 2),
                "added_ms": round(ros_median - direct_median, 2),
                "bound_ms": round(0.05 * direct_median + 5.0, 2),
                "within_bound": bool(ros_median - direct_median <= 0.05 * direct_median + 5.0),
            },
            "node_rss_mb": {
                "samples": rss,
                "start": rss[0][1] if rss else None,
                "end": rss[-1][1] if rss else None,
                "max": max(mb for _, mb in rss) if rss else None,
                "growth_after_first_20pct": round(max(growth) - growth[0], 1) if growth else None,
            },
            "node_counters": {
                k: status.get(k)
                for k in (
                    "frames_received",
                    "frames_dropped",
                    "frames_malformed",
                    "prompts_dropped",
                    "answers",
                    "frames_reused",
                )
            },  # fmt: skip
        }
    finally:
        camera.send_signal(signal.SIGINT)
        try:
            out, _ = camera.communicate(timeout=30)
            result.setdefault("camera", json.loads(out.strip().splitlines()[-1]) if out.strip() else {})
        except (subprocess.TimeoutExpired, ValueError):
            camera.kill()
        vqa.send_signal(signal.SIGINT)
        try:
            vqa.wait(timeout=30)
        except subprocess.TimeoutExpired:
            vqa.kill()
        node.destroy_node()
        rclpy.try_shutdown()
    cam = result.get("camera", {})
    if cam.get("seconds"):
        cam["achieved_hz"] = round(cam["frames_published"] / cam["seconds"], 2)
    return result


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ros_soak.py", description=__doc__.split("\n")[0])
    p.add_argument("--resolution", choices=sorted(RESOLUTIONS), default="720p")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--rate-hz", type=float, default=30.0)
    p.add_argument("--prompt-period-s", type=float, default=1.0)
    p.add_argument("--frames", type=int, default=31, help="distinct frames the camera cycles through")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="shapes-demo")
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--dds-transports", default="LARGE_DATA", help="FASTDDS_BUILTIN_TRANSPORTS, or DEFAULT (unset)")
    p.add_argument("--domain", type=int, default=90 + os.getpid() % 60, help="ROS_DOMAIN_ID of the soak's graph")
    p.add_argument("--out", type=Path, help="write the JSON here (else stdout)")
    p.add_argument("--camera", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.camera:
        return camera_main(args)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not os.environ.get("_LPHI_SOAK_WORKSPACE"):  # run in the workspace's environment (source install/setup.bash)
        env = {**workspace_env(), "_LPHI_SOAK_WORKSPACE": "1"}
        return subprocess.run([sys.executable, *sys.orig_argv[1:]], env=env).returncode
    logger.info("soak: %s at %g Hz for %g min, a prompt every %g s", args.resolution, args.rate_hz, args.minutes,
                args.prompt_period_s)  # fmt: skip
    result = soak(args)
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        logger.info("wrote %s", args.out)
    prompts, overhead = result.get("prompts", {}), result.get("node_overhead", {})
    logger.info("prompts %s; overhead %s; rss %s", prompts, overhead,
                {k: v for k, v in result.get("node_rss_mb", {}).items() if k != "samples"})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
