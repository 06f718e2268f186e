"""Accuracy on the shapes camera task, per question type, on freshly generated frames.

python -m lphi_edge.eval.shapes --model shapes-demo --n 400 --seed 12345 [--camera-effects] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from lphi_edge.assistant import Assistant
from lphi_edge.data.camera import CameraEffects
from lphi_edge.data.shapes import QA, QUESTION_TYPES, questions, random_scene, render

logger = logging.getLogger(__name__)


def normalise(text: str) -> str:
    return text.strip().lower().rstrip(".").strip()


def shapes_items(n: int, seed: int, camera_effects: bool = False) -> Iterator[tuple[str, np.ndarray, QA]]:
    """(question id, frame, question) for every applicable question about n fresh frames of one seed; with
    `camera_effects`, the same frames and questions as a camera delivers them (`CameraEffects`, own random stream)."""
    rng, effects_rng, effects = np.random.default_rng(seed), np.random.default_rng([seed, 2]), CameraEffects()
    for i in range(n):
        scene = random_scene(rng)
        frame = render(scene, rng)
        if camera_effects:
            frame = effects.apply(frame, effects_rng)
        for k, qa in enumerate(questions(scene, rng)):
            yield f"{seed}-{i}-{k}", frame, qa


def shapes_accuracy(results: list[tuple[str, str, str]]) -> dict[str, Any]:
    """(question type, expected, model text) triples → accuracy overall and per type (fractions)."""
    right: dict[str, int] = defaultdict(int)
    asked: dict[str, int] = defaultdict(int)
    for kind, expected, text in results:
        asked[kind] += 1
        right[kind] += normalise(text) == expected
    return {
        "accuracy": sum(right.values()) / max(sum(asked.values()), 1),
        "per_type": {k: right[k] / asked[k] for k in QUESTION_TYPES if asked[k]},
        "counts": dict(asked),
    }


def evaluate_shapes(
    assistant: Assistant, n: int = 400, seed: int = 12345, max_new_tokens: int = 8, camera_effects: bool = False
) -> dict[str, Any]:
    """Ask every applicable question about n new frames (as a camera delivers them, with `camera_effects`);
    accuracy overall and per question type."""
    results, examples = [], []
    for _, frame, qa in tqdm(shapes_items(n, seed, camera_effects), desc="shapes eval", unit="question"):
        got = assistant.ask(frame, qa.question, max_new_tokens=max_new_tokens).text
        results.append((qa.kind, qa.answer, got))
        if normalise(got) != qa.answer and len(examples) < 20:
            examples.append({"question": qa.question, "expected": qa.answer, "got": normalise(got)})
    acc = shapes_accuracy(results)
    per_type, asked = acc["per_type"], acc["counts"]
    return {
        "frames": n,
        "seed": seed,
        "camera_effects": camera_effects,
        "questions": sum(asked.values()),
        "accuracy": acc["accuracy"],
        "per_type": per_type,
        "counts": dict(asked),
        "wrong_examples": examples,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lphi_edge.eval.shapes", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--backend", default=None)
    p.add_argument("--dtype", default=None, help="torch backend: fp32 (default), fp16, bf16 or int8")
    p.add_argument("--n", type=int, default=400)
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument(
        "--camera-effects",
        action="store_true",
        help="the same frames through camera effects (data.camera.CameraEffects)",
    )
    p.add_argument("--json", help="write the result here too")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    assistant = Assistant.from_pretrained(args.model, backend=args.backend, dtype=args.dtype)
    result = evaluate_shapes(assistant, args.n, args.seed, camera_effects=args.camera_effects)
    result["model"] = args.model
    text = json.dumps(result, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
