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
        if self.jpeg_quality is None:
            return a
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=self.jpeg_quality)
        with Image.open(io.BytesIO(buf.getvalue())) as im:
            return np.asarray(im.convert("RGB"))
