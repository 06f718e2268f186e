"""Preprocessing equals transformers' CLIPImageProcessor (after LLaVA's expand2square) to 1e-5.

The reference is the PIL backend (`CLIPImageProcessorPil`), the processor the original code base
ran; where torchvision is installed transformers 5 picks a torchvision backend by default whose
resize differs by up to 0.03 (seen on the H100 machine).
"""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest
from PIL import Image
from transformers import CLIPImageProcessorPil

from lphi_edge.errors import ImageError
from lphi_edge.processing.image import ImageProcessor, ProcessorConfig, load_image

from conftest import shapes_frame
from reference import expand2square


def hf_pixels(img: Image.Image, size: int, pad: bool) -> np.ndarray:
    proc = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    if pad:
        img = expand2square(img.convert("RGB"), tuple(int(x * 255) for x in proc.image_mean))
    return np.asarray(proc(img, return_tensors="np")["pixel_values"])


SIZES = [(224, 224), (640, 480), (480, 640), (336, 336), (1000, 37), (37, 1000), (101, 99), (17, 23), (1280, 720)]


@pytest.mark.parametrize("pad", [False, True])
@pytest.mark.parametrize("wh", SIZES)
@pytest.mark.parametrize("size", [336, 56])
def test_matches_clip_image_processor(wh, pad, size):
    w, h = wh
    img = Image.fromarray(shapes_frame(w, h, seed=w * 7 + h))
    ours = ImageProcessor(ProcessorConfig(shortest_edge=size, crop_height=size, crop_width=size, pad_to_square=pad))(
        img
    )
    ref = hf_pixels(img, size, pad)
    assert ours.shape == ref.shape == (1, 3, size, size)
    assert ours.dtype == np.float32
    assert np.abs(ours - ref).max() <= 1e-5


@pytest.mark.parametrize("mode", ["L", "RGBA", "LA", "P", "RGB"])
def test_modes_match_clip_image_processor(mode):
    base = Image.fromarray(shapes_frame(200, 150, seed=5))
    img = base.convert(mode)
    if mode == "RGBA":  # real transparency: composited on white by both
        a = np.asarray(img).copy()
        a[:40, :, 3] = 60
        img = Image.fromarray(a, "RGBA")
    ours = ImageProcessor(ProcessorConfig(pad_to_square=False))(img)
    assert np.abs(ours - hf_pixels(img, 336, pad=False)).max() <= 1e-5


def test_inputs_agree_path_pil_array(tmp_path):
    a = shapes_frame(160, 120, seed=9)
    path = tmp_path / "f.png"
    Image.fromarray(a).save(path)
    proc = ImageProcessor()
    x = proc(a)
    assert np.array_equal(x, proc(Image.fromarray(a)))
    assert np.array_equal(x, proc(str(path)))
    assert np.array_equal(x, proc(path))
    gray = a[:, :, 0]
    assert np.array_equal(proc(gray), proc(gray[:, :, None]))
    assert np.array_equal(proc(gray), proc(Image.fromarray(gray, "L")))
    rgba = np.dstack([a, np.full(a.shape[:2], 255, np.uint8)])  # opaque alpha changes nothing
    assert np.array_equal(proc(rgba), x)
    assert proc([a, gray]).shape == (2, 3, 336, 336)


def test_padding_uses_clip_mean_colour():
    cfg = ProcessorConfig()
    assert cfg.pad_color == (122, 116, 104)
    wide = np.zeros((10, 40, 3), np.uint8)
    im = ImageProcessor(ProcessorConfig(shortest_edge=40, crop_height=40, crop_width=40))(wide)
    # the top rows are padding in int(mean * 255), normalised per channel
    expected = (np.array(cfg.pad_color) / 255 - np.array(cfg.image_mean)) / np.array(cfg.image_std)
    assert np.allclose(im[0, :, 0, :], expected[:, None], atol=1e-6)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((10, 10, 3), np.float32), "uint8"),
        (np.zeros((10, 10, 2), np.uint8), "HxWx3"),
        (np.zeros((0, 10, 3), np.uint8), "empty"),
        (np.zeros((2, 10, 10, 3), np.uint8), "HxWx3"),
        (12, "unsupported image type"),
    ],
)
def test_bad_arrays(bad, match):
    with pytest.raises(ImageError, match=match):
        load_image(bad)


def test_bad_files(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "missing.png")
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(ImageError, match="not a readable image"):
        load_image(text)
    buf = io.BytesIO()
    Image.fromarray(shapes_frame(64, 64, 1)).save(buf, "PNG")
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError, match="trunc.png"):
        load_image(trunc)


def test_processing_does_not_import_torch():
    import subprocess

    code = (
        "import sys, lphi_edge, lphi_edge.processing.image, lphi_edge.processing.tokenizer, "
        "lphi_edge.runtime.generation, lphi_edge.assistant; "
        "bad = [m for m in ('torch', 'transformers', 'rclpy') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
