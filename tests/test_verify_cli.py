"""lphi-verify: every export kind re-checks itself from its golden data in a process where torch and
transformers cannot be imported; tampered weights, golden data and manifests are refused by name (exit 2);
wrong but consistently signed weights fail the gates (exit 1, with the report)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from lphi_edge.export.config import ExportConfig
from lphi_edge.export.exporter import export_model
from lphi_edge.format.golden import GOLDEN_ARRAYS, GOLDEN_META, Golden
from lphi_edge.format.manifest import MANIFEST, Manifest
from lphi_edge.model.tiny import TinySpec, write_tiny_checkpoint

KINDS = {
    "fp32": ExportConfig(verify_pairs=4),
    "fp16": ExportConfig(fp16=True, verify_pairs=4),
    "int8": ExportConfig(quant="int8", verify_pairs=4),
    "int4": ExportConfig(quant="int4", verify_pairs=4),
    "int4-shared": ExportConfig(quant="int4", block_size=128, kv_cache="shared", verify_pairs=4),
    "fp32-shared-kv8": ExportConfig(kv_cache="shared", kv_quant="int8", verify_pairs=4),
}

# lphi-verify's main() in a process whose imports of torch / transformers fail, as on a robot without them
NO_TORCH = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers"):
            raise ImportError(f"{name} is blocked in this process")
sys.meta_path.insert(0, Block())
from lphi_edge.cli.verify import main
code = main(sys.argv[1:])
assert not [m for m in sys.modules if m.split(".")[0] in ("torch", "transformers")]
sys.exit(code)
"""


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    """Every export kind of one tiny model (2 heads of 40: the shared cache needs head_dim % 8 == 0)."""
    root = tmp_path_factory.mktemp("verify")
    ckpt = write_tiny_checkpoint(root / "ckpt", seed=5, spec=TinySpec(text_heads=2))
    return {kind: export_model(ckpt, root / kind, config) for kind, config in KINDS.items()}


def lphi_verify(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_TORCH, *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_export_kind_verifies_without_torch(exports, kind):
    proc = lphi_verify(str(exports[kind]), "--json")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    report, stored = out["report"], Manifest.load(exports[kind]).verification
    assert report["passed"] and out["engine"].startswith(f"onnxruntime {report['precision']} on cpu")
    assert set(report["parts"]) == set(stored["parts"])  # the same checks the export ran …
    for name, part in report["parts"].items():  # … with the same numbers (same machine, same engines)
        assert part["cosine"] == pytest.approx(stored["parts"][name]["cosine"], abs=1e-6), name
    assert report["identical_answers"] == stored["identical_answers"]
    if kind == "fp32-shared-kv8":
        assert "kv_int8_round_trip" in report["parts"] and report["kv_quant"] == "int8"


def test_the_golden_data_is_listed_hashed_and_holds_the_reference(exports):
    export = exports["fp16"]
    m = Manifest.load(export)
    assert m.golden == {"arrays": GOLDEN_ARRAYS, "meta": GOLDEN_META}
    assert {GOLDEN_ARRAYS, GOLDEN_META} <= set(m.files)
    g = Golden.load(export)
    assert g.pairs == 4 and g.frames.shape == (4, 224, 224, 3) and g.frames.dtype == np.uint8
    assert g.vision_features.shape == (16, 80) and g.prefill_logits.shape == (m.text.vocab_size,)
    assert g.decode_logits.shape == (len(g.forced_tokens), m.text.vocab_size) == (8, m.text.vocab_size)
    assert g.kv_samples.shape == (4, 2, len(g.kv_positions), 40)
    # each pair's greedy answer is the reference's top token at every step
    for k, answer in enumerate(g.answers):
        assert [int(g.answer_topk_ids[k, i, 0]) for i in range(len(answer))] == answer
    assert g.settings["cosine_min"]["fp16"] == 0.999 and g.settings["reference"] == "torch/fp32"


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _flip_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("victim", ["decoder_model_merged.onnx.data", GOLDEN_ARRAYS, GOLDEN_META])
def test_tampered_files_are_refused_by_name(exports, tmp_path, victim):
    d = _copy(exports["fp32"], tmp_path / "e")
    _flip_byte(d / victim)
    proc = lphi_verify(str(d))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert victim in proc.stderr and "sha256" in proc.stderr


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(format_version=99), "format_version 99 is not supported"),
        (lambda d: d.update(golden=None), "carries no golden verification data"),
        (lambda d: d.update(golden={"arrays": "x.npz", "meta": GOLDEN_META}), "golden arrays file 'x.npz'"),
        (lambda d: d["text_config"].update(num_layers="2"), "field 'text_config.num_layers' must be int"),
    ],
)
def test_tampered_manifests_are_refused_by_name(exports, tmp_path, edit, message):
    d = _copy(exports["fp32"], tmp_path / "m")
    data = json.loads((d / MANIFEST).read_text())
    edit(data)
    (d / MANIFEST).write_text(json.dumps(data))
    proc = lphi_verify(str(d))
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def _resign(d: Path) -> None:
    Manifest.from_json(d, json.loads((d / MANIFEST).read_text())).with_files().write()


def test_wrong_weights_signed_as_right_fail_with_the_report(exports, tmp_path):
    d = _copy(exports["fp32"], tmp_path / "w")
    graph = onnx.load(str(d / "decoder_model_merged.onnx"), load_external_data=False).graph
    init = next(i for i in graph.initializer if len(i.dims) == 2 and i.dims[1] == 4 * i.dims[0] and i.external_data)
    ext = {e.key: e.value for e in init.external_data}
    with open(d / ext["location"], "r+b") as f:  # the first MLP up-projection × 2
        f.seek(int(ext["offset"]))
        w = np.frombuffer(f.read(int(ext["length"])), np.float32)
        f.seek(int(ext["offset"]))
        f.write((w * 2).astype(np.float32).tobytes())
    _resign(d)
    proc = lphi_verify(str(d))
    assert proc.returncode == 1, proc.stderr
    failed = next(line for line in proc.stdout.splitlines() if line.startswith("FAILED: "))
    assert "decode_logits cosine" in failed and "vision_features" not in failed  # the vision encoder is intact
    assert "greedy answers diverge beyond the fp32 logit error" in failed


def test_a_golden_record_that_disagrees_fails(exports, tmp_path):
    d = _copy(exports["fp32"], tmp_path / "g")
    meta = json.loads((d / GOLDEN_META).read_text())
    ids = meta["prompt_ids"][0]
    ids[1] = ids[2]  # a record that no longer matches the export's tokenizer
    (d / GOLDEN_META).write_text(json.dumps(meta))
    _resign(d)
    proc = lphi_verify(str(d))
    assert proc.returncode == 1 and "tokenizer does not give the verification prompt's token ids" in proc.stdout


def test_bad_options_exit_2(exports):
    for args, message in (
        (["--device", "gpu"], "device"),
        (["--threads", "0"], "--threads"),
        (["--min-token-match", "2"], "--min-token-match must be in [0, 1]"),
        (["--backend", "tensorrt", "--provider", "cuda"], "--provider chooses onnxruntime's execution provider"),
    ):
        proc = lphi_verify(str(exports["fp32"]), *args)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)
    proc = lphi_verify(str(Path(__file__).parent))  # a directory that is not an export
    assert proc.returncode == 2 and "not an export directory" in proc.stderr


def test_an_inconsistent_golden_record_is_refused(exports, tmp_path):
    d = _copy(exports["fp32"], tmp_path / "i")
    meta = json.loads((d / GOLDEN_META).read_text())
    meta["prompt_ids"][0] = meta["prompt_ids"][0][:3]  # too short for the cache positions it sampled
    (d / GOLDEN_META).write_text(json.dumps(meta))
    _resign(d)
    proc = lphi_verify(str(d))
    assert proc.returncode == 2 and "kv_positions lie outside" in proc.stderr, proc.stderr
