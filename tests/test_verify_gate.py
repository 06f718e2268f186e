"""The export gate judges the export's numerics, not the test model: fp16 exports of random checkpoints at the
model classes' own initialisation (near-uniform logits, near-ties everywhere) publish, and a divergence is
called a near-tie only within the bound the measured logit error gives; a decoder weight scaled in the ONNX
file fails, naming the parts and each divergence."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from lphi_edge import Assistant
from lphi_edge.export.exporter import ExportConfig, export_model
from lphi_edge.export.verify import LOGIT_PARTS, OTHER_INPUTS, verify
from lphi_edge.format.manifest import Manifest
from lphi_edge.model.tiny import TinySpec, write_tiny_checkpoint

SEEDS = (1, 2, 3)
DEFAULT_INIT = TinySpec(init_range=None, lm_head_bias_std=0.0)  # no widened logits


@pytest.fixture(scope="module")
def default_init(tmp_path_factory) -> dict[int, tuple[Path, Path]]:
    """seed → (checkpoint, its fp16 export), exported with verification on (the export raises if it fails)."""
    root = tmp_path_factory.mktemp("default_init")
    out = {}
    for seed in SEEDS:
        ckpt = write_tiny_checkpoint(root / f"ckpt{seed}", seed=seed, spec=DEFAULT_INIT)
        out[seed] = ckpt, export_model(ckpt, root / f"fp16_{seed}", ExportConfig(fp16=True))
    return out


def test_fp16_exports_of_default_init_checkpoints_publish(default_init):
    for seed, (_, export) in default_init.items():
        report = Manifest.load(export).verification
        assert report["passed"], (seed, report["failures"])
        errors = [report["parts"][p]["max_abs_diff"] for p in LOGIT_PARTS]
        assert 0 < max(errors) and report["logit_error_bound"] == pytest.approx(2 * OTHER_INPUTS * max(errors))
        assert report["thresholds"]["divergence_bound"].startswith(f"2 * {OTHER_INPUTS}")
        # Each divergence is listed with its step, both tokens, the margin and the bound, and is a near-tie.
        assert len(report["divergences"]) == report["pairs"] - report["identical_answers"]
        for d in report["divergences"]:
            assert d["verdict"] == "near-tie" and d["margin"] <= d["bound"] == report["logit_error_bound"], d
            assert d["reference_token"] != d["export_token"] and 0 <= d["step"] < 16


def _scale_decoder_weight(export: Path, out: Path, factor: float) -> str:
    """Copy `export` to `out` with its first MLP up-projection (hidden × 4·hidden) scaled in the .onnx.data file,
    the manifest's file table rewritten to match (an export whose weights are wrong, not a corrupted file)."""
    shutil.copytree(export, out)
    graph = onnx.load(str(out / "decoder_model_merged.onnx"), load_external_data=False).graph
    init = next(i for i in graph.initializer if len(i.dims) == 2 and i.dims[1] == 4 * i.dims[0] and i.external_data)
    ext = {e.key: e.value for e in init.external_data}
    offset, length = int(ext["offset"]), int(ext["length"])
    with open(out / ext["location"], "r+b") as f:
        f.seek(offset)
        w = np.frombuffer(f.read(length), np.float16)  # (H·H,) fp16 weights
        f.seek(offset)
        f.write((w * np.float16(factor)).astype(np.float16).tobytes())
    Manifest.load(out, verify_checksums=False).with_files().write()
    return init.name


def test_a_scaled_decoder_weight_fails_naming_parts_and_divergences(default_init, tmp_path):
    ckpt, export = default_init[SEEDS[0]]
    name = _scale_decoder_weight(export, tmp_path / "scaled", 2.0)
    reference = Assistant.from_pretrained(ckpt)
    report = verify(reference, Assistant.from_pretrained(tmp_path / "scaled"), "fp16")
    assert not report.passed, name
    text = "; ".join(report.failures)
    assert "decode_logits cosine" in text and "answer_logits cosine" in text
    assert "vision_features" not in text  # the vision encoder is untouched and still passes
    assert report.divergences and all(d.verdict == "error" for d in report.divergences)
    assert "greedy answers diverge beyond the fp16 logit error" in text
    first = report.divergences[0]
    assert f"pair {first.pair} step {first.step}: reference {first.reference_token}" in text
    # The healthy export of the same checkpoint passes the same call.
    assert verify(reference, Assistant.from_pretrained(export), "fp16").passed


def test_classify_margin_against_bound_and_gate():
    from lphi_edge.export.verify import Comparison, VerificationReport, classify

    report = VerificationReport("fp16", logit_error_bound=0.01)
    report.parts = {p: Comparison(0.0025, 0.999999) for p in LOGIT_PARTS}
    assert classify(0.009, report) == ("near-tie", "")
    assert classify(0.011, report) == ("error", "")  # beyond what fp16's measured error explains
    report.parts["decode_logits"] = Comparison(0.0025, 0.99)  # logits outside the gate: no near-ties at all
    verdict, why = classify(0.0001, report)
    assert verdict == "error" and why.startswith("decode_logits outside the fp16 gate")
    assert classify(5.0, VerificationReport("int4", logit_error_bound=0.01))[0] == "error"  # reported, not gated
