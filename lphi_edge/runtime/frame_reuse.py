"""Near-identical frame reuse: the difference metric between two preprocessed frames, and its tolerance.

A live camera never sends the same bytes twice, so a cache keyed on exact frames never hits. A new frame
whose *frame difference* from a cached frame is within the tolerance reuses that frame's image features
(and, where the KV cache still holds them, its image positions).

Frame difference (`frame_difference`): the model's input `pixel_values` [1, 3, H, W] is cut into
BLOCK × BLOCK-pixel blocks; each block's mean is taken per channel and put back in 8-bit levels of the frame
(× image_std / rescale_factor, i.e. × std · 255 for CLIP); the difference of two frames is the largest absolute
change of any block mean in any channel. Averaging a block divides independent sensor noise by BLOCK (and
JPEG's 8×8 ringing largely cancels), while a change confined to a few pixels still moves the means of the
blocks it touches by a large fraction of its contrast; the maximum keeps one small change from being diluted
by an unchanged rest of the frame. Each frame's block means (its `signature`, 3 · H·W / BLOCK² values) are
computed once and kept with the cached frame: at 336 px ≈ 0.15 ms to compute and ≈ 0.004 ms per cached frame
to compare on the dev VM: 0.01 % of the vision encoder's time on that CPU, and 1.5 % of an H200's fp16 encoder
time if the GPU host's CPU is as fast (benchmarks/results/frame_reuse_tolerance.json).

DEFAULT_TOLERANCE (9 levels) was chosen from measurements (benchmarks/frame_reuse_tolerance.py: 60 shapes
scenes in each camera geometry, 224 px → the shapes demo's 112-px input, 448 px and 640×480 → CLIP-L's
336 px; summarised in benchmarks/README.md). Static scenes captured again with Gaussian sensor noise
σ ≤ 8 levels and JPEG quality 75–95 never exceeded 7.9 (σ ≤ 4: 6.0); the smallest difference an object moved
by 2 px made was 12.9 (1 px: 9.2), and a recoloured, appeared or removed object ≥ 125. 9 sits in the middle
of the gap (the geometric mean of 6.0 and 12.9 is 8.8). A camera smaller than the model's input is upscaled
into it, which enlarges its noise and JPEG blocks as much as its changes (224 px → 336: static σ ≤ 4, JPEG
≥ 75 up to 19.4; a 1-px move ≥ 27.4): there the default reuses only JPEG ≥ 90 captures, and a tolerance of
about 23 fits the same measurements.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lphi_edge.errors import ConfigError

BLOCK = 7  # pixels of the model's input per block side: half a 14-px ViT patch
DEFAULT_TOLERANCE = 9.0  # 8-bit levels of the largest block-mean change (see the module docstring)


@dataclass(frozen=True)
class FrameReuse:
    """How near a frame must be to a cached one to reuse its features.

    Attributes:
        tolerance: the largest `frame_difference` (8-bit levels) that still reuses a cached frame;
            None: exact frames only (the same pixel_values, byte for byte).
    """

    tolerance: float | None = None

    def __post_init__(self) -> None:
        t = self.tolerance
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0):
            raise ConfigError(f"frame_reuse tolerance must be a finite number ≥ 0 (8-bit levels), got {t!r}")

    @classmethod
    def of(cls, value: bool | float | FrameReuse | None) -> FrameReuse:
        """False / None / 0: exact frames only; True: DEFAULT_TOLERANCE; a number: that tolerance."""
        if isinstance(value, FrameReuse):
            return value
        if value is None or value is False:
            return cls(None)
        if value is True:
            return cls(DEFAULT_TOLERANCE)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return cls(None if value == 0 else float(value))
        raise ConfigError(
            f"frame_reuse must be False, True or a tolerance ≥ 0 in 8-bit levels (default {DEFAULT_TOLERANCE}), "
            f"got {value!r}"
        )

    @property
    def enabled(self) -> bool:
        """True when near-identical (not only exact) frames are reused."""
        return self.tolerance is not None

    def accepts(self, difference: float) -> bool:
        return self.tolerance is not None and difference <= self.tolerance


def frame_signature(pixel_values: np.ndarray, levels_per_unit: np.ndarray, block: int = BLOCK) -> np.ndarray:
    """pixel_values f32 [1, 3, H, W] → block means f32 [3, H // block, W // block] in 8-bit levels.

    `levels_per_unit` f32 [3]: 8-bit levels per unit of the normalised input (image_std / rescale_factor). Rows
    and columns beyond a whole number of blocks are left out."""
    _, c, h, w = pixel_values.shape
    hb, wb = h // block, w // block
    x = pixel_values[0, :, : hb * block, : wb * block]  # (3, hb·b, wb·b)
    rows = x.reshape(c, hb, block, wb * block).sum(axis=2)  # (3, hb, wb·b): adds whole rows (10× a 2-axis mean)
    sums = rows.reshape(c, hb, wb, block).sum(axis=3)  # (3, hb, wb)
    scale = levels_per_unit.astype(np.float32) / np.float32(block * block)  # (3,): mean → 8-bit levels
    return sums * scale[:, None, None]


def frame_difference(a: np.ndarray, b: np.ndarray) -> float:
    """The largest absolute difference of two signatures [3, hb, wb]: 8-bit levels."""
    return float(np.max(np.abs(a - b)))
