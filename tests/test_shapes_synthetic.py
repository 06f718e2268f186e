"""The shapes frame generator follows DESIGN.md; synthetic configs have real LLaVA-Phi widths."""

from __future__ import annotations

import numpy as np
import pytest

from lphi_edge.data.shapes import COLORS, SHAPES, random_scene, render, sample_frames
from lphi_edge.errors import ConfigError
from lphi_edge.model.synthetic import synthetic_config


def test_scenes_follow_the_task_spec():
    rng = np.random.default_rng(0)
    counts = set()
    for _ in range(300):
        scene = random_scene(rng)
        counts.add(len(scene))
        for s in scene:
            assert s.kind in SHAPES and s.color in COLORS and 28 <= s.size <= 64
            assert 0 <= s.x <= 224 - s.size and 0 <= s.y <= 224 - s.size
        for i, a in enumerate(scene):  # bounding boxes never overlap
            for b in scene[i + 1 :]:
                assert a.x + a.size <= b.x or b.x + b.size <= a.x or a.y + a.size <= b.y or b.y + b.size <= a.y
    assert counts == {1, 2, 3}


def test_render_colours_and_background():
    rng = np.random.default_rng(1)
    scene = random_scene(rng)
    frame = render(scene, rng, noise=0)
    assert frame.shape == (224, 224, 3) and frame.dtype == np.uint8
    assert (frame[0, 0] >= 180).all()  # light background corner (shapes never reach all corners)
    s = scene[0]
    centre = frame[s.y + s.size * 3 // 4, s.x + s.size // 2].astype(int)  # inside circle, square and triangle
    assert np.abs(centre - np.array(COLORS[s.color])).max() <= 15


def test_sample_frames_are_deterministic():
    a, b = sample_frames(3, seed=5), sample_frames(3, seed=5)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], sample_frames(1, seed=6)[0])


def test_synthetic_config_has_llava_phi_widths():
    c = synthetic_config("phi2-3l")
    assert (c.text.hidden_size, c.text.num_attention_heads, c.head_dim, c.text.vocab_size) == (2560, 32, 80, 51200)
    assert c.text.num_hidden_layers == 3 and c.text.rope_parameters["partial_rotary_factor"] == 0.4
    assert (c.vision.hidden_size, c.vision.num_hidden_layers, c.vision.image_size, c.image_tokens) == (
        1024,
        24,
        336,
        576,
    )
    for bad in ("phi2-0l", "phi2-33l", "llama-2l"):
        with pytest.raises(ConfigError, match="phi2-Nl"):
            synthetic_config(bad)
