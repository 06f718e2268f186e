"""TensorRT build settings, engine-directory naming and the errors raised without TensorRT (no GPU needed)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from lphi_edge.errors import CheckpointError, ConfigError, LphiError
from lphi_edge.export.tensorrt import (
    TrtBuildConfig,
    _check_part,
    _PartGraph,
    _profile_shapes,
    _set_precision_flags,
    build_engines,
)
from lphi_edge.format.engines import BUILD_JSON, engine_dir_name, source_hashes
from lphi_edge.format.manifest import FileEntry, Manifest, Part, TensorSpec, TextConfig
from lphi_edge.runtime.cuda_trt import require_tensorrt
from lphi_edge.runtime.trt_backend import find_engine_dir

H100 = ("NVIDIA H100 80GB HBM3", (9, 0))


# ---- TrtBuildConfig ------------------------------------------------------------------------------------------------
def test_defaults():
    c = TrtBuildConfig()
    assert (c.precision, c.max_batch, c.max_context, c.opt_prompt, c.workspace_gb) == ("fp16", 1, None, 640, 4.0)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"precision": "bf16"}, "precision"),
        ({"precision": "int4"}, "precision"),
        ({"max_batch": 0}, "max_batch"),
        ({"max_batch": 2.0}, "max_batch"),
        ({"max_batch": True}, "max_batch"),
        ({"max_context": 1}, "max_context"),
        ({"max_context": "2048"}, "max_context"),
        ({"opt_prompt": 0}, "opt_prompt"),
        ({"workspace_gb": 0}, "workspace_gb"),
        ({"workspace_gb": -1.5}, "workspace_gb"),
        ({"workspace_gb": "4"}, "workspace_gb"),
    ],
)
def test_invalid_values_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=rf"TrtBuildConfig\.{field}\b") as e:
        TrtBuildConfig(**kwargs)
    assert "\n" not in str(e.value)


def test_resolve_fills_and_checks_max_context():
    assert TrtBuildConfig().resolve(2048).max_context == 2048
    assert TrtBuildConfig(max_context=128).resolve(2048).opt_prompt == 127  # clipped: P ≤ max_context - 1
    with pytest.raises(ConfigError, match=r"max_context=4096 exceeds the model's context_length 2048"):
        TrtBuildConfig(max_context=4096).resolve(2048)


# ---- engine directory names ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "gpu, sm, version, precision, expected",
    [
        (*H100, "10.3.0", "fp16", "nvidia-h100-80gb-hbm3-sm90-trt10.3.0-fp16"),
        ("Orin (nvgpu)", (8, 7), "10.3.0.30", "fp16", "orin-nvgpu-sm87-trt10.3.0.30-fp16"),
        ("NVIDIA GeForce RTX 4090", (8, 9), "10.13.0.35", "fp32", "nvidia-geforce-rtx-4090-sm89-trt10.13.0.35-fp32"),
        ("  Tesla T4/PCIe_16GB ", (7, 5), "10.0.1", "int8", "tesla-t4-pcie-16gb-sm75-trt10.0.1-int8"),
    ],
)
def test_engine_dir_name(gpu, sm, version, precision, expected):
    name = engine_dir_name(gpu, sm, version, precision)
    assert name == expected
    assert re.fullmatch(r"[a-z0-9.-]+", name)


# ---- without TensorRT ---------------------------------------------------------------------------------------------
def test_require_tensorrt_without_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    with pytest.raises(LphiError) as e:
        require_tensorrt()
    msg = str(e.value)
    assert "tensorrt" in msg.lower() and "build on the target device" in msg
    assert "lphi-build-engines DIR" in msg and "\n" not in msg


def test_build_engines_without_tensorrt_fails_before_touching_the_directory(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(LphiError, match="build on the target device"):
        build_engines(tmp_path / "not-an-export")
    assert not (tmp_path / "not-an-export").exists()


# ---- engine directory lookup ---------------------------------------------------------------------------------------
def _fake_build(root, name):
    d = root / "trt" / name
    d.mkdir(parents=True)
    (d / BUILD_JSON).write_text(json.dumps({"precision": name.rsplit("-", 1)[1]}))
    for part in ("vision_encoder", "embed_tokens", "decoder_model_merged"):
        (d / f"{part}.engine").write_bytes(b"x")
    return d


def test_find_engine_dir_prefers_fp16_for_this_gpu_and_version(tmp_path):
    _fake_build(tmp_path, "nvidia-h100-80gb-hbm3-sm90-trt10.3.0-fp32")
    fp16 = _fake_build(tmp_path, "nvidia-h100-80gb-hbm3-sm90-trt10.3.0-fp16")
    assert find_engine_dir(tmp_path, trt_version="10.3.0", gpu=H100) == fp16
    assert find_engine_dir(tmp_path, "fp32", trt_version="10.3.0", gpu=H100).name.endswith("-fp32")


def test_find_engine_dir_lists_what_exists(tmp_path):
    _fake_build(tmp_path, "orin-sm87-trt10.3.0-fp16")
    with pytest.raises(CheckpointError) as e:
        find_engine_dir(tmp_path, trt_version="10.3.0", gpu=H100)
    msg = str(e.value)
    assert "nvidia-h100-80gb-hbm3-sm90-trt10.3.0-" in msg and "orin-sm87-trt10.3.0-fp16" in msg
    assert "run `lphi-build-engines" in msg and "on this device" in msg and "\n" not in msg


# ---- profiles and precision checks (pure logic over a manifest) ------------------------------------------------------
def _manifest(tmp_path, precision="fp32", dtype="float32"):
    inputs = {
        "vision_encoder": TensorSpec("pixel_values", dtype, ("batch", 3, 112, 112)),
        "embed_tokens": TensorSpec("input_ids", "int64", ("batch", "seq")),
        "decoder_model_merged": TensorSpec("inputs_embeds", dtype, ("batch", "seq", 64)),
    }
    parts = {p: Part(f"{p}.onnx", precision, (t,), ()) for p, t in inputs.items()}
    files = {f"{p}.onnx{ext}": FileEntry(f"{p}{ext}", 1) for p in parts for ext in ("", ".data")}
    files["tokenizer.json"] = FileEntry("tok", 1)
    text = TextConfig(64, 100, 2048, 16, 2, 4, 4, 16, 0)
    return Manifest(tmp_path, precision, parts, text, {"crop_height": 112, "crop_width": 96}, "phi_v0", files)


def test_profiles_cover_the_declared_ranges(tmp_path):
    m = _manifest(tmp_path)
    c = TrtBuildConfig(max_batch=2, max_context=1024).resolve(2048)
    assert _profile_shapes(m, "vision_encoder", "pixel_values", (-1, 3, -1, -1), c) == (
        (1, 3, 112, 96),
        (1, 3, 112, 96),
        (2, 3, 112, 96),
    )
    assert _profile_shapes(m, "embed_tokens", "input_ids", (-1, -1), c) == ((1, 1), (1, 640), (2, 1024))
    dec = "decoder_model_merged"
    assert _profile_shapes(m, dec, "inputs_embeds", (-1, -1, 64), c) == ((1, 1, 64), (1, 1, 64), (2, 1024, 64))
    assert _profile_shapes(m, dec, "attention_mask", (-1, -1), c) == ((1, 1), (1, 641), (2, 1024))
    assert _profile_shapes(m, dec, "position_ids", (-1, -1), c) == ((1, 1), (1, 1), (2, 1024))
    assert _profile_shapes(m, dec, "past_key_values.3.value", (-1, 4, -1, 32), c) == (
        (1, 4, 0, 32),
        (1, 4, 640, 32),
        (2, 4, 1023, 32),
    )
    with pytest.raises(LphiError, match="dynamic axis 2"):
        _profile_shapes(m, dec, "inputs_embeds", (-1, -1, -1), c)


def test_source_hashes_are_the_onnx_files_and_their_data(tmp_path):
    hashes = source_hashes(_manifest(tmp_path))
    assert sorted(hashes) == sorted(
        f"{p}.onnx{e}" for p in ("vision_encoder", "embed_tokens", "decoder_model_merged") for e in ("", ".data")
    )


class _Trt10:
    """The two attributes _check_part reads from the tensorrt module (TensorRT 10 has the FP16 flag)."""

    __version__ = "10.3.0"

    class BuilderFlag:
        FP16 = 0
        INT8 = 1
        TF32 = 2


class _Trt11:
    __version__ = "11.4.0"

    class BuilderFlag:
        pass


def _write_onnx(path, op_type, domain=""):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    node = helper.make_node(op_type, ["x"], ["y"], domain=domain)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    onnx.save(helper.make_model(graph), str(path))


def test_matmulnbits_is_refused_with_the_export_hint(tmp_path):
    m = _manifest(tmp_path, precision="int4")
    _write_onnx(tmp_path / "decoder_model_merged.onnx", "MatMulNBits", domain="com.microsoft")
    with pytest.raises(ConfigError) as e:
        _check_part(m, "decoder_model_merged", TrtBuildConfig().resolve(2048), _Trt10)
    msg = str(e.value)
    assert "MatMulNBits" in msg and "export without --quant for --trt" in msg and "\n" not in msg


def test_shared_kv_decoder_is_refused_with_the_export_hint(tmp_path):
    m = _manifest(tmp_path)
    _write_onnx(tmp_path / "decoder_model_merged.onnx", "GroupQueryAttention", domain="com.microsoft")
    with pytest.raises(ConfigError, match=r"GroupQueryAttention.*export with --kv-cache concat for --trt"):
        _check_part(m, "decoder_model_merged", TrtBuildConfig().resolve(2048), _Trt10)
    _write_onnx(tmp_path / "decoder_model_merged.onnx", "Relu")  # the manifest alone says so too
    m = replace(m, parts={**m.parts, "decoder_model_merged": replace(m.decoder, kv_cache="shared")})
    with pytest.raises(ConfigError, match=r"--kv-cache concat"):
        _check_part(m, "decoder_model_merged", TrtBuildConfig().resolve(2048), _Trt10)


def test_int8_needs_qdq_in_the_decoder(tmp_path):
    m = _manifest(tmp_path)
    _write_onnx(tmp_path / "decoder_model_merged.onnx", "Relu")
    with pytest.raises(ConfigError, match=r"TrtBuildConfig\.precision='int8' needs Q/DQ.*export without --quant"):
        _check_part(m, "decoder_model_merged", TrtBuildConfig(precision="int8").resolve(2048), _Trt10)
    _write_onnx(tmp_path / "decoder_model_merged.onnx", "DequantizeLinear")
    assert _check_part(m, "decoder_model_merged", TrtBuildConfig(precision="int8").resolve(2048), _Trt10).has_qdq


def test_fp16_on_strongly_typed_tensorrt_needs_an_fp16_export(tmp_path):
    _write_onnx(tmp_path / "vision_encoder.onnx", "Relu")
    cfg = TrtBuildConfig(precision="fp16").resolve(2048)
    assert not _check_part(_manifest(tmp_path), "vision_encoder", cfg, _Trt10).fp16_graph  # TRT 10: FP16 flag
    with pytest.raises(ConfigError, match=r"precision='fp16'.*export with --fp16 for --trt"):
        _check_part(_manifest(tmp_path), "vision_encoder", cfg, _Trt11)
    assert _check_part(_manifest(tmp_path, "fp16", "float16"), "vision_encoder", cfg, _Trt11).fp16_graph


class _BuildConfig:
    """Records the builder flags set on it, starting from TensorRT's defaults (TF32 on)."""

    def __init__(self):
        self.flags = {_Trt10.BuilderFlag.TF32}

    def set_flag(self, flag):
        self.flags.add(flag)

    def clear_flag(self, flag):
        self.flags.discard(flag)


@pytest.mark.parametrize(
    ("precision", "qdq", "flags"),
    [("fp32", False, set()), ("fp16", False, {"FP16", "TF32"}), ("int8", True, {"FP16", "INT8", "TF32"})],
)
def test_precision_flags_fp32_engines_compute_in_fp32(precision, qdq, flags):
    config = _BuildConfig()
    _set_precision_flags(_Trt10, config, precision, _PartGraph(has_qdq=qdq, fp16_graph=False))
    names = {k for k, v in vars(_Trt10.BuilderFlag).items() if not k.startswith("_") and v in config.flags}
    assert names == flags


# ---- lphi-build-engines where TensorRT cannot run ------------------------------------------------------------------
def test_lphi_build_engines_without_tensorrt_says_what_is_missing(tmp_path):
    from lphi_edge.format.shipped import SHIPPED_EXPORTS

    export = shutil.copytree(SHIPPED_EXPORTS["shapes-demo"], tmp_path / "export")
    exe = str(Path(sys.executable).with_name("lphi-build-engines"))
    proc = subprocess.run([exe, str(export)], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "TensorRT is not installed here" in proc.stderr and "JetPack" in proc.stderr
    assert "pip install tensorrt" in proc.stderr and not (export / "trt").exists()  # nothing written
    for args, message in (
        (["--workspace-gb", "0"], "TrtBuildConfig.workspace_gb must be a positive number"),
        (["--precision", "int4"], "invalid choice"),
    ):
        proc = subprocess.run([exe, str(export), *args], capture_output=True, text=True)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    proc = subprocess.run([exe, str(tmp_path / "nowhere")], capture_output=True, text=True)
    assert proc.returncode == 2 and "is not an lphi-edge export" in proc.stderr
