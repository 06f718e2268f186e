"""lphi-export --kv-cache shared: the decoder's attention becomes onnxruntime's GroupQueryAttention and the
onnxruntime backend keeps one buffer per past tensor that every step writes in place. The answers stay the
model's (torch, the Concat export and the shared export agree token for token, across prefix reuse, multi-
turn chats and buffer growth); what the shared decoder cannot do is refused by name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from lphi_edge import Assistant
from lphi_edge.data.shapes import sample_frames
from lphi_edge.errors import CheckpointError, ConfigError, ContextLengthError
from lphi_edge.export.exporter import ExportConfig, export_model
from lphi_edge.export.verify import PROMPTS
from lphi_edge.format.manifest import Manifest
from lphi_edge.model.tiny import TinySpec, write_tiny_checkpoint
from lphi_edge.runtime.onnx_backend import OnnxBackend, OrtCache, SharedKVCache

EXE = Path(sys.executable).parent


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """The tiny model with 2 heads of 40 (GroupQueryAttention needs head_dim % 8 == 0; the default tiny has 20)."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny40", seed=3, spec=TinySpec(text_heads=2))


@pytest.fixture(scope="module")
def ckpt80(tmp_path_factory) -> Path:
    """One head of 80, Phi-2's head geometry (rotary dims 32): GroupQueryAttention rotates q and k itself."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny80", seed=4, spec=TinySpec(text_heads=1))


@pytest.fixture(scope="module")
def exports(ckpt, ckpt80, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exports")
    out = {
        "concat": export_model(ckpt, root / "concat"),
        "shared": export_model(ckpt, root / "shared", ExportConfig(kv_cache="shared")),
        "rotary": export_model(ckpt80, root / "rotary", ExportConfig(kv_cache="shared")),
        "rotary-concat": export_model(ckpt80, root / "rotary-concat"),
        "fp16": export_model(ckpt, root / "fp16", ExportConfig(fp16=True, kv_cache="shared")),  # f16 cache buffers
    }
    cmd = [str(EXE / "lphi-export"), str(ckpt), "--out", str(root / "int4"), "--quant", "int4"]
    proc = subprocess.run([*cmd, "--block-size", "256", "--kv-cache", "shared"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out["int4"] = root / "int4"
    return out


def _decoder_graph(export: Path) -> onnx.GraphProto:
    return onnx.load(str(export / "decoder_model_merged.onnx"), load_external_data=False).graph


def test_shared_export_replaces_every_attention_and_says_so(exports):
    for name in ("shared", "fp16", "int4", "rotary"):
        m = Manifest.load(exports[name])
        assert m.part("decoder_model_merged").kv_cache == "shared"
        assert m.export_config["kv_cache"] == "shared"
        graph = _decoder_graph(exports[name])
        gqa = [n for n in graph.node if n.op_type == "GroupQueryAttention"]
        assert len(gqa) == 2 and all(n.domain == "com.microsoft" for n in gqa)  # one per decoder layer
        past = {i.name for i in graph.input if i.name.startswith("past_key_values.")}
        assert not [n for n in graph.node if n.op_type == "Concat" and set(n.input) & past]  # no whole-cache copy
        assert not [n for n in graph.node if n.op_type == "Softmax"]  # the old attention is gone
        assert [o.name for o in graph.output] == [o.name for o in _decoder_graph(exports["concat"]).output]
    assert Manifest.load(exports["concat"]).part("decoder_model_merged").kv_cache == "concat"
    future = Manifest.load(exports["shared"]).to_json()
    future["parts"]["decoder_model_merged"]["kv_cache"] = "ring"  # a value this version does not know
    with pytest.raises(CheckpointError, match="decoder kv_cache 'ring' unknown.*upgrade lphi-edge or re-export"):
        Manifest.from_json(exports["shared"], future)
    # head_dim 80: the op rotates q and k itself (rotary tables as its 8th/9th inputs), the graph's own rotary
    # subgraph (Cos/Sin of the positions) is gone; head_dim 40 (not a multiple of 16): the graph rotates
    for name, rotates in (("rotary", 1), ("shared", 0)):
        graph = _decoder_graph(exports[name])
        gqa = [n for n in graph.node if n.op_type == "GroupQueryAttention"]
        assert {a.i for n in gqa for a in n.attribute if a.name == "do_rotary"} == ({1} if rotates else set())
        assert all(len(n.input) == (9 if rotates else 7) for n in gqa)
        assert bool([n for n in graph.node if n.op_type == "Cos"]) != bool(rotates)
    for name, tol in (("shared", 1e-4), ("rotary", 1e-4), ("fp16", 0.05)):  # the export gate ran on each
        report = Manifest.load(exports[name]).verification
        assert report["passed"] and report["pairs"] >= 8
        assert all(d["verdict"] == "near-tie" for d in report["divergences"])  # fp16 may flip a near-tie
        if name != "fp16":
            assert report["identical_answers"] == report["pairs"]
        assert report["parts"]["decode_logits"]["max_abs_diff"] < tol


@pytest.mark.parametrize(("model", "names"), [("ckpt", ("concat", "shared")), ("ckpt80", ("rotary-concat", "rotary"))])
def test_shared_answers_are_the_models_across_prefix_reuse_and_chats(request, exports, model, names):
    paths = (request.getfixturevalue(model), exports[names[0]], exports[names[1]])
    torch_a, concat, shared = (Assistant.from_pretrained(p) for p in paths)
    assert isinstance(shared.backend.new_cache(), SharedKVCache) and isinstance(concat.backend.new_cache(), OrtCache)
    for k, frame in enumerate(sample_frames(6, seed=11)):  # one Assistant each: later asks reuse cached prefixes
        prompt = PROMPTS[k % len(PROMPTS)]
        want = torch_a.ask(frame, prompt, max_new_tokens=12).token_ids
        assert concat.ask(frame, prompt, max_new_tokens=12).token_ids == want
        assert shared.ask(frame, prompt, max_new_tokens=12).token_ids == want
    frame = sample_frames(1, seed=5)[0]
    chats = [a.chat(frame) for a in (torch_a, shared)]
    for turn, prompt in enumerate(PROMPTS[:3]):  # each turn re-renders the conversation, reuses the shared prefix
        a, b = (c.ask(prompt, max_new_tokens=8) for c in chats)
        assert a.token_ids == b.token_ids
        assert (b.timings.cached_tokens > 0) == (turn > 0)


@pytest.mark.parametrize("names", [("shared", "concat"), ("rotary", "rotary-concat")])
def test_the_cache_is_written_in_place_grows_and_crops(exports, monkeypatch, names):
    monkeypatch.setattr(SharedKVCache, "MIN_CAPACITY", 8)
    shared, concat = (OnnxBackend.from_export_dir(exports[n]) for n in names)
    rng = np.random.default_rng(0)
    d = shared.spec.hidden_size
    caches = [shared.new_cache(), concat.new_cache()]

    def step(s: int) -> None:
        embeds = rng.standard_normal((1, s, d)).astype(np.float32)  # (1, S, D)
        p = caches[0].seq_len
        mask, pos = np.ones((1, p + s), np.int64), np.arange(p, p + s)[None]
        outs = [be.decode(embeds, mask, pos, c) for be, c in zip((shared, concat), caches)]
        np.testing.assert_allclose(outs[0][0], outs[1][0], atol=1e-4)
        assert outs[0][1] is caches[0]  # the same cache object, advanced
        caches[1] = outs[1][1]
        for x, y in zip(caches[0].arrays(), caches[1].arrays()):
            np.testing.assert_allclose(x, y, atol=1e-5)

    step(5)
    cache = caches[0]
    assert (cache.seq_len, cache.capacity) == (5, 8)
    ptrs = [v.data_ptr() for v in cache.values]
    step(1)
    step(2)
    assert cache.seq_len == 8 and [v.data_ptr() for v in cache.values] == ptrs  # written in place, no copy
    step(1)
    assert (cache.seq_len, cache.capacity) == (9, 16)  # grown once, held positions kept (compared above)
    cache.crop(4)
    caches[1].crop(4)
    step(3)
    assert cache.seq_len == 7
    with pytest.raises(ContextLengthError, match="exceed the context length"):
        cache.reserve(shared.spec.context_length + 1)


def test_padded_masks_and_wrong_mask_shapes_are_refused(exports):
    be = OnnxBackend.from_export_dir(exports["shared"])
    cache = be.new_cache()
    embeds = np.zeros((1, 3, be.spec.hidden_size), np.float32)
    pos = np.arange(3)[None]
    with pytest.raises(ConfigError, match=r"must be all ones \(no padding\).*--kv-cache concat"):
        be.decode(embeds, np.array([[0, 1, 1]]), pos, cache)
    with pytest.raises(ConfigError, match=r"attention_mask has shape \(1, 2\), expected \(1, 3\)"):
        be.decode(embeds, np.ones((1, 2), np.int64), pos, cache)
    with pytest.raises(ConfigError, match=r"position_ids must be 0..2 in every row, got \[\[1, 2, 3\]\]"):
        be.decode(embeds, np.ones((1, 3), np.int64), pos + 1, cache)
    assert cache.seq_len == 0  # nothing was written


def test_shared_kv_options_are_validated(tiny_ckpt, tmp_path):
    with pytest.raises(ConfigError, match="kv_cache must be one of"):
        ExportConfig(kv_cache="inplace")
    with pytest.raises(ConfigError, match="TensorRT cannot build.*--kv-cache concat"):
        ExportConfig(kv_cache="shared", trt=True)
    out = tmp_path / "bad"
    with pytest.raises(ConfigError, match=r"head dimension divisible by 8.*has 20.*--kv-cache concat"):
        export_model(tiny_ckpt, out, ExportConfig(kv_cache="shared"))  # the default tiny model: head_dim 20
    assert not out.exists() and not list(tmp_path.glob(".bad*"))
