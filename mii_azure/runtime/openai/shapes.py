"""OpenAI's answer shapes: completions, chat completions, their stream chunks, embeddings, models,
and the error body ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

import base64
import struct
import time
import uuid
from collections.abc import Sequence
from typing import Any, Optional

from ...errors import RequestError

__all__ = [
    "Choice",
    "usage",
    "completion",
    "chat_completion",
    "completion_chunk",
    "chat_chunk",
    "usage_chunk",
    "embeddings",
    "model_card",
    "error_body",
    "new_id",
    "OWNER",
]

#: ``owned_by`` of the served model, and the provider name of ``/info``.
OWNER = "mii_azure"


class Choice:
    """One generated choice: its index, text, finish reason (``stop`` or ``length``) and token count."""

    __slots__ = ("index", "text", "finish_reason", "tokens")

    def __init__(self, index: int, text: str, finish_reason: str, tokens: int) -> None:
        self.index = index
        self.text = text
        self.finish_reason = finish_reason
        self.tokens = tokens


def new_id(prefix: str) -> str:
    """A fresh response id such as ``chatcmpl-3f2a...``."""
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """The ``usage`` object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion(response_id: str, model: str, choices: Sequence[Choice], prompt_tokens: int) -> dict[str, Any]:
    """A ``text_completion`` answer."""
    return {
        "id": response_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": c.index, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason} for c in choices
        ],
        "usage": usage(prompt_tokens, sum(c.tokens for c in choices)),
    }


def chat_completion(response_id: str, model: str, choices: Sequence[Choice], prompt_tokens: int) -> dict[str, Any]:
    """A ``chat.completion`` answer."""
    return {
        "id": response_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": c.index,
                "message": {"role": "assistant", "content": c.text},
                "logprobs": None,
                "finish_reason": c.finish_reason,
            }
            for c in choices
        ],
        "usage": usage(prompt_tokens, sum(c.tokens for c in choices)),
    }


def completion_chunk(
    response_id: str, model: str, created: int, index: int, text: str, finish_reason: Optional[str], *, with_usage: bool
) -> dict[str, Any]:
    """One streamed ``text_completion`` chunk."""
    chunk = {
        "id": response_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}],
    }
    if with_usage:
        chunk["usage"] = None
    return chunk


def chat_chunk(
    response_id: str, model: str, created: int, index: int, delta: dict[str, Any], finish_reason: Optional[str], *, with_usage: bool
) -> dict[str, Any]:
    """One streamed ``chat.completion.chunk``."""
    chunk = {
        "id": response_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }
    if with_usage:
        chunk["usage"] = None
    return chunk


def usage_chunk(response_id: str, model: str, created: int, obj: str, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    """The last chunk of a stream asked for ``include_usage``: no choices, the token counts."""
    return {
        "id": response_id,
        "object": obj,
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def embeddings(model: str, vectors: Sequence[Sequence[float]], prompt_tokens: int, encoding_format: str) -> dict[str, Any]:
    """An embeddings answer; ``base64`` packs each vector as little-endian float32, as OpenAI does."""
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": index, "embedding": _encoded(vector, encoding_format)}
            for index, vector in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def model_card(model: str, created: int) -> dict[str, Any]:
    """One entry of ``/v1/models``."""
    return {"id": model, "object": "model", "created": created, "owned_by": OWNER}


_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
          405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
          503: "server_error", 504: "timeout_error", 500: "server_error"}


def error_body(error: RequestError, *, code: Optional[str] = None) -> dict[str, Any]:
    """OpenAI's error body for ``error``: its message, a type by status, the field at fault."""
    param = error.facts.get("param")
    return {
        "error": {
            "message": error.message,
            "type": _TYPES.get(error.status, "invalid_request_error" if error.status < 500 else "server_error"),
            "param": param if isinstance(param, str) else None,
            "code": code or error.facts.get("openai_code") or error.code,
        }
    }


def _encoded(vector: Sequence[float], encoding_format: str) -> Any:
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return list(vector)
