"""Pretraining of the shapes-demo's tiny vision tower (the CLIP architecture) on the task's frames.

LLaVA-Phi starts from a pretrained CLIP ViT-L/14-336. No pretrained vision tower exists at the demo's
size, and one trained from scratch only through the language model did not learn shapes: after 3 000
stage-2 steps a linear probe of its patch features told circle / square / triangle apart no better
than chance (a contrastive image-caption objective did no better after 300 steps: captions in a batch
differ by colour and count long before shape). So, as ImageNet-supervised ViTs are, the tower is
pretrained with labels: from the mean of its selected-layer patch features (the features LLaVA feeds
the projector), a linear head predicts which shapes, colours and (colour, shape) pairs are in the frame
and how many shapes there are, read from the `scenes.jsonl` ground truth `lphi-make-shapes` writes.
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

from lphi_edge.data.shapes import COLORS, SHAPES
from lphi_edge.processing.image import ImageProcessor, ProcessorConfig, load_image

logger = logging.getLogger(__name__)
PAIRS = [(c, k) for c in COLORS for k in SHAPES]  # 12 (colour, shape) presence labels
LABELS = [*PAIRS, *SHAPES, *COLORS]  # + shape presence + colour presence: 19 binary labels
MAX_COUNT = 3
BACKGROUND = len(PAIRS)  # patch label of a patch no shape covers enough of


def patch_labels(shapes: list[dict], frame_size: int, grid: int) -> np.ndarray:
    """(grid², ) the (colour, shape) index of the shape whose bounding box covers most of each patch (row-major,
    as the tower's patch tokens), BACKGROUND where none covers a quarter of it; the patch holding a shape's
    centre always carries that shape, so the smallest shapes are never unlabelled."""
    cell = frame_size / grid
    edges = np.arange(grid + 1) * cell
    cover = np.zeros((len(shapes), grid, grid))  # fraction of each patch inside each shape's box
    for i, s in enumerate(shapes):
        ov_x = np.clip(np.minimum(edges[1:], s["x"] + s["size"]) - np.maximum(edges[:-1], s["x"]), 0, None)
        ov_y = np.clip(np.minimum(edges[1:], s["y"] + s["size"]) - np.maximum(edges[:-1], s["y"]), 0, None)
        cover[i] = np.outer(ov_y, ov_x) / cell**2
    labels = np.full((grid, grid), BACKGROUND, np.int64)
    if shapes:
        best = cover.argmax(0)
        ids = np.array([PAIRS.index((s["color"], s["kind"])) for s in shapes])
        labels = np.where(cover.max(0) >= 0.25, ids[best], labels)
        for s, pair in zip(shapes, ids):
            cx, cy = (s["x"] + s["size"] / 2) // cell, (s["y"] + s["size"] / 2) // cell
            labels[min(int(cy), grid - 1), min(int(cx), grid - 1)] = pair
    return labels.reshape(-1)


def load_labels(data_dir: Path, limit: int, grid: int = 0) -> tuple[list[Path], np.ndarray, np.ndarray, np.ndarray]:
    """Frames of a lphi-make-shapes directory, their presence labels (N, 19: the (colour, shape) pairs, the
    shapes, the colours), count − 1 (N,) and, with `grid`, per-patch labels (N, grid²; else (N, 0)) — those
    need square frames (the processor maps a square frame onto the patch grid without padding)."""
    paths, present, counts, patches = [], [], [], []
    for line in (data_dir / "scenes.jsonl").read_text().splitlines()[:limit]:
        rec = json.loads(line)
        here = {(s["color"], s["kind"]) for s in rec["shapes"]}
        here |= {s["kind"] for s in rec["shapes"]} | {s["color"] for s in rec["shapes"]}
        paths.append(data_dir / rec["image"])
        present.append([label in here for label in LABELS])
        counts.append(len(rec["shapes"]) - 1)
        if grid:
            with Image.open(paths[-1]) as im:  # reads the header only
                width, height = im.size
            if width != height:
                raise ValueError(f"per-patch labels need square frames, {paths[-1]} is {width}×{height}")
            patches.append(patch_labels(rec["shapes"], width, grid))
        else:
            patches.append(np.zeros(0, np.int64))
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
    per_patch: bool = False,
) -> dict[str, float]:
    """Train `vision_tower` (a transformers CLIPVisionModel) in place; returns held-out accuracies.

    With `per_patch`, a second linear head makes every selected-layer patch feature name the (colour, shape) of
    the shape it shows (`patch_labels`): the binding the language model needs for "What color is the square?"
    and "Is there a blue square?" when the frame holds a blue circle and a red square."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    grid = vision_tower.config.image_size // vision_tower.config.patch_size if per_patch else 0
    paths, present, counts, patches = load_labels(data_dir, frames, grid)
    proc = ImageProcessor(processor)
    pixels = torch.from_numpy(
        np.stack([proc(load_image(p))[0] for p in tqdm(paths, desc="vision pretrain: frames", unit="frame")])
    ).to(torch.float16)  # (N, 3, H, W), half precision to keep them in memory
    present_t, counts_t, patches_t = torch.from_numpy(present), torch.from_numpy(counts), torch.from_numpy(patches)
    held = np.arange(len(paths) - 500, len(paths))  # last 500 frames: held out
    train_ids = np.arange(len(paths) - 500)
    width = vision_tower.config.hidden_size
    head = torch.nn.Linear(width, len(LABELS) + MAX_COUNT)
    patch_head = torch.nn.Linear(width, len(PAIRS) + 1) if per_patch else None  # + BACKGROUND
    params = list(vision_tower.parameters()) + list(head.parameters())
    params += list(patch_head.parameters()) if patch_head is not None else []
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), weight_decay=0.1)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * min(s, steps) / steps))
    )

    def logits(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        hidden = vision_tower(pixels[idx].float(), output_hidden_states=True).hidden_states[select_layer]
        per_frame = head(hidden[:, 1:].mean(1))  # (B, 19 + 3) from the mean patch feature
        return per_frame, (patch_head(hidden[:, 1:]) if patch_head is not None else None)  # (B, grid², 13)

    vision_tower.train()
    bar = tqdm(range(steps), desc="vision pretrain", unit="step")
    for _ in bar:
        idx = torch.from_numpy(rng.choice(train_ids, size=batch, replace=False))
        out, per_patch_out = logits(idx)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out[:, : len(LABELS)], present_t[idx])
        loss = loss + torch.nn.functional.cross_entropy(out[:, len(LABELS) :], counts_t[idx])
        if per_patch_out is not None:
            loss = loss + torch.nn.functional.cross_entropy(per_patch_out.flatten(0, 1), patches_t[idx].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{float(loss):.3f}")
    vision_tower.eval()
    with torch.no_grad():
        outs = [logits(torch.from_numpy(held[i : i + 100])) for i in range(0, len(held), 100)]
    out = torch.cat([o for o, _ in outs])
    h = torch.from_numpy(held)
    right = (out[:, : len(LABELS)] > 0) == (present_t[h] > 0.5)  # (500, 19)
    scores = {
        "pairs_exact": float(right[:, : len(PAIRS)].all(1).float().mean()),
        "shapes_exact": float(right[:, len(PAIRS) : len(PAIRS) + len(SHAPES)].all(1).float().mean()),
        "count": float((out[:, len(LABELS) :].argmax(1) == counts_t[h]).float().mean()),
    }
    if patch_head is not None:
        patch_right = torch.cat([p.argmax(-1) for _, p in outs]) == patches_t[h]  # (500, grid²)
        scores["patches"] = float(patch_right.float().mean())
        scores["patches_exact"] = float(patch_right.all(1).float().mean())
    logger.info("vision pretraining, held-out frames: %s", scores)
    return scores
