"""Visual-token reduction (visual_tokens=K): the selection, the tower's [CLS] attention it reads, the same
tokens and answers on torch and onnxruntime, errors, and the CLIs (lphi-ask, lphi-eval, lphi-bench rows)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lphi_edge import Assistant
from lphi_edge.data.shapes import sample_frames
from lphi_edge.errors import ConfigError
from lphi_edge.export.exporter import export_model
from lphi_edge.format.manifest import Manifest
from lphi_edge.model.checkpoint import load_checkpoint
from lphi_edge.runtime.visual_tokens import VisualTokens, select_visual_tokens

from conftest import run_torch_free

EXE = Path(sys.executable).parent
Q = "What shape is in the image?"


@pytest.fixture(scope="module")
def tiny_onnx(tiny_ckpt, tmp_path_factory) -> Path:
    return export_model(tiny_ckpt, tmp_path_factory.mktemp("vt") / "fp32")


@pytest.fixture(scope="module")
def torch_assistant(tiny_ckpt) -> Assistant:
    return Assistant.from_pretrained(tiny_ckpt)


def test_selection_keeps_the_most_attended_tokens_in_order():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(12, 5)).astype(np.float32)  # (N, D)
    attention = np.array([0.01, 0.3, 0.02, 0.2, 0.05, 0.04, 0.1, 0.03, 0.06, 0.07, 0.08, 0.04], np.float32)
    kept = select_visual_tokens(feats, attention, VisualTokens(4, contextual=0))
    np.testing.assert_array_equal(kept, feats[[1, 3, 6, 10]])  # the 4 largest, in image order
    assert select_visual_tokens(feats, attention, VisualTokens(12)) is feats  # K = N: untouched
    tie = np.full(12, 0.5, np.float32)  # equal scores: the earlier tokens
    np.testing.assert_array_equal(select_visual_tokens(feats, tie, VisualTokens(3, contextual=0)), feats[:3])


def test_contextual_tokens_are_group_means_at_their_targets_place():
    # dominant: tokens 0 and 5; the rest (1, 2, 3, 4, 6, 7) → 2 targets evenly spaced: 1 and 4;
    # 2, 3 are nearest to 1's direction, 6, 7 to 4's
    e = np.eye(3, dtype=np.float32)
    feats = np.stack([e[2] * 9, e[0], e[0] * 2, e[0] * 3, e[1], e[2] * 7, e[1] * 2, e[1] * 4])  # (8, 3)
    attention = np.array([0.9, 0, 0, 0, 0, 0.8, 0, 0], np.float32)
    kept = select_visual_tokens(feats, attention, VisualTokens(4, contextual=2))
    expected = [feats[0], (feats[1] + feats[2] + feats[3]) / 3, (feats[4] + feats[6] + feats[7]) / 3, feats[5]]
    np.testing.assert_allclose(kept, np.stack(expected), rtol=1e-6)  # positions 0, 1 (target), 4 (target), 5
    assert VisualTokens(64).n_contextual == 10 and VisualTokens(144).n_contextual == 22  # VisionZip's 54 + 10
    assert VisualTokens(1).n_contextual == 0


def test_visual_tokens_values_are_checked():
    for bad in (0, -3, 2.5, True, "8"):
        with pytest.raises(ConfigError, match="visual_tokens must be an integer ≥ 1"):
            VisualTokens(bad)
    with pytest.raises(ConfigError, match=r"in 0\.\.3"):
        VisualTokens(4, contextual=4)
    with pytest.raises(ConfigError, match=r"visual_tokens 17 is out of range: .* 16 tokens per image, .* 1\.\.16"):
        VisualTokens(17).check(16)


def test_cls_attention_is_the_towers_own(tiny_ckpt):
    """The score of each image token is what the tower's selected layer gives its [CLS] query (transformers'
    own eager attention weights, mean over heads)."""
    model = load_checkpoint(tiny_ckpt)
    px = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        feats, attention = model.encode_images_with_attention(px)  # (B, N, D), (B, N)
        plain = model.encode_images(px)
        model.config.vision._attn_implementation = "eager"
        out = model.vision_tower(px, output_attentions=True)
    layer = model.image_attention_layer()
    assert layer == model.config.vision.num_hidden_layers - 2  # mm_vision_select_layer -2
    expected = out.attentions[layer][:, :, 0, 1:].mean(dim=1)  # (B, N): CLS row, patches
    torch.testing.assert_close(attention, expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(feats, plain, rtol=0, atol=0)  # the features are encode_images' own
    assert attention.shape == (2, 16) and bool((attention > 0).all()) and bool((attention.sum(1) < 1).all())


def test_assistant_feeds_k_tokens(torch_assistant, tiny_ckpt, frame):
    full = torch_assistant.ask(frame, Q, max_new_tokens=8)
    a = Assistant.from_pretrained(tiny_ckpt, visual_tokens=VisualTokens(6, contextual=0))
    ids, images = a.prompt_inputs(frame, Q)
    px = a.processor(frame)
    feats, attention = a.backend.encode_images(px, with_attention=True)
    top = np.sort(np.argsort(-attention[0], kind="stable")[:6])
    np.testing.assert_array_equal(images[0].features, feats[0][top])  # exactly the 6 most attended, in order
    for k in (16, 12, 6, 1):
        ans = Assistant.from_pretrained(tiny_ckpt, visual_tokens=k).ask(frame, Q, max_new_tokens=8)
        assert ans.timings.prompt_tokens == full.timings.prompt_tokens - (16 - k)
        if k == 16:
            assert ans.token_ids == full.token_ids  # K = N changes nothing
    with pytest.raises(ConfigError, match=r"visual_tokens 17 is out of range.*1\.\.16"):
        Assistant.from_pretrained(tiny_ckpt, visual_tokens=17)


def test_onnxruntime_selects_the_same_tokens_and_answers_identically(tiny_onnx, tiny_ckpt):
    part = Manifest.load(tiny_onnx).part("vision_encoder")
    assert [t.name for t in part.outputs] == ["image_features", "image_attention"]
    assert part.outputs[1].shape == ("batch", 16)
    for k in (12, 6, 3):
        ref = Assistant.from_pretrained(tiny_ckpt, visual_tokens=k)
        ort = Assistant.from_pretrained(tiny_onnx, visual_tokens=k)
        for frame in sample_frames(4, seed=k):
            px = ref.processor(frame)
            (_, a_ref), (_, a_ort) = ref.backend.encode_images(px, True), ort.backend.encode_images(px, True)
            np.testing.assert_allclose(a_ort, a_ref, rtol=1e-4, atol=1e-7)
            top_ort, top_ref = (np.sort(np.argsort(-a[0], kind="stable")[:k]) for a in (a_ort, a_ref))
            np.testing.assert_array_equal(top_ort, top_ref)
            x, y = ref.ask(frame, Q, max_new_tokens=12), ort.ask(frame, Q, max_new_tokens=12)
            assert x.token_ids == y.token_ids and x.timings.prompt_tokens == y.timings.prompt_tokens


def test_runtime_with_visual_tokens_and_frame_reuse_never_imports_torch(tiny_onnx):
    code = f"""
import sys
from lphi_edge import Assistant
from lphi_edge.data.shapes import sample_frames
a = Assistant.from_pretrained({str(tiny_onnx)!r}, visual_tokens=5, frame_reuse=True)
f = sample_frames(1)[0]
first = a.ask(f, "What shape is in the image?", max_new_tokens=4)
again = a.ask(f, "What shape is in the image?", max_new_tokens=4)
assert again.timings.answer_reused and again.text == first.text
"""
    run_torch_free(code)


def tower_variant(tiny_ckpt: Path, out: Path, **tower: object) -> Path:
    """A copy of the tiny checkpoint with other vision_tower settings in its config.json."""
    out.mkdir()
    for f in tiny_ckpt.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((out / "config.json").read_text())
    cfg["vision_config"]["vision_tower"].update(tower)
    (out / "config.json").write_text(json.dumps(cfg))
    return out


def test_cls_patch_features_always_keep_the_cls_token(tiny_ckpt, tmp_path, frame):
    ckpt = tower_variant(tiny_ckpt, tmp_path / "cls", mm_vision_select_feature="cls_patch")
    a = Assistant.from_pretrained(ckpt, visual_tokens=VisualTokens(3, contextual=0))
    feats, attention = a.backend.encode_images(a.processor(frame), with_attention=True)
    assert feats.shape[1] == attention.shape[1] == 17 and attention[0, 0] == 2.0  # CLS + 16 patches
    np.testing.assert_array_equal(a.prompt_inputs(frame, Q)[1][0].features[0], feats[0, 0])  # CLS first


def test_a_tower_without_the_signal_is_refused_on_torch_and_its_export(tiny_ckpt, tmp_path, frame):
    """mm_vision_select_layer pointing at the embeddings: no attention layer to select by. Its export has no
    image_attention output (as exports made before visual-token reduction)."""
    ckpt = tower_variant(tiny_ckpt, tmp_path / "embeddings", mm_vision_select_layer=0)
    with pytest.raises(ConfigError, match=r"visual_tokens 4 needs the vision tower's attention: .*select_layer 0"):
        Assistant.from_pretrained(ckpt, visual_tokens=4)
    assert Assistant.from_pretrained(ckpt).ask(frame, Q, max_new_tokens=2).token_ids  # without K it answers
    out = export_model(ckpt, tmp_path / "exp")
    assert [t.name for t in Manifest.load(out).part("vision_encoder").outputs] == ["image_features"]
    with pytest.raises(ConfigError, match="no 'image_attention' output .* export the model again"):
        Assistant.from_pretrained(out, visual_tokens=4)


def test_lphi_ask_visual_tokens(tiny_ckpt, torch_assistant, tmp_path, frame):
    from PIL import Image

    img = tmp_path / "f.png"
    Image.fromarray(frame).save(img)
    base = [str(EXE / "lphi-ask"), "--model", str(tiny_ckpt), "--image", str(img), "--prompt", Q, "--json"]
    proc = subprocess.run([*base, "--visual-tokens", "4", "--max-new-tokens", "4"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    full = torch_assistant.ask(img, Q, max_new_tokens=4).timings.prompt_tokens
    assert json.loads(proc.stdout.strip().splitlines()[-1])["timings_ms"]["prompt_tokens"] == full - 12
    proc = subprocess.run([*base, "--visual-tokens", "99"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "visual_tokens 99 is out of range: this model gives 16 tokens per image, so K must be in 1..16" in (
        proc.stderr
    )


def test_lphi_eval_run_visual_tokens(tiny_ckpt, tmp_path):
    from lphi_edge.cli.eval import main

    for name, extra in (("a", ["--visual-tokens", "8"]), ("b", [])):
        cmd = ["run", "--model", str(tiny_ckpt), "--benchmark", "shapes", "--n", "2", "--out", str(tmp_path / name)]
        assert main([*cmd, *extra]) == 0
    a, b = ([json.loads(x)["metadata"] for x in (tmp_path / n).read_text().splitlines()] for n in "ab")
    assert len(a) == len(b) >= 4 and all(m["visual_tokens"] == 8 for m in a)
    assert [m["prompt_tokens"] + 8 for m in a] == [m["prompt_tokens"] for m in b]
    assert main(["run", "--model", str(tiny_ckpt), "--benchmark", "shapes", "--out", "x", "--visual-tokens", "0"]) == 2


def test_lphi_bench_rows_per_k_and_reused_frame(tiny_ckpt, tiny_onnx, tmp_path):
    out = tmp_path / "bench.json"
    cmd = [str(EXE / "lphi-bench"), "--model", str(tiny_ckpt), "--model", str(tiny_onnx)]
    cmd += ["--visual-tokens", "16,8,4", "--reused-frame", "--runs", "1", "--warmup", "0", "--new-tokens", "3"]
    proc = subprocess.run([*cmd, "--threads", "1", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    rows = {x["key"]: x for x in r["results"]}
    for engine in ("torch/fp32", "onnxruntime/fp32"):  # K = 16 = N is the all-tokens row
        assert [k for k in rows if k.startswith(engine)] == [
            engine, f"{engine}, K=8", f"{engine}, K=4", f"{engine}, reused frame"
        ]  # fmt: skip
        full, reused = rows[engine], rows[f"{engine}, reused frame"]
        assert full["prefilled_positions"] == r["setting"]["prompt_positions"]
        for k in (8, 4):
            assert rows[f"{engine}, K={k}"]["prefilled_positions"] == full["prefilled_positions"] - (16 - k)
        assert reused["reused_frame"] and reused["stages_ms"]["vision"]["p50"] == 0  # the encoder never ran
        assert reused["prefilled_positions"] < full["prefilled_positions"] - 16  # system prompt + image cached
        assert 0 < reused["frame_difference"]["p90"] <= 9.0 and reused["stored_answer_ttft_ms"]["p50"] > 0
    from lphi_edge.bench.report import _speed

    row = {"decode_per_token": 1.02, "ttft": 27.0, "vision": None, "baseline": "transformers/fp32"}
    assert _speed(row) == "1.02× / 27.0× / — vs transformers/fp32"  # a reused frame's encoder never ran
    with pytest.raises(ConfigError, match="K ≥ 1|integer ≥ 1"):
        from lphi_edge.bench.runner import BenchConfig

        BenchConfig(models=("x",), visual_tokens=(0,))
    proc = subprocess.run([*cmd[:3], "--visual-tokens", "99", "--runs", "1"], capture_output=True, text=True)
    assert proc.returncode == 2 and "visual_tokens 99 is out of range" in proc.stderr, proc.stderr


def test_selection_runs_its_product_on_one_blas_thread():
    """Multi-threaded, numpy's BLAS leaves threads spinning that slowed the prefill after it (NOTES.md)."""
    from threadpoolctl import threadpool_info

    from lphi_edge.runtime.visual_tokens import _one_blas_thread

    blas = [i for i in threadpool_info() if i["user_api"] == "blas"]
    assert blas  # numpy's own BLAS is seen, so the limit below is real
    with _one_blas_thread():
        assert all(i["num_threads"] == 1 for i in threadpool_info() if i["user_api"] == "blas")
