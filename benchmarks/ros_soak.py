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

A static camera (--static): what frame reuse buys through the node (720p, the default resolution, here):

    .venv/bin/python benchmarks/ros_soak.py --static --minutes 2 --out benchmarks/results/ros_static_camera_720p.json

The camera publishes ONE shapes scene as a stream of fresh captures: --frames captures of the same clean frame, each
with its own Gaussian sensor noise (σ = --noise 8-bit levels, uncompressed: lphi_edge.data.camera.Camera), cycled at
--rate-hz, so consecutive frames differ by sensor noise only. The scenario runs twice, back to back with the same
frames and prompts, each part --minutes with a node process of its own: first with `frame_reuse_tolerance:=0.0`
(exact frames only: no reuse), then with the node's default tolerance (reuse). Per part: answers about a frame per
second, the prompts' fate, the latency percentiles above, the node's model and vision time, and from the node's
/diagnostics how many answers reused a frame's features (split into exact repeats of a capture, which the cycle of
--frames captures makes possible even without reuse, and near-identical frames) and how many reused a stored answer;
then the ratio no-reuse / reuse of the medians. The direct Assistant.ask comparison is not run in --static mode.
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


def static_captures(width: int, height: int, count: int, seed: int, noise: float) -> list[np.ndarray]:
    """`count` captures of ONE clean shapes frame (render_frames' first), each with fresh Gaussian sensor noise of
    σ = `noise` 8-bit levels, uncompressed: a static scene as a live camera sends it."""
    from lphi_edge.data.camera import Camera

    clean = render_frames(width, height, 1, seed)[0]
    camera, rng = Camera(noise=noise, jpeg_quality=None), np.random.default_rng(seed + 1)
    return [np.ascontiguousarray(camera.capture(clean, rng)) for _ in range(count)]


def camera_main(args: argparse.Namespace) -> int:
    """The camera process: publish the frames (--static: the captures) at args.rate_hz until SIGINT."""
    import rclpy
    from rclpy.node import Node
    from sensor_msgs.msg import Image

    from lphi_edge.ros.vqa_node import IMAGE_QOS

    width, height = RESOLUTIONS[args.resolution]
    if args.static:
        frames = static_captures(width, height, args.frames, args.seed, args.noise)
    else:
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


def graph_env(args: argparse.Namespace) -> dict[str, str]:
    """The soak graph's environment (its own ROS domain, the DDS transports), also set in this process for rclpy."""
    env = {**os.environ, "ROS_DOMAIN_ID": str(args.domain)}
    if args.dds_transports != "DEFAULT":
        env["FASTDDS_BUILTIN_TRANSPORTS"] = args.dds_transports
    os.environ.update({k: v for k, v in env.items() if k in ("ROS_DOMAIN_ID", "FASTDDS_BUILTIN_TRANSPORTS")})
    return env


class Graph:
    """The two other processes: the colcon-installed vqa_node (with extra `name:=value` parameters) and the camera."""

    def __init__(self, args: argparse.Namespace, env: dict[str, str], node_params: tuple[str, ...] = ()):
        self.logs = {name: tempfile.TemporaryFile("w+") for name in ("vqa_node", "camera")}
        params = [f"model:={args.model}", f"backend:={args.backend}", f"max_new_tokens:={args.max_new_tokens}"]
        self.vqa = subprocess.Popen(
            [str(INSTALL / "lphi_edge/lib/lphi_edge/vqa_node"), "--ros-args",
             *(a for p in [*params, *node_params] for a in ("-p", p))],
            stdout=self.logs["vqa_node"], stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        static = ["--static", "--noise", str(args.noise)] if args.static else []
        self.camera = subprocess.Popen(
            [sys.executable, __file__, "--camera", "--resolution", args.resolution, "--rate-hz", str(args.rate_hz),
             "--frames", str(args.frames), "--seed", str(args.seed), *static],
            stdout=subprocess.PIPE, stderr=self.logs["camera"], env=env, text=True,
        )  # fmt: skip

    def check(self) -> None:
        if self.vqa.poll() is not None or self.camera.poll() is not None:
            raise RuntimeError("the node or the camera exited")

    def stop(self) -> dict | None:
        """Stop the camera, then the node; the camera's own count of what it published (None if it gave none)."""
        published = None
        self.camera.send_signal(signal.SIGINT)
        try:
            out, _ = self.camera.communicate(timeout=30)
            published = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
        except (subprocess.TimeoutExpired, ValueError):
            self.camera.kill()
        self.vqa.send_signal(signal.SIGINT)
        try:
            self.vqa.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.vqa.kill()
        return published

    def log_tail(self, name: str, chars: int = 3000) -> str:
        self.logs[name].seek(0)
        return self.logs[name].read()[-chars:]


class Client:
    """This process on the graph: prompts out on `prompt`; answers from `answer/stamped` and the node's
    /diagnostics in (its latest status, and every per-answer status since the measurement started)."""

    def __init__(self, graph: Graph):
        from diagnostic_msgs.msg import DiagnosticArray
        from lphi_edge_interfaces.msg import Answer
        from rclpy.node import Node
        from std_msgs.msg import String

        self.graph, self._string = graph, String
        self.node = Node("soak_client")
        self.answers: list[tuple[float, object]] = []
        self.status: dict[str, str] = {}
        self.answer_statuses: list[dict[str, str]] = []  # the node's status with each answer (finish_reason, ...)
        self.node.create_subscription(Answer, "answer/stamped", lambda m: self.answers.append((time.time(), m)), 100)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        self.prompts = self.node.create_publisher(String, "prompt", 10)

    def _on_diag(self, msg) -> None:
        for s in msg.status:
            if s.name.startswith("/vqa_node"):
                self.status.clear()
                self.status.update({kv.key: kv.value for kv in s.values})
                if "finish_reason" in self.status:
                    self.answer_statuses.append(dict(self.status))

    def spin_for(self, seconds: float, until=lambda: False) -> None:
        import rclpy

        end = time.time() + seconds
        while time.time() < end and not until():
            rclpy.spin_once(self.node, timeout_sec=0.005)
            self.graph.check()

    def ask(self, question: str) -> None:
        self.prompts.publish(self._string(data=question))

    def warm_up(self) -> int:
        """Wait for the graph, then prompt once a second until an answer about a camera frame comes back
        (discovery, first inference); the prompts sent."""
        self.spin_for(
            120, lambda: self.prompts.get_subscription_count() > 0 and self.node.count_publishers("image") > 0
        )
        deadline, asked = time.time() + 120, 0
        while time.time() < deadline and not any(m.finish_reason not in ("no_frame", "error") for _, m in self.answers):
            self.ask(QUESTIONS[0])
            asked += 1
            self.spin_for(1.0)
        return asked

    def drain(self, asked: int) -> None:
        """Until each of the `asked` warm-up prompts was answered or dropped, then a periodic status (the
        counters the measurement starts from)."""
        self.spin_for(60, lambda: len(self.answers) + int(self.status.get("prompts_dropped", 0)) >= asked)
        self.spin_for(1.5)

    def measure(self, args: argparse.Namespace, on_answered=None) -> dict:
        """A prompt every args.prompt_period_s for args.minutes (then up to 30 s for the last answers), each matched
        with its answer: a row per answer; `on_answered(row, msg, question)` adds to the rows about a frame."""
        self.answers.clear()
        self.answer_statuses.clear()
        counters_at_start = dict(self.status)
        sent: list[tuple[float, str]] = []
        matched: list[dict] = []
        rss: list[tuple[float, float]] = []  # (seconds, node RSS MB)
        load: list[float] = []  # the machine's 1-minute load average beside each RSS sample
        start = time.time()
        next_prompt, next_rss, last_answer = start, start, start
        end = start + args.minutes * 60
        while time.time() < end or (len(matched) < len(sent) and time.time() < end + 30):
            now = time.time()
            if now >= next_prompt and now < end:
                q = QUESTIONS[len(sent) % len(QUESTIONS)]
                self.ask(q)
                sent.append((time.time(), q))
                next_prompt += args.prompt_period_s
            if now >= next_rss:
                rss.append((round(now - start, 1), round(rss_mb(self.graph.vqa.pid), 1)))
                load.append(round(os.getloadavg()[0], 2))
                next_rss += RSS_EVERY_S
            self.spin_for(0.01)
            while self.answers and len(matched) < len(sent):
                received, m = self.answers.pop(0)
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
                    if on_answered is not None:
                        on_answered(row, m, q)
                matched.append(row)
                last_answer = received
        self.spin_for(2.0)  # a last status
        return {
            "sent": sent,
            "matched": matched,
            "ok": [r for r in matched if r["answered"]],
            "rss": rss,
            "load": load,
            "seconds": max(end, last_answer) - start,  # the first prompt → the later of the last prompt period's end
            "counters_at_start": counters_at_start,  # and the last answer
            "counters_at_end": dict(self.status),
        }

    def destroy(self) -> None:
        self.node.destroy_node()


def prompts_summary(run: dict) -> dict:
    return {
        "sent": len(run["sent"]),
        "answered_about_a_frame": len(run["ok"]),
        "no_frame": sum(r["no_frame"] for r in run["matched"]),
        "unanswered": len(run["sent"]) - len(run["matched"]),
    }


def latency_summary(ok: list[dict], direct: bool = False) -> dict:
    """Latency percentiles of the rows about a frame (with `direct`: Assistant.ask's too)."""
    out = {"prompt_to_answer_ros": percentiles([r["prompt_to_answer_ms"] for r in ok])}
    if direct:
        out["direct_assistant_ask"] = percentiles([r["direct_ms"] for r in ok])
    return out | {
        "frame_to_answer_ros": percentiles([r["frame_to_answer_ms"] for r in ok]),
        "node_model_total": percentiles([r["node_total_ms"] for r in ok]),
        "node_queue_wait": percentiles([r["queue_wait_ms"] for r in ok]),
        "frame_age_at_start": percentiles([r["frame_age_ms"] for r in ok]),
    }


def rss_summary(rss: list[tuple[float, float]], minutes: float, samples: bool = True) -> dict:
    growth = [mb for t, mb in rss if t >= minutes * 60 * 0.2]
    return {
        **({"samples": rss} if samples else {}),
        "start": rss[0][1] if rss else None,
        "end": rss[-1][1] if rss else None,
        "max": max(mb for _, mb in rss) if rss else None,
        "growth_after_first_20pct": round(max(growth) - growth[0], 1) if growth else None,
    }


def config_summary(args: argparse.Namespace) -> dict:
    width, height = RESOLUTIONS[args.resolution]
    return {
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
    }


def achieved_hz(camera: dict | None) -> dict | None:
    if camera and camera.get("seconds"):
        camera["achieved_hz"] = round(camera["frames_published"] / camera["seconds"], 2)
    return camera


def soak(args: argparse.Namespace) -> dict:
    import rclpy

    from lphi_edge import Assistant

    width, height = RESOLUTIONS[args.resolution]
    env = graph_env(args)
    graph = Graph(args, env)
    rclpy.init(args=[])
    client = Client(graph)
    frames = render_frames(width, height, args.frames, args.seed)  # the camera's, for the direct path
    direct = Assistant.from_pretrained(args.model, backend=args.backend, frame_reuse=True)  # the node's defaults
    result: dict = {}

    def on_answered(row: dict, m, q: str) -> None:  # the same question about the same frame, asked directly
        frame = frames[int(m.frame_header.frame_id.split("/")[1])]
        t0 = time.perf_counter()
        ans = direct.ask(frame, q, max_new_tokens=args.max_new_tokens)
        row["direct_ms"] = (time.perf_counter() - t0) * 1e3
        row["same_answer"] = ans.text == m.answer

    try:
        client.warm_up()
        for q in QUESTIONS:  # warm the direct path too
            direct.ask(frames[0], q, max_new_tokens=args.max_new_tokens)
        run = client.measure(args, on_answered)
        ok, status = run["ok"], run["counters_at_end"]
        ros_median = float(np.median([r["prompt_to_answer_ms"] for r in ok])) if ok else float("nan")
        direct_median = float(np.median([r["direct_ms"] for r in ok])) if ok else float("nan")
        result = {
            "scenario": "ros_soak",
            "config": config_summary(args) | {"distinct_frames": args.frames},
            "machine": {
                "cpu": _cpu_model(),
                "cores": os.cpu_count(),
                "python": platform.python_version(),
                "load_avg_1min": percentiles(run["load"]),  # other work on the machine during the run
            },
            "prompts": prompts_summary(run) | {"same_answer_as_direct": sum(r.get("same_answer", False) for r in ok)},
            "latency_ms": latency_summary(ok, direct=True),
            "node_overhead": {
                "median_ros_ms": round(ros_median, 2),
                "median_direct_ms": round(direct_median, 2),
                "added_ms": round(ros_median - direct_median, 2),
                "bound_ms": round(0.05 * direct_median + 5.0, 2),
                "within_bound": bool(ros_median - direct_median <= 0.05 * direct_median + 5.0),
            },
            "node_rss_mb": rss_summary(run["rss"], args.minutes),
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
        camera = graph.stop()
        if camera is not None:
            result.setdefault("camera", camera)
        client.destroy()
        rclpy.try_shutdown()
    achieved_hz(result.get("camera"))
    return result


STATIC_COUNTERS = ("frames_received", "frames_dropped", "prompts_dropped", "answers", "frames_reused", "answers_reused")


def reuse_summary(run: dict) -> dict:
    """Frame and answer reuse during a measurement: the node's counters (end − start) and its per-answer statuses."""
    start, end = run["counters_at_start"], run["counters_at_end"]
    counters = {k: int(end[k]) - int(start[k]) if k in start and k in end else None for k in STATIC_COUNTERS}
    about_a_frame = [s for s in run.get("answer_statuses", []) if "frame_reused" in s]
    reused = [s for s in about_a_frame if s["frame_reused"] == "True"]
    exact = [s for s in reused if float(s.get("frame_difference", "nan")) == 0.0]
    return {
        "frames_reused": counters["frames_reused"],
        "answers_reused": counters["answers_reused"],
        "answer_statuses_seen": len(about_a_frame),  # the split below counts these (= answers, unless one was lost)
        "frames_reused_exact": len(exact),  # the same model input again (a capture still cached; difference 0)
        "frames_reused_near": len(reused) - len(exact),  # a near-identical capture within the tolerance
        "answers_reused_seen": sum(s.get("answer_reused") == "True" for s in about_a_frame),
        "frame_difference": percentiles(
            [float(s["frame_difference"]) for s in about_a_frame if "frame_difference" in s]
        ),  # to the nearest cached frame, 8-bit levels (computed with reuse off too)
        # the node's time per answer: the ROS image → array, preprocessing (pad, resize: the frame's size matters),
        # the vision encoder (0 when reused)
        **{
            f"node_{key}": percentiles([float(s[key]) for s in about_a_frame if key in s])
            for key in ("convert_ms", "preprocess_ms", "vision_ms")
        },
        "node_counters": counters,
    }


def static_part(args: argparse.Namespace, env: dict[str, str], node_params: tuple[str, ...]) -> dict:
    """One part of --static: a node process of its own with `node_params`, warmed up, then measured."""
    graph, client = Graph(args, env, node_params), None
    part: dict = {"node_parameters": list(node_params)}
    try:
        client = Client(graph)
        client.drain(client.warm_up())
        run = client.measure(args)
        run["answer_statuses"] = list(client.answer_statuses)
        model_s = sum(r["node_total_ms"] for r in run["ok"]) / 1e3
        part |= {
            "seconds": round(run["seconds"], 2),
            "answers_per_s": round(len(run["ok"]) / run["seconds"], 3),
            # what the node's model time alone would allow (the prompts come only every prompt_period_s)
            "answers_per_model_s": round(len(run["ok"]) / model_s, 1) if model_s > 0 else None,
            "prompts": prompts_summary(run),
            "latency_ms": latency_summary(run["ok"]),
            "reuse": reuse_summary(run),
            "node_rss_mb": rss_summary(run["rss"], args.minutes, samples=False),
            "load_avg_1min": percentiles(run["load"]),
        }
    except Exception:
        logger.error("vqa_node's log:\n%s\ncamera's log:\n%s", graph.log_tail("vqa_node"), graph.log_tail("camera"))
        raise
    finally:
        part["camera"] = achieved_hz(graph.stop())
        if client is not None:
            client.destroy()
    return part


def static(args: argparse.Namespace) -> dict:
    """--static: the same static-camera scenario with reuse off, then on (a node process each); both and the ratios."""
    import rclpy

    from lphi_edge.runtime.frame_reuse import DEFAULT_TOLERANCE

    env = graph_env(args)
    rclpy.init(args=[])
    parts = {}
    try:
        for name, params in (("no_reuse", ("frame_reuse_tolerance:=0.0",)), ("reuse", ())):
            logger.info("static camera, %s: %g min", name, args.minutes)
            parts[name] = static_part(args, env, params)
            logger.info("%s: %g answers/s, %s", name, parts[name]["answers_per_s"], parts[name]["reuse"])
    finally:
        rclpy.try_shutdown()

    def ratio(*path: str) -> float | None:
        a, b = parts["no_reuse"], parts["reuse"]
        for key in path:
            a, b = a.get(key, {}), b.get(key, {})
        return round(a / b, 2) if isinstance(a, int | float) and isinstance(b, int | float) and b else None

    return {
        "scenario": "ros_static_camera",
        "config": config_summary(args)
        | {
            "scene": "one shapes frame (render_frames' first for --seed), padded to the resolution",
            "captures": args.frames,  # cycled; each with its own sensor noise
            "noise_sigma_levels": args.noise,
            "jpeg_quality": None,
            "seed": args.seed,
            "order": ["no_reuse", "reuse"],
            "order_note": (
                "one after the other with the same captures and prompts, each part a fresh node process (and camera "
                "process) warmed up first (model loaded, one answer about the scene), so the reuse part starts with "
                "the scene cached as a running node would; the baseline first; each part's machine load is in its "
                "load_avg_1min"
            ),
            "no_reuse": (
                "frame_reuse_tolerance:=0.0: exact frames only (a capture seen again while still in the node's "
                "frame cache reuses its features: reuse.frames_reused_exact)"
            ),
            "reuse": f"the node's default frame_reuse_tolerance (-1 → the library's {DEFAULT_TOLERANCE:g} levels)",
            "direct_assistant_ask": "not measured in --static mode",
            "answers_per_s": (
                "answers about a frame / the part's seconds (first prompt → the later of the prompt window's end and "
                "the last answer)"
            ),
        },
        "machine": {
            "platform": platform.platform(),
            "cpu": _cpu_model(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
        },
        "parts": parts,
        "no_reuse_over_reuse": {
            "median_prompt_to_answer": ratio("latency_ms", "prompt_to_answer_ros", "p50"),
            "median_frame_to_answer": ratio("latency_ms", "frame_to_answer_ros", "p50"),
            "median_node_model_total": ratio("latency_ms", "node_model_total", "p50"),
            "answers_per_s": ratio("answers_per_s"),
        },
    }


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ros_soak.py", description=__doc__.split("\n")[0])
    p.add_argument("--resolution", choices=sorted(RESOLUTIONS), default="720p")
    p.add_argument("--minutes", type=float, default=10.0, help="of the soak; --static: of each part")
    p.add_argument("--rate-hz", type=float, default=30.0)
    p.add_argument("--prompt-period-s", type=float, default=1.0)
    p.add_argument(
        "--frames", type=int, default=31, help="distinct frames the camera cycles through (--static: captures)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--static", action="store_true", help="a static camera, without then with frame reuse")
    p.add_argument("--noise", type=float, default=3.0, help="--static: sensor noise σ of each capture, 8-bit levels")
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
    logger.info("soak: %s at %g Hz for %g min%s, a prompt every %g s", args.resolution, args.rate_hz, args.minutes,
                " per part (static camera)" if args.static else "", args.prompt_period_s)  # fmt: skip
    result = static(args) if args.static else soak(args)
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        logger.info("wrote %s", args.out)
    if args.static:
        logger.info("no-reuse / reuse: %s", result["no_reuse_over_reuse"])
        return 0
    prompts, overhead = result.get("prompts", {}), result.get("node_overhead", {})
    logger.info("prompts %s; overhead %s; rss %s", prompts, overhead,
                {k: v for k, v in result.get("node_rss_mb", {}).items() if k != "samples"})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
