"""Chat templates of the original code base (llava_phi/conversation.py), reproduced exactly.

`phi_v0` (conv_phi_v0) is vicuna_v1 with `</s>` replaced by `<|endoftext|>`:

    "{system} USER: <image>\\n{q1} ASSISTANT: {a1}<|endoftext|>USER: {q2} ASSISTANT:"

`plain` (stage-1 pretraining): "<image>" + caption + "\\n".
"""

from __future__ import annotations

from dataclasses import dataclass

from lphi_edge.errors import ConfigError, PromptError

IMAGE_PLACEHOLDER = "<image>"
PHI_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


@dataclass(frozen=True)
class Template:
    """A two-role chat template with LLaVA's SeparatorStyle.TWO / PLAIN rendering.

    Attributes:
        name: registry key (`phi_v0`, `plain`).
        system: system prompt, prepended once.
        roles: (user, assistant) role names.
        sep: separator after a user message (and after the system prompt).
        sep2: separator after an assistant message (the end-of-turn token).
        plain: PLAIN style: no system, no roles, every message followed by `sep`.
    """

    name: str
    system: str
    roles: tuple[str, str]
    sep: str
    sep2: str
    plain: bool = False

    def render(self, messages: list[tuple[int, str | None]]) -> str:
        """Render [(role_index, text | None)]; a trailing None opens the next assistant turn."""
        if self.plain:
            return "".join((text or "") + self.sep for _, text in messages if text)
        seps = (self.sep, self.sep2)
        out = self.system + seps[0]
        for i, (role, text) in enumerate(messages):
            name = self.roles[role]
            out += f"{name}: {text}{seps[i % 2]}" if text else f"{name}:"
        return out

    def prompt(self, turns: list[tuple[str, str | None]], *, image: bool = True) -> str:
        """Multi-turn prompt: [(question, answer or None for the open turn)].

        The image placeholder goes at the start of the first question, as in LLaVA's loaders.
        """
        if not turns:
            raise PromptError("no question given: expected at least one user turn")
        messages: list[tuple[int, str | None]] = []
        for k, (question, answer) in enumerate(turns):
            question = check_question(question)
            if k == 0 and image and not self.plain:
                question = f"{IMAGE_PLACEHOLDER}\n{question}"
            messages.append((0, question))
            if answer is not None or k == len(turns) - 1:
                messages.append((1, answer))
        if self.plain:
            return IMAGE_PLACEHOLDER + self.render(messages[1:]) if image else self.render(messages[1:])
        return self.render(messages)


def check_question(question: str) -> str:
    if not isinstance(question, str):
        raise PromptError(f"prompt must be a string, got {type(question).__name__}")
    if not question.strip():
        raise PromptError("prompt is empty: expected a question or instruction about the image")
    if IMAGE_PLACEHOLDER in question:
        raise PromptError(f"prompt must not contain {IMAGE_PLACEHOLDER!r}: the image is placed by the template")
    return question


TEMPLATES: dict[str, Template] = {
    "phi_v0": Template("phi_v0", PHI_SYSTEM, ("USER", "ASSISTANT"), " ", "<|endoftext|>"),
    "plain": Template("plain", "", ("", ""), "\n", "\n", plain=True),
}


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ConfigError(f"unknown chat template {name!r}: expected one of {sorted(TEMPLATES)}") from None
