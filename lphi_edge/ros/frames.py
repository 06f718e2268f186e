"""Camera frames as they arrive from ROS, checked and turned into HxWx3 uint8 RGB arrays.

No rclpy here: the functions take the message fields, so they are tested without ROS. Raw frames are
checked completely on arrival (encoding, sizes, data length: all O(1)) and converted only when a prompt
takes them; compressed frames are decoded on arrival (a corrupt JPEG is only found by decoding it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lphi_edge.errors import ImageError

# encoding → (channels, to-RGB channel order or None for mono)
ENCODINGS: dict[str, tuple[int, tuple[int, ...] | None]] = {
    "rgb8": (3, (0, 1, 2)),
    "bgr8": (3, (2, 1, 0)),
    "rgba8": (4, (0, 1, 2)),
    "bgra8": (4, (2, 1, 0)),
    "mono8": (1, None),
}
MAX_SIDE = 16384  # px; a header claiming more is refused before anything is allocated


class FrameError(ImageError):
    """A malformed camera frame (the node counts it, reports it and keeps going)."""


@dataclass
class RawFrame:
    """A checked sensor_msgs/Image, converted to RGB on first use (zero-copy until then)."""

    encoding: str
    height: int
    width: int
    step: int
    data: object  # the message's uint8 buffer (array.array / bytes / memoryview)
    _rgb: np.ndarray | None = field(default=None, repr=False)

    def rgb(self) -> np.ndarray:
        """HxWx3 uint8 RGB."""
        if self._rgb is None:
            channels, order = ENCODINGS[self.encoding]
            buf = np.frombuffer(self.data, dtype=np.uint8)
            rows = buf.reshape(self.height, self.step)[:, : self.width * channels]  # drop row padding
            px = rows.reshape(self.height, self.width, channels)  # (H, W, C)
            if order is None:
                rgb = np.repeat(px, 3, axis=2)  # (H, W, 3)
            else:
                rgb = px[:, :, list(order)]  # (H, W, 3), a copy
            self._rgb = np.ascontiguousarray(rgb)
            self.data = None  # the message buffer is no longer needed
        return self._rgb


def check_raw(encoding: str, height: int, width: int, step: int, data: object) -> RawFrame:
    """Validate a sensor_msgs/Image's fields; FrameError names what is wrong."""
    if encoding not in ENCODINGS:
        raise FrameError(f"unsupported image encoding {encoding!r}: expected one of {sorted(ENCODINGS)}")
    if height <= 0 or width <= 0:
        raise FrameError(f"empty image: {width}x{height}")
    if height > MAX_SIDE or width > MAX_SIDE:
        raise FrameError(f"image {width}x{height} exceeds {MAX_SIDE} px per side")
    channels = ENCODINGS[encoding][0]
    if step < width * channels:
        raise FrameError(f"step {step} < width {width} × {channels} bytes per pixel ({encoding})")
    size = len(data)  # type: ignore[arg-type]
    if size != step * height:
        raise FrameError(f"data has {size} bytes, expected step × height = {step} × {height} = {step * height}")
    return RawFrame(encoding, height, width, step, data)


def decode_compressed(fmt: str, data: object) -> np.ndarray:
    """sensor_msgs/CompressedImage (JPEG / PNG ...) → HxWx3 uint8 RGB, decoded with OpenCV."""
    try:
        import cv2
    except ImportError:
        raise FrameError("compressed frames need OpenCV: pip install opencv-python-headless") from None
    buf = np.frombuffer(data, dtype=np.uint8)  # type: ignore[call-overload]
    if buf.size == 0:
        raise FrameError(f"empty compressed frame (format {fmt!r})")
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)  # (H, W, 3) BGR, or None
    if img is None:
        raise FrameError(f"cannot decode {buf.size}-byte compressed frame (format {fmt!r}): corrupt or unsupported")
    return np.ascontiguousarray(img[:, :, ::-1])  # (H, W, 3) RGB
