"""The VQA node's engine without ROS: the newest-frame slot of each camera, the one ordered request queue shared
by topic prompts, auto prompts and `ask` goals, and the worker thread that answers requests in order.

Subscription and goal callbacks only check and put (O(1), never blocking on the model); the worker owns the
Assistant and reports through callbacks (text so far, the final reply, errors). No rclpy here.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lphi_edge.errors import ContextLengthError, LphiError
from lphi_edge.ros.frames import FrameError, RawFrame, check_raw

logger = logging.getLogger(__name__)

QUOTE_CHARS = 100  # a prompt is quoted in logs and refusals up to this many characters
GOAL_IMAGE = "<goal image>"  # the `camera` of an answer about an image carried in the goal (never a camera name)
FINISH_REASONS = ("eos", "stop", "length", "context", "canceled", "no_frame", "error")


def quote(text: str, limit: int = QUOTE_CHARS) -> str:
    """`text` for a log line: repr of at most `limit` characters, "…" when cut."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}…"


@dataclass
class Frame:
    """A camera frame: pixels (RGB array or a checked raw frame converted on use) + its header."""

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
    """Holds only the newest frame; counts frames replaced before any request used them."""

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


class Cameras:
    """The newest frame of each camera by name; the name "" is the single unnamed camera (topic `image`)."""

    def __init__(self, names: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._slots: dict[str, FrameSlot] = {}
        self.set_names(names)

    def set_names(self, names: Iterable[str]) -> None:
        """Cameras from now on (names kept keep their newest frame and counters)."""
        names = list(names) or [""]
        with self._lock:
            self._slots = {n: self._slots.get(n) or FrameSlot() for n in names}

    @property
    def names(self) -> list[str]:
        with self._lock:
            return list(self._slots)

    def slot(self, name: str) -> FrameSlot | None:
        """The camera `name` ("" = the first camera); None if there is no such camera."""
        with self._lock:
            if not name:
                return next(iter(self._slots.values()))
            return self._slots.get(name)

    def resolve(self, name: str) -> str:
        """The camera a request for `name` uses ("" = the first one)."""
        return name or self.names[0]

    def totals(self) -> dict[str, int]:
        """frames_received / frames_dropped / frames_malformed summed over the cameras."""
        with self._lock:
            slots = list(self._slots.values())
        return {
            "frames_received": sum(s.received for s in slots),
            "frames_dropped": sum(s.dropped for s in slots),
            "frames_malformed": sum(s.malformed for s in slots),
        }


def _never() -> bool:
    return False


@dataclass(eq=False)
class Prompt:
    """A question waiting for the worker: from the `prompt` topic, the auto-prompt timer or an `ask` goal."""

    text: str  # the question; when `refusal` is set, a short quote of it
    source: str  # "topic" | "auto" | "goal"
    camera: str = ""  # whose newest frame to answer about ("" = the first camera)
    frame: Frame | None = None  # answer about this frame instead (an image carried in a goal)
    max_new_tokens: int = 0  # 0 = the node's parameter
    temperature: float = -1.0  # < 0 = the node's parameter
    refusal: str = ""  # set: refused unanswered, for this reason (the reply keeps the queue's order)
    canceled: Callable[[], bool] = _never  # polled after every generated token
    on_text: Callable[[str, int], None] | None = None  # (text so far, tokens so far) after every token
    on_done: Callable[[Reply], None] | None = None  # the final reply (after the node has published it)
    queued_ns: int = field(default_factory=time.time_ns)

    @property
    def droppable(self) -> bool:
        """Topic and auto prompts make room for newer ones; accepted goals are never dropped."""
        return self.source != "goal"


class RequestError(LphiError):
    """A prompt or goal the node refuses before queuing it (the message says why)."""


def topic_prompt(text: str, source: str, max_prompt_chars: int) -> Prompt:
    """A topic / auto prompt; one longer than `max_prompt_chars` is kept only as a quote, marked refused (it is
    never tokenized), so it is answered in order with the reason."""
    if len(text) > max_prompt_chars:
        return Prompt(
            quote(text),
            source,
            refusal=f"prompt of {len(text)} characters refused: longer than max_prompt_chars ({max_prompt_chars})",
        )
    return Prompt(text, source)


def goal_prompt(
    text: str,
    camera: str,
    max_new_tokens: int,
    temperature: float,
    image: tuple[str, int, int, int, Any, int, str] | None,
    cameras: list[str],
    max_prompt_chars: int,
    max_frame_pixels: int,
) -> Prompt:
    """An `ask` goal's fields as a Prompt, or RequestError naming why the goal is rejected. `image`: (encoding,
    height, width, step, data, stamp_ns, frame_id) of the goal's image, or None for the camera's newest frame."""
    if not text.strip():
        raise RequestError("empty prompt")
    if len(text) > max_prompt_chars:
        raise RequestError(
            f"prompt of {len(text)} characters is longer than max_prompt_chars ({max_prompt_chars}): {quote(text)}"
        )
    if camera and camera not in cameras:
        shown = [c for c in cameras if c] or ["(one unnamed camera on `image`: leave camera empty)"]
        raise RequestError(f"unknown camera {camera!r}: this node's cameras are {shown}")
    if not 0 <= max_new_tokens <= 4096:
        raise RequestError(f"max_new_tokens {max_new_tokens} must be in 0..4096 (0 = the node's parameter)")
    if not math.isfinite(temperature):
        raise RequestError(f"temperature {temperature} must be finite (< 0 = the node's parameter)")
    frame = None
    if image is not None:
        encoding, height, width, step, data, stamp_ns, frame_id = image
        try:
            pixels = check_raw(encoding, height, width, step, data, max_frame_pixels)
        except FrameError as e:
            raise RequestError(f"goal image: {e}") from None
        frame = Frame(pixels, stamp_ns, frame_id, time.time_ns())
    return Prompt(text, "goal", camera, frame, max_new_tokens, temperature)


class PromptQueue:
    """The bounded FIFO of requests. When full, a new topic / auto prompt drops the oldest topic / auto prompt
    (itself if every queued request is a goal); a goal is offered and refused when the queue is full."""

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
        """Enqueue a topic / auto prompt; returns the prompts dropped to make room."""
        with self._cond:
            self._items.append(prompt)
            dropped = self._trim()
            self._cond.notify()
            return dropped

    def offer(self, prompt: Prompt) -> bool:
        """Enqueue a goal if there is room."""
        with self._cond:
            if len(self._items) >= self._size:
                return False
            self._items.append(prompt)
            self._cond.notify()
            return True

    def has_room(self) -> bool:
        with self._cond:
            return len(self._items) < self._size

    def remove(self, prompt: Prompt) -> bool:
        """Take `prompt` out if it is still waiting."""
        with self._cond:
            try:
                self._items.remove(prompt)
            except ValueError:
                return False
            return True

    def drain(self) -> list[Prompt]:
        """Take every waiting request out."""
        with self._cond:
            items = list(self._items)
            self._items.clear()
            return items

    def _trim(self) -> list[Prompt]:
        out = []
        while len(self._items) > self._size:
            oldest = next((p for p in self._items if p.droppable), None)
            if oldest is None:  # only goals left: they stay
                break
            self._items.remove(oldest)
            out.append(oldest)
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
    """Read afresh for every request, so parameter changes apply to the next answer."""

    max_new_tokens: int
    temperature: float
    max_frame_age_s: float
    topics: Mapping[str, str]  # camera name → its resolved image topic (for the no-frame answers)


@dataclass
class Reply:
    """What the worker reports per request (the node turns it into messages and goal results)."""

    prompt: Prompt
    text: str
    finish_reason: str  # one of FINISH_REASONS
    camera: str  # the camera answered about, GOAL_IMAGE, or "" when none was looked at
    frame: Frame | None
    frame_age_s: float | None
    timings: dict[str, Any]  # the Answer's timings (ms); for canceled answers ttft_ms / total_ms measured here
    tokens: int  # tokens generated
    finished_ns: int
    failed: bool = False  # no answer: refused or failed ("[error] ..."; finish_reason context or error)

    @property
    def ok(self) -> bool:
        """An answer from the model about a frame (canceled ones included)."""
        return not self.failed and self.finish_reason != "no_frame"


def canceled_reply(prompt: Prompt, why: str) -> Reply:
    """The reply of a request taken out before it was answered (a canceled goal, a node cleaned up)."""
    return Reply(prompt, why, "canceled", "", None, None, {}, 0, time.time_ns())


class Answerer(threading.Thread):
    """Worker: request → frame → Assistant.stream → callbacks. Reloads the model between answers when `want_model`
    changes it; a failed reload keeps the current model. The model is loaded in the constructor (errors surface
    there, before any request is taken)."""

    def __init__(
        self,
        load: Callable[[tuple], Any],
        reconfigure: Callable[[Any, tuple, tuple], bool],
        model_key: tuple,
        cameras: Cameras,
        prompts: PromptQueue,
        settings: Callable[[], AnswerSettings],
        on_partial: Callable[[str], None],
        on_reply: Callable[[Reply], None],
        on_error: Callable[[str], None],
    ):
        super().__init__(name="lphi-vqa-worker", daemon=True)
        self._load, self._reconfigure = load, reconfigure
        self.cameras, self.prompts, self._settings = cameras, prompts, settings
        self._on_partial, self._on_reply, self._on_error = on_partial, on_reply, on_error
        self.assistant = load(model_key)
        self.model_key = model_key
        self._wanted = model_key
        self._halt = threading.Event()
        self.answered = 0
        self.frames_reused = 0  # answers about a frame whose features came from a cached (near-identical) frame
        self.answers_reused = 0  # of which a stored answer was returned without running the model

    def want_model(self, key: tuple) -> None:
        self._wanted = key
        self.prompts.wake()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the current token (the answer in progress ends as canceled)."""
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
            self.finish(self.answer_safely(prompt))

    def finish(self, reply: Reply) -> None:
        """Report a reply: the node's outputs first, then the request's own callback (a goal's result). Neither
        may stop the worker."""
        self.answered += 1
        for report in (self._on_reply, reply.prompt.on_done):
            if report is None:
                continue
            try:
                report(reply)
            except Exception:
                logger.exception("reporting the reply to %s failed", quote(reply.prompt.text))

    def answer_safely(self, prompt: Prompt) -> Reply:
        """`answer`, with any failure turned into an "[error] …" reply (the worker survives anything)."""
        try:
            return self.answer(prompt)
        except LphiError as e:  # the user's input (a prompt beyond the context, ...): one line, no traceback
            logger.warning("cannot answer %s: %s: %s", quote(prompt.text), type(e).__name__, e)
            reason = "context" if isinstance(e, ContextLengthError) else "error"
            return self._failed(prompt, f"[error] {type(e).__name__}: {e}", reason)
        except Exception as e:  # a bug or a backend failure: keep the traceback
            logger.exception("answering %s failed", quote(prompt.text))
            return self._failed(prompt, f"[error] {type(e).__name__}: {e}", "error")

    @staticmethod
    def _failed(prompt: Prompt, text: str, reason: str) -> Reply:
        return Reply(prompt, text, reason, "", None, None, {}, 0, time.time_ns(), failed=True)

    def _reload(self, key: tuple) -> None:
        """Between answers: apply `key` in place when `reconfigure` can, else load the model anew; on failure keep
        the current one."""
        t0 = time.perf_counter()
        try:
            if self._reconfigure(self.assistant, self.model_key, key):
                logger.info("applied %s", key)
            else:
                self.assistant = self._load(key)
                logger.info("loaded %s in %.1f s", key, time.perf_counter() - t0)
        except Exception as e:
            self._on_error(f"cannot load model {key}: {e}; still answering with {self.model_key}")
            self._wanted = self.model_key
            return
        self.model_key = key

    def _frame(self, prompt: Prompt, s: AnswerSettings, now: int) -> tuple[str, Frame | None, float | None, str]:
        """(camera, frame, age, no-frame text): the frame to answer about, or the reason there is none."""
        if prompt.frame is not None:
            return GOAL_IMAGE, prompt.frame, max(0.0, prompt.frame.age_s(now)), ""
        camera = self.cameras.resolve(prompt.camera)
        slot = self.cameras.slot(camera)
        topic = s.topics.get(camera, camera)
        if slot is None:
            return camera, None, None, f"[no frame] There is no camera {camera!r} any more, so I cannot answer: "
        frame = slot.take()
        if frame is None:
            return camera, None, None, f"[no frame] No camera frame has arrived on {topic} yet, so I cannot answer: "
        age = frame.age_s(now)
        if age > s.max_frame_age_s:
            text = (
                f"[no frame] The newest camera frame on {topic} is {age:.1f} s old "
                f"(max_frame_age_s {s.max_frame_age_s:g}), too stale to answer: "
            )
            return camera, frame, age, text
        return camera, frame, age, ""

    def answer(self, prompt: Prompt) -> Reply:
        if prompt.refusal:
            logger.warning("%s: %s", prompt.refusal, prompt.text)
            return self._failed(prompt, f"[error] {prompt.refusal}", "error")
        s = self._settings()
        camera, frame, age, no_frame = self._frame(prompt, s, time.time_ns())
        if frame is None or no_frame:
            return Reply(prompt, no_frame + prompt.text, "no_frame", camera, frame, age, {}, 0, time.time_ns())
        t0 = time.perf_counter()
        image = frame.rgb()
        convert_ms = (time.perf_counter() - t0) * 1e3
        max_new_tokens = prompt.max_new_tokens or s.max_new_tokens
        temperature = s.temperature if prompt.temperature < 0 else prompt.temperature
        streamed, told = "", ""  # the text on answer/stream; the text of the last feedback

        def on_text(piece: str) -> None:  # the answer/stream topic: the text so far, whenever it grows
            nonlocal streamed
            streamed += piece
            self._on_partial(streamed)

        def on_token(tokens: int, text: str) -> bool:  # after every generated token: feedback, then cancel?
            nonlocal told
            if prompt.on_text is not None:
                prompt.on_text(text, tokens)
                told = text
            return prompt.canceled() or self._halt.is_set()  # True: stop before the next token is computed

        ans = self.assistant.ask(
            image, prompt.text, max_new_tokens=max_new_tokens, temperature=temperature, on_text=on_text,
            on_token=on_token,
        )  # fmt: skip
        if prompt.on_text is not None and ans.text != told:  # text the last token released only at the end
            prompt.on_text(ans.text, len(ans.token_ids))
        timings = ans.timings.to_dict()
        timings["convert_ms"] = round(convert_ms, 3)
        self.frames_reused += ans.timings.frame_reused
        self.answers_reused += ans.timings.answer_reused
        return Reply(
            prompt, ans.text, ans.finish_reason, camera, frame, age, timings, len(ans.token_ids), time.time_ns()
        )
