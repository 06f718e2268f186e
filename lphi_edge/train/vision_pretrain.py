"""Pretraining of the shapes-demo's tiny vision tower (the CLIP architecture) on the task's frames.

LLaVA-Phi starts from a pretrained CLIP ViT-L/14-336. No pretrained vision tower exists at the demo's
size, and one trained from scratch only through the language model did not learn shapes: after 3 000
stage-2 steps a linear probe of its patch features told circle / square / triangle apart no better
than chance (a contrastive image-caption objective did no better after 300 steps: captions in a batch
differ by colour and count long before shape). So, as ImageNet-supervised ViTs are, the tower is
pretrained with labels: from the mean of its selected-layer patch features (the features LLaVA feeds
the projector), a linear head predicts which shapes, colours and (colour, shape) pairs are in the frame
and how many shapes there are, read from the `scenes.jsonl` ground truth `lphi-make-shapes` writes.
That alone left the (colour, shape) binding weak (held-out exact pair sets 68 %) and the demo model's
colour and yes/no answers stalled near 77 %, so every patch feature is also trained, through a second
linear head, to name the (colour, shape) of the shape covering most of its patch, or none: the binding
the language model then reads is in each image token, where LLaVA's projector looks.
Only the tower is kept.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from lphi_edge.data.shapes import COLORS, SHAPES, Shape, shape_mask
from lphi_edge.processing.image import ImageProcessor, ProcessorConfig, load_image

logger = logging.getLogger(__name__)
PAIRS = [(c, k) for c in COLORS for k in SHAPES]  # 12 (colour, shape) presence labels
LABELS = [*PAIRS, *SHAPES, *COLORS]  # + shape presence + colour presence: 19 binary labels
MAX_COUNT = 3
NO_SHAPE = len(PAIRS)  # patch label: no shape covers enough of the patch
MIN_COVER = 0.1  # a patch is labelled with a shape covering at least this fraction of it


def patch_labels(shapes: list[Shape], width: int, height: int, grid: int) -> np.ndarray:
    """(grid*grid,) int64, row-major like the vision tower's patches: the PAIRS index of the shape covering
    most of each patch (if ≥ MIN_COVER of it), else NO_SHAPE. Frames are padded to a square, centred, as
    the processor's pad_to_square does."""
    side = max(width, height)
    mask = np.zeros((side, side), np.uint8)
    top, left = (side - height) // 2, (side - width) // 2
    mask[top : top + height, left : left + width] = shape_mask(shapes, max(width, height))[:height, :width]
    edges = np.linspace(0, side, grid + 1).round().astype(int)
    out = np.full((grid, grid), NO_SHAPE, np.int64)
    for r in range(grid):
        for c in range(grid):
            block = mask[edges[r] : edges[r + 1], edges[c] : edges[c + 1]]
            cover = np.bincount(block.ravel(), minlength=len(shapes) + 1)[1:]  # pixels per shape
            best = int(cover.argmax())
            if cover[best] >= MIN_COVER * block.size:
                out[r, c] = PAIRS.index((shapes[best].color, shapes[best].kind))
    return out.ravel()


def load_labels(data_dir: Path, limit: int, grid: int) -> tuple[list[Path], np.ndarray, np.ndarray, np.ndarray]:
    """Frames of a lphi-make-shapes directory, their presence labels (N, 19: the (colour, shape) pairs, the
    shapes, the colours), count − 1 (N,) and patch labels (N, grid*grid)."""
    paths, present, counts, patches = [], [], [], []
    for line in (data_dir / "scenes.jsonl").read_text().splitlines()[:limit]:
        rec = json.loads(line)
        shapes = [Shape(**s) for s in rec["shapes"]]
        here = {(s.color, s.kind) for s in shapes} | {s.kind for s in shapes} | {s.color for s in shapes}
        paths.append(data_dir / rec["image"])
        present.append([label in here for label in LABELS])
        counts.append(len(shapes) - 1)
        with Image.open(paths[-1]) as im:  # reads the header only
            patches.append(patch_labels(shapes, im.width, im.height, grid))
    return paths, np.asarray(present, np.float32), np.asarray(counts, np.int64), np.stack(patches)


def pretrain_vision(
    vision_tower: torch.nn.Module,
    processor: ProcessorConfig,
    data_dir: Path,
    select_layer: int = -2,
    steps: int = 4000,
    batch: int = 64,
    lr: float = 1e-3,
    frames: int = 12000,
    seed: int = 0,
) -> dict[str, float]:
    """Train `vision_tower` (a transformers CLIPVisionModel) in place; returns held-out accuracies."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = vision_tower.config
    grid = cfg.image_size // cfg.patch_size
    paths, present, counts, patches = load_labels(data_dir, frames, grid)
    proc = ImageProcessor(processor)
    pixels = torch.from_numpy(
        np.stack([proc(load_image(p))[0] for p in tqdm(paths, desc="vision pretrain: frames", unit="frame")])
    ).to(torch.float16)  # (N, 3, H, W), half precision to keep them in memory
    present_t, counts_t, patches_t = torch.from_numpy(present), torch.from_numpy(counts), torch.from_numpy(patches)
    held = np.arange(len(paths) - 500, len(paths))  # last 500 frames: held out
    train_ids = np.arange(len(paths) - 500)
    head = torch.nn.Linear(cfg.hidden_size, len(LABELS) + MAX_COUNT)  # frame labels from the mean patch
    patch_head = torch.nn.Linear(cfg.hidden_size, len(PAIRS) + 1)  # each patch's (colour, shape) or none
    params = [*vision_tower.parameters(), *head.parameters(), *patch_head.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), weight_decay=0.1)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * min(s, steps) / steps))
    )

    def logits(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = vision_tower(pixels[idx].float(), output_hidden_states=True).hidden_states[select_layer]
        patch_features = hidden[:, 1:]  # (B, grid*grid, width): what the projector is fed
        return head(patch_features.mean(1)), patch_head(patch_features)  # (B, 19 + 3), (B, grid*grid, 13)

    vision_tower.train()
    bar = tqdm(range(steps), desc="vision pretrain", unit="step")
    for _ in bar:
        idx = torch.from_numpy(rng.choice(train_ids, size=batch, replace=False))
        out, per_patch = logits(idx)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out[:, : len(LABELS)], present_t[idx])
        loss = loss + torch.nn.functional.cross_entropy(out[:, len(LABELS) :], counts_t[idx])
        loss = loss + torch.nn.functional.cross_entropy(per_patch.flatten(0, 1), patches_t[idx].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{float(loss):.3f}")
    vision_tower.eval()
    with torch.no_grad():
        outs = [logits(torch.from_numpy(held[i : i + 100])) for i in range(0, len(held), 100)]
    out, per_patch = torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs]).argmax(-1)  # (500, 22), (500, P)
    h = torch.from_numpy(held)
    right = (out[:, : len(LABELS)] > 0) == (present_t[h] > 0.5)  # (500, 19)
    patch_pairs = torch.stack([(per_patch == k).any(1) for k in range(len(PAIRS))], 1)  # (500, 12) read off patches
    scores = {
        "pairs_exact": float(right[:, : len(PAIRS)].all(1).float().mean()),
        "shapes_exact": float(right[:, len(PAIRS) : len(PAIRS) + len(SHAPES)].all(1).float().mean()),
        "count": float((out[:, len(LABELS) :].argmax(1) == counts_t[h]).float().mean()),
        "patch_labels": float((per_patch == patches_t[h]).float().mean()),
        "pairs_exact_from_patches": float((patch_pairs == (present_t[h, : len(PAIRS)] > 0.5)).all(1).float().mean()),
    }
    logger.info("vision pretraining, held-out frames: %s", scores)
    return scores
