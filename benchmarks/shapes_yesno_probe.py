"""Which words of "Is there a {colour} {shape}?" a shapes model reads: every yes/no question about frames holding a
single shape, split by kind — the present pair, the right colour on the wrong shape ("colour-match"), the right
shape in the wrong colour ("shape-match"). A model that answers from the colour alone scores 100 / 0 / 100 %.

    python benchmarks/shapes_yesno_probe.py --model shapes-demo --frames 60 --json OUT.json
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np

from lphi_edge import Assistant
from lphi_edge.data.shapes import COLORS, SHAPES, random_scene, render


def probe(model: str, frames: int, seed: int) -> dict[str, dict[str, float]]:
    assistant = Assistant.from_pretrained(model)
    rng = np.random.default_rng(seed)
    right, asked = Counter(), Counter()
    for _ in range(frames):
        scene = random_scene(rng, max_shapes=1)
        frame, s = render(scene, rng), scene[0]
        cases = [("present", s.color, s.kind, "yes")]
        cases += [("colour-match", s.color, k, "no") for k in SHAPES if k != s.kind]
        cases += [("shape-match", c, s.kind, "no") for c in COLORS if c != s.color]
        for kind, color, shape, want in cases:
            assistant.reset()
            got = assistant.ask(frame, f"Is there a {color} {shape}?", max_new_tokens=3).text
            asked[kind] += 1
            right[kind] += got.strip().lower().rstrip(".") == want
    return {k: {"accuracy": right[k] / asked[k], "questions": asked[k]} for k in asked}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="shapes-demo")
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--seed", type=int, default=4242)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    result = {"model": args.model, "frames": args.frames, "seed": args.seed}
    result |= probe(args.model, args.frames, args.seed)
    text = json.dumps(result, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
