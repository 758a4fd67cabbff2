"""A sequence's text as tokens arrive: end of text, stop sequences, and the pieces safe to stream.

A piece is released only when it can no longer change: never a partial UTF-8 character (the
decoder shows one as U+FFFD), and never text that might be the start of a stop sequence (the stop
and what follows it are cut from the answer). So the pieces put together are exactly the final text.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

__all__ = ["SequenceText"]

logger = logging.getLogger(__name__)

_INCOMPLETE = "\ufffd"


class SequenceText:
    """Tracks one sequence's generated tokens and text."""

    def __init__(self, tokenizer: Any, *, end_of_text: Collection[int], stops: list[str]) -> None:
        self._tokenizer = tokenizer
        self._end_of_text = end_of_text
        self._stops = stops
        self.tokens: list[int] = []
        self.text = ""
        self.finished = False
        self._released = ""

    @property
    def num_tokens(self) -> int:
        """Tokens generated so far, a stop sequence's included, end-of-text not."""
        return len(self.tokens)

    def add(self, token: int) -> None:
        """Take the next generated token; :attr:`finished` turns true at end of text or a stop."""
        if self.finished:
            return
        if token in self._end_of_text:
            self.finished = True
            return
        self.tokens.append(token)
        text = self._tokenizer.decode(self.tokens, skip_special_tokens=True)
        for stop in self._stops:
            position = text.find(stop)
            if position != -1:
                text = text[:position]
                self.finished = True
        self.text = text

    def release(self) -> str:
        """Text that became final since the last call ('' when none did)."""
        if not self.text.startswith(self._released):
            # Decoding more tokens changed text already sent (a tokenizer that cleans up spaces):
            # what was sent stays, and the rest follows it.
            logger.warning("Decoded text changed after streaming it; the stream keeps what it sent.")
            self.text = self._released + self.text[len(self._released) :]
        end = len(self.text) if self.finished else self._stable_end()
        if end <= len(self._released):
            return ""
        piece = self.text[len(self._released) : end]
        self._released += piece
        return piece

    def finish(self) -> str:
        """Mark the sequence done (its token budget is spent) and return the text not yet released."""
        self.finished = True
        return self.release()

    def _stable_end(self) -> int:
        text = self.text
        end = len(text)
        if end and text[end - 1] == _INCOMPLETE:
            # Only the last bytes can still become a character: the decoder shows an unfinished
            # UTF-8 sequence at the end as one U+FFFD, while earlier ones are invalid for good.
            end -= 1
        for stop in self._stops:  # hold back a tail that could grow into a stop sequence
            for size in range(min(len(stop) - 1, end), 0, -1):
                if text[end - size : end] == stop[:size]:
                    end -= size
                    break
        return end
