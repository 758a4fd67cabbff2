"""Choices of one OpenAI generation request, run on the engine through the scoring service.

Each of the ``n`` choices is a one-input request of the engine (with a seed, choice ``i`` draws
from ``seed + i``, so the choices differ and each is reproducible); they join the same running
batch. Streamed, their pieces are read in turn and sent as OpenAI chunks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

from ...errors import RequestError, ScoringError
from ...tasks.base import ScoringRequest
from ..streaming import ScoreStream, sse_event
from . import shapes

if TYPE_CHECKING:
    from ..service import ScoringService

__all__ = ["ChoiceSet", "OpenAIStreamBody", "DONE"]

logger = logging.getLogger(__name__)

#: The event that ends an OpenAI stream.
DONE = b"data: [DONE]\n\n"
_SEEDS = 2**63


@dataclass(frozen=True)
class ChoiceSet:
    """The ``n`` choices of one prompt: the engine requests, and what a finished entry means."""

    prompt: str
    requests: list[ScoringRequest]
    max_new_tokens: int
    prompt_tokens: int
    first_index: int = 0

    @classmethod
    def build(
        cls, service: "ScoringService", prompt: str, parameters: dict[str, Any], *, n: int, prompt_tokens: int, first_index: int = 0
    ) -> "ChoiceSet":
        """Validate ``parameters`` (native text-generation parameters) once per choice."""
        seed = parameters.get("seed")
        requests = []
        for offset in range(n):
            chosen = dict(parameters)
            if seed is not None:
                chosen["seed"] = (seed + offset) % _SEEDS
            requests.append(ScoringRequest(inputs=[prompt], parameters=service.task_cls.parse_parameters(chosen)))
        return cls(prompt, requests, int(parameters["max_new_tokens"]), prompt_tokens, first_index)

    def choice(self, offset: int, entry: dict[str, Any], *, echo: bool = False) -> shapes.Choice:
        """The OpenAI choice of a finished entry; ``length`` when it used all its new tokens."""
        tokens = int(entry["num_tokens"])
        reason = "length" if tokens >= self.max_new_tokens else "stop"
        text = entry["generated_text"]
        return shapes.Choice(self.first_index + offset, self.prompt + text if echo else text, reason, tokens)

    def run(self, service: "ScoringService", *, echo: bool = False) -> list[shapes.Choice]:
        """Every choice, whole (raises the first failure's RequestError)."""
        if len(self.requests) == 1:
            entry = service.score_request(self.requests[0])["responses"][0]
            return [self.choice(0, entry, echo=echo)]
        streams = self.open(service)
        try:
            for _ in interleave(streams):
                pass
        finally:
            for stream in streams:
                stream.close()
        return [self.choice(offset, stream.result["entry"], echo=echo) for offset, stream in enumerate(streams)]

    def open(self, service: "ScoringService") -> list[ScoreStream]:
        """Start every choice as a stream (a failure before the first piece closes those begun)."""
        streams: list[ScoreStream] = []
        try:
            for request in self.requests:
                streams.append(service.open_stream_request(request))
        except BaseException:
            for stream in streams:
                stream.close()
            raise
        return streams


def interleave(streams: Sequence[ScoreStream]) -> Iterator[tuple[int, Optional[str]]]:
    """``(offset, piece)`` from each stream in turn, and ``(offset, None)`` once that one is done."""
    active = list(range(len(streams)))
    while active:
        for offset in list(active):
            try:
                yield offset, next(streams[offset])
            except StopIteration:
                active.remove(offset)
                yield offset, None


class OpenAIStreamBody:
    """Server-sent events of a streamed OpenAI answer: chunks, then ``data: [DONE]``.

    ``chat`` chunks carry ``delta`` objects (the first of each choice its role), completion chunks
    ``text``; each choice ends with a chunk carrying its ``finish_reason``, and with
    ``include_usage`` a last chunk carries the token counts. A failure after the first chunk is an
    ``error`` event before ``[DONE]``. Closing the body gives up the generations.
    """

    def __init__(
        self, sets: Sequence[ChoiceSet], streams: Sequence[Sequence[ScoreStream]], *, model: str, chat: bool,
        include_usage: bool, echo: bool = False, on_close: Optional[Callable[[], None]] = None,
    ) -> None:
        self._sets = list(sets)
        self._streams = [list(group) for group in streams]
        self._model = model
        self._chat = chat
        self._include_usage = include_usage
        self._echo = echo
        self._on_close = on_close
        self._id = shapes.new_id("chatcmpl" if chat else "cmpl")
        self._created = int(time.time())
        self._events = self._generate()
        self._closed = False

    def __iter__(self) -> "OpenAIStreamBody":
        return self

    def __next__(self) -> bytes:
        if self._closed:
            raise StopIteration
        try:
            return next(self._events)
        except StopIteration:
            self.close()
            raise
        except RequestError as exc:
            return self._fail(exc)
        except Exception as exc:  # a 500 as the last event: what failed, never a stack trace
            logger.exception("Streaming failed")
            return self._fail(ScoringError(f"Scoring failed: {type(exc).__name__}: {exc}"))

    def close(self) -> None:
        """Stop: generations still running are given up."""
        if self._closed:
            return
        self._closed = True
        for group in self._streams:
            for stream in group:
                stream.close()
        if self._on_close is not None:
            self._on_close()

    def _fail(self, error: RequestError) -> bytes:
        self._events = iter([DONE])
        for group in self._streams:
            for stream in group:
                stream.close()
        return sse_event(shapes.error_body(error))

    def _generate(self) -> Iterator[bytes]:
        completion_tokens = 0
        prompt_tokens = sum(choice_set.prompt_tokens for choice_set in self._sets)
        for choice_set, streams in zip(self._sets, self._streams):
            for offset in range(len(streams)):
                if self._chat:
                    yield self._chunk(choice_set.first_index + offset, {"role": "assistant", "content": ""}, None)
                elif self._echo:
                    yield self._chunk(choice_set.first_index + offset, choice_set.prompt, None)
            for offset, piece in interleave(streams):
                index = choice_set.first_index + offset
                if piece is not None:
                    yield self._chunk(index, {"content": piece} if self._chat else piece, None)
                    continue
                choice = choice_set.choice(offset, streams[offset].result["entry"])
                completion_tokens += choice.tokens
                yield self._chunk(index, {} if self._chat else "", choice.finish_reason)
        if self._include_usage:
            obj = "chat.completion.chunk" if self._chat else "text_completion"
            yield sse_event(shapes.usage_chunk(self._id, self._model, self._created, obj, prompt_tokens, completion_tokens))
        yield DONE

    def _chunk(self, index: int, content: Any, finish_reason: Optional[str]) -> bytes:
        if self._chat:
            chunk = shapes.chat_chunk(
                self._id, self._model, self._created, index, content, finish_reason, with_usage=self._include_usage
            )
        else:
            chunk = shapes.completion_chunk(
                self._id, self._model, self._created, index, content, finish_reason, with_usage=self._include_usage
            )
        return sse_event(chunk)
