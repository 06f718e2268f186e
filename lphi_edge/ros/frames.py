"""Camera frames as they arrive from ROS, checked and turned into HxWx3 uint8 RGB arrays.

No rclpy here: the functions take the message fields, so they are tested without ROS. Raw frames are
checked completely on arrival (encoding, sizes, pixel count, data length: all O(1)) and converted only when a
prompt takes them; compressed frames are decoded on arrival (a corrupt JPEG is only found by decoding it), but
only after their size has been read from the JPEG / PNG header and found within the pixel limit — a 4 MB
JPEG can claim 16000×16000 pixels (768 MB decoded).
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
DEFAULT_MAX_PIXELS = 4096 * 4096  # 16.8 MP: 4K frames pass; the node's max_frame_pixels parameter sets it
# JPEG start-of-frame markers (baseline, extended, progressive, lossless; Huffman and arithmetic): FFC0-CF but
# C4 (Huffman tables), C8 (reserved) and CC (arithmetic conditioning)
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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


def check_size(width: int, height: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """FrameError unless 1 ≤ width, height ≤ MAX_SIDE and width × height ≤ max_pixels."""
    if height <= 0 or width <= 0:
        raise FrameError(f"empty image: {width}x{height}")
    if height > MAX_SIDE or width > MAX_SIDE:
        raise FrameError(f"image {width}x{height} exceeds {MAX_SIDE} px per side")
    if width * height > max_pixels:
        raise FrameError(f"image {width}x{height} = {width * height} pixels exceeds max_frame_pixels {max_pixels}")


def check_raw(
    encoding: str, height: int, width: int, step: int, data: object, max_pixels: int = DEFAULT_MAX_PIXELS
) -> RawFrame:
    """Validate a sensor_msgs/Image's fields; FrameError names what is wrong."""
    if encoding not in ENCODINGS:
        raise FrameError(f"unsupported image encoding {encoding!r}: expected one of {sorted(ENCODINGS)}")
    check_size(width, height, max_pixels)
    channels = ENCODINGS[encoding][0]
    if step < width * channels:
        raise FrameError(f"step {step} < width {width} × {channels} bytes per pixel ({encoding})")
    size = len(data)  # type: ignore[arg-type]
    if size != step * height:
        raise FrameError(f"data has {size} bytes, expected step × height = {step} × {height} = {step * height}")
    return RawFrame(encoding, height, width, step, data)


def compressed_size(fmt: str, data: bytes | memoryview) -> tuple[int, int]:
    """(width, height) read from a JPEG or PNG header, without decoding; FrameError for other or corrupt data."""

    def bad(detail: str) -> FrameError:
        return FrameError(f"cannot decode {len(data)}-byte compressed frame (format {fmt!r}): {detail}")

    if bytes(data[:8]) == _PNG_SIGNATURE:
        if len(data) < 24 or bytes(data[12:16]) != b"IHDR":
            raise bad("truncated PNG header")
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if bytes(data[:2]) != b"\xff\xd8":
        raise bad("neither JPEG nor PNG, so its size cannot be checked before decoding")
    i = 2
    while i + 4 <= len(data):  # walk the JPEG marker segments up to the start of frame
        if data[i] != 0xFF:
            raise bad(f"corrupt JPEG header (no marker at byte {i})")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif 0xD0 <= marker <= 0xD9 or marker == 0x01:  # markers without a length
            i += 2
        elif marker in _JPEG_SOF:
            if i + 9 > len(data):
                break
            return int.from_bytes(data[i + 7 : i + 9], "big"), int.from_bytes(data[i + 5 : i + 7], "big")
        else:
            length = int.from_bytes(data[i + 2 : i + 4], "big")
            if length < 2:
                raise bad(f"corrupt JPEG header (segment length {length} at byte {i})")
            i += 2 + length
    raise bad("JPEG header without a frame size")


def decode_compressed(fmt: str, data: object, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """sensor_msgs/CompressedImage (JPEG / PNG) → HxWx3 uint8 RGB, decoded with OpenCV once the header's size
    has passed check_size (frames beyond `max_pixels` are refused undecoded)."""
    buf = np.frombuffer(data, dtype=np.uint8)  # type: ignore[call-overload]
    if buf.size == 0:
        raise FrameError(f"empty compressed frame (format {fmt!r})")
    check_size(*compressed_size(fmt, memoryview(buf)), max_pixels)
    try:
        import cv2
    except ImportError:
        raise FrameError("compressed frames need OpenCV: pip install opencv-python-headless") from None
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)  # (H, W, 3) BGR, or None
    if img is None:
        raise FrameError(f"cannot decode {buf.size}-byte compressed frame (format {fmt!r}): corrupt or unsupported")
    return np.ascontiguousarray(img[:, :, ::-1])  # (H, W, 3) RGB
