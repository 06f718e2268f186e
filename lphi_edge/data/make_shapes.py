"""Write the shapes task as LLaVA JSON + images (`lphi-make-shapes`).

DIR/images/000000.png ...
DIR/pretrain.json   stage 1, LLaVA "plain": [{"id", "image", "conversations": [human "<image>", gpt caption]}]
DIR/finetune.json   stage 2: every question type, single- and multi-turn conversations
DIR/scenes.jsonl    ground truth per frame (shapes, colours, boxes) for evaluation
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from lphi_edge.atomic import atomic_directory
from lphi_edge.data.shapes import DESCRIBE, QA, caption, questions, random_scene, render


def write_shapes_dataset(out: Path, n: int, seed: int, size: int = 224, multi_turn: float = 0.5) -> Path:
    """n frames; each gets a caption record and one conversation: with probability `multi_turn` a multi-turn
    one holding every question and a DESCRIBE turn (the caption, which names every object: a dense signal
    for a vision tower trained in stage 2) in random order, otherwise one single-turn record per question."""
    if not 0.0 <= multi_turn <= 1.0:
        raise ValueError(f"multi_turn must be a probability in [0, 1], got {multi_turn}")
    rng = np.random.default_rng(seed)
    pretrain, finetune = [], []
    with atomic_directory(out) as tmp:
        (tmp / "images").mkdir()
        with open(tmp / "scenes.jsonl", "w") as scenes:
            for i in tqdm(range(n), desc="lphi-make-shapes", unit="frame"):
                scene = random_scene(rng, size)
                name = f"images/{i:06d}.png"
                Image.fromarray(render(scene, rng, size)).save(tmp / name)
                scenes.write(json.dumps({"image": name, "shapes": [asdict(s) for s in scene]}) + "\n")
                pretrain.append(
                    {
                        "id": f"cap-{i}",
                        "image": name,
                        "conversations": [
                            {"from": "human", "value": "<image>"},
                            {"from": "gpt", "value": caption(scene)},
                        ],
                    }
                )
                qas = questions(scene, rng)
                rng.shuffle(qas)
                if rng.random() < multi_turn:
                    qas.insert(int(rng.integers(len(qas) + 1)), QA("describe", DESCRIBE, caption(scene)))
                    turns = []
                    for k, qa in enumerate(qas):
                        q = f"<image>\n{qa.question}" if k == 0 else qa.question
                        turns += [{"from": "human", "value": q}, {"from": "gpt", "value": qa.answer}]
                    finetune.append({"id": f"qa-{i}", "image": name, "conversations": turns})
                else:
                    finetune += [
                        {
                            "id": f"qa-{i}-{k}",
                            "image": name,
                            "conversations": [
                                {"from": "human", "value": f"<image>\n{qa.question}"},
                                {"from": "gpt", "value": qa.answer},
                            ],
                        }
                        for k, qa in enumerate(qas)
                    ]
        (tmp / "pretrain.json").write_text(json.dumps(pretrain))
        (tmp / "finetune.json").write_text(json.dumps(finetune))
    return out
