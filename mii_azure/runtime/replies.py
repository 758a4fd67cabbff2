"""What every HTTP door of the serving process answers with: an :class:`HttpReply`."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = ["HttpReply"]


@dataclass(frozen=True)
class HttpReply:
    """Status, body and extra headers of one HTTP answer of the serving process.

    ``body`` is a JSON value, sent as JSON. A streamed answer has ``stream`` instead: its
    server-sent events, encoded, to send as they come; closing it (``stream.close()``) gives up the
    generation. ``content`` is a body sent as is (its ``Content-Type`` in ``headers``).
    """

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    stream: Optional[Iterator[bytes]] = None
    content: Optional[bytes] = None
