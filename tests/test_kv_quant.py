"""lphi-export --kv-cache shared --kv-quant int8: the decoder keeps its cache as int8 with per-channel scales
calibrated on the PyTorch model. The buffers really hold int8 (x / scale, rounded, saturated), the scales are
what the calibration frames reach, the answers stay the model's, and what cannot work is refused by name."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from lphi_edge import Assistant
from lphi_edge.data.shapes import sample_frames
from lphi_edge.errors import CheckpointError, ConfigError
from lphi_edge.export.exporter import ExportConfig, export_model
from lphi_edge.export.kv_quant import KVCalibrationConfig, check_graph_scales, quantize_kv_cache
from lphi_edge.export.rewrites import AttentionPatternError
from lphi_edge.export.verify import KV_COSINE_MIN, PROMPTS, Comparison, VerificationReport, _judge, verify
from lphi_edge.format.manifest import Manifest, file_table
from lphi_edge.model.tiny import TinySpec, write_tiny_checkpoint
from lphi_edge.runtime.generation import GenerationConfig, ImageInput, Session
from lphi_edge.runtime.onnx_backend import OnnxBackend, SharedKVCache

EXE = Path(sys.executable).parent
HEADROOM = 1.25


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """One head of 80 (Phi-2's head geometry: the op also rotates q and k)."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny80", seed=4, spec=TinySpec(text_heads=1))


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("frames")
    for k, frame in enumerate(sample_frames(4, seed=7)):
        Image.fromarray(frame).save(d / f"frame_{k}.png")
    (d / "notes.txt").write_text("not an image")
    return d


@pytest.fixture(scope="module")
def exports(ckpt, frames_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exports")
    out = {
        "shared": export_model(ckpt, root / "shared", ExportConfig(kv_cache="shared")),
        "kv8": export_model(ckpt, root / "kv8", ExportConfig(kv_cache="shared", kv_quant="int8")),
        "fp16-kv8": export_model(ckpt, root / "fp16-kv8", ExportConfig(fp16=True, kv_cache="shared", kv_quant="int8")),
    }
    cmd = [str(EXE / "lphi-export"), str(ckpt), "--out", str(root / "int4-kv8"), "--quant", "int4"]
    cmd += ["--block-size", "256", "--kv-cache", "shared", "--kv-quant", "int8"]
    cmd += ["--kv-calibration-images", str(frames_dir), "--kv-calibration-frames", "3"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "int8 KV cache" in proc.stdout  # the printed verification report says what was checked
    out["int4-kv8"] = root / "int4-kv8"
    return out


def _decoder(export: Path) -> onnx.ModelProto:
    return onnx.load(str(export / "decoder_model_merged.onnx"), load_external_data=False)


def test_the_decoder_keeps_an_int8_cache_with_the_exports_scales(exports):
    for name in ("kv8", "int4-kv8", "fp16-kv8"):
        m = Manifest.load(exports[name])
        meta = m.kv_quant
        assert meta.dtype == "int8" and meta.scales == "kv_cache_scales.npy"
        assert meta.scales in m.files  # checksummed like every other file
        scales = np.load(exports[name] / meta.scales)
        assert scales.shape == (4, 1, 80) and scales.dtype == np.float32 and (scales > 0).all()  # 2 layers × k, v
        model = _decoder(exports[name])
        inits = {
            t.name: onnx.numpy_helper.to_array(t)
            for t in model.graph.initializer
            if t.name.startswith("kv_cache_scale.")
        }  # kept in the graph file itself (the weights' data file is untouched)
        gqa = [n for n in model.graph.node if n.op_type == "GroupQueryAttention"]
        assert len(gqa) == 2
        for layer, node in enumerate(gqa):
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            assert attrs["k_quant_type"] == attrs["v_quant_type"] == b"PER_CHANNEL"
            assert attrs["kv_cache_bit_width"] == 8
            for slot, row in ((12, 2 * layer), (13, 2 * layer + 1)):  # k_scale, v_scale: the npy's tables
                np.testing.assert_array_equal(inits[node.input[slot]], scales[row][None, :, None, :])
        for value in [*model.graph.input, *model.graph.output]:
            if value.name.startswith(("past_key_values.", "present.")):
                assert value.type.tensor_type.elem_type == onnx.TensorProto.INT8
        past = [t for t in m.part("decoder_model_merged").inputs if t.name.startswith("past_")]
        assert {t.dtype for t in past} == {"int8"}
        assert m.format_version == 2  # lphi-edge versions that cannot read an int8 cache refuse it
        report = m.verification
        assert report["passed"] and report["kv_quant"] == "int8"
        assert report["thresholds"]["kv_cosine_min"] == KV_COSINE_MIN
        assert report["parts"]["kv_int8_round_trip"]["cosine"] >= KV_COSINE_MIN  # the cache's own rounding
        assert 0 <= report["kv_clipped_fraction"] < 1e-3  # held-out frames: (almost) nothing saturates
    assert Manifest.load(exports["kv8"]).verification["parts"]["prefill_kv"]["cosine"] >= KV_COSINE_MIN
    calibration = Manifest.load(exports["kv8"]).kv_quant.calibration
    assert calibration["frames"] == 8 and calibration["source"].startswith("synthetic")
    image_tokens = Manifest.load(exports["kv8"]).text.image_tokens
    assert calibration["headroom"] == HEADROOM and calibration["positions"] > 8 * image_tokens  # + prompt + answer
    calibration = Manifest.load(exports["int4-kv8"]).kv_quant.calibration
    assert calibration["frames"] == 3 and calibration["source"].endswith("frames0")  # the first 3 of the 4 images
    plain = Manifest.load(exports["shared"])
    assert plain.kv_quant is None and plain.format_version == 1
    assert Assistant.from_pretrained(exports["fp16-kv8"]).ask(sample_frames(1)[0], PROMPTS[0]).text  # f16 compute


def _with_scales_times(export: Path, factor: float, out: Path, npy: bool = True) -> Path:
    """A copy of an int8-cache export whose graph scales (and, with `npy`, its scales file) are `factor` times
    the calibrated ones."""
    shutil.copytree(export, out)
    path = out / "decoder_model_merged.onnx"
    model = onnx.load(str(path), load_external_data=False)
    for t in model.graph.initializer:
        if t.name.startswith("kv_cache_scale."):
            t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t) * np.float32(factor), t.name))
    onnx.save(model, str(path))
    if npy:
        np.save(out / "kv_cache_scales.npy", np.load(out / "kv_cache_scales.npy") * np.float32(factor))
    return out


@pytest.mark.parametrize("factor", [1.0, 0.1])
def test_the_buffers_hold_rounded_saturated_int8_of_the_models_cache(exports, tmp_path, factor):
    """Prefill a frame through the int8 export and the fp32 shared export: the int8 buffer is the fp32 cache
    divided by its scale, rounded and saturated to int8 (±1 for the two graphs' own float differences). With
    scales a tenth of the calibrated ones many values saturate: they sit on the rails with their sign kept
    (compared in the first layer, whose keys and values do not depend on the cache)."""
    export = exports["kv8"] if factor == 1 else _with_scales_times(exports["kv8"], factor, tmp_path / "coarse")
    kv8 = Assistant.from_pretrained(export, verify_checksums=False)
    fp32 = Assistant.from_pretrained(exports["shared"])
    frame = sample_frames(1, seed=21)[0]
    caches = []
    for a in (kv8, fp32):
        text = a.template.prompt([(PROMPTS[1], None)], image=True)
        feats = a.backend.encode_images(a.processor(frame))[0]  # (N, D)
        session = Session(a.backend, a.tokenizer)
        session.prefill(a.tokenizer.encode_prompt(text), [ImageInput("f", feats)])
        caches.append(session.cache)
    q8, ref = caches
    assert isinstance(q8, SharedKVCache) and all(b.dtype == np.int8 for b in q8.buffers)
    n, saturated = q8.seq_len, []
    layers = len(q8.buffers) if factor == 1 else 2  # saturated layer-0 attention changes what layer 1 sees
    for k, (buf, want) in enumerate(zip(q8.buffers[:layers], ref.arrays())):
        scale = q8.scales[k][None, :, None, :]  # (1, H, 1, Dh)
        q = np.round(want / scale)
        got = buf[:, :, :n].astype(np.int64)
        assert np.abs(got - np.clip(q, -128, 127)).max() <= 1
        outside = np.abs(q) > 130  # clearly beyond int8: saturated, sign kept (no wrap-around)
        assert ((got[outside] >= 126) | (got[outside] <= -127)).all()
        assert (np.sign(got[outside]) == np.sign(q[outside])).all()
        saturated.append(outside.mean())
        np.testing.assert_allclose(q8.arrays()[k], buf[:, :, :n] * scale)  # arrays() dequantizes
    assert (max(saturated) > 0.05) == (factor < 1)


def test_scales_cover_what_the_calibration_frames_reach(exports, ckpt):
    """Re-run the calibration frames through the int8 export: every channel's largest |int8| is 127 / headroom
    (the calibrated maximum; ±2 for the export's own float differences), and none is clipped."""
    a = Assistant.from_pretrained(exports["kv8"])
    peak = np.zeros((4, 1, 80))
    for k, frame in enumerate(KVCalibrationConfig().frames_to_run()):
        text = a.template.prompt([(PROMPTS[k % len(PROMPTS)], None)], image=True)
        session = Session(a.backend, a.tokenizer, a.eos_token_ids)
        feats = a.backend.encode_images(a.processor(frame))[0]
        session.generate(a.tokenizer.encode_prompt(text), [ImageInput(str(k), feats)], GenerationConfig(16))
        n = session.cache.seq_len
        peak = np.maximum(peak, [np.abs(b[:, :, :n].astype(np.int64)).max(axis=(0, 2)) for b in session.cache.buffers])
    assert np.abs(peak - 127 / HEADROOM).max() <= 2


def test_int8_cache_answers_like_the_model(exports, ckpt):
    """On frames neither calibration nor verification saw, the int8 cache's answers are the model's except
    at near-ties: where one parts, the model's margin there is within what the cache's measured logit error
    explains (the int8 kernels differ between CPUs, so exact tokens are not what is checked)."""
    torch_a, kv8, int4 = (Assistant.from_pretrained(p) for p in (ckpt, exports["kv8"], exports["int4-kv8"]))
    report = verify(torch_a, kv8, "fp32", pairs=6, new_tokens=12, seed=31, kv_quant="int8")
    assert report.passed, report.failures
    assert all(d.verdict == "near-tie" for d in report.divergences), [d.describe() for d in report.divergences]
    assert report.parts["decode_logits"].cosine >= 0.999
    for k, frame in enumerate(sample_frames(2, seed=31)):
        assert int4.ask(frame, PROMPTS[k], max_new_tokens=12).text  # runs end to end


def test_the_int8_cache_grows_in_place(exports, monkeypatch):
    """A cache that grows 8 → 16 positions on the way answers exactly like one reserved big from the start,
    holding the same int8 values; steps write in place."""
    monkeypatch.setattr(SharedKVCache, "MIN_CAPACITY", 8)
    be = OnnxBackend.from_export_dir(exports["kv8"])
    growing, roomy = be.new_cache(), be.new_cache()
    roomy.reserve(64)
    rng = np.random.default_rng(0)
    for s in (5, 1, 2, 1, 3):
        p = growing.seq_len
        embeds = be.embed(rng.integers(0, be.spec.vocab_size, (1, s)))  # (1, S, D)
        mask, pos = np.ones((1, p + s), np.int64), np.arange(p, p + s)[None]
        ptrs, capacity = [v.data_ptr() for v in growing.values], growing.capacity
        (a, _), (b, _) = (be.decode(embeds, mask, pos, c) for c in (growing, roomy))
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # the kernel may split a longer buffer differently
        assert ([v.data_ptr() for v in growing.values] != ptrs) == (p + s > capacity)  # moved only to grow
        for x, y in zip(growing.buffers, roomy.buffers):
            assert x.dtype == np.int8 and np.array_equal(x[:, :, : p + s], y[:, :, : p + s])
    assert (growing.seq_len, growing.capacity, roomy.capacity) == (12, 16, 64)


def test_int8_cache_options_are_refused_by_name(exports, tmp_path, ckpt):
    with pytest.raises(ConfigError, match=r"needs kv_cache='shared' \(--kv-cache shared\)"):
        ExportConfig(kv_quant="int8")
    with pytest.raises(ConfigError, match=r"kv_quant must be one of \('int8',\)"):
        ExportConfig(kv_cache="shared", kv_quant="int4")
    with pytest.raises(ConfigError, match="is not a directory"):
        KVCalibrationConfig(images=str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no png/jpg/jpeg/bmp/webp files in"):
        KVCalibrationConfig(images=str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="frames must be ≥ 1"):
        KVCalibrationConfig(frames=0)
    with pytest.raises(ConfigError, match=r"headroom must be in \[1, 4\]"):
        KVCalibrationConfig(headroom=0.5)
    with pytest.raises(ConfigError, match=r"headroom must be in \[1, 4\]"):
        KVCalibrationConfig(headroom=5)
    with pytest.raises(ConfigError, match="new_tokens must be ≥ 1"):
        KVCalibrationConfig(new_tokens=0)
    with pytest.raises(ConfigError, match="frames must be a whole number, got 2.5"):
        KVCalibrationConfig(frames=2.5)
    proc = subprocess.run(
        [str(EXE / "lphi-export"), str(ckpt), "--out", str(tmp_path / "x"), "--kv-quant", "int8"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "--kv-cache shared" in proc.stderr and not (tmp_path / "x").exists()
    proc = subprocess.run(
        [str(EXE / "lphi-export"), str(ckpt), "--out", str(tmp_path / "x"), "--kv-calibration-frames", "4"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "they need --kv-quant int8" in proc.stderr and not (tmp_path / "x").exists()

    def manifest_with(**kv_quant) -> Manifest:  # validated as Manifest.load validates
        data = Manifest.load(exports["kv8"]).to_json()
        data["parts"]["decoder_model_merged"]["kv_quant"].update(kv_quant)
        return Manifest.from_json(exports["kv8"], data)

    with pytest.raises(CheckpointError, match="decoder kv_quant 'fp8' unknown.*upgrade lphi-edge or re-export"):
        OnnxBackend(manifest_with(dtype="fp8"))
    with pytest.raises(CheckpointError, match="'nowhere.npy' is not among the export's files"):
        OnnxBackend(manifest_with(scales="nowhere.npy"))
    with pytest.raises(CheckpointError, match="cannot read the int8 KV cache scales"):
        OnnxBackend(manifest_with(scales="tokenizer.json"))
    with pytest.raises(CheckpointError, match=r"kv_quant scales file \['a.npy'\] is not among"):
        OnnxBackend(manifest_with(scales=["a.npy"]))
    bad = tmp_path / "bad-scales"
    shutil.copytree(exports["kv8"], bad)

    def with_scales(scales: np.ndarray) -> Manifest:  # a scales file written with a consistent file table
        np.save(bad / "kv_cache_scales.npy", scales)
        return replace(Manifest.load(exports["kv8"], verify_checksums=False), path=bad, files=file_table(bad))

    with pytest.raises(CheckpointError, match=r"scales float64 \(4, 1, 80\).*expected float32 \(4, 1, 80\)"):
        OnnxBackend(with_scales(np.ones((4, 1, 80))))
    with pytest.raises(CheckpointError, match=r"scales float32 \(2, 1, 80\).*expected float32 \(4, 1, 80\)"):
        OnnxBackend(with_scales(np.ones((2, 1, 80), np.float32)))
    with pytest.raises(CheckpointError, match="must be finite and > 0"):
        OnnxBackend(with_scales(np.zeros((4, 1, 80), np.float32)))
    concat = Manifest.load(exports["kv8"]).to_json()
    concat["parts"]["decoder_model_merged"]["kv_cache"] = "concat"
    with pytest.raises(CheckpointError, match="needs kv_cache 'shared', not 'concat'"):
        Manifest.from_json(exports["kv8"], concat)


def test_the_verification_gate_fails_a_coarse_int8_cache():
    report = VerificationReport("fp32", kv_quant="int8", kv_clipped_fraction=0.0123, pairs=8, identical_answers=6)
    report.parts = {
        "vision_features": Comparison(0.0, 1.0),
        "prefill_logits": Comparison(0.1, 0.9999),  # moved by the cache's rounding: reported, not gated
        "prefill_kv": Comparison(0.5, 0.999),
        "kv_int8_round_trip": Comparison(0.5, 0.995),
    }
    _judge(report, None)
    assert report.failures == [
        f"kv_int8_round_trip cosine 0.995000 < {KV_COSINE_MIN} (1.230% of the values saturate): calibrate on frames "
        "like the deployment's (--kv-calibration-images DIR), or raise --kv-calibration-headroom if values saturate"
    ]
    report.parts["kv_int8_round_trip"] = Comparison(0.01, 0.99995)
    report.failures = []
    _judge(report, None)
    assert report.passed  # fp32 weights: differing greedy answers are reported, not failed, with an int8 cache
    report.parts["vision_features"] = Comparison(0.1, 0.99)  # the vision encoder keeps its precision's gate
    _judge(report, None)
    assert report.failures == ["vision_features cosine 0.990000 < 0.99999"]


@pytest.mark.parametrize(("npy", "failure"), [(True, "kv_int8_round_trip cosine"), (False, "prefill_kv cosine")])
def test_the_verification_fails_an_export_whose_scales_are_off(exports, ckpt, tmp_path, npy, failure):
    """Scales a tenth of the calibrated ones: in graph and scales file, the cache's own rounding fails the gate;
    in the graph alone (a rewrite gone wrong), the exported cache against PyTorch's does."""
    coarse = _with_scales_times(exports["kv8"], 0.1, tmp_path / "coarse", npy=npy)
    reference, exported = Assistant.from_pretrained(ckpt), Assistant.from_pretrained(coarse, verify_checksums=False)
    report = verify(reference, exported, "fp32", pairs=2, kv_quant="int8")
    assert not report.passed and any(f.startswith(failure) for f in report.failures), report.failures
    scales = np.load(exports["kv8"] / "kv_cache_scales.npy")
    check_graph_scales(exports["kv8"] / "decoder_model_merged.onnx", scales)  # the export's own: consistent
    if not npy:
        with pytest.raises(AttentionPatternError, match="layer 0's attention lacks its calibrated scales"):
            check_graph_scales(coarse / "decoder_model_merged.onnx", scales)
    with pytest.raises(AttentionPatternError, match="already keeps a quantized cache"):
        quantize_kv_cache(coarse / "decoder_model_merged.onnx", scales)  # never quantized twice
