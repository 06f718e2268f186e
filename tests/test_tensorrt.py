"""TensorRT engines end to end: export a tiny checkpoint, build engines on this GPU, compare with torch.

Runs only where `tensorrt` imports and a CUDA GPU is visible (a Jetson or a GPU host); nothing is faked.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from lphi_edge.errors import LphiError

trt = pytest.importorskip("tensorrt")


def _gpu_count() -> int:
    from lphi_edge.runtime.cuda_trt import import_cudart

    try:
        cudart = import_cudart()
    except LphiError:
        return 0
    err, count = cudart.cudaGetDeviceCount()
    return count if err == cudart.cudaError_t.cudaSuccess else 0


pytestmark = [pytest.mark.cuda, pytest.mark.skipif(_gpu_count() == 0, reason="needs a CUDA GPU")]

from lphi_edge import Assistant  # noqa: E402 - after the skips: nothing below runs without TensorRT
from lphi_edge.errors import CheckpointError, ConfigError  # noqa: E402
from lphi_edge.export.tensorrt import TrtBuildConfig, build_engines  # noqa: E402
from lphi_edge.format.engines import BUILD_JSON, engine_dir_name, source_hashes  # noqa: E402
from lphi_edge.format.manifest import Manifest  # noqa: E402
from lphi_edge.runtime.cuda_trt import gpu_info  # noqa: E402
from lphi_edge.runtime.trt_backend import TrtBackend, TrtCache, find_engine_dir  # noqa: E402

from conftest import shapes_frame  # noqa: E402

PROMPTS = ["What shape is in the image?", "How many shapes are there?", "Is there a red circle?"]
PARTS = ("vision_encoder", "embed_tokens", "decoder_model_merged")


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def export_dir(tiny_ckpt, tmp_path_factory):
    from lphi_edge.export.exporter import ExportConfig, export_model

    out = tmp_path_factory.mktemp("export") / "tiny-onnx"
    export_model(tiny_ckpt, out, ExportConfig(fp16=False))
    return out


@pytest.fixture(scope="module")
def fp32_engines(export_dir):
    return build_engines(export_dir, TrtBuildConfig(precision="fp32"))


@pytest.fixture(scope="module")
def torch_assistant(tiny_ckpt):
    return Assistant.from_pretrained(tiny_ckpt)


@pytest.fixture(scope="module")
def backend(export_dir, fp32_engines):
    be = TrtBackend.from_export_dir(export_dir, fp32_engines)
    yield be
    be.close()


def trt_assistant(backend: TrtBackend, reference: Assistant) -> Assistant:
    """The torch assistant's tokenizer, processor and template over the TensorRT backend."""
    return Assistant(
        backend, reference.tokenizer, reference.processor.config, reference.template, set(reference.eos_token_ids)
    )


def test_build_writes_three_engines_and_build_json(export_dir, fp32_engines):
    gpu, sm = gpu_info()
    assert fp32_engines == export_dir / "trt" / engine_dir_name(gpu, sm, trt.__version__, "fp32")
    assert all((fp32_engines / f"{p}.engine").stat().st_size > 0 for p in PARTS)
    info = json.loads((fp32_engines / BUILD_JSON).read_text())
    manifest = Manifest.load(export_dir)
    assert (info["precision"], info["tensorrt"], info["gpu"], info["sm"]) == ("fp32", trt.__version__, gpu, list(sm))
    assert info["sources"] == source_hashes(manifest) and info["build_seconds"] > 0
    ctx = manifest.text.context_length
    past = info["profiles"]["decoder_model_merged"]["past_key_values.0.key"]
    assert (past["min"][2], past["max"][2]) == (0, ctx - 1)
    assert info["profiles"]["decoder_model_merged"]["attention_mask"]["max"][1] == ctx
    assert not [p for p in fp32_engines.parent.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_same_settings_reuse_the_engines(export_dir, fp32_engines, caplog):
    before = {p: (fp32_engines / f"{p}.engine").stat().st_mtime_ns for p in PARTS}
    with caplog.at_level(logging.INFO, logger="lphi_edge.export.tensorrt"):
        assert build_engines(export_dir, TrtBuildConfig(precision="fp32")) == fp32_engines
    assert "reused" in caplog.text
    assert {p: (fp32_engines / f"{p}.engine").stat().st_mtime_ns for p in PARTS} == before


def test_parts_match_torch(backend, torch_assistant):
    ref = torch_assistant.backend
    px = torch_assistant.processor(shapes_frame(224, 224, seed=5))
    f_ref, f_trt = ref.encode_images(px), backend.encode_images(px)
    assert f_trt.dtype == np.float32 and f_trt.shape == f_ref.shape
    assert cosine(f_ref, f_trt) >= 0.9999
    ids = np.array([[1, 5, 9, 2]], dtype=np.int64)
    np.testing.assert_allclose(backend.embed(ids), ref.embed(ids), atol=1e-5)
    emb = ref.embed(np.array([[3, 4, 5, 6, 7, 8]], dtype=np.int64))  # (1, 6, D)
    mask, pos = np.ones((1, 6), np.int64), np.arange(6)[None]
    logits_trt, cache = backend.decode(emb, mask, pos, backend.new_cache())
    logits_ref, _ = ref.decode(emb, mask, pos, ref.new_cache())
    assert isinstance(cache, TrtCache) and cache.seq_len == 6
    assert logits_trt.shape == (1, 1, backend.spec.vocab_size)
    np.testing.assert_allclose(logits_trt[0, -1], logits_ref[0, -1], atol=1e-3, rtol=1e-3)


def test_crop_then_decode_equals_a_fresh_prefill(backend, torch_assistant):
    emb = torch_assistant.backend.embed(np.arange(3, 13, dtype=np.int64)[None])  # (1, 10, D)
    mask, pos = np.ones((1, 10), np.int64), np.arange(10)[None]
    fresh, _ = backend.decode(emb, mask, pos, backend.new_cache())
    _, cache = backend.decode(emb, mask, pos, backend.new_cache())
    cache.crop(6)
    assert cache.seq_len == 6 and cache.tensors[0].shape[2] == 6
    resumed, cache = backend.decode(emb[:, 6:], mask, pos[:, 6:], cache)
    assert cache.seq_len == 10
    np.testing.assert_allclose(resumed[0, -1], fresh[0, -1], atol=1e-4, rtol=1e-4)
    cache.close()


def test_greedy_tokens_match_torch(backend, torch_assistant):
    trt_a = trt_assistant(backend, torch_assistant)
    for k, q in enumerate(PROMPTS):
        img = shapes_frame(200 + 40 * k, 180, seed=k)
        want = torch_assistant.ask(img, q, max_new_tokens=16)
        got = trt_a.ask(img, q, max_new_tokens=16)
        assert got.token_ids == want.token_ids, q
        assert (got.backend, got.device, got.precision) == ("tensorrt", "cuda", "fp32")
    # same frame again: the shared prefix is reused, i.e. the device cache is cropped
    img = shapes_frame(224, 224, seed=9)
    for q in PROMPTS:
        want = torch_assistant.ask(img, q, max_new_tokens=12).token_ids
        assert trt_a.ask(img, q, max_new_tokens=12).token_ids == want, q
    chat_trt, chat_ref = trt_a.chat(img), torch_assistant.chat(img)
    for q in PROMPTS[:2]:
        assert chat_trt.ask(q, max_new_tokens=8).token_ids == chat_ref.ask(q, max_new_tokens=8).token_ids


def test_from_pretrained_runs_the_engines(export_dir, fp32_engines, torch_assistant):
    """Assistant.from_pretrained(export, backend="tensorrt") finds this GPU's engines (only fp32 exist so far)."""
    a = Assistant.from_pretrained(export_dir, backend="tensorrt", device="cuda")
    assert (a.backend.name, a.backend.precision) == ("tensorrt", "fp32")
    assert a.backend.engine_dir == fp32_engines
    img = shapes_frame(224, 224, seed=11)
    want = torch_assistant.ask(img, PROMPTS[0], max_new_tokens=12).token_ids
    assert a.ask(img, PROMPTS[0], max_new_tokens=12).token_ids == want
    a.backend.close()


def test_limits_are_clear_errors(backend, export_dir):
    with pytest.raises(ConfigError, match="max_batch"):
        backend.new_cache(batch_size=backend.max_batch + 1)
    with pytest.raises(CheckpointError, match=r"lphi-build-engines .* on this device"):
        find_engine_dir(export_dir, "int8")


def test_fp16_engines_stay_close_to_fp32(export_dir, backend, torch_assistant):
    fp16_dir = build_engines(export_dir, TrtBuildConfig(precision="fp16"))
    assert fp16_dir.name.endswith("-fp16")
    with TrtBackend.from_export_dir(export_dir, fp16_dir) as half:
        assert half.precision == "fp16"
        px = torch_assistant.processor(shapes_frame(224, 224, seed=7))
        assert cosine(half.encode_images(px), backend.encode_images(px)) >= 0.99
        emb = torch_assistant.backend.embed(np.arange(3, 11, dtype=np.int64)[None])
        mask, pos = np.ones((1, 8), np.int64), np.arange(8)[None]
        lo, _ = half.decode(emb, mask, pos, half.new_cache())
        hi, _ = backend.decode(emb, mask, pos, backend.new_cache())
        assert cosine(lo, hi) >= 0.99
