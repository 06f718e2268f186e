"""One engine per phase (runtime/phased.py): the prompt on one engine, the tokens on another, the KV cache handed
over between them. Real engines: the torch backend on a tiny checkpoint and onnxruntime on its exports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lphi_edge import Assistant, GenerationConfig
from lphi_edge.data.shapes import sample_frames
from lphi_edge.errors import ConfigError
from lphi_edge.export.exporter import ExportConfig, export_model
from lphi_edge.export.verify import verify
from lphi_edge.format.kv_int8 import round_trip
from lphi_edge.model.tiny import TinySpec, write_tiny_checkpoint
from lphi_edge.runtime.onnx_backend import SharedKVCache
from lphi_edge.runtime.phased import PhasedBackend, PhasedCache

Q = "Describe the scene in front of the robot."


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """2 heads of 40: the shared (GroupQueryAttention) export needs head_dim % 8 == 0."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny40", seed=3, spec=TinySpec(text_heads=2))


@pytest.fixture(scope="module")
def exports(ckpt, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exports")
    return {
        "concat": export_model(ckpt, root / "concat"),
        "shared": export_model(ckpt, root / "shared", ExportConfig(kv_cache="shared")),
        "kv8": export_model(ckpt, root / "kv8", ExportConfig(kv_cache="shared", kv_quant="int8")),
    }


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    return sample_frames(3, seed=21, size=96)


def test_answers_equal_the_single_engines_and_the_cache_moves_once(ckpt, exports, frames):
    torch_a = Assistant.from_pretrained(ckpt)
    for kind in ("concat", "shared"):
        ort_a = Assistant.from_pretrained(exports[kind])
        both = Assistant.phased(torch_a, ort_a)
        assert verify(torch_a, both, "fp32").passed  # the fp32 export's own gate
        assert (both.backend.name, both.backend.precision) == ("torch+onnxruntime", "fp32+fp32")
        assert set(both.backend.thread_settings()) == {"prompt", "tokens"}
        for frame in frames:
            want = torch_a.ask(frame, Q, max_new_tokens=12)
            assert ort_a.ask(frame, Q, max_new_tokens=12).token_ids == want.token_ids  # fp32: one answer
            got = both.ask(frame, Q, max_new_tokens=12)
            assert got.token_ids == want.token_ids and got.text == want.text, kind
            cache = both._session.cache
            assert isinstance(cache, PhasedCache) and cache.owner is ort_a.backend and cache.handovers == 1
            if kind == "shared":
                assert isinstance(cache.inner, SharedKVCache)


def test_follow_ups_stay_on_the_token_engine_and_a_new_frame_goes_back(ckpt, exports, frames):
    torch_a, ort_a = Assistant.from_pretrained(ckpt), Assistant.from_pretrained(exports["shared"])
    both = Assistant.phased(torch_a, ort_a)
    chat, solo = both.chat(frames[0]), torch_a.chat(frames[0])
    for question in (Q, "What color is the circle?", "How many shapes are there?"):
        assert chat.ask(question, max_new_tokens=6).token_ids == solo.ask(question, max_new_tokens=6).token_ids
    cache = chat._session.cache
    # turn 1 prefilled on torch and moved once; turns 2 and 3 (a few new positions over a long cached prefix)
    # prefilled on onnxruntime, where the cache already was
    assert cache.owner is ort_a.backend and cache.handovers == 1
    # a new frame in the same session shares only the system prompt: when the new positions outnumber it, the
    # prefix moves back to torch for the prefill (and forward again to decode); when they do not, the token
    # engine prefills them where the cache is
    long_q = " ".join([Q] * 3)
    first = both.ask(frames[0], Q, max_new_tokens=4)
    assert both._session.cache.handovers == 1
    second = both.ask(frames[1], long_q, max_new_tokens=4)
    new_positions = second.timings.prompt_tokens - second.timings.cached_tokens
    assert new_positions >= second.timings.cached_tokens > 0 and both._session.cache.handovers == 3
    third = both.ask(frames[2], Q, max_new_tokens=4)
    assert third.timings.prompt_tokens - third.timings.cached_tokens < third.timings.cached_tokens
    assert both._session.cache.handovers == 3 and both._session.cache.owner is ort_a.backend
    for frame, question, got in ((frames[0], Q, first), (frames[1], long_q, second), (frames[2], Q, third)):
        assert got.token_ids == torch_a.ask(frame, question, max_new_tokens=4).token_ids


def test_an_int8_cache_receives_exactly_what_it_would_have_written(ckpt, exports, frames):
    torch_a, kv8 = Assistant.from_pretrained(ckpt), Assistant.from_pretrained(exports["kv8"])
    both = Assistant.phased(torch_a, kv8)
    ids, images = torch_a.prompt_inputs(frames[0], Q)
    session = torch_a.new_session()
    session.generate(ids, images, GenerationConfig(max_new_tokens=1))
    computed = session.cache.arrays()  # the prompt's keys and values as torch computed them
    handed = kv8.backend.cache_from_arrays(computed)
    assert isinstance(handed, SharedKVCache) and handed.seq_len == computed[0].shape[2]
    for got, x, scale in zip(handed.arrays(), computed, kv8.backend.kv_scales):
        np.testing.assert_array_equal(got, round_trip(x, scale)[0])  # quantized as GroupQueryAttention would
    # and the pair passes the gates the int8-cache export itself passed when it was made
    pair, alone = verify(torch_a, both, "fp32", kv_quant="int8"), verify(torch_a, kv8, "fp32", kv_quant="int8")
    assert pair.passed and alone.passed, (pair.failures, alone.failures)
    assert pair.token_match_rate >= alone.token_match_rate - 0.1, (pair.token_match_rate, alone.token_match_rate)


def test_engines_of_different_models_are_refused_by_name(ckpt, exports, tmp_path):
    torch_a = Assistant.from_pretrained(ckpt)
    other = write_tiny_checkpoint(tmp_path / "other", seed=5, spec=TinySpec(text_heads=2, text_layers=3))
    with pytest.raises(ConfigError, match=r"not the same model: \(prompt, tokens\) differ in \{'num_layers': \(2, 3\)"):
        Assistant.phased(torch_a, Assistant.from_pretrained(other))
    square = write_tiny_checkpoint(tmp_path / "sq", seed=3, spec=TinySpec(text_heads=2), image_aspect_ratio="square")
    with pytest.raises(ConfigError, match="their image preprocessing differ"):
        Assistant.phased(torch_a, Assistant.from_pretrained(square))
    cache = torch_a.backend.new_cache()
    with pytest.raises(ConfigError, match="a handed-over KV cache has 3 tensors; this engine keeps 4"):
        torch_a.backend.cache_from_arrays([np.zeros((1, 2, 5, 40), np.float32)] * 3)
    with pytest.raises(ConfigError, match=r"\(B, H, Dh\) = \(1, 2, 40\) and one P"):
        torch_a.backend.cache_from_arrays([np.zeros((1, 2, 5, 40), np.float32)] * 3 + [np.zeros((1, 2, 6, 40))])
    assert cache.seq_len == 0 and isinstance(PhasedBackend(torch_a.backend, torch_a.backend), PhasedBackend)
