"""The VQA node's frame checks and queues, without ROS processes (lphi_edge.ros.frames / answerer)."""

from __future__ import annotations

import array

import numpy as np
import pytest

from lphi_edge.ros.answerer import Frame, FrameSlot, Prompt, PromptQueue
from lphi_edge.ros.frames import FrameError, check_raw, decode_compressed

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
