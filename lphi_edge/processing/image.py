"""CLIP-exact image preprocessing with PIL and numpy (no torch).

Pipeline (identical to the original LLaVA-Phi loader followed by transformers' CLIPImageProcessor):
  to RGB (alpha composited on white) → [pad to square with the mean colour] →
  resize shortest edge (PIL bicubic) → centre crop → rescale (1/255) → normalise (CLIP mean/std).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from lphi_edge.errors import ConfigError, ImageError

logger = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]  # noqa: UP007 (runtime alias, py3.10)

# PIL resampling filters by the integer codes HF preprocessor configs use.
_RESAMPLE = {0: Image.NEAREST, 1: Image.LANCZOS, 2: Image.BILINEAR, 3: Image.BICUBIC, 4: Image.BOX, 5: Image.HAMMING}


@dataclass(frozen=True)
class ProcessorConfig:
    """How a frame becomes `pixel_values`.

    Attributes:
        shortest_edge: the shorter image side is resized to this many pixels.
        crop_height / crop_width: centre-crop size; equals the vision tower's input size.
        image_mean / image_std: per-channel normalisation (RGB order).
        rescale_factor: multiplies uint8 values before normalisation.
        resample: PIL filter code (3 = bicubic, as CLIP).
        pad_to_square: LLaVA's `image_aspect_ratio == "pad"`: pad with the mean colour first.
    """

    shortest_edge: int = 336
    crop_height: int = 336
    crop_width: int = 336
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    rescale_factor: float = 1 / 255
    resample: int = 3
    pad_to_square: bool = True

    def __post_init__(self) -> None:
        for name in ("shortest_edge", "crop_height", "crop_width"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"ProcessorConfig.{name} must be a positive integer, got {value!r}")
        for name in ("image_mean", "image_std"):
            value = getattr(self, name)
            if len(value) != 3:
                raise ConfigError(f"ProcessorConfig.{name} must have 3 values (RGB), got {value!r}")
            object.__setattr__(self, name, tuple(float(v) for v in value))
        if any(s <= 0 for s in self.image_std):
            raise ConfigError(f"ProcessorConfig.image_std must be positive, got {self.image_std!r}")
        if self.resample not in _RESAMPLE:
            raise ConfigError(f"ProcessorConfig.resample must be one of {sorted(_RESAMPLE)}, got {self.resample!r}")

    @property
    def pad_color(self) -> tuple[int, int, int]:
        """LLaVA's expand2square background: int(mean * 255) per channel."""
        return tuple(int(m * 255) for m in self.image_mean)  # type: ignore[return-value]

    @classmethod
    def from_preprocessor_dict(cls, d: dict[str, Any], *, pad_to_square: bool) -> ProcessorConfig:
        """Read an HF `preprocessor_config.json` (CLIPImageProcessor fields)."""
        size = d.get("size", {"shortest_edge": 336})
        shortest = size["shortest_edge"] if isinstance(size, dict) and "shortest_edge" in size else None
        if shortest is None:
            shortest = size.get("height") if isinstance(size, dict) else int(size)
        crop = d.get("crop_size", {"height": shortest, "width": shortest})
        if not isinstance(crop, dict):
            crop = {"height": int(crop), "width": int(crop)}
        return cls(
            shortest_edge=int(shortest),
            crop_height=int(crop["height"]),
            crop_width=int(crop["width"]),
            image_mean=tuple(d.get("image_mean", CLIP_MEAN)),
            image_std=tuple(d.get("image_std", CLIP_STD)),
            rescale_factor=float(d.get("rescale_factor", 1 / 255)),
            resample=int(d.get("resample", 3)),
            pad_to_square=pad_to_square,
        )

    def to_preprocessor_dict(self) -> dict[str, Any]:
        """The HF `preprocessor_config.json` equivalent (padding lives in config.json's image_aspect_ratio)."""
        return {
            "image_processor_type": "CLIPImageProcessor",
            "do_resize": True,
            "size": {"shortest_edge": self.shortest_edge},
            "resample": self.resample,
            "do_center_crop": True,
            "crop_size": {"height": self.crop_height, "width": self.crop_width},
            "do_rescale": True,
            "rescale_factor": self.rescale_factor,
            "do_normalize": True,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "do_convert_rgb": True,
        }

    @classmethod
    def from_dir(cls, path: str | os.PathLike, *, image_size: int, pad_to_square: bool) -> ProcessorConfig:
        """`preprocessor_config.json` when present, else the vision tower's size with CLIP defaults."""
        pp = Path(path) / "preprocessor_config.json"
        if pp.is_file():
            try:
                return cls.from_preprocessor_dict(json.loads(pp.read_text()), pad_to_square=pad_to_square)
            except (ValueError, KeyError, TypeError) as e:
                raise ConfigError(f"{pp}: not a valid CLIP preprocessor config ({e})") from None
        return cls(shortest_edge=image_size, crop_height=image_size, crop_width=image_size, pad_to_square=pad_to_square)


def load_image(image: ImageInput) -> Image.Image:
    """Any accepted input → an RGB PIL image.

    Accepts a path, a PIL image, or a uint8 array HxW (grayscale), HxWx1, HxWx3 (RGB) or HxWx4 (RGBA).
    Transparency is composited onto white, as transformers' `convert_to_rgb` does.
    """
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise ImageError(f"image file not found: {path}")
        try:
            with Image.open(path) as im:
                im.load()
                return to_rgb(im)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise ImageError(f"cannot read image {path}: not a readable image file ({e})") from None
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, np.ndarray):
        return to_rgb(_array_to_pil(image))
    raise ImageError(
        f"unsupported image type {type(image).__name__}: expected a path, a PIL image or an HxWx3 uint8 RGB array"
    )


def _array_to_pil(a: np.ndarray) -> Image.Image:
    if a.dtype != np.uint8:
        raise ImageError(f"image array must be uint8 (0..255), got dtype {a.dtype}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:
        mode = "L"
    elif a.ndim == 3 and a.shape[2] in (3, 4):
        mode = "RGB" if a.shape[2] == 3 else "RGBA"
    else:
        raise ImageError(f"image array must be HxW, HxWx1, HxWx3 (RGB) or HxWx4 (RGBA), got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ImageError(f"image array is empty, shape {a.shape}")
    return Image.fromarray(np.ascontiguousarray(a), mode=mode)


def to_rgb(im: Image.Image) -> Image.Image:
    if im.width == 0 or im.height == 0:
        raise ImageError(f"image is empty ({im.width}x{im.height})")
    if "A" in im.getbands() or im.info.get("transparency") is not None:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def expand_to_square(im: Image.Image, color: tuple[int, int, int]) -> Image.Image:
    """LLaVA's expand2square: centre the image on a square canvas of `color`."""
    w, h = im.size
    if w == h:
        return im
    side = max(w, h)
    canvas = Image.new(im.mode, (side, side), color)
    canvas.paste(im, ((side - w) // 2, (side - h) // 2))
    return canvas


@dataclass
class ImageProcessor:
    """Frames → `pixel_values` float32 [B, 3, crop_h, crop_w]."""

    config: ProcessorConfig = field(default_factory=ProcessorConfig)

    def resize_shortest_edge(self, im: Image.Image) -> Image.Image:
        w, h = im.size
        size = self.config.shortest_edge
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = size, int(size * long / short)  # truncation, as transformers does
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        if (new_w, new_h) == (w, h):
            return im
        return im.resize((new_w, new_h), resample=_RESAMPLE[self.config.resample])

    def preprocess_one(self, image: ImageInput) -> np.ndarray:
        """One frame → float32 [3, crop_h, crop_w]."""
        cfg = self.config
        im = load_image(image)
        if cfg.pad_to_square:
            im = expand_to_square(im, cfg.pad_color)
        im = self.resize_shortest_edge(im)
        a = np.asarray(im)  # (H, W, 3) uint8
        h, w = a.shape[:2]
        ch, cw = cfg.crop_height, cfg.crop_width
        if h < ch or w < cw:  # cannot happen after resize unless crop > shortest_edge: pad like transformers
            a = _pad_center(a, max(h, ch), max(w, cw))
            h, w = a.shape[:2]
        top, left = (h - ch) // 2, (w - cw) // 2
        a = a[top : top + ch, left : left + cw]  # (ch, cw, 3)
        x = a.astype(np.float32) * np.float32(cfg.rescale_factor)
        x = (x - np.asarray(cfg.image_mean, np.float32)) / np.asarray(cfg.image_std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))  # (3, ch, cw)

    def __call__(self, images: ImageInput | list[ImageInput]) -> np.ndarray:
        """One frame or a list → float32 [B, 3, crop_h, crop_w]."""
        if not isinstance(images, list):
            images = [images]
        return np.stack([self.preprocess_one(im) for im in images])


def _pad_center(a: np.ndarray, h: int, w: int) -> np.ndarray:
    out = np.zeros((h, w, a.shape[2]), dtype=a.dtype)
    top, left = (h - a.shape[0]) // 2, (w - a.shape[1]) // 2
    out[top : top + a.shape[0], left : left + a.shape[1]] = a
    return out
