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
    """1..max_shapes non-overlapping shapes (bounding boxes 4 px apart). In frames too small for that
    many, fewer are placed (placement gives up after 1000 tries)."""
    n = int(rng.integers(1, max_shapes + 1))
    largest = min(64, size)
    if largest < 28:
        raise ValueError(f"frame size {size} is too small for 28-64 px shapes")
    shapes: list[Shape] = []
    for _ in range(1000):
        if len(shapes) == n:
            break
        s = int(rng.integers(28, largest + 1))
        x, y = int(rng.integers(0, size - s + 1)), int(rng.integers(0, size - s + 1))
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


# ---- questions and answers ---------------------------------------------------------------------------
QUESTION_TYPES = ("shape", "color", "count", "exists")


@dataclass(frozen=True)
class QA:
    kind: str  # one of QUESTION_TYPES, or "describe" (training conversations only)
    question: str
    answer: str


DESCRIBE = "Describe the image briefly."


def caption(shapes: list[Shape]) -> str:
    """Caption listing the shapes left to right (by centre), e.g. 'a red circle and a blue square.' Used as
    the stage-1 caption and as the answer to DESCRIBE in stage 2."""
    ordered = sorted(shapes, key=lambda s: (2 * s.x + s.size, 2 * s.y + s.size))
    parts = [f"a {s.color} {s.kind}" for s in ordered]
    body = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return body + "."


def questions(shapes: list[Shape], rng: np.random.Generator) -> list[QA]:
    """Every applicable question type for a scene, with hard negatives for the yes/no type."""
    out = [QA("count", "How many shapes are there?", str(len(shapes)))]
    if len(shapes) == 1:
        out.append(QA("shape", "What shape is in the image?", shapes[0].kind))
    kinds = [s.kind for s in shapes]
    unique = [s for s in shapes if kinds.count(s.kind) == 1]
    if unique:
        s = unique[int(rng.integers(len(unique)))]
        out.append(QA("color", f"What color is the {s.kind}?", s.color))
    present = {(s.color, s.kind) for s in shapes}
    if rng.random() < 0.5:  # a positive
        color, kind = sorted(present)[int(rng.integers(len(present)))]
    else:  # a negative, preferably hard: a colour or a shape that is in the frame, on another object
        colors, kinds_here = [s.color for s in shapes], [s.kind for s in shapes]
        candidates = [(c, k) for c in COLORS for k in SHAPES if (c, k) not in present]
        hard = [(c, k) for c, k in candidates if c in colors or k in kinds_here]
        pool = hard if hard and rng.random() < 0.8 else candidates
        color, kind = pool[int(rng.integers(len(pool)))]
    out.append(QA("exists", f"Is there a {color} {kind}?", "yes" if (color, kind) in present else "no"))
    return out


def colour_questions(shapes: list[Shape]) -> list[QA]:
    """ "What color is the …?" for every shape whose kind is unique in the frame, in scene order."""
    kinds = [s.kind for s in shapes]
    return [QA("color", f"What color is the {s.kind}?", s.color) for s in shapes if kinds.count(s.kind) == 1]


def binding_questions(shapes: list[Shape], rng: np.random.Generator) -> list[QA]:
    """Questions only the (colour, shape) binding answers, for training: the colour of every shape whose kind is
    unique, and four "Is there a …?" — two present pairs, a present colour on a shape it is not on, a present
    shape in a colour it does not have (when the frame has them). Answering from the colours alone, or the shapes
    alone, gets a quarter of them wrong — the shortcut `questions`' mix leaves open (there, "yes" whenever the
    colour is present is wrong on ~16 % of the yes/no questions, and the demo model learned exactly that)."""
    out = colour_questions(shapes)
    present = sorted({(s.color, s.kind) for s in shapes})
    wrong_shape = [(s.color, k) for s in shapes for k in SHAPES if (s.color, k) not in present]
    wrong_color = [(c, s.kind) for s in shapes for c in COLORS if (c, s.kind) not in present]
    asked = [present[int(rng.integers(len(present)))] for _ in range(2)]
    asked += [pool[int(rng.integers(len(pool)))] for pool in (wrong_shape, wrong_color) if pool]
    for color, kind in asked:
        out.append(QA("exists", f"Is there a {color} {kind}?", "yes" if (color, kind) in present else "no"))
    return out


def answer_question(shapes: list[Shape], question: str) -> str | None:
    """The correct answer to any of the task's questions about a scene (None if it does not apply)."""
    import re

    q = question.strip()
    kinds = [s.kind for s in shapes]
    if q == "How many shapes are there?":
        return str(len(shapes))
    if q == "What shape is in the image?":
        return shapes[0].kind if len(shapes) == 1 else None
    if m := re.fullmatch(r"What color is the (\w+)\?", q):
        return next((s.color for s in shapes if s.kind == m.group(1)), None) if kinds.count(m.group(1)) == 1 else None
    if m := re.fullmatch(r"Is there a (\w+) (\w+)\?", q):
        return "yes" if (m.group(1), m.group(2)) in {(s.color, s.kind) for s in shapes} else "no"
    return None
