"""Token-level generation for decoder-only models: continuous batching and streaming."""

from .events import StreamEnd, StreamEvent, TextPiece

__all__ = ["StreamEnd", "StreamEvent", "TextPiece"]
