"""The shipped shapes-demo model: resolvable by name, really answers the camera task."""

from __future__ import annotations

from pathlib import Path

from lphi_edge import Assistant
from lphi_edge.eval.shapes import evaluate_shapes

ASSET = Path(__file__).resolve().parents[1] / "lphi_edge" / "assets" / "shapes_demo"


def test_shapes_demo_resolves_by_name_and_is_small():
    a = Assistant.from_pretrained("shapes-demo")
    assert a.backend.name == "torch" and a.backend.spec.image_tokens == 64
    size = sum(f.stat().st_size for f in ASSET.iterdir())
    assert size <= 20 * 2**20 and (ASSET / "model.safetensors").is_file()


def test_shapes_demo_answers_fresh_frames():
    result = evaluate_shapes(Assistant.from_pretrained("shapes-demo"), n=40, seed=2024)
    assert result["accuracy"] >= 0.85, result  # 0.924 here; 0.909 on 400 frames (results/shapes_demo_eval.json)
    assert result["per_type"]["shape"] >= 0.9 and result["per_type"]["count"] >= 0.9, result


def test_shipped_onnx_export_answers_like_the_checkpoint():
    """`shapes-demo` with backend onnxruntime resolves to the shipped fp32 export of the same weights."""
    from lphi_edge.eval.shapes import shapes_items

    torch_a = Assistant.from_pretrained("shapes-demo")
    onnx_a = Assistant.from_pretrained("shapes-demo", backend="onnxruntime")
    assert onnx_a.backend.name == "onnxruntime" and onnx_a.backend.precision == "fp32"
    for _, frame, qa in list(shapes_items(8, seed=31)):
        assert onnx_a.ask(frame, qa.question).text == torch_a.ask(frame, qa.question).text, qa.question
