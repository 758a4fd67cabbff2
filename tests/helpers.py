"""HTTP helpers for tests that talk to a real server."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any


@dataclass
class HttpAnswer:
    status: int
    body: Any
    headers: dict[str, str]


def post(url: str, body: bytes, *, content_type: str = "application/json", timeout: float = 120) -> HttpAnswer:
    """POST raw bytes and decode the JSON answer, whatever its status."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return HttpAnswer(response.status, json.loads(response.read()), dict(response.headers))
    except urllib.error.HTTPError as error:
        return HttpAnswer(error.code, json.loads(error.read()), dict(error.headers))


def post_json(url: str, payload: Any, **kwargs: Any) -> HttpAnswer:
    return post(url, json.dumps(payload).encode("utf-8"), **kwargs)
