"""The shapes-demo model's starting point: a tiny LLaVA-Phi-architecture model with a tokenizer trained
on the task's text. Trained afterwards with `lphi-train` (see train/shapes_demo.sh).

    python -m lphi_edge.train.demo OUT_DIR [--seed N]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from lphi_edge.data.shapes import DESCRIBE, caption, questions, random_scene
from lphi_edge.errors import ConfigError
from lphi_edge.model.checkpoint import save_checkpoint
from lphi_edge.model.modeling import LlavaPhiForCausalLM
from lphi_edge.model.tiny import TinySpec, tiny_config, train_tokenizer
from lphi_edge.processing.image import ProcessorConfig
from lphi_edge.processing.template import PHI_SYSTEM
from lphi_edge.processing.tokenizer import EOS_TEXT

logger = logging.getLogger(__name__)

# CLIP 128 × 4 layers at 112 px (8 × 8 = 64 image tokens); Phi 192 × 3 layers, 6 heads of 32 (at 128 wide the
# yes/no binding questions stayed at 90 %; 192 took them to 99 %, train/README.md). A 512-token BPE: every
# word of the task is one token. (At 320 the system prompt took the merges: "red" was `Ġ re d`, "blue" `Ġb l u e`,
# every answer began with a bare `Ġ`, and the model answered "Is there a … ?" from the colour word alone.)
DEMO_SPEC = TinySpec(
    vocab_target=512,
    text_hidden=192,
    text_layers=3,
    text_heads=6,
    context_length=512,
    vision_hidden=128,
    vision_layers=4,
    vision_heads=4,
    image_size=112,
    patch_size=14,
    init_range=0.02,
    lm_head_bias_std=0.0,
)


def task_corpus(n: int = 2000, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    texts = [PHI_SYSTEM, "USER: ASSISTANT:"]
    for _ in range(n):
        scene = random_scene(rng)
        texts.append(f"USER: {DESCRIBE} ASSISTANT: {caption(scene)}")
        texts += [f"USER: {qa.question} ASSISTANT: {qa.answer}" for qa in questions(scene, rng)]
    return texts


def write_demo_init(
    out: Path,
    seed: int = 0,
    vision_data: Path | None = None,
    vision_steps: int = 4000,
    per_patch: bool = False,
    vision_from: Path | None = None,
    spec: TinySpec = DEMO_SPEC,
) -> Path:
    """The starting checkpoint; with `vision_data` (a lphi-make-shapes directory) its vision tower is first
    pretrained on that data's frames (lphi_edge.train.vision_pretrain), as LLaVA starts from a pretrained CLIP.
    With `vision_from` (a checkpoint of the same tower), that checkpoint's pretrained tower is taken instead:
    the tower is built and seeded before the language model, so `vision_data` with the same seed would give the
    same tower — this skips retraining it when only the language model changes. `spec`: the sizes (the shipped
    model's by default; other input sizes and depths for the experiments train/README.md lists)."""
    with tempfile.TemporaryDirectory() as tmp:
        tok = train_tokenizer(spec.vocab_target, task_corpus())
        tok.save(str(Path(tmp) / "tokenizer.json"))
        (Path(tmp) / "tokenizer_config.json").write_text(
            json.dumps(
                {
                    "tokenizer_class": "PreTrainedTokenizerFast",
                    "eos_token": EOS_TEXT,
                    "pad_token": EOS_TEXT,
                    "model_max_length": spec.context_length,
                    "clean_up_tokenization_spaces": False,
                },
                indent=2,
            )
        )
        eos = Tokenizer.from_file(str(Path(tmp) / "tokenizer.json")).token_to_id(EOS_TEXT)
        rows = -(-tok.get_vocab_size() // 64) * 64
        config = tiny_config(spec, rows, eos)
        torch.manual_seed(seed)
        model = LlavaPhiForCausalLM(config).eval()  # transformers' own initialisation (std 0.02)
        with torch.no_grad():
            model.language_model.lm_head.bias.zero_()
        processor = ProcessorConfig(
            shortest_edge=spec.image_size, crop_height=spec.image_size, crop_width=spec.image_size, pad_to_square=True
        )
        if vision_from is not None:
            from lphi_edge.model.checkpoint import load_checkpoint

            donor = load_checkpoint(vision_from).vision_tower
            if donor.config.to_dict() != model.vision_tower.config.to_dict():
                raise ConfigError(f"{vision_from}: its vision tower is not this spec's: re-pretrain with --vision-data")
            model.vision_tower.load_state_dict(donor.state_dict())
        elif vision_data is not None:
            from lphi_edge.train.vision_pretrain import pretrain_vision

            pretrain_vision(
                model.vision_tower,
                processor,
                vision_data,
                config.select_layer,
                steps=vision_steps,
                seed=seed,
                per_patch=per_patch,
            )
        return save_checkpoint(model, out, tokenizer_dir=tmp, processor=processor, overwrite=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lphi_edge.train.demo", description="shapes-demo starting checkpoint")
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vision-data", help="lphi-make-shapes directory: pretrain the vision tower on its frames first")
    p.add_argument("--vision-steps", type=int, default=4000)
    p.add_argument("--vision-per-patch", action="store_true", help="also teach every patch feature the shape it shows")
    p.add_argument("--vision-from", help="take the pretrained vision tower of this checkpoint (same tower spec)")
    p.add_argument("--image-size", type=int, default=DEMO_SPEC.image_size, help="input px (a multiple of 14)")
    p.add_argument("--text-layers", type=int, default=DEMO_SPEC.text_layers, help="Phi decoder layers")
    p.add_argument("--text-hidden", type=int, default=DEMO_SPEC.text_hidden, help="Phi width")
    p.add_argument("--text-heads", type=int, default=DEMO_SPEC.text_heads, help="Phi attention heads")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data = Path(args.vision_data) if args.vision_data else None
    donor = Path(args.vision_from) if args.vision_from else None
    spec = dataclasses.replace(
        DEMO_SPEC,
        image_size=args.image_size,
        text_layers=args.text_layers,
        text_hidden=args.text_hidden,
        text_heads=args.text_heads,
    )
    out = write_demo_init(Path(args.out), args.seed, data, args.vision_steps, args.vision_per_patch, donor, spec)
    logger.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
