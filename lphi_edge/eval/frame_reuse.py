"""Frames of a static camera and of small scene changes, for frame reuse (Assistant frame_reuse=...).

A scene (shapes-task shapes on a light background) is drawn once without noise; a `Camera`
(data/camera.py: sensor noise, then JPEG) then captures it again and again. `changes` makes the same scene
with one thing different: one object moved by a few pixels, recoloured, appeared or removed.

Used by `lphi-eval run --benchmark shapes-stream` (answers about noisy static streams, with and without
reuse) and by benchmarks/frame_reuse_tolerance.py (the measurements behind the default tolerance).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np

from lphi_edge.data.camera import Camera
from lphi_edge.data.shapes import COLORS, QA, Shape, questions, random_scene, render

MOVES = (1, 2, 3, 5)  # px, in the camera frame


@dataclass(frozen=True)
class Scene:
    """Shapes drawn on a width × height frame; `seed` fixes the background and the colours' jitter, so the
    same shapes draw the same way (a changed scene differs only where it was changed)."""

    shapes: tuple[Shape, ...]
    seed: int
    width: int = 224
    height: int = 224

    def draw(self) -> np.ndarray:
        """The clean frame, HxWx3 uint8 (no noise)."""
        side = max(self.width, self.height)
        a = render(list(self.shapes), np.random.default_rng(self.seed), size=side, noise=0)
        return np.ascontiguousarray(a[: self.height, : self.width])


def random_scenes(n: int, seed: int, width: int = 224, height: int = 224) -> list[Scene]:
    """n scenes of 1–3 shapes placed within the frame's top-left height × height square."""
    rng = np.random.default_rng(seed)
    side = min(width, height)
    return [Scene(tuple(random_scene(rng, size=side)), int(rng.integers(2**31)), width, height) for _ in range(n)]


def changes(scene: Scene, rng: np.random.Generator) -> dict[str, Scene]:
    """The scene with one change each: moved_{d}px (one object by d px, d in MOVES), recoloured, appeared,
    removed (when it has ≥ 2 objects)."""
    shapes = list(scene.shapes)
    i = int(rng.integers(len(shapes)))
    s = shapes[i]
    side = min(scene.width, scene.height)
    out: dict[str, Scene] = {}
    dx, dy = [(1, 0), (-1, 0), (0, 1), (0, -1)][int(rng.integers(4))]
    for d in MOVES:
        x, y = s.x + dx * d, s.y + dy * d
        if not (0 <= x <= side - s.size and 0 <= y <= side - s.size):  # would leave the frame: the other way
            x, y = s.x - dx * d, s.y - dy * d
        out[f"moved_{d}px"] = replace(scene, shapes=tuple(shapes[:i] + [replace(s, x=x, y=y)] + shapes[i + 1 :]))
    other = [c for c in COLORS if c != s.color][int(rng.integers(len(COLORS) - 1))]
    out["recoloured"] = replace(scene, shapes=tuple(shapes[:i] + [replace(s, color=other)] + shapes[i + 1 :]))
    new = _free_spot(shapes, side, rng)
    if new is not None:
        out["appeared"] = replace(scene, shapes=tuple(shapes + [new]))
    if len(shapes) > 1:
        out["removed"] = replace(scene, shapes=tuple(shapes[:-1]))
    return out


def _free_spot(shapes: list[Shape], side: int, rng: np.random.Generator) -> Shape | None:
    """A new 28–40 px shape that overlaps none of `shapes` (None if none fits after 1000 tries)."""
    for _ in range(1000):
        size = int(rng.integers(28, 41))
        x, y = int(rng.integers(0, side - size + 1)), int(rng.integers(0, side - size + 1))
        if all(x + size + 4 <= o.x or o.x + o.size + 4 <= x or y + size + 4 <= o.y or o.y + o.size + 4 <= y
               for o in shapes):  # fmt: skip
            kind = ("circle", "square", "triangle")[int(rng.integers(3))]
            return Shape(kind, list(COLORS)[int(rng.integers(len(COLORS)))], x, y, size)
    return None


def stream_items(n: int, seed: int, camera: Camera, repeats: int = 2) -> Iterator[tuple[str, np.ndarray, QA, int]]:
    """(question id, frame, question, scene index) of a static camera watching n scenes in turn (224 px).

    Each scene's questions (the shapes task's) are asked `repeats` times over, each about a new capture of the
    unchanged scene — what a robot parked in front of a scene asking every few seconds sends."""
    rng = np.random.default_rng(seed)
    for i, scene in enumerate(random_scenes(n, seed)):
        clean = scene.draw()
        asked = questions(list(scene.shapes), rng)
        for r in range(repeats):
            for k, qa in enumerate(asked):
                yield f"{seed}-{i}-{r}-{k}", camera.capture(clean, rng), qa, i
