"""Tiny random-weight LLaVA-Phi checkpoints in the native layout, for tests and examples.

Real architecture (CLIP vision tower + mlp2x_gelu projector + Phi with lm_head bias), real file
formats (safetensors, config.json, preprocessor_config.json, a trained byte-level BPE tokenizer.json
with <|endoftext|>), a few hundred kilobytes.

    python -m lphi_edge.model.tiny OUT_DIR [--seed N] [--shard-size BYTES]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import CLIPVisionConfig, PhiConfig

from lphi_edge.model.checkpoint import save_checkpoint
from lphi_edge.model.config import LlavaPhiConfig
from lphi_edge.model.modeling import LlavaPhiForCausalLM
from lphi_edge.processing.image import ProcessorConfig
from lphi_edge.processing.template import PHI_SYSTEM
from lphi_edge.processing.tokenizer import EOS_TEXT

DEFAULT_INIT_RANGE = 0.02  # transformers' PhiConfig / CLIPVisionConfig default

logger = logging.getLogger(__name__)

_CORPUS = [
    PHI_SYSTEM,
    "USER: ASSISTANT: What shape is in the image? What color is the circle? How many shapes are there?",
    "Is there a red square? Is there a green triangle? Is there a blue circle? yellow yes no 1 2 3",
    "Describe the scene in front of the robot. A person is standing next to a table with a cup.",
    "The quick brown fox jumps over the lazy dog. Answer the question using a single word or phrase.",
    "Pick up the bottle on the left, then move to the door. Is the path clear? Where is the ball?",
    "0123456789 !?.,:;'\"()[]{}<>-_+=/\\*&^%$#@~` naïve café — ünïcödé ✓ 日本語",
]


@dataclass(frozen=True)
class TinySpec:
    """Sizes of a tiny model. head_dim 20 → rotary dims 8 (partial_rotary_factor 0.4 needs an even product)."""

    vocab_target: int = 360  # BPE vocabulary to train (embedding rows are padded to 384)
    text_hidden: int = 80
    text_layers: int = 2
    text_heads: int = 4
    context_length: int = 256
    vision_hidden: int = 48
    vision_layers: int = 3
    vision_heads: int = 4
    image_size: int = 56  # 4×4 patches of 14 px → 16 image tokens
    patch_size: int = 14
    # Weights ~ N(0, init_range): larger than usual so random answers depend on image and prompt. None keeps
    # the model classes' own initialisation (transformers' initializer_range 0.02: near-uniform logits, near-ties
    # everywhere), which the export gates must also pass.
    init_range: float | None = 0.15
    lm_head_bias_std: float = 1.0  # non-zero: the bias must be kept (0: the initialisation's zeros)


def train_tokenizer(vocab_size: int, corpus: list[str] | None = None) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus if corpus is not None else _CORPUS * 4, trainer=trainer)
    return tok


def write_tokenizer(out: Path, vocab_size: int) -> int:
    """Write tokenizer.json + tokenizer_config.json; returns the vocabulary size."""
    tok = train_tokenizer(vocab_size)
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": EOS_TEXT,
        "bos_token": EOS_TEXT,
        "unk_token": EOS_TEXT,
        "pad_token": EOS_TEXT,
        "model_max_length": 2048,
        "clean_up_tokenization_spaces": False,
        "add_prefix_space": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return tok.get_vocab_size()


def tiny_config(spec: TinySpec, vocab_rows: int, eos_id: int, image_aspect_ratio: str = "pad") -> LlavaPhiConfig:
    text = PhiConfig(
        vocab_size=vocab_rows,
        hidden_size=spec.text_hidden,
        intermediate_size=4 * spec.text_hidden,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads,
        max_position_embeddings=spec.context_length,
        initializer_range=spec.init_range or DEFAULT_INIT_RANGE,
        partial_rotary_factor=0.4,
        rope_theta=10000.0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
    )
    vision = CLIPVisionConfig(
        hidden_size=spec.vision_hidden,
        intermediate_size=4 * spec.vision_hidden,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        projection_dim=spec.vision_hidden,
        initializer_range=spec.init_range or DEFAULT_INIT_RANGE,
        hidden_act="quick_gelu",
    )
    return LlavaPhiConfig(text=text, vision=vision, image_aspect_ratio=image_aspect_ratio)


def build_tiny_model(config: LlavaPhiConfig, seed: int, spec: TinySpec = TinySpec()) -> LlavaPhiForCausalLM:
    torch.manual_seed(seed)
    model = LlavaPhiForCausalLM(config)
    with torch.no_grad():
        if spec.init_range is not None:
            for _name, p in model.named_parameters():
                if p.dim() >= 2:  # wide random weights: a random model whose answers depend on its inputs
                    p.normal_(0.0, spec.init_range)
        if spec.lm_head_bias_std:
            model.language_model.lm_head.bias.normal_(0.0, spec.lm_head_bias_std)
    return model.eval()


def write_tiny_checkpoint(
    out: str | Path,
    *,
    seed: int = 0,
    spec: TinySpec = TinySpec(),
    image_aspect_ratio: str = "pad",
    max_shard_size: int | str = "5GB",
    overwrite: bool = True,
) -> Path:
    """Write a tiny random native checkpoint to `out` and return its path."""
    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        n_vocab = write_tokenizer(Path(tmp), spec.vocab_target)
        eos_id = Tokenizer.from_file(str(Path(tmp) / "tokenizer.json")).token_to_id(EOS_TEXT)
        rows = -(-n_vocab // 64) * 64  # padded embedding rows, like Phi-2's 51200 for 50295 tokens
        config = tiny_config(spec, rows, eos_id, image_aspect_ratio)
        model = build_tiny_model(config, seed, spec)
        processor = ProcessorConfig(
            shortest_edge=spec.image_size,
            crop_height=spec.image_size,
            crop_width=spec.image_size,
            pad_to_square=image_aspect_ratio == "pad",
        )
        return save_checkpoint(
            model, out, tokenizer_dir=tmp, processor=processor, max_shard_size=max_shard_size, overwrite=overwrite
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lphi_edge.model.tiny", description=__doc__.split("\n")[0])
    parser.add_argument("out", help="checkpoint directory to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shard-size", default="5GB", help="max bytes per safetensors shard (e.g. 100KB)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = write_tiny_checkpoint(args.out, seed=args.seed, max_shard_size=args.shard_size)
    logger.info("wrote tiny LLaVA-Phi checkpoint to %s", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
