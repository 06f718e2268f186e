"""lphi-edge: LLaVA-Phi from training to a robot.

    from lphi_edge import Assistant
    a = Assistant.from_pretrained("path/to/checkpoint")
    print(a.ask("frame.png", "What is in front of the robot?").text)

Importing the package is cheap: torch is imported only when the torch backend is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lphi_edge._version import __version__
from lphi_edge.errors import LphiError

__all__ = ["Answer", "Assistant", "Chat", "GenerationConfig", "LphiError", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from lphi_edge.assistant import Answer, Assistant, Chat
    from lphi_edge.runtime.generation import GenerationConfig


def __getattr__(name: str):
    if name in ("Answer", "Assistant", "Chat"):
        from lphi_edge import assistant

        return getattr(assistant, name)
    if name == "GenerationConfig":
        from lphi_edge.runtime.generation import GenerationConfig

        return GenerationConfig
    raise AttributeError(f"module 'lphi_edge' has no attribute {name!r}")
