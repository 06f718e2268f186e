"""The shared generation loop: sampling, stop conditions, streaming, context limits."""

from __future__ import annotations

import numpy as np
import pytest

from lphi_edge import Assistant, GenerationConfig
from lphi_edge.errors import ConfigError, ContextLengthError
from lphi_edge.runtime.generation import Sampler, TextStream

Q = "Describe the scene in front of the robot."


@pytest.fixture(scope="module")
def assistant(tiny_ckpt) -> Assistant:
    return Assistant.from_pretrained(tiny_ckpt)


def test_seeded_sampling_is_reproducible(assistant, frame):
    a = assistant.ask(frame, Q, max_new_tokens=16, temperature=1.0, seed=7)
    b = assistant.ask(frame, Q, max_new_tokens=16, temperature=1.0, seed=7)
    c = assistant.ask(frame, Q, max_new_tokens=16, temperature=1.0, seed=8)
    greedy = assistant.ask(frame, Q, max_new_tokens=16)
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids and a.token_ids != greedy.token_ids


def test_top_k_1_and_tiny_top_p_are_greedy(assistant, frame):
    greedy = assistant.ask(frame, Q, max_new_tokens=12).token_ids
    assert assistant.ask(frame, Q, max_new_tokens=12, temperature=0.8, top_k=1, seed=1).token_ids == greedy
    assert assistant.ask(frame, Q, max_new_tokens=12, temperature=0.8, top_p=1e-6, seed=1).token_ids == greedy


def test_sampler_respects_top_p_mass():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))
    s = Sampler(GenerationConfig(temperature=1.0, top_p=0.8, seed=0))
    draws = {s(logits) for _ in range(400)}
    assert draws == {0, 1}  # 0.5 + 0.3 reaches 0.8: tokens 2 and 3 are never drawn
    s = Sampler(GenerationConfig(temperature=1.0, top_k=3, seed=0))
    assert {s(logits) for _ in range(400)} == {0, 1, 2}


def test_stop_string_ends_answer_and_stream(assistant, frame):
    full = assistant.ask(frame, Q, max_new_tokens=24)
    assert len(full.text) > 6
    stop = full.text[4:6]
    pieces: list[str] = []
    cut = assistant.ask(frame, Q, max_new_tokens=24, stop=(stop,), on_text=pieces.append)
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.find(stop)].strip()
    assert "".join(pieces) == cut.text
    assert stop not in cut.text


def test_context_budget_caps_generation(assistant, frame):
    spec = assistant.backend.spec

    def positions(question: str) -> int:
        ids = assistant.tokenizer.encode_prompt(assistant.template.prompt([(question, None)]))
        return len(ids) - 1 + spec.image_tokens

    k = 1
    while positions("go " * (k + 1)) < spec.context_length - 8:
        k += 1
    words = "go " * k
    ans = assistant.ask(frame, words, max_new_tokens=50)
    assert ans.timings.prompt_tokens == positions(words)
    room = spec.context_length - ans.timings.prompt_tokens + 1
    assert 0 < room < 50
    assert ans.finish_reason in ("context", "eos") and len(ans.token_ids) <= room
    if ans.finish_reason == "context":
        assert len(ans.token_ids) == room
    with pytest.raises(ContextLengthError, match=rf"> context length {spec.context_length}"):
        assistant.ask(frame, "robot " * spec.context_length)


def test_generation_options_are_validated(assistant, frame):
    for bad in (
        dict(max_new_tokens=0),
        dict(temperature=-0.1),
        dict(top_p=0.0),
        dict(top_p=1.5),
        dict(top_k=-1),
        dict(stop=("",)),
        dict(beams=4),
    ):
        with pytest.raises(ConfigError):
            assistant.ask(frame, Q, **bad)


class _ListTokenizer:
    """Decodes ids as indices into a list of strings (exercises TextStream's hold-back rules)."""

    def __init__(self, pieces):
        self.pieces = pieces

    def decode(self, ids):
        return "".join(self.pieces[i] for i in ids)


def test_text_stream_holds_back_what_may_change():
    tok = _ListTokenizer([" Hello", " wor", "ld", "\ufffd", "é", "  ", "EN", "D", "!"])
    out: list[str] = []
    s = TextStream(tok, stop=("END",))
    for ids in ([0], [0, 1], [0, 1, 2], [0, 1, 2, 5], [0, 1, 2, 5, 6]):
        out.append(s.update(ids))
    assert out == ["Hello", " wor", "ld", "", ""]  # leading space stripped; "  " and "EN" held back
    assert s.update([0, 1, 2, 5, 6, 7]) == "" and s.stopped  # "END" found: stop, nothing after it
    last, final = s.finish([0, 1, 2, 5, 6, 7])
    assert final == "Hello world" and "".join(out) + last == final

    s = TextStream(tok, stop=())
    assert s.update([0, 3]) == "Hello"  # incomplete UTF-8 held back
    assert s.update([0, 4]) == "é"


def test_ask_while_a_stream_is_open_is_refused(assistant, frame):
    from lphi_edge.errors import GenerationInProgressError

    s = assistant.stream(frame, Q, max_new_tokens=20)
    first = next(s)
    with pytest.raises(GenerationInProgressError, match="still open"):
        assistant.ask(frame, Q, max_new_tokens=4)
    rest = "".join(s)  # the open stream is unharmed and completes
    assert first + rest == assistant.last_answer.text == assistant.ask(frame, Q, max_new_tokens=20).text


def test_stream_validates_options_at_call_time(assistant, frame):
    with pytest.raises(ConfigError):
        assistant.stream(frame, Q, max_new_tokens=0)


def test_text_only_question(assistant):
    ans = assistant.ask(None, "Say hello.", max_new_tokens=6)
    expected_ids = assistant.tokenizer.encode_prompt(assistant.template.prompt([("Say hello.", None)], image=False))
    assert -200 not in expected_ids
    assert ans.timings.vision_ms == 0 and ans.timings.prompt_tokens == len(expected_ids)
    assert len(ans.token_ids) > 0


def test_chat_stream_records_turns(assistant, frame):
    chat = assistant.chat(frame)
    text = "".join(chat.stream("What is in the image?", max_new_tokens=8))
    assert chat.turns == [("What is in the image?", text)] and chat.last_answer.text == text
    second = chat.ask("And the colour?", max_new_tokens=8)
    assert len(chat.turns) == 2 and second.timings.cached_tokens > 0
    chat.reset()
    assert chat.turns == []


def test_on_token_is_called_per_token_and_can_stop_the_answer(assistant, frame):
    full = assistant.ask(frame, Q, max_new_tokens=16)
    assert len(full.token_ids) == 16
    calls: list[tuple[int, str]] = []
    again = assistant.ask(frame, Q, max_new_tokens=16, on_token=lambda n, text: calls.append((n, text)))
    assert again.token_ids == full.token_ids and again.finish_reason == full.finish_reason
    assert [n for n, _ in calls] == list(range(1, 17))  # every token, text or not
    assert all(full.text.startswith(text) for _, text in calls)
    # tokens that add no visible text are announced too: with the whole answer a prefix of a stop string, every
    # token is held back (it could still grow into the stop string) until the answer ends
    held: list[tuple[int, str]] = []
    cut = assistant.ask(frame, Q, max_new_tokens=16, stop=(full.text + "\x00",), on_token=lambda *c: held.append(c))
    assert held == [(n, "") for n in range(1, 17)] and cut.text == full.text and cut.finish_reason == "length"
    # returning True stops before the next token: finish "canceled", real counts and timings
    stopped = assistant.ask(frame, Q, max_new_tokens=16, on_token=lambda n, text: n >= 3)
    assert stopped.finish_reason == "canceled" and stopped.token_ids == full.token_ids[:3]
    assert stopped.timings.new_tokens == 3 and stopped.timings.total_ms >= stopped.timings.ttft_ms > 0
    assert stopped.text == assistant.ask(frame, Q, max_new_tokens=3).text
    # the same through stream(): the pieces join to the canceled answer's text, the session is free again
    pieces = list(assistant.stream(frame, Q, max_new_tokens=16, on_token=lambda n, text: n >= 5))
    assert assistant.last_answer.finish_reason == "canceled" and "".join(pieces) == assistant.last_answer.text
    assert assistant.ask(frame, Q, max_new_tokens=16).token_ids == full.token_ids


def test_a_canceled_answer_is_not_stored_for_frame_reuse(tiny_ckpt, frame):
    a = Assistant.from_pretrained(tiny_ckpt, frame_reuse=True)
    stopped = a.ask(frame, Q, max_new_tokens=12, on_token=lambda n, text: n >= 2)
    assert stopped.finish_reason == "canceled" and len(stopped.token_ids) == 2
    full = a.ask(frame, Q, max_new_tokens=12)
    assert not full.timings.answer_reused and len(full.token_ids) == 12 and full.finish_reason == "length"
    calls: list[int] = []
    replayed = a.ask(frame, Q, max_new_tokens=12, on_token=lambda n, text: calls.append(n))
    assert replayed.timings.answer_reused and replayed.token_ids == full.token_ids and calls == [12]
