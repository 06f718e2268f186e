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


def test_camera_effects_degrade_like_a_camera_and_stay_in_their_ranges():
    from PIL import Image

    from lphi_edge.data.camera import CameraEffects

    rng = np.random.default_rng(0)
    scene = random_scene(rng)
    clean = render(scene, rng, noise=0)
    flat = CameraEffects(resolution=None, jpeg_quality=None, noise=0.0, brightness=(1.0, 1.0))
    assert np.array_equal(flat.apply(clean, rng), clean)  # every effect off: the frame itself
    # brightness alone: the frame scaled by one factor in the range
    bright = CameraEffects(resolution=None, jpeg_quality=None, noise=0.0, brightness=(0.8, 1.2)).apply(clean, rng)
    dark = clean.astype(float) > 20
    ratio = bright[dark].astype(float) / clean[dark]
    assert 0.79 <= np.median(ratio) <= 1.21 and np.percentile(np.abs(ratio - np.median(ratio)), 90) < 0.02
    # the resize through 1280×720 alone: a mild blur (edges change, flat regions do not)
    resized = CameraEffects(jpeg_quality=None, noise=0.0, brightness=(1.0, 1.0)).apply(clean, rng)
    diff = np.abs(resized.astype(int) - clean).max(-1)
    assert resized.shape == clean.shape and 0 < diff.mean() < 6 and np.median(diff) <= 1
    # all of them: the same scene, noisier; JPEG quality drawn in 60..90 (the file size tells)
    full = CameraEffects()
    frames = [full.apply(clean, np.random.default_rng(s)) for s in range(8)]
    assert all(f.shape == clean.shape and f.dtype == np.uint8 for f in frames)
    assert len({f.tobytes() for f in frames}) == 8  # every capture is drawn anew
    assert 2 < np.mean([np.abs(f.astype(int) - clean).mean() for f in frames]) < 40
    assert Image.fromarray(frames[0]).size == (clean.shape[1], clean.shape[0])
    for bad, field in [
        (dict(resolution=(0, 720)), "resolution"),
        (dict(jpeg_quality=(90, 60)), "jpeg_quality"),
        (dict(noise=-1.0), "noise"),
        (dict(brightness=(0.0, 1.2)), "brightness"),
    ]:
        with pytest.raises(ConfigError, match=field):
            CameraEffects(**bad)


def test_make_shapes_camera_effects_share_and_the_camera_evaluation(tmp_path):
    import json
    import subprocess
    import sys

    from PIL import Image

    from lphi_edge.eval.shapes import shapes_items

    cli = [sys.executable, "-c", "from lphi_edge.cli.train import make_shapes; raise SystemExit(make_shapes())"]
    args = ["--n", "40", "--seed", "4", "--size", "96"]
    subprocess.run([*cli, "--out", str(tmp_path / "clean"), *args], check=True, capture_output=True)
    subprocess.run([*cli, "--out", str(tmp_path / "half"), *args, "--camera-effects", "0.5"], check=True)
    subprocess.run([*cli, "--out", str(tmp_path / "all"), *args, "--camera-effects"], check=True)
    marked = {}
    for name in ("clean", "half", "all"):
        scenes = [json.loads(line) for line in (tmp_path / name / "scenes.jsonl").read_text().splitlines()]
        marked[name] = [bool(s.get("camera")) for s in scenes]
        assert [s["shapes"] for s in scenes] == [  # the same scenes whatever the effects
            json.loads(line)["shapes"] for line in (tmp_path / "clean" / "scenes.jsonl").read_text().splitlines()
        ]
    assert not any(marked["clean"]) and all(marked["all"]) and 10 <= sum(marked["half"]) <= 30
    for i, camera in enumerate(marked["half"]):  # unmarked frames are the clean frames, byte for byte
        same = (tmp_path / "half" / f"images/{i:06d}.png").read_bytes() == (
            tmp_path / "clean" / f"images/{i:06d}.png"
        ).read_bytes()
        assert same != camera, i
    with Image.open(tmp_path / "all" / "images/000000.png") as im:
        assert im.size == (96, 96)
    bad = subprocess.run([*cli, "--out", str(tmp_path / "bad"), *args, "--camera-effects", "1.5"], capture_output=True)
    assert bad.returncode == 2 and b"--camera-effects must be a share in [0, 1], got 1.5" in bad.stderr
    assert not (tmp_path / "bad").exists()
    # the camera evaluation asks the same questions about the same scenes, degraded
    clean, camera = list(shapes_items(6, seed=9)), list(shapes_items(6, seed=9, camera_effects=True))
    assert [(q, qa) for q, _, qa in clean] == [(q, qa) for q, _, qa in camera]
    assert all(not np.array_equal(a, b) for (_, a, _), (_, b, _) in zip(clean, camera))
