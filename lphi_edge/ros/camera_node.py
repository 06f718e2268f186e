"""ROS 2 node `camera_node`: a camera for users without a driver, publishing sensor_msgs/Image (rgb8) on `image`.

    lphi-camera-node --ros-args -p source:=shapes -p rate_hz:=10.0
    lphi-camera-node --ros-args -p source:=0                    # /dev/video0 (OpenCV VideoCapture)
    lphi-camera-node --ros-args -p source:=clip.mp4 -p loop:=true
    lphi-camera-node --ros-args -p source:=frames/               # a folder of images, in name order

Sources: `shapes` (the shapes task's synthetic frames, seeded), a device index, a video file or a folder.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from sensor_msgs.msg import Image

from lphi_edge.errors import ConfigError
from lphi_edge.ros.spin import run_node
from lphi_edge.ros.vqa_node import IMAGE_QOS

logger = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp"}


def shapes_source(size: int, seed: int) -> Iterator[np.ndarray]:
    from lphi_edge.data.shapes import random_scene, render

    rng = np.random.default_rng(seed)
    while True:
        yield render(random_scene(rng, size), rng, size)


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


def open_source(source: str, size: int, seed: int, loop: bool) -> Iterator[np.ndarray]:
    if source == "shapes":
        return shapes_source(size, seed)
    path = Path(source)
    if path.is_dir():
        return folder_source(path, loop)
    if source.isdigit() or path.is_file():
        return capture_source(source, loop)
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
        if not rate > 0:
            raise ConfigError(f"rate_hz must be > 0, got {rate}")
        if size < 64:
            raise ConfigError(f"size must be ≥ 64 px, got {size}")
        self.frames = open_source(self.source, size, seed, loop)
        self.pub = self.create_publisher(Image, "image", IMAGE_QOS)
        self.published = 0
        self.create_timer(1.0 / rate, self._tick)
        self.get_logger().info(f"publishing {self.source} at {rate:g} Hz on {self.resolve_topic_name('image')}")

    def _tick(self) -> None:
        frame = next(self.frames, None)
        if frame is None:
            self.get_logger().info(f"source {self.source} ended after {self.published} frames")
            raise SystemExit(0)
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
