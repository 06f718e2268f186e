"""A camera model for frame-reuse tests and measurements: the same scene captured again and again.

Each capture adds Gaussian sensor noise (σ in 8-bit levels, independent per pixel and channel), then JPEG
compression at a quality — what a ROS `image/compressed` topic or an MJPEG webcam sends of a static scene.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from lphi_edge.errors import ConfigError


def jpeg_round_trip(frame: np.ndarray, quality: int) -> np.ndarray:
    """HxWx3 uint8 → the same frame JPEG-encoded at `quality` (1..100) and decoded again, HxWx3 uint8 RGB."""
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    with Image.open(io.BytesIO(buf.getvalue())) as decoded:
        return np.asarray(decoded.convert("RGB"))


@dataclass(frozen=True)
class Camera:
    """How a clean frame is captured.

    Attributes:
        noise: Gaussian sensor noise, σ in 8-bit levels (independent per pixel and channel); 0: none.
        jpeg_quality: JPEG quality 1..100 of each captured frame (None: uncompressed).
    """

    noise: float = 3.0
    jpeg_quality: int | None = 90

    def __post_init__(self) -> None:
        if not self.noise >= 0:
            raise ConfigError(f"camera noise must be ≥ 0 (σ in 8-bit levels), got {self.noise!r}")
        if self.jpeg_quality is not None and not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality!r}")

    def capture(self, clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """HxWx3 uint8 → one noisy (and compressed) capture of it, HxWx3 uint8."""
        a = clean
        if self.noise:
            a = np.clip(clean + rng.normal(0.0, self.noise, clean.shape), 0, 255).round().astype(np.uint8)
        return a if self.jpeg_quality is None else jpeg_round_trip(a, self.jpeg_quality)


@dataclass(frozen=True)
class CameraEffects:
    """What a real robot camera does to a rendered frame, each capture drawn at random within these ranges:
    resized to the camera's resolution and back (the resampling blur of a 1280×720 stream scaled to the model),
    JPEG-compressed, Gaussian sensor noise, uneven exposure (a brightness factor). Used by
    `lphi-make-shapes --camera-effects` (training frames) and `python -m lphi_edge.eval.shapes --camera-effects`
    (the camera-like evaluation).

    Attributes:
        resolution: (width, height) the frame passes through; None: not resized.
        jpeg_quality: (low, high) JPEG quality, inclusive; None: uncompressed.
        noise: largest Gaussian noise σ in 8-bit levels (σ drawn uniformly in [0, noise]).
        brightness: (low, high) factor every pixel is multiplied by.
    """

    resolution: tuple[int, int] | None = (1280, 720)
    jpeg_quality: tuple[int, int] | None = (60, 90)
    noise: float = 4.0
    brightness: tuple[float, float] = (0.8, 1.2)

    def __post_init__(self) -> None:
        if self.resolution is not None and not all(isinstance(v, int) and v > 0 for v in self.resolution):
            raise ConfigError(f"resolution must be two positive ints (width, height), got {self.resolution!r}")
        if self.jpeg_quality is not None and not 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100:
            raise ConfigError(f"jpeg_quality must be (low, high) with 1 ≤ low ≤ high ≤ 100, got {self.jpeg_quality!r}")
        if not self.noise >= 0:
            raise ConfigError(f"noise must be ≥ 0 (σ in 8-bit levels), got {self.noise!r}")
        if not 0 < self.brightness[0] <= self.brightness[1]:
            raise ConfigError(f"brightness must be (low, high) with 0 < low ≤ high, got {self.brightness!r}")

    def apply(self, frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """HxWx3 uint8 → the same frame as this camera would deliver it, HxWx3 uint8 (the same size)."""
        height, width = frame.shape[:2]
        im = Image.fromarray(frame)
        if self.resolution is not None:
            im = im.resize(self.resolution, Image.BILINEAR).resize((width, height), Image.BILINEAR)
        a = np.asarray(im, np.float32) * rng.uniform(*self.brightness)
        a = a + rng.normal(0.0, rng.uniform(0.0, self.noise), a.shape) if self.noise else a
        out = np.clip(a, 0, 255).round().astype(np.uint8)
        if self.jpeg_quality is None:
            return out
        return jpeg_round_trip(out, int(rng.integers(self.jpeg_quality[0], self.jpeg_quality[1] + 1)))
