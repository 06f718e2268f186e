"""torch_compile: the vision encoder and the prefill as compiled (inductor, freezing) graphs on the torch backend."""

from __future__ import annotations

import numpy as np
import pytest

from lphi_edge import Assistant
from lphi_edge.errors import ConfigError
from lphi_edge.eval.shapes import shapes_items


@pytest.fixture(scope="module")
def pair():
    return Assistant.from_pretrained("shapes-demo"), Assistant.from_pretrained("shapes-demo", torch_compile=True)


def test_compiled_graphs_answer_like_eager(pair):
    eager, compiled = pair
    assert compiled.backend.torch_compile and not eager.backend.torch_compile
    items = list(shapes_items(6, seed=77))
    for _, frame, qa in items:
        a, b = eager.ask(frame, qa.question), compiled.ask(frame, qa.question)
        assert b.token_ids == a.token_ids, qa.question
    # the compiled graphs really ran: features and a prefill's logits agree with eager to float rounding, not bits
    pixels = eager.processor(items[0][1])[0][None]  # (1, 3, H, W)
    fe, fc = eager.backend.encode_images(pixels), compiled.backend.encode_images(pixels)  # (1, N, D) each
    assert fe.shape == fc.shape and np.abs(fe - fc).max() < 1e-3
    cos = float((fe * fc).sum() / np.linalg.norm(fe) / np.linalg.norm(fc))
    assert cos > 0.99999


def test_compiled_prefill_serves_any_length_and_a_cached_prefix(pair):
    """A chat: the follow-up's prefill runs on a cached prefix, with new lengths; no recompile is needed (the
    graphs were compiled at load for a symbolic length) and the answers are eager's."""
    import torch._dynamo.utils as dynamo_utils

    eager, compiled = pair
    frame = next(shapes_items(1, seed=5))[1]
    before = dynamo_utils.counters["stats"]["unique_graphs"]
    chats = [a.chat(frame) for a in pair]
    for q in ("How many shapes are there?", "Describe the image briefly.", "Is there a red circle?"):
        got = [c.ask(q).token_ids for c in chats]
        assert got[1] == got[0], q
    assert dynamo_utils.counters["stats"]["unique_graphs"] == before  # nothing compiled while answering


def test_torch_compile_is_refused_where_it_does_not_apply():
    with pytest.raises(ConfigError, match="torch_compile applies to the torch backend"):
        Assistant.from_pretrained("shapes-demo", backend="onnxruntime", torch_compile=True)
    from lphi_edge.format.shipped import resolve_model_dir
    from lphi_edge.model.checkpoint import load_checkpoint
    from lphi_edge.runtime.torch_backend import TorchBackend

    model = load_checkpoint(resolve_model_dir("shapes-demo"))
    with pytest.raises(ConfigError, match="does not combine with static_cache"):
        TorchBackend(model, static_cache=True, torch_compile=True)


def test_compiled_vision_graph_also_selects_visual_tokens(pair):
    """visual_tokens=K runs the same compiled vision graph (it also gives the [CLS] attention): the tokens eager
    selects, eager's answers, and no compile while answering."""
    import torch._dynamo.utils as dynamo_utils

    eager, compiled = pair
    frame = next(shapes_items(1, seed=9))[1]
    pixels = eager.processor(frame)[0][None]  # (1, 3, H, W)
    (_, att_e), (_, att_c) = (a.backend.encode_images(pixels, with_attention=True) for a in pair)  # (1, N) each
    assert att_c.shape == att_e.shape and np.abs(att_c - att_e).max() < 1e-4
    before = dynamo_utils.counters["stats"]["unique_graphs"]
    try:
        for a in pair:
            a.configure(visual_tokens=16)
        for q in ("How many shapes are there?", "What shape is the biggest object?"):
            got = [a.ask(frame, q) for a in pair]
            assert got[1].token_ids == got[0].token_ids, q
            assert got[1].timings.prompt_tokens == got[0].timings.prompt_tokens
    finally:
        for a in pair:
            a.configure(visual_tokens=None)
    assert dynamo_utils.counters["stats"]["unique_graphs"] == before
