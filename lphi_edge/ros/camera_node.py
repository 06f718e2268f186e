"""ROS 2 node `camera_node`: a camera for users without a driver, publishing sensor_msgs/Image (rgb8) on `image`.

    lphi-camera-node --ros-args -p source:=shapes -p rate_hz:=10.0 -p scene_period_s:=5.0
    lphi-camera-node --ros-args -p source:=0                    # /dev/video0 (OpenCV VideoCapture)
    lphi-camera-node --ros-args -p source:=clip.mp4 -p loop:=true
    lphi-camera-node --ros-args -p source:=frames/               # a folder of images, in name order

Sources: `shapes` (the shapes task's synthetic frames, seeded), a device index, a video file or a folder.
`shapes` behaves like a camera in front of a scene: each scene stays in view for `scene_period_s` (0: a new
scene every frame), every frame a new capture of it (sensor noise, data/camera.py), and each new scene's ground
truth — its shapes as JSON — is published on `scene` (std_msgs/String, latched) and logged, so answers can be
checked against it.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import String

from lphi_edge.errors import ConfigError
from lphi_edge.ros.spin import run_node
from lphi_edge.ros.vqa_node import IMAGE_QOS

logger = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp"}


SCENE_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
SENSOR = {"noise": 3.0, "jpeg_quality": None}  # each frame of a held scene: a new capture, σ 3 levels


def shapes_source(size: int, seed: int, frames_per_scene: int) -> Iterator[tuple[np.ndarray, list | None]]:
    """(frame, the scene's shapes when this frame starts a new scene, else None); frames_per_scene ≥ 1."""
    from lphi_edge.data.camera import Camera
    from lphi_edge.data.shapes import random_scene, render

    rng, camera = np.random.default_rng(seed), Camera(**SENSOR)
    while True:
        scene = random_scene(rng, size)
        clean = render(scene, rng, size, noise=0)  # (H, W, 3): the view; noise comes with each capture
        for k in range(frames_per_scene):
            yield camera.capture(clean, rng), scene if k == 0 else None


def describe(scene: list) -> str:
    return ", ".join(f"a {s.color} {s.kind}" for s in scene)


def folder_source(folder: Path, loop: bool) -> Iterator[np.ndarray]:
    from PIL import Image as PILImage

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(f"source folder {folder} holds no images ({sorted(IMAGE_SUFFIXES)})")
    while True:
        for f in files:
            with PILImage.open(f) as im:
                yield np.asarray(im.convert("RGB"))
        if not loop:
            return


def capture_source(source: str, loop: bool) -> Iterator[np.ndarray]:
    """OpenCV VideoCapture: a device index or a video file."""
    try:
        import cv2
    except ImportError:
        raise ConfigError("camera and video sources need OpenCV: pip install opencv-python-headless") from None
    cap = cv2.VideoCapture(int(source) if source.isdigit() else source)
    if not cap.isOpened():
        raise ConfigError(f"cannot open video source {source!r} (device index or video file)")
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                if loop and not source.isdigit():
                    cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    ok, bgr = cap.read()
                if not ok:
                    return
            yield np.ascontiguousarray(bgr[:, :, ::-1])  # (H, W, 3) RGB
    finally:
        cap.release()


def open_source(
    source: str, size: int, seed: int, loop: bool, frames_per_scene: int = 1
) -> Iterator[tuple[np.ndarray, list | None]]:
    """(frame, a new scene's shapes or None) from any source; only `shapes` has scenes."""
    if source == "shapes":
        return shapes_source(size, seed, frames_per_scene)
    path = Path(source)
    if path.is_dir():
        return ((f, None) for f in folder_source(path, loop))
    if source.isdigit() or path.is_file():
        return ((f, None) for f in capture_source(source, loop))
    raise ConfigError(f"source {source!r} is not 'shapes', a device index, a video file or a folder of images")


class CameraNode(Node):
    def __init__(self, **kwargs):
        super().__init__("camera_node", **kwargs)
        desc = ParameterDescriptor
        self.source = self.declare_parameter("source", "shapes", desc(description="shapes | index | file | dir")).value
        rate = self.declare_parameter("rate_hz", 10.0, desc(description="frames per second (> 0)")).value
        self.frame_id = self.declare_parameter("frame_id", "camera", desc(description="header.frame_id")).value
        size = self.declare_parameter("size", 224, desc(description="shapes frame side, px (≥ 64)")).value
        seed = self.declare_parameter("seed", 0, desc(description="shapes generator seed")).value
        loop = self.declare_parameter("loop", True, desc(description="restart files / folders at the end")).value
        period = self.declare_parameter(
            "scene_period_s", 5.0, desc(description="shapes: seconds each scene stays in view (0: one per frame)")
        ).value
        if not rate > 0:
            raise ConfigError(f"rate_hz must be > 0, got {rate}")
        if size < 64:
            raise ConfigError(f"size must be ≥ 64 px, got {size}")
        if not (isinstance(period, float) and math.isfinite(period) and period >= 0):
            raise ConfigError(f"scene_period_s must be a float ≥ 0 (seconds; 0: a new scene every frame), got {period}")
        self.frames = open_source(self.source, size, seed, loop, max(1, round(period * rate)))
        self.pub = self.create_publisher(Image, "image", IMAGE_QOS)
        self.scene_pub = self.create_publisher(String, "scene", SCENE_QOS)
        self.published = 0
        self.create_timer(1.0 / rate, self._tick)
        self.get_logger().info(f"publishing {self.source} at {rate:g} Hz on {self.resolve_topic_name('image')}")

    def _tick(self) -> None:
        item = next(self.frames, None)
        if item is None:
            self.get_logger().info(f"source {self.source} ended after {self.published} frames")
            raise SystemExit(0)
        frame, scene = item
        if scene is not None:
            self.scene_pub.publish(String(data=json.dumps([asdict(s) for s in scene])))
            self.get_logger().info(f"new scene: {describe(scene)}")
        msg = Image(encoding="rgb8", height=frame.shape[0], width=frame.shape[1], step=frame.shape[1] * 3)
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = self.frame_id
        msg.data = frame.tobytes()
        self.pub.publish(msg)
        self.published += 1


def main(args: list[str] | None = None) -> int:
    return run_node(CameraNode, "camera_node", args)


if __name__ == "__main__":
    sys.exit(main())
