"""lphi-export: exported engines answer like the PyTorch model; bad exports are refused by name."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest

from lphi_edge import Assistant
from lphi_edge.data.shapes import sample_frames
from lphi_edge.errors import CheckpointError, ConfigError
from lphi_edge.export.exporter import ExportConfig, VerificationError, export_model
from lphi_edge.export.verify import PROMPTS, cosine, verify
from lphi_edge.format.manifest import MANIFEST, PARTS, Manifest, decoder_io_names, file_table

from conftest import run_torch_free

EXE = Path(sys.executable).parent


@pytest.fixture(scope="module")
def exports(tiny_ckpt, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exports")
    out = {"fp32": export_model(tiny_ckpt, root / "fp32")}
    out["fp16"] = export_model(tiny_ckpt, root / "fp16", ExportConfig(fp16=True))
    for q in ("int8", "int4"):
        out[q] = export_model(tiny_ckpt, root / q, ExportConfig(quant=q))
    return out


@pytest.fixture(scope="module")
def torch_assistant(tiny_ckpt) -> Assistant:
    return Assistant.from_pretrained(tiny_ckpt)


def pairs(n: int = 10):
    return [(f, PROMPTS[k % len(PROMPTS)]) for k, f in enumerate(sample_frames(n, seed=42))]


def test_fp32_export_answers_identically(exports, torch_assistant):
    ort = Assistant.from_pretrained(exports["fp32"])  # backend picked from the manifest
    assert ort.backend.name == "onnxruntime" and ort.backend.precision == "fp32"
    for frame, prompt in pairs(10):
        assert (
            ort.ask(frame, prompt, max_new_tokens=16).token_ids
            == torch_assistant.ask(frame, prompt, max_new_tokens=16).token_ids
        )


def test_fp16_export_answers_like_torch_up_to_near_ties(exports, torch_assistant):
    """fp16 against fp32: close logits, and greedy answers equal except where fp16's measured error explains a
    flip (which kernel fp16 runs on depends on the CPU, so exact tokens are not what is checked)."""
    ort = Assistant.from_pretrained(exports["fp16"])
    report = Manifest.load(exports["fp16"]).verification
    assert report["passed"] and report["pairs"] >= 8
    assert all(d["verdict"] == "near-tie" for d in report["divergences"])
    assert min(c["cosine"] for c in report["parts"].values()) >= 0.999
    frame = sample_frames(1, seed=7)[0]
    px = torch_assistant.processor(frame)
    assert cosine(torch_assistant.backend.encode_images(px), ort.backend.encode_images(px)) >= 0.999
    held_out = verify(torch_assistant, ort, "fp16", pairs=4, seed=7)  # frames the export never saw
    assert held_out.passed, held_out.failures


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_quantized_exports_run_and_report(exports, precision):
    m = Manifest.load(exports[precision])
    report = m.verification
    assert m.precision == precision and report["precision"] == precision
    assert 0.0 <= report["token_match_rate"] <= 1.0 and report["pairs"] >= 8
    assert m.part("decoder_model_merged").precision == precision
    graph = onnx.load(str(m.part_file("decoder_model_merged")), load_external_data=False).graph
    assert sum(n.op_type == "MatMulNBits" for n in graph.node) >= 4 * 2 + 1  # q,k,v,dense,fc1,fc2 per layer + lm_head
    assert (
        len(
            Assistant.from_pretrained(exports[precision])
            .ask(sample_frames(1)[0], PROMPTS[1], max_new_tokens=6)
            .token_ids
        )
        > 0
    )
    if precision == "int8":  # int8 weights stay close to the model (their tokens are reported, not gated)
        assert report["parts"]["decode_logits"]["cosine"] >= 0.999


def test_quantized_decoder_is_smaller(exports):
    size = {p: Manifest.load(d).files["decoder_model_merged.onnx.data"].bytes for p, d in exports.items()}
    assert size["int4"] < size["int8"] < size["fp16"] < size["fp32"]


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int4"])
def test_attention_keys_are_transposed_in_place_of_the_exporters_3d_detour(exports, tiny_ckpt, precision):
    """The Kᵀ detour (Reshape → Transpose[0,2,1] → Reshape) is gone from every attention; one 4-D Transpose
    per attention remains (foldable into the MatMul) — and the answers are the model's (tests above)."""
    from lphi_edge.model.config import LlavaPhiConfig

    cfg = LlavaPhiConfig.from_dir(tiny_ckpt)
    vision_layers = cfg.vision.num_hidden_layers + 1 + cfg.select_layer  # the tower runs up to the selected layer
    # the vision encoder keeps one [0, 2, 1]: the patch embedding's (B, D, N) → (B, N, D)
    for part, layers, flat in (
        ("decoder_model_merged", cfg.text.num_hidden_layers, 0),
        ("vision_encoder", vision_layers, 1),
    ):
        graph = onnx.load(str(exports[precision] / f"{part}.onnx"), load_external_data=False).graph
        perms = [list(a.ints) for n in graph.node if n.op_type == "Transpose" for a in n.attribute if a.name == "perm"]
        assert perms.count([0, 2, 1]) == flat and perms.count([0, 1, 3, 2]) == layers, (part, perms)


def test_manifest_is_self_describing(exports, tiny_ckpt):
    m = Manifest.load(exports["fp32"])
    d = json.loads((exports["fp32"] / MANIFEST).read_text())
    assert d["format"] == "lphi-edge-export" and d["format_version"] == 1 and Manifest.from_json(m.path, d) == m
    assert m.to_json() == d  # what is read is what was written
    names = sorted(p.name for p in exports["fp32"].iterdir() if p.name != MANIFEST)
    assert sorted(d["files"]) == names and m.files == file_table(exports["fp32"])
    for part in PARTS:
        assert (exports["fp32"] / f"{part}.onnx").is_file() and (exports["fp32"] / f"{part}.onnx.data").is_file()
    ins, outs = decoder_io_names(2)
    dec = m.part("decoder_model_merged")
    assert [t.name for t in dec.inputs] == ins and [t.name for t in dec.outputs] == outs
    assert dec.inputs[0].shape == ("batch", "sequence", 80)
    assert [t.name for t in m.part("vision_encoder").inputs] == ["pixel_values"]
    assert [t.name for t in m.part("embed_tokens").outputs] == ["inputs_embeds"]
    assert d["text_config"]["num_layers"] == 2 and d["text_config"]["image_tokens"] == 16
    assert d["processor"]["pad_to_square"] is True and d["template"] == "phi_v0"
    assert len(d["source"]["sha256"]) == 64 and {"torch", "onnxruntime", "onnx", "opset"} <= set(d["tools"])
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(d["files"])
    assert d["verification"]["passed"]


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize(
    "victim", ["vision_encoder.onnx.data", "embed_tokens.onnx", "decoder_model_merged.onnx.data", "tokenizer.json"]
)
def test_flipped_byte_is_refused_naming_the_file(exports, tmp_path, victim):
    d = _copy(exports["fp32"], tmp_path / "e")
    f = d / victim
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    f.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=f"{victim}.*sha256"):
        Assistant.from_pretrained(d)


def test_missing_file_and_unknown_version_are_refused(exports, tmp_path):
    d = _copy(exports["fp32"], tmp_path / "missing")
    (d / "embed_tokens.onnx.data").unlink()
    with pytest.raises(CheckpointError, match="embed_tokens.onnx.data"):
        Assistant.from_pretrained(d)
    d = _copy(exports["fp32"], tmp_path / "version")
    data = json.loads((d / MANIFEST).read_text())
    data["format_version"] = 99
    (d / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="format_version 99 is not supported"):
        Assistant.from_pretrained(d)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["text_config"].update(num_layers="2"), r"field 'text_config.num_layers' must be int, got '2'"),
        (lambda d: d["text_config"].pop("head_dim"), r"missing field 'text_config.head_dim'"),
        (lambda d: d["parts"]["embed_tokens"].update(precision="fp8"), r"parts.embed_tokens precision 'fp8' unknown"),
        (lambda d: d["parts"]["vision_encoder"]["inputs"][0].pop("dtype"), r"'parts.vision_encoder.inputs\[0\].dtype'"),
        (lambda d: d["files"]["tokenizer.json"].update(bytes=-1.5), r"field 'files.tokenizer.json.bytes' must be int"),
        (lambda d: d.update(template=None), r"field 'template' must be str, got None"),
    ],
)
def test_manifest_fields_are_validated_by_name(exports, edit, message):
    data = json.loads((exports["fp32"] / MANIFEST).read_text())
    edit(data)
    with pytest.raises(CheckpointError, match=message):
        Manifest.from_json(exports["fp32"], data)


def test_renamed_graph_input_is_refused_naming_the_tensor(exports, tmp_path):
    d = _copy(exports["fp32"], tmp_path / "renamed")
    path = d / "decoder_model_merged.onnx"
    model = onnx.load(str(path), load_external_data=False)
    old = model.graph.input[3].name
    model.graph.input[3].name = "past.0.k"
    for node in model.graph.node:
        node.input[:] = ["past.0.k" if i == old else i for i in node.input]
    onnx.save(model, str(path))
    manifest = Manifest.from_json(d, json.loads((d / MANIFEST).read_text()))
    manifest.with_files().write()  # checksums made consistent: only the names are wrong
    with pytest.raises(CheckpointError, match=r"decoder_model_merged.onnx.*missing \['past_key_values.0.key'\]"):
        Assistant.from_pretrained(d)


def test_failed_verification_publishes_nothing(tiny_ckpt, tmp_path):
    out = tmp_path / "strict-int4"
    with pytest.raises(VerificationError, match="token match rate .* < 0.99") as err:
        export_model(tiny_ckpt, out, ExportConfig(quant="int4", min_token_match=0.99, verify_pairs=2))
    assert not out.exists() and not list(tmp_path.glob(".strict-int4*"))
    assert err.value.report["passed"] is False


def test_cli_failure_exits_non_zero(tiny_ckpt, tmp_path, exports):
    proc = subprocess.run(
        [str(EXE / "lphi-export"), str(tiny_ckpt), "--out", str(exports["fp32"])], capture_output=True, text=True
    )
    assert proc.returncode != 0 and "already exists" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run(
        [str(EXE / "lphi-export"), str(tiny_ckpt), "--out", str(tmp_path / "t"), "--trt"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "build on the target" in proc.stderr and not (tmp_path / "t").exists()


def test_killed_export_leaves_nothing_that_looks_finished(tiny_ckpt, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [str(EXE / "lphi-export"), str(tiny_ckpt), "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not any((p / "vision_encoder.onnx").exists() for p in tmp_path.glob(".killed.*")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    with pytest.raises(CheckpointError):
        Assistant.from_pretrained(out)
    assert [p.name.startswith(".killed.partial-") for p in tmp_path.iterdir()] == [True]  # hidden debris only
    export_model(tiny_ckpt, out, ExportConfig(verify_pairs=1))  # the next export clears the debris
    assert (out / MANIFEST).is_file() and not list(tmp_path.glob(".killed.partial-*"))


def test_lphi_ask_on_export_dir(exports, torch_assistant):
    frame_path = Path(__file__).resolve().parents[1] / "lphi_edge" / "assets" / "sample_frame.png"
    proc = subprocess.run(
        [
            str(EXE / "lphi-ask"),
            "--model",
            str(exports["fp32"]),
            "--image",
            str(frame_path),
            "--prompt",
            PROMPTS[2],
            "--max-new-tokens",
            "12",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["backend"] == "onnxruntime" and out["precision"] == "fp32"
    assert out["token_ids"] == torch_assistant.ask(frame_path, PROMPTS[2], max_new_tokens=12).token_ids


def test_runtime_process_never_imports_torch_or_transformers(exports):
    code = f"""
import sys
from lphi_edge import Assistant
from lphi_edge.data.shapes import sample_frames
a = Assistant.from_pretrained({str(exports["int4"])!r})
ans = a.ask(sample_frames(1)[0], "What shape is in the image?", max_new_tokens=4)
assert a.backend.name == "onnxruntime" and len(ans.token_ids) > 0
"""
    run_torch_free(code)


def test_export_options_are_validated(tiny_ckpt, tmp_path, exports):
    for bad in (
        dict(quant="int3"),
        dict(quant="int4", block_size=20),
        dict(quant="int4", block_size=512),  # onnxruntime's quantizer takes 16..256
        dict(quant_vision=True),
        dict(opset=9),
    ):
        with pytest.raises(ConfigError):
            ExportConfig(**bad)
    with pytest.raises(ConfigError, match="backend 'onnxruntime' runs exported engines"):
        Assistant.from_pretrained(tiny_ckpt, backend="onnxruntime")
    with pytest.raises(ConfigError, match="export directory"):
        Assistant.from_pretrained(exports["fp32"], backend="torch")
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():  # never a silent CPU fallback
        with pytest.raises(ConfigError, match="CUDAExecutionProvider is not available"):
            Assistant.from_pretrained(exports["fp32"], device="cuda")
    with pytest.raises(ConfigError, match="dtype applies to the torch backend"):
        Assistant.from_pretrained(exports["fp32"], dtype="bf16")


def test_onnxruntime_cuda_provider_matches_cpu(exports):
    """Runs only where onnxruntime-gpu and a GPU exist (IO binding keeps the KV cache on the GPU)."""
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("needs onnxruntime-gpu with a CUDA GPU")
    cpu = Assistant.from_pretrained(exports["fp16"])
    gpu = Assistant.from_pretrained(exports["fp16"], device="cuda")
    assert gpu.backend.provider == "CUDAExecutionProvider"
    for frame, prompt in pairs(4):
        assert (
            gpu.ask(frame, prompt, max_new_tokens=12).token_ids == cpu.ask(frame, prompt, max_new_tokens=12).token_ids
        )
