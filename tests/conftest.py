"""Shared fixtures: tiny real-architecture checkpoints written once per session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from lphi_edge.model.tiny import write_tiny_checkpoint


@pytest.fixture(autouse=True, scope="session")
def _private_hash_cache(tmp_path_factory):
    """The record of verified export hashes (lphi_edge.format.hash_cache) goes to a temporary directory, for
    this process and the ones the tests start, not to the user's ~/.cache."""
    os.environ["LPHI_EDGE_CACHE"] = str(tmp_path_factory.mktemp("lphi-edge-cache"))


@pytest.fixture(scope="module")
def ros():
    """rclpy initialised for one test module's in-process ROS clients (the nodes under test are processes)."""
    import rclpy

    rclpy.init(args=[])
    yield
    rclpy.try_shutdown()


def run_torch_free(code: str) -> None:
    """Run `code` in a fresh interpreter and check that, when it ends, neither torch nor transformers was ever
    imported: the runtime path (exports, onnxruntime) must work on a robot that has neither."""
    check = """
import sys
bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))
assert not bad, bad
print("clean")
"""
    proc = subprocess.run([sys.executable, "-c", code + check], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("clean")


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """Native tiny LLaVA-Phi, image_aspect_ratio 'pad', non-zero lm_head bias."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_ckpt_square(tmp_path_factory) -> Path:
    """Same architecture without padding to square (image_aspect_ratio 'square')."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny_sq", seed=1, image_aspect_ratio="square")


def shapes_frame(width: int, height: int, seed: int) -> np.ndarray:
    """A shapes-task-like frame: light background, a few coloured shapes, mild noise. HxWx3 uint8."""
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(180, 256, 3)))
    d = ImageDraw.Draw(im)
    colours = [(220, 30, 30), (30, 170, 30), (30, 60, 220), (230, 200, 30)]
    for _ in range(int(rng.integers(1, 4))):
        s = int(rng.integers(8, max(9, min(width, height) // 2)))
        x, y = int(rng.integers(0, max(1, width - s))), int(rng.integers(0, max(1, height - s)))
        c = colours[int(rng.integers(0, 4))]
        kind = int(rng.integers(0, 3))
        if kind == 0:
            d.ellipse([x, y, x + s, y + s], fill=c)
        elif kind == 1:
            d.rectangle([x, y, x + s, y + s], fill=c)
        else:
            d.polygon([(x + s // 2, y), (x, y + s), (x + s, y + s)], fill=c)
    a = np.asarray(im).astype(np.int16) + rng.integers(-6, 7, (height, width, 3))
    return np.clip(a, 0, 255).astype(np.uint8)


@pytest.fixture
def frame() -> np.ndarray:
    return shapes_frame(224, 224, seed=3)


@pytest.fixture(scope="session")
def lean_venv(tmp_path_factory) -> Path:
    """A fresh virtual environment with only what a robot installs — `pip install ".[onnx,ros]"`, from this
    tree, through the package registry — so torch and transformers are absent, not merely unused. Returns
    its bin directory."""
    venv = tmp_path_factory.mktemp("lean") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"{root}[onnx,ros]"],
        capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return venv / "bin"
