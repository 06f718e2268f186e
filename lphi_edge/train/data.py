"""LLaVA JSON data → (input_ids, labels, image) samples, loaded lazily; batches with image slots expanded.

Records: {"id", "image" (optional), "conversations": [{"from": "human"|"gpt", "value": ...}, ...]}.
- plain (stage 1): "<image>" + caption + "\\n"; loss on the caption and its newline.
- phi_v0 (stage 2, SFT): the conversation rendered exactly as at inference; loss only on the assistant
  answers and the <|endoftext|> closing each (the role prefixes, system prompt and image are masked).
Labels come from character spans of the rendered text mapped through the tokenizer's offsets, so
what is trained is token for token what `Assistant` feeds at inference.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lphi_edge.errors import LphiError
from lphi_edge.processing.image import ImageProcessor, load_image
from lphi_edge.processing.template import IMAGE_PLACEHOLDER, Template
from lphi_edge.processing.tokenizer import IMAGE_TOKEN_INDEX, Tokenizer

logger = logging.getLogger(__name__)
IGNORE_INDEX = -100


class BadSampleError(LphiError):
    """A training record cannot be used; the message names the file and record."""


@dataclass
class Sample:
    input_ids: list[int]  # IMAGE_TOKEN_INDEX marks the image slot
    labels: list[int]  # IGNORE_INDEX where no loss
    pixel_values: np.ndarray | None  # (3, H, W)


def render_conversation(template: Template, conversations: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """Render turns with `template`; returns the text and the character spans that carry loss."""
    if not conversations or len(conversations) % 2:
        raise ValueError("conversations must alternate human/gpt and end with gpt")
    spans: list[tuple[int, int]] = []
    if template.plain:
        human, gpt = conversations[0], conversations[1]
        if human.get("from") != "human" or gpt.get("from") != "gpt":
            raise ValueError("plain records need a human turn then a gpt turn")
        text = IMAGE_PLACEHOLDER
        spans.append((len(text), len(text) + len(gpt["value"]) + len(template.sep)))
        return text + gpt["value"] + template.sep, spans
    text = template.system + template.sep
    for k, turn in enumerate(conversations):
        role = ("human", "gpt")[k % 2]
        if turn.get("from") != role:
            raise ValueError(f"turn {k} is from {turn.get('from')!r}, expected {role!r}")
        value = turn["value"]
        if role == "human":
            text += f"{template.roles[0]}: {value}{template.sep}"
        else:
            text += f"{template.roles[1]}:"
            start = len(text)  # the answer's leading space belongs to its first token
            text += f" {value}{template.sep2}"
            spans.append((start, len(text)))
    return text, spans


def tokenize_with_labels(tokenizer: Tokenizer, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """Split on <image> like inference, tokenize each chunk, label tokens that start inside a span."""
    ids: list[int] = []
    labels: list[int] = []
    offset = 0
    for k, chunk in enumerate(text.split(IMAGE_PLACEHOLDER)):
        if k:
            ids.append(IMAGE_TOKEN_INDEX)
            labels.append(IGNORE_INDEX)
            offset += len(IMAGE_PLACEHOLDER)
        if chunk:
            chunk_ids, offsets = tokenizer.encode_with_offsets(chunk)
            for tok, (start, _end) in zip(chunk_ids, offsets):
                pos = offset + start
                ids.append(tok)
                labels.append(tok if any(a <= pos < b for a, b in spans) else IGNORE_INDEX)
        offset += len(chunk)
    return ids, labels


class LlavaJsonDataset(torch.utils.data.Dataset):
    """Lazy: records are parsed up front (JSON), images are read when a sample is taken."""

    def __init__(
        self,
        path: str | Path,
        image_folder: str | Path | None,
        tokenizer: Tokenizer,
        template: Template,
        processor: ImageProcessor,
        max_length: int,
        image_tokens: int,
    ):
        self.path = Path(path)
        self.image_folder = Path(image_folder) if image_folder else self.path.parent
        self.tokenizer, self.template, self.processor = tokenizer, template, processor
        self.max_length, self.image_tokens = max_length, image_tokens
        try:
            records = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise BadSampleError(f"cannot read training data {self.path}: {e}") from None
        if not isinstance(records, list):
            raise BadSampleError(f"{self.path}: expected a JSON list of LLaVA records")
        self.records: list[dict[str, Any]] = records

    def __len__(self) -> int:
        return len(self.records)

    def approx_lengths(self) -> list[int]:
        """Cheap per-record length estimates for length-grouped batching (words + image tokens; no
        tokenizing or image reading). Malformed records count as 0 and are reported when taken."""
        out = []
        for rec in self.records:
            try:
                words = sum(len(str(turn["value"]).split()) for turn in rec["conversations"])
                out.append(words + (self.image_tokens if rec.get("image") else 0))
            except (KeyError, TypeError, AttributeError):
                out.append(0)
        return out

    def describe(self, i: int) -> str:
        rec = self.records[i]
        rid = rec.get("id", "?") if isinstance(rec, dict) else "?"
        return f"{self.path} record {i} (id {rid!r})"

    def __getitem__(self, i: int) -> Sample:
        rec = self.records[i]
        try:
            conv = rec["conversations"]
            text, spans = render_conversation(self.template, conv)
        except (KeyError, TypeError, ValueError) as e:
            raise BadSampleError(f"{self.describe(i)}: malformed conversation ({e})") from None
        n_img = text.count(IMAGE_PLACEHOLDER)
        has_image = bool(rec.get("image"))
        if n_img != int(has_image):
            raise BadSampleError(
                f"{self.describe(i)}: {n_img} image placeholder(s) for "
                f"{'an image' if has_image else 'no image'}; expected exactly {int(has_image)}"
            )
        ids, labels = tokenize_with_labels(self.tokenizer, text, spans)
        length = len(ids) - n_img + n_img * self.image_tokens
        if length > self.max_length:
            raise BadSampleError(f"{self.describe(i)}: {length} positions > max_length {self.max_length}")
        pixels = None
        if has_image:
            try:
                pixels = self.processor.preprocess_one(load_image(self.image_folder / rec["image"]))
            except LphiError as e:
                raise BadSampleError(f"{self.describe(i)}: {e}") from None
        return Sample(ids, labels, pixels)


def collate(samples: list[Sample], image_tokens: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch; each image slot expanded to `image_tokens` positions marked in image_mask."""
    rows_ids, rows_labels, rows_img = [], [], []
    for s in samples:
        ids, labels, img = [], [], []
        for tok, lab in zip(s.input_ids, s.labels):
            if tok == IMAGE_TOKEN_INDEX:
                ids += [pad_id] * image_tokens
                labels += [IGNORE_INDEX] * image_tokens
                img += [True] * image_tokens
            else:
                ids.append(tok)
                labels.append(lab)
                img.append(False)
        rows_ids.append(ids)
        rows_labels.append(labels)
        rows_img.append(img)
    width = max(len(r) for r in rows_ids)
    batch = len(samples)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)  # (B, T)
    labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((batch, width), dtype=torch.long)
    image_mask = torch.zeros((batch, width), dtype=torch.bool)
    for b, (ids, lab, img) in enumerate(zip(rows_ids, rows_labels, rows_img)):
        n = len(ids)
        input_ids[b, :n], labels[b, :n], attention[b, :n] = torch.tensor(ids), torch.tensor(lab), 1
        image_mask[b, :n] = torch.tensor(img)
    pixels = [s.pixel_values for s in samples if s.pixel_values is not None]
    out = {"input_ids": input_ids, "labels": labels, "attention_mask": attention, "image_mask": image_mask}
    if pixels:
        out["pixel_values"] = torch.from_numpy(np.stack(pixels))  # (n_images, 3, H, W)
    return out
