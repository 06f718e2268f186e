"""The shapes camera task (DESIGN.md): frames of 1–3 coloured shapes on a light background.

Frames are RGB, plain light background (each channel 180–255, optional mild noise), 1–3
non-overlapping filled circles / squares / triangles, coloured red / green / blue / yellow (±15 per
channel), 28–64 px across.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
COLORS = {"red": (220, 30, 30), "green": (30, 170, 30), "blue": (30, 60, 220), "yellow": (230, 200, 30)}


@dataclass(frozen=True)
class Shape:
    kind: str  # circle | square | triangle
    color: str  # red | green | blue | yellow
    x: int  # top-left corner of the bounding box
    y: int
    size: int  # px across


def random_scene(rng: np.random.Generator, size: int = 224, max_shapes: int = 3) -> list[Shape]:
    """1..max_shapes non-overlapping shapes (bounding boxes 4 px apart)."""
    n = int(rng.integers(1, max_shapes + 1))
    shapes: list[Shape] = []
    while len(shapes) < n:
        s = int(rng.integers(28, 65))
        x, y = int(rng.integers(0, size - s)), int(rng.integers(0, size - s))
        if all(x + s + 4 <= o.x or o.x + o.size + 4 <= x or y + s + 4 <= o.y or o.y + o.size + 4 <= y for o in shapes):
            shapes.append(Shape(str(rng.choice(SHAPES)), str(rng.choice(list(COLORS))), x, y, s))
    return shapes


def render(shapes: list[Shape], rng: np.random.Generator, size: int = 224, noise: int = 6) -> np.ndarray:
    """Draw a scene → HxWx3 uint8 RGB."""
    background = tuple(int(v) for v in rng.integers(180, 256, 3))
    im = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(im)
    for sh in shapes:
        color = tuple(int(np.clip(c + rng.integers(-15, 16), 0, 255)) for c in COLORS[sh.color])
        box = [sh.x, sh.y, sh.x + sh.size - 1, sh.y + sh.size - 1]
        if sh.kind == "circle":
            draw.ellipse(box, fill=color)
        elif sh.kind == "square":
            draw.rectangle(box, fill=color)
        else:
            draw.polygon([(sh.x + sh.size // 2, sh.y), (sh.x, box[3]), (box[2], box[3])], fill=color)
    a = np.asarray(im)
    if noise:
        a = np.clip(a.astype(np.int16) + rng.integers(-noise, noise + 1, a.shape), 0, 255).astype(np.uint8)
    return a


def sample_frames(n: int, seed: int = 0, size: int = 224) -> list[np.ndarray]:
    """n deterministic frames (for verification and examples)."""
    rng = np.random.default_rng(seed)
    return [render(random_scene(rng, size), rng, size) for _ in range(n)]
