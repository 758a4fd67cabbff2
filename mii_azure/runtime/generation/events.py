"""What a streamed generation yields: pieces of new text as they are made, then the whole entry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

__all__ = ["TextPiece", "StreamEnd", "StreamEvent"]


@dataclass(frozen=True)
class TextPiece:
    """New text of one sequence: whole characters, never cut by a stop sequence later."""

    text: str


@dataclass(frozen=True)
class StreamEnd:
    """The sequence is done; ``entry`` is its DESIGN.md section-3 entry (the same as without streaming)."""

    entry: dict[str, Any]


StreamEvent = Union[TextPiece, StreamEnd]
