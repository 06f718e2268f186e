"""The torch backend's static KV cache (the one CUDA graphs replay over) answers exactly like its dynamic cache."""

from __future__ import annotations

import numpy as np
import pytest

from lphi_edge import Assistant
from lphi_edge.errors import ConfigError
from lphi_edge.model.checkpoint import load_checkpoint, processor_config
from lphi_edge.processing.template import get_template
from lphi_edge.runtime.torch_backend import StaticTorchCache, TorchBackend

from conftest import shapes_frame

PROMPTS = ["What shape is in the image?", "How many shapes are there?", "Is there a red circle?"]


def assistants(ckpt) -> tuple[Assistant, Assistant]:
    dynamic = Assistant.from_pretrained(ckpt)
    model = load_checkpoint(ckpt)
    backend = TorchBackend(model, static_cache=True)
    static = Assistant(
        backend, dynamic.tokenizer, processor_config(ckpt, model.config), get_template(model.config.template),
        {model.config.text.eos_token_id},
    )  # fmt: skip
    return dynamic, static


def test_static_cache_answers_like_the_dynamic_cache(tiny_ckpt):
    dynamic, static = assistants(tiny_ckpt)
    assert isinstance(static.backend.new_cache(), StaticTorchCache)
    for k, q in enumerate(PROMPTS):  # one-shot questions, then again about the same frame (prefix reuse)
        img = shapes_frame(180 + 40 * k, 200, seed=k)
        for _ in range(2):
            want = dynamic.ask(img, q, max_new_tokens=24, min_new_tokens=24).token_ids
            assert static.ask(img, q, max_new_tokens=24, min_new_tokens=24).token_ids == want
    # multi-turn: each turn crops the cache back to the shared prefix and extends it
    img = shapes_frame(224, 224, seed=9)
    a, b = dynamic.chat(img), static.chat(img)
    for q in PROMPTS:
        assert b.ask(q, max_new_tokens=12).token_ids == a.ask(q, max_new_tokens=12).token_ids


def test_static_cache_holds_what_the_dynamic_cache_holds(tiny_ckpt):
    _, static = assistants(tiny_ckpt)
    dyn = TorchBackend(static.backend.model)
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((1, 7, static.backend.spec.hidden_size)).astype(np.float32) * 0.1
    caches = [dyn.new_cache(), static.backend.new_cache()]
    outs = [
        be.decode(emb, np.ones((1, 7), np.int64), np.arange(7)[None], c) for be, c in zip((dyn, static.backend), caches)
    ]
    np.testing.assert_allclose(outs[0][0], outs[1][0], atol=1e-5)
    for x, y in zip(caches[0].arrays(), caches[1].arrays()):
        np.testing.assert_allclose(x, y, atol=1e-6)
    caches[1].crop(3)
    assert caches[1].seq_len == 3 and caches[1].arrays()[0].shape[2] == 3


def test_a_replaced_static_cache_is_refused_and_the_context_is_enforced(tiny_ckpt):
    _, static = assistants(tiny_ckpt)
    be = static.backend
    old = be.new_cache()
    be.new_cache()  # the backend's one static cache is handed out again
    d = be.spec.hidden_size
    with pytest.raises(RuntimeError, match="replaced by a newer new_cache"):
        be.decode(np.zeros((1, 1, d), np.float32), np.ones((1, 1), np.int64), np.zeros((1, 1), np.int64), old)
    n = be.spec.context_length + 1
    with pytest.raises(ConfigError, match="exceed the context length"):
        be.decode(np.zeros((1, n, d), np.float32), np.ones((1, n), np.int64), np.arange(n)[None], be.new_cache())
    with pytest.raises(ConfigError, match="needs the model on a CUDA device"):
        TorchBackend(be.model, cuda_graphs=True)
