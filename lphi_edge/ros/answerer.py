"""The VQA node's engine without ROS: the newest-frame slot, the bounded prompt queue and the worker
thread that answers prompts in order about the newest frame at the moment each is taken.

Subscription callbacks only put (O(1), never blocking on the model); the worker owns the Assistant and
reports through callbacks (partial text, final answer, diagnostics). No rclpy here.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lphi_edge.ros.frames import RawFrame

logger = logging.getLogger(__name__)


@dataclass
class Frame:
    """The newest camera frame: pixels (RGB array or a checked raw frame converted on use) + its header."""

    pixels: RawFrame | np.ndarray
    stamp_ns: int  # header stamp (0: unset)
    frame_id: str
    received_ns: int  # wall clock at arrival

    def rgb(self) -> np.ndarray:
        return self.pixels.rgb() if isinstance(self.pixels, RawFrame) else self.pixels

    def age_s(self, now_ns: int) -> float:
        """Seconds since the header stamp (or since arrival when the stamp is unset)."""
        return (now_ns - (self.stamp_ns or self.received_ns)) / 1e9


class FrameSlot:
    """Holds only the newest frame; counts frames replaced before any prompt used them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._frame: Frame | None = None
        self._used = False
        self.received = 0
        self.dropped = 0
        self.malformed = 0

    def put(self, frame: Frame) -> None:
        with self._lock:
            if self._frame is not None and not self._used:
                self.dropped += 1
            self._frame, self._used = frame, False
            self.received += 1

    def count_malformed(self) -> int:
        with self._lock:
            self.malformed += 1
            return self.malformed

    def take(self) -> Frame | None:
        with self._lock:
            self._used = self._frame is not None
            return self._frame


@dataclass
class Prompt:
    text: str
    source: str  # "topic" | "auto"
    queued_ns: int = field(default_factory=time.time_ns)


class PromptQueue:
    """Bounded FIFO; when full, the oldest prompt is dropped (and returned, to be reported)."""

    def __init__(self, size: int):
        self._cond = threading.Condition()
        self._items: collections.deque[Prompt] = collections.deque()
        self._size = size
        self.dropped = 0

    def resize(self, size: int) -> list[Prompt]:
        with self._cond:
            self._size = size
            return self._trim()

    def put(self, prompt: Prompt) -> list[Prompt]:
        """Enqueue; returns the prompts dropped to make room."""
        with self._cond:
            self._items.append(prompt)
            dropped = self._trim()
            self._cond.notify()
            return dropped

    def _trim(self) -> list[Prompt]:
        out = []
        while len(self._items) > self._size:
            out.append(self._items.popleft())
            self.dropped += 1
        return out

    def get(self, timeout: float) -> Prompt | None:
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            return self._items.popleft() if self._items else None

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


@dataclass(frozen=True)
class AnswerSettings:
    """Read afresh for every prompt, so parameter changes apply to the next answer."""

    max_new_tokens: int
    temperature: float
    max_frame_age_s: float
    image_topic: str


@dataclass
class Reply:
    """What the worker reports per prompt (the node turns it into messages)."""

    prompt: Prompt
    text: str
    ok: bool  # False: no usable frame / the model failed; text says why
    frame: Frame | None
    frame_age_s: float | None
    timings: dict[str, Any]
    finished_ns: int


class Answerer(threading.Thread):
    """Worker: prompt → newest frame → Assistant.stream → callbacks. Reloads the model between answers when
    `want_model` changes it; a failed reload keeps the current model."""

    def __init__(
        self,
        load: Callable[[tuple], Any],
        model_key: tuple,
        frames: FrameSlot,
        prompts: PromptQueue,
        settings: Callable[[], AnswerSettings],
        on_partial: Callable[[str], None],
        on_reply: Callable[[Reply], None],
        on_error: Callable[[str], None],
    ):
        super().__init__(name="lphi-vqa-worker", daemon=True)
        self._load, self.frames, self.prompts, self._settings = load, frames, prompts, settings
        self._on_partial, self._on_reply, self._on_error = on_partial, on_reply, on_error
        self.assistant = load(model_key)  # once, before the node starts serving (errors surface here)
        self.model_key = model_key
        self._wanted = model_key
        self._halt = threading.Event()
        self.answered = 0

    def want_model(self, key: tuple) -> None:
        self._wanted = key
        self.prompts.wake()

    def stop(self, timeout: float = 10.0) -> None:
        self._halt.set()
        self.prompts.wake()
        if self.is_alive():
            self.join(timeout)

    def run(self) -> None:
        while not self._halt.is_set():
            if self._wanted != self.model_key:
                self._reload(self._wanted)
            prompt = self.prompts.get(timeout=0.2)
            if prompt is None:
                continue
            try:
                reply = self.answer(prompt)
            except Exception as e:  # the worker must survive anything one answer throws
                logger.exception("answering %r failed", prompt.text)
                reply = Reply(prompt, f"[error] {type(e).__name__}: {e}", False, None, None, {}, time.time_ns())
            self.answered += 1
            self._on_reply(reply)

    def _reload(self, key: tuple) -> None:
        t0 = time.perf_counter()
        try:
            assistant = self._load(key)
        except Exception as e:
            self._on_error(f"cannot load model {key}: {e}; still answering with {self.model_key}")
            self._wanted = self.model_key
            return
        self.assistant, self.model_key = assistant, key
        logger.info("loaded %s in %.1f s", key, time.perf_counter() - t0)

    def answer(self, prompt: Prompt) -> Reply:
        s = self._settings()
        frame = self.frames.take()
        now = time.time_ns()
        if frame is None:
            text = f"[no frame] No camera frame has arrived on {s.image_topic} yet, so I cannot answer: {prompt.text}"
            return Reply(prompt, text, False, None, None, {}, now)
        age = frame.age_s(now)
        if age > s.max_frame_age_s:
            text = (
                f"[no frame] The newest camera frame on {s.image_topic} is {age:.1f} s old "
                f"(max_frame_age_s {s.max_frame_age_s:g}), too stale to answer: {prompt.text}"
            )
            return Reply(prompt, text, False, frame, age, {}, now)
        t0 = time.perf_counter()
        image = frame.rgb()
        convert_ms = (time.perf_counter() - t0) * 1e3
        text = ""
        for piece in self.assistant.stream(
            image, prompt.text, max_new_tokens=s.max_new_tokens, temperature=s.temperature
        ):
            text += piece
            self._on_partial(text)
            if self._halt.is_set():  # shutting down: report what was generated, marked unfinished
                return Reply(prompt, text, False, frame, age, {}, time.time_ns())
        ans = self.assistant.last_answer
        timings = ans.timings.to_dict() if ans is not None else {}
        timings["convert_ms"] = round(convert_ms, 3)
        return Reply(prompt, ans.text if ans is not None else text, True, frame, age, timings, time.time_ns())
