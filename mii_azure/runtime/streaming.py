"""Streamed ``/score`` answers (DESIGN.md section 3a): a started generation and its server-sent events.

The scoring service opens a :class:`ScoreStream` (the first event is pulled at once, so a request
that fails before any text fails as an ordinary JSON error); :class:`SseBody` turns it into the
bytes the inference server sends as they come.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any, Optional

from ..errors import BadRequestError, RequestError, ScoringError
from ..tasks.base import json_type
from .generation import StreamEnd, StreamEvent, TextPiece

__all__ = ["ScoreStream", "SseBody", "SSE_HEADERS", "sse_event", "split_stream_flag"]

logger = logging.getLogger(__name__)

#: Headers of a streamed ``/score`` answer (server-sent events, DESIGN.md section 3a); proxies are
#: asked not to buffer it.
SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class ScoreStream:
    """A streamed generation that has begun: iterate it for the new text as it is made (str pieces).

    Once it is exhausted, :attr:`result` is the answer of DESIGN.md section 3a: ``entry`` (the same
    entry as without streaming), ``task``, ``model``, ``replica`` and ``timing``. A failure after the
    first piece raises its RequestError from ``next``. :meth:`close` gives the generation up (the
    engine frees the sequence); it is called when the stream ends or fails, and may be called again.
    """

    def __init__(self, events: Iterator[StreamEvent], *, about: dict[str, Any], started: float, model_started: float) -> None:
        self._events = events
        self._about = about
        self._started = started
        self._model_started = model_started
        self.result: Optional[dict[str, Any]] = None
        try:  # the first event now, so that a request failing before any text fails here
            self._pending: Optional[StreamEvent] = self._next_event()
        except BaseException:
            self.close()
            raise

    def __iter__(self) -> "ScoreStream":
        return self

    def __next__(self) -> str:
        while self.result is None:
            event = self._pending if self._pending is not None else self._next_event()
            self._pending = None
            if isinstance(event, TextPiece):
                if event.text:
                    return event.text
                continue
            finished = time.perf_counter()
            self.result = {
                "entry": event.entry,
                **self._about,
                "timing": {
                    "total_ms": round((finished - self._started) * 1000, 3),
                    "model_ms": round((finished - self._model_started) * 1000, 3),
                },
            }
            self.close()
        raise StopIteration

    def _next_event(self) -> StreamEvent:
        """The engine's next event; a failure closes the generation before it is raised."""
        try:
            event = next(self._events)
            if not isinstance(event, (TextPiece, StreamEnd)):
                raise ScoringError(f"The engine streamed an unexpected {type(event).__name__}; the server log has the detail.")
            return event
        except StopIteration:
            raise ScoringError("The generation stopped without its final entry; the server log has the detail.") from None
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Give the generation up, if it still runs."""
        close = getattr(self._events, "close", None)
        if close is not None:
            close()


class SseBody:
    """The body of a streamed ``/score`` answer, as server-sent events (DESIGN.md section 3a).

    ``data: {"text": piece}`` per piece of text, then ``data: {"done": true, "entry": ..., "task",
    "model", "replica", "timing"}``, or ``data: {"error": {"code", "message"}}`` when the generation
    fails after its first piece. Each event is one bytes item, for the WSGI server to send at once.
    Closing the body (the client went away, or the server is done with it) closes the generation.
    """

    def __init__(self, stream: ScoreStream) -> None:
        self._stream = stream
        self._finished = False

    def __iter__(self) -> "SseBody":
        return self

    def __next__(self) -> bytes:
        if self._finished:
            raise StopIteration
        try:
            text = next(self._stream)
        except StopIteration:
            self._finished = True
            return sse_event({"done": True, **(self._stream.result or {})})
        except RequestError as exc:
            return self._fail(exc)
        except Exception as exc:  # a 500 as the last event: what failed, never a stack trace
            logger.exception("Streaming failed")
            return self._fail(ScoringError(f"Scoring failed: {type(exc).__name__}: {exc}"))
        return sse_event({"text": text})

    def _fail(self, error: RequestError) -> bytes:
        self.close()
        return sse_event(error.to_body())

    def close(self) -> None:
        """Stop: the generation is given up if it still runs."""
        self._finished = True
        self._stream.close()


def sse_event(payload: dict[str, Any]) -> bytes:
    """One server-sent event carrying ``payload`` as JSON (JSON text never holds a raw newline)."""
    return b"data: " + json.dumps(payload).encode("utf-8") + b"\n\n"


def split_stream_flag(payload: Any) -> tuple[Any, bool]:
    """The request without its top-level ``"stream"`` flag, and the flag (False when absent).

    ``stream`` is not a generation parameter, so it is taken out before the task reads the request.
    """
    if not isinstance(payload, dict):
        return payload, False
    parameters = payload.get("parameters")
    if isinstance(parameters, dict) and "stream" in parameters:
        raise BadRequestError(
            "'stream' goes at the top level of the request, beside 'query', not inside 'parameters': "
            '{"query": "...", "stream": true}.'
        )
    if "stream" not in payload:
        return payload, False
    rest = dict(payload)
    stream = rest.pop("stream")
    if not isinstance(stream, bool):
        raise BadRequestError(f"'stream' must be true or false, not a JSON {json_type(stream)}.")
    return rest, stream
