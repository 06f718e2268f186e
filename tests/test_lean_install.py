"""The robot's half of the Jetson recipe, in a fresh environment with only `pip install ".[onnx,ros]"`:
torch and transformers are not installed, and a copied export directory is verified, asked and refused
TensorRT engines (no TensorRT here) with nothing but the lean runtime."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from lphi_edge.format.shipped import SHIPPED_EXPORTS

FRAME = Path(__file__).resolve().parents[1] / "lphi_edge" / "assets" / "sample_frame.png"


@pytest.fixture(scope="module")
def copied(tmp_path_factory) -> Path:
    """The shipped export, copied somewhere else as one copies it to a robot."""
    return Path(shutil.copytree(SHIPPED_EXPORTS["shapes-demo"], tmp_path_factory.mktemp("robot") / "model"))


def test_torch_and_transformers_are_absent(lean_venv):
    for module in ("torch", "transformers"):
        proc = subprocess.run([str(lean_venv / "python"), "-c", f"import {module}"], capture_output=True, text=True)
        assert proc.returncode == 1 and f"No module named '{module}'" in proc.stderr


def test_lphi_verify_passes_on_the_copy(lean_venv, copied):
    proc = subprocess.run([str(lean_venv / "lphi-verify"), str(copied), "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])["report"]
    assert report["passed"] and report["identical_answers"] == report["pairs"]


def test_lphi_ask_answers_on_the_copy(lean_venv, copied):
    cmd = [str(lean_venv / "lphi-ask"), "--model", str(copied), "--image", str(FRAME)]
    proc = subprocess.run([*cmd, "--prompt", "What color is the circle?", "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["backend"] == "onnxruntime" and out["text"] == "red"  # the sample frame's circle is red


def test_lphi_build_engines_says_what_is_missing(lean_venv, copied):
    proc = subprocess.run([str(lean_venv / "lphi-build-engines"), str(copied)], capture_output=True, text=True)
    assert proc.returncode == 2 and "TensorRT is not installed here" in proc.stderr
    assert not (copied / "trt").exists()
