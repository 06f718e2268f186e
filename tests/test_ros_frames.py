"""The VQA node's frame checks, request queue and worker, without ROS processes (lphi_edge.ros.frames / answerer)."""

from __future__ import annotations

import array
import logging
import time

import numpy as np
import pytest

from lphi_edge import Assistant
from lphi_edge.ros.answerer import (
    Answerer,
    AnswerSettings,
    Cameras,
    Frame,
    FrameSlot,
    Prompt,
    PromptQueue,
    RequestError,
    goal_prompt,
    topic_prompt,
)
from lphi_edge.ros.frames import FrameError, check_raw, compressed_size, decode_compressed

RGB = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)  # (H=4, W=5, 3)


@pytest.mark.parametrize(
    "encoding, pixels",
    [
        ("rgb8", RGB),
        ("bgr8", RGB[:, :, ::-1]),
        ("rgba8", np.concatenate([RGB, np.full((4, 5, 1), 255, np.uint8)], axis=2)),
        ("bgra8", np.concatenate([RGB[:, :, ::-1], np.zeros((4, 5, 1), np.uint8)], axis=2)),
    ],
)
@pytest.mark.parametrize("padding", [0, 3])
def test_raw_encodings_become_rgb_with_row_padding_dropped(encoding, pixels, padding):
    h, w, c = pixels.shape
    rows = np.concatenate([pixels.reshape(h, w * c), np.full((h, padding), 77, np.uint8)], axis=1)
    frame = check_raw(encoding, h, w, w * c + padding, array.array("B", rows.tobytes()))
    np.testing.assert_array_equal(frame.rgb(), RGB)


def test_mono8_is_replicated_to_three_channels():
    gray = np.arange(20, dtype=np.uint8).reshape(4, 5)
    out = check_raw("mono8", 4, 5, 5, gray.tobytes()).rgb()
    assert out.shape == (4, 5, 3) and (out == gray[..., None]).all()


@pytest.mark.parametrize(
    "fields, message",
    [
        (("yuv422", 4, 5, 10, bytes(40)), "unsupported image encoding 'yuv422'"),
        (("rgb8", 4, 5, 15, bytes(59)), "data has 59 bytes, expected step × height = 15 × 4 = 60"),
        (("rgb8", 0, 0, 0, b""), "empty image: 0x0"),
        (("rgb8", 100_000, 100_000, 300_000, bytes(10)), "exceeds 16384 px per side"),
        (("rgb8", 4000, 4000, 12000, bytes(10)), "data has 10 bytes, expected step × height"),
        (("rgba8", 4, 5, 15, bytes(60)), "step 15 < width 5 × 4 bytes per pixel"),
    ],
)
def test_malformed_raw_frames_are_named(fields, message):
    with pytest.raises(FrameError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_raw(*fields)


def test_compressed_frames_decode_and_corrupt_ones_are_refused():
    cv2 = pytest.importorskip("cv2")
    ok, jpg = cv2.imencode(".png", np.ascontiguousarray(RGB[:, :, ::-1]))
    assert ok
    np.testing.assert_array_equal(decode_compressed("png", jpg.tobytes()), RGB)
    with pytest.raises(FrameError, match="cannot decode 32-byte compressed frame"):
        decode_compressed("jpeg", b"\xff\xd8\xff\xe0" + bytes(28))
    with pytest.raises(FrameError, match="empty compressed frame"):
        decode_compressed("jpeg", b"")


def test_prompt_queue_drops_the_oldest_and_counts():
    q = PromptQueue(2)
    assert q.put(Prompt("a", "topic")) == [] and q.put(Prompt("b", "topic")) == []
    assert [p.text for p in q.put(Prompt("c", "topic"))] == ["a"]
    assert q.dropped == 1 and len(q) == 2
    assert [p.text for p in q.resize(1)] == ["b"] and q.dropped == 2
    assert q.get(0.01).text == "c" and q.get(0.01) is None


def test_frame_slot_keeps_the_newest_and_counts_unused_replacements():
    slot = FrameSlot()
    assert slot.take() is None
    for i in range(3):
        slot.put(Frame(RGB, i, "cam", 0))
    assert slot.take().stamp_ns == 2 and slot.dropped == 2 and slot.received == 3
    slot.put(Frame(RGB, 3, "cam", 0))  # the previous one was used: not a drop
    assert slot.dropped == 2


# ---- hostile frames: the size is read from the compressed header before anything is decoded ----------------------


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A real JPEG whose start-of-frame header claims width × height (its scan data is for 8×8)."""
    cv2 = pytest.importorskip("cv2")
    ok, jpg = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))
    data = bytearray(jpg.tobytes())
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


@pytest.mark.parametrize("ext, params", [(".jpg", []), (".jpg", [1, 1]), (".png", [])])  # 1, 1: progressive JPEG
def test_compressed_size_is_read_from_the_header(ext, params):
    cv2 = pytest.importorskip("cv2")
    params = [cv2.IMWRITE_JPEG_PROGRESSIVE, 1] if params else []
    ok, buf = cv2.imencode(ext, np.zeros((30, 50, 3), np.uint8), params)
    assert compressed_size("x", buf.tobytes()) == (50, 30)
    assert compressed_size("jpeg", _jpeg_claiming(16000, 12000)) == (16000, 12000)


def test_frames_beyond_max_frame_pixels_are_refused_before_decoding(monkeypatch):
    cv2 = pytest.importorskip("cv2")

    def no_decoding(*args):
        raise AssertionError("decoded a frame that should have been refused from its header")

    monkeypatch.setattr(cv2, "imdecode", no_decoding)
    with pytest.raises(FrameError, match="image 16000x16000 = 256000000 pixels exceeds max_frame_pixels 16777216"):
        decode_compressed("jpeg", _jpeg_claiming(16000, 16000))
    with pytest.raises(FrameError, match="image 1000x1000 = 1000000 pixels exceeds max_frame_pixels 999999"):
        decode_compressed("jpeg", _jpeg_claiming(1000, 1000), max_pixels=999_999)
    with pytest.raises(FrameError, match="exceeds 16384 px per side"):
        decode_compressed("jpeg", _jpeg_claiming(60000, 8))
    with pytest.raises(FrameError, match="neither JPEG nor PNG, so its size cannot be checked before decoding"):
        decode_compressed("gif", b"GIF89a" + bytes(100))
    with pytest.raises(FrameError, match="truncated PNG header"):
        decode_compressed("png", b"\x89PNG\r\n\x1a\n" + bytes(4))
    with pytest.raises(FrameError, match=r"image 5x4 = 20 pixels exceeds max_frame_pixels 19"):
        check_raw("rgb8", 4, 5, 15, bytes(60), max_pixels=19)


# ---- requests: topic prompts, goals, the shared queue -------------------------------------------------------------


def test_goals_are_never_dropped_and_a_full_queue_refuses_them():
    q = PromptQueue(3)
    g1, g2 = Prompt("g1", "goal"), Prompt("g2", "goal")
    assert q.offer(g1) and q.put(Prompt("t1", "topic")) == [] and q.offer(g2)
    assert not q.has_room() and not q.offer(Prompt("g3", "goal"))  # a goal that does not fit: refused
    assert [p.text for p in q.put(Prompt("t2", "topic"))] == ["t1"]  # a prompt drops the oldest prompt, not a goal
    assert [p.text for p in q.put(Prompt("t3", "auto"))] == ["t2"]
    assert [p.text for p in q.drain()] == ["g1", "g2", "t3"] and len(q) == 0
    assert q.offer(g1) and q.offer(g2) and q.put(Prompt("t4", "topic")) == [] and len(q) == 3
    assert [p.text for p in q.put(Prompt("t5", "topic"))] == ["t4"]  # only goals besides: the new prompt's turn
    assert [p.text for p in q.put(Prompt("t6", "topic"))] == ["t5"]
    assert [p.text for p in q.resize(1)] == ["t6"] and len(q) == 2  # goals stay even beyond a lowered size
    assert q.remove(g1) and not q.remove(g1) and q.get(0.01) is g2 and q.dropped == 5


def test_overlong_prompts_are_refused_untokenized_and_quoted_briefly():
    long = "Describe " + "x" * 400_000
    p = topic_prompt(long, "topic", max_prompt_chars=16384)
    assert p.refusal == "prompt of 400009 characters refused: longer than max_prompt_chars (16384)"
    assert p.text.startswith("'Describe xxx") and p.text.endswith("x'…") and len(p.text) == 103
    p = topic_prompt("What?", "auto", 5)
    assert (p.text, p.source, p.refusal) == ("What?", "auto", "")


def test_goal_fields_are_checked_with_reasons():
    def goal(text="What?", camera="", max_new_tokens=0, temperature=-1.0, image=None, cameras=("wrist", "head")):
        return goal_prompt(text, camera, max_new_tokens, temperature, image, list(cameras), 16384, 1_000_000)

    p = goal(camera="head", max_new_tokens=7, temperature=0.5)
    assert (p.source, p.camera, p.max_new_tokens, p.temperature, p.frame) == ("goal", "head", 7, 0.5, None)
    image = ("rgb8", 4, 5, 15, RGB.tobytes(), 123, "gripper")
    p = goal(image=image)
    np.testing.assert_array_equal(p.frame.rgb(), RGB)
    assert (p.frame.stamp_ns, p.frame.frame_id) == (123, "gripper")
    for kwargs, reason in [
        ({"text": "  "}, "empty prompt"),
        ({"text": "y" * 20_000}, "prompt of 20000 characters is longer than max_prompt_chars (16384): 'yyy"),
        ({"camera": "tail"}, "unknown camera 'tail': this node's cameras are ['wrist', 'head']"),
        ({"camera": "tail", "cameras": ()}, "(one unnamed camera on `image`: leave camera empty)"),
        ({"max_new_tokens": 5000}, "max_new_tokens 5000 must be in 0..4096"),
        ({"temperature": float("nan")}, "temperature nan must be finite"),
        ({"image": ("rgb8", 2000, 2000, 6000, b"", 0, "")}, "goal image: image 2000x2000 = 4000000 pixels exceeds"),
        ({"image": ("yuv422", 4, 5, 10, bytes(40), 0, "")}, "goal image: unsupported image encoding 'yuv422'"),
    ]:
        with pytest.raises(RequestError) as e:
            goal(**kwargs)
        assert reason in str(e.value) and len(str(e.value)) < 300, str(e.value)


# ---- the worker, without ROS: cancel within one token, errors as one log line -------------------------------------


class RecordingAssistant:
    """A real Assistant (the tiny checkpoint) whose requests are recorded (image, prompt, generation settings)."""

    def __init__(self, assistant: Assistant):
        self.assistant = assistant
        self.calls: list[tuple] = []

    def ask(self, image, prompt, **generation):
        self.calls.append((image, prompt, {k: v for k, v in generation.items() if not k.startswith("on_")}))
        return self.assistant.ask(image, prompt, **generation)


@pytest.fixture(scope="module")
def model(tiny_ckpt) -> RecordingAssistant:
    return RecordingAssistant(Assistant.from_pretrained(tiny_ckpt))


def worker(assistant: RecordingAssistant, cameras: Cameras | None = None) -> Answerer:
    cameras = cameras or Cameras()
    settings = AnswerSettings(8, 0.0, 30.0, {n: f"/{n or 'image'}" for n in cameras.names})
    noop = lambda *a: None  # noqa: E731
    return Answerer(
        lambda key: assistant, lambda *a: False, ("m",), cameras, PromptQueue(4), lambda: settings, noop, noop, noop
    )


def test_a_canceled_answer_stops_at_the_token_it_was_canceled_at_and_frees_the_model(model):
    cameras = Cameras(["wrist", "head"])
    cameras.slot("head").put(Frame(RGB, 0, "head_cam", time.time_ns()))
    w = worker(model, cameras)
    seen: list[tuple[str, int]] = []
    prompt = Prompt("Describe.", "goal", camera="head", max_new_tokens=12, temperature=0.7)
    prompt.on_text = lambda text, n: seen.append((text, n))
    prompt.canceled = lambda: len(seen) >= 2
    reply = w.answer_safely(prompt)
    assert (reply.finish_reason, reply.tokens, reply.camera) == ("canceled", 2, "head")
    # feedback per token, then once more with the whole text if finishing released text the last token held back
    assert [n for _, n in seen] in ([1, 2], [1, 2, 2]) and seen[-1][0] == reply.text
    assert model.calls[0][2] == {"max_new_tokens": 12, "temperature": 0.7}  # the goal's own settings
    assert reply.frame.frame_id == "head_cam" and reply.timings["total_ms"] >= reply.timings["ttft_ms"] > 0
    # greedy: the canceled answer is the full answer's first two tokens, and the model is free for the next one
    prompt = Prompt("Describe.", "goal", camera="head", max_new_tokens=12, temperature=0.0)
    prompt.canceled = lambda: True
    reply = w.answer_safely(prompt)
    assert (reply.finish_reason, reply.tokens) == ("canceled", 1)
    full = w.answer_safely(Prompt("Describe.", "goal", camera="head", max_new_tokens=12, temperature=0.0))
    assert full.finish_reason == "length" and full.tokens == 12 and full.text.startswith(reply.text)
    assert reply.text == model.assistant.ask(RGB, "Describe.", max_new_tokens=1).text
    calls = len(model.calls)
    reply = w.answer_safely(Prompt("Describe.", "topic"))  # the first camera (wrist) has no frame yet
    assert reply.finish_reason == "no_frame" and "No camera frame has arrived on /wrist yet" in reply.text
    assert len(model.calls) == calls  # the model was not asked


def test_a_prompt_beyond_the_context_is_one_warning_line_and_a_refused_one_never_reaches_the_model(model, caplog):
    w = worker(model)
    w.cameras.slot("").put(Frame(RGB, 0, "cam", time.time_ns()))
    calls = len(model.calls)
    long = "Where is " + "z" * 12_000  # under max_prompt_chars, beyond the tiny model's 256 positions
    with caplog.at_level(logging.WARNING, logger="lphi_edge.ros.answerer"):
        reply = w.answer_safely(Prompt(long, "topic"))
        refused = w.answer_safely(topic_prompt("w" * 400_000, "topic", 16384))
    assert reply.finish_reason == "context" and reply.text.startswith("[error] ContextLengthError: prompt does not")
    assert refused.finish_reason == "error" and refused.text == (
        "[error] prompt of 400000 characters refused: longer than max_prompt_chars (16384)"
    )
    assert len(model.calls) == calls + 1  # the refused prompt never reached the model
    assert [r.levelname for r in caplog.records] == ["WARNING", "WARNING"]
    for record in caplog.records:
        line = record.getMessage()
        assert "\n" not in line and len(line) < 300 and record.exc_info is None, line
    assert caplog.records[0].getMessage().startswith("cannot answer 'Where is zzz")
    assert caplog.records[1].getMessage().startswith("prompt of 400000 characters refused: longer than max_prompt")
