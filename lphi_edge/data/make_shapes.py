"""Write the shapes task as LLaVA JSON + images (`lphi-make-shapes`).

DIR/images/000000.png ...
DIR/pretrain.json   stage 1, LLaVA "plain": [{"id", "image", "conversations": [human "<image>", gpt caption]}]
DIR/finetune.json   stage 2: every question type, single- and multi-turn conversations
DIR/scenes.jsonl    ground truth per frame (shapes, colours, boxes) for evaluation
DIR/finetune_binding.json   (with `binding`) finetune.json + single-turn `binding_questions` for every frame
DIR/finetune_colour.json    (with `colour_drill`) the colour of every unique shape of each multi-shape frame, one
                            conversation per frame, + a replay of twice as many finetune_binding.json records

With `camera_effects` = p, each frame is, with probability p, stored as a camera would deliver it
(`CameraEffects`: resized through 1280×720, JPEG, noise, brightness); scenes.jsonl marks those frames.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from lphi_edge.atomic import atomic_directory
from lphi_edge.data.camera import CameraEffects
from lphi_edge.data.shapes import (
    DESCRIBE,
    QA,
    binding_questions,
    caption,
    colour_questions,
    questions,
    random_scene,
    render,
)


def _conversation(record_id: str, image: str, qas: list[QA]) -> dict:
    """One multi-turn record asking `qas` in order, the image with the first question."""
    turns = []
    for k, qa in enumerate(qas):
        turns += [
            {"from": "human", "value": f"<image>\n{qa.question}" if k == 0 else qa.question},
            {"from": "gpt", "value": qa.answer},
        ]
    return {"id": record_id, "image": image, "conversations": turns}


def _single_turn(record_id: str, image: str, qas: list[QA]) -> list[dict]:
    return [
        {
            "id": f"{record_id}-{k}",
            "image": image,
            "conversations": [
                {"from": "human", "value": f"<image>\n{qa.question}"},
                {"from": "gpt", "value": qa.answer},
            ],
        }
        for k, qa in enumerate(qas)
    ]


def write_shapes_dataset(
    out: Path,
    n: int,
    seed: int,
    size: int = 224,
    multi_turn: float = 0.5,
    binding: bool = False,
    camera_effects: float = 0.0,
    colour_drill: bool = False,
) -> Path:
    """n frames; each gets a caption record and one conversation: with probability `multi_turn` a multi-turn
    one holding every question and a DESCRIBE turn (the caption, which names every object: a dense signal
    for a vision tower trained in stage 2) in random order, otherwise one single-turn record per question.
    With `binding`, also finetune_binding.json: the same conversations plus `binding_questions` for every frame,
    drawn from a random stream of their own (every other file is the same as without). With `camera_effects` = p,
    a share p of the frames passes through `CameraEffects` (a random stream of its own: the scenes, questions and
    every other frame are the same as without). With `colour_drill` (needs `binding`), also finetune_colour.json for a
    colour curriculum stage after stage 2: in every frame with two or more shapes, the colour of each shape whose kind
    is unique, asked in one conversation (random order, a random stream of its own), mixed with a replay of twice as
    many finetune_binding.json records so the other question types are not forgotten."""
    if colour_drill and not binding:
        raise ValueError("colour_drill replays finetune_binding.json records: it needs binding")
    for name, p in (("multi_turn", multi_turn), ("camera_effects", camera_effects)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
    effects, effects_rng = CameraEffects(), np.random.default_rng([seed, 2])
    rng = np.random.default_rng(seed)
    drill_rng, colour_rng = np.random.default_rng([seed, 1]), np.random.default_rng([seed, 3])
    pretrain, finetune, drill, colour = [], [], [], []
    with atomic_directory(out) as tmp:
        (tmp / "images").mkdir()
        with open(tmp / "scenes.jsonl", "w") as scenes:
            for i in tqdm(range(n), desc="lphi-make-shapes", unit="frame"):
                scene = random_scene(rng, size)
                name = f"images/{i:06d}.png"
                frame = render(scene, rng, size)
                camera = bool(effects_rng.random() < camera_effects)
                Image.fromarray(effects.apply(frame, effects_rng) if camera else frame).save(tmp / name)
                record = {"image": name, "shapes": [asdict(s) for s in scene]} | ({"camera": True} if camera else {})
                scenes.write(json.dumps(record) + "\n")
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
                    finetune.append(_conversation(f"qa-{i}", name, qas))
                else:
                    finetune += _single_turn(f"qa-{i}", name, qas)
                if binding:
                    drill += _single_turn(f"bind-{i}", name, binding_questions(scene, drill_rng))
                asked = colour_questions(scene)
                if colour_drill and len(scene) > 1 and asked:
                    order = colour_rng.permutation(len(asked))
                    colour.append(_conversation(f"colour-{i}", name, [asked[j] for j in order]))
        (tmp / "pretrain.json").write_text(json.dumps(pretrain))
        (tmp / "finetune.json").write_text(json.dumps(finetune))
        if binding:
            (tmp / "finetune_binding.json").write_text(json.dumps(finetune + drill))
        if colour_drill:
            replay = colour_rng.choice(len(finetune) + len(drill), size=2 * len(colour), replace=False)
            both = finetune + drill
            (tmp / "finetune_colour.json").write_text(json.dumps(colour + [both[j] for j in replay]))
    return out
