"""OpenAI request bodies: the fields served, those accepted and ignored, and those refused.

A field that would change the answer but is not served (``logit_bias``, ``tools``, non-zero
penalties, ...) is refused with a 400 naming it; fields that do not change the answer (``user``,
``store``, ``metadata``, ...) are accepted; a field OpenAI does not define is refused, as OpenAI does.
``top_k`` and ``repetition_penalty`` are served as extensions, as other serving engines do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ...errors import BadRequestError
from ...tasks.base import json_type

__all__ = [
    "CompletionRequest",
    "ChatCompletionRequest",
    "EmbeddingRequest",
    "StreamOptions",
    "parse_body",
]


class StreamOptions(BaseModel):
    """``stream_options``: ``include_usage`` adds a last chunk with the token counts."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    include_usage: bool = False
    include_obfuscation: Optional[bool] = None  # a transport detail of OpenAI's; nothing to obfuscate here


class _GenerationRequest(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    model: Optional[str] = None
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    stop: Optional[Union[str, list[str]]] = None
    seed: Optional[int] = None
    user: Optional[str] = None
    top_k: Optional[int] = Field(None, ge=0)
    repetition_penalty: Optional[float] = Field(None, gt=0, le=100)

    def stop_list(self) -> list[str]:
        """The stop sequences as a list (empty strings dropped)."""
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [stop for stop in stops if stop]


class CompletionRequest(_GenerationRequest):
    """``POST /v1/completions``: ``prompt`` is one text or a list of texts (one choice set each)."""

    prompt: Union[str, list[str]]
    echo: bool = False
    max_tokens: Optional[int] = Field(16, ge=1)  # OpenAI's default for completions


class ChatCompletionRequest(_GenerationRequest):
    """``POST /v1/chat/completions``: ``messages`` rendered with the model's chat template."""

    messages: list[Any]
    max_completion_tokens: Optional[int] = Field(None, ge=1)

    def token_limit(self) -> Optional[int]:
        """``max_completion_tokens`` (what current clients send), else ``max_tokens``."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class EmbeddingRequest(BaseModel):
    """``POST /v1/embeddings``: ``input`` is one text or a list of texts."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    input: Union[str, list[str]]
    model: Optional[str] = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Optional[int] = Field(None, ge=1)
    user: Optional[str] = None


def _unset(value: Any) -> bool:
    return value is None


def _off(default: Any) -> Callable[[Any], bool]:
    return lambda value: value is None or value == default


def _empty(value: Any) -> bool:
    return value is None or value == {} or value == [] or value == ""


#: Fields accepted whatever their value: they do not change the answer.
_HARMLESS = {
    "store", "metadata", "service_tier", "parallel_tool_calls", "prompt_cache_key", "safety_identifier",
}
#: Fields refused unless they hold the value that changes nothing.
_NEUTRAL_ONLY: dict[str, Callable[[Any], bool]] = {
    "logit_bias": _empty,
    "frequency_penalty": _off(0),
    "presence_penalty": _off(0),
    "logprobs": lambda value: value is None or value is False,
    "top_logprobs": _off(0),
    "tools": _empty,
    "functions": _empty,
    "tool_choice": lambda value: value is None or value == "none",
    "function_call": lambda value: value is None or value == "none",
    "response_format": lambda value: value is None or value == {"type": "text"},
    "modalities": lambda value: value is None or value == ["text"],
    "audio": _unset,
    "prediction": _unset,
    "web_search_options": _unset,
    "reasoning_effort": _unset,
    "verbosity": _unset,
    "suffix": _empty,
    "best_of": _unset,  # checked against n below
}
_WHAT = {
    "logit_bias": "token biases",
    "frequency_penalty": "frequency penalties",
    "presence_penalty": "presence penalties",
    "logprobs": "log probabilities",
    "top_logprobs": "log probabilities",
    "tools": "tool calls",
    "functions": "function calls",
    "tool_choice": "tool calls",
    "function_call": "function calls",
    "response_format": "structured output",
    "suffix": "insertion (suffix)",
}


def parse_body(model: type[BaseModel], payload: Any, route: str) -> Any:
    """Validate a decoded body against ``model``; BadRequestError (with ``param``) says what is wrong."""
    if not isinstance(payload, Mapping):
        raise BadRequestError(f"The body of {route} must be a JSON object, not a JSON {json_type(payload)}.")
    try:
        request = model.model_validate(dict(payload))
    except ValidationError as exc:
        raise _invalid(exc) from None
    _check_extra_fields(request, route)
    return request


def _check_extra_fields(request: BaseModel, route: str) -> None:
    extra = dict(request.model_extra or {})
    best_of = extra.pop("best_of", None)
    if best_of is not None and best_of != getattr(request, "n", 1):
        raise BadRequestError(
            f"'best_of'={best_of!r} is not served: this deployment returns every choice it makes; "
            "leave best_of out (or equal to n).",
            param="best_of",
        )
    for name, value in extra.items():
        if name in _HARMLESS:
            continue
        neutral = _NEUTRAL_ONLY.get(name)
        if neutral is None:
            raise BadRequestError(
                f"Unrecognized request argument supplied to {route}: '{name}'. Remove it.", param=name
            )
        if not neutral(value):
            what = _WHAT.get(name, f"'{name}'")
            raise BadRequestError(
                f"'{name}' is not served by this deployment ({what} would change the answer and are not "
                "implemented); leave it out or at its default.",
                param=name,
            )


def _invalid(exc: ValidationError) -> BadRequestError:
    error = exc.errors()[0]
    location = [str(part) for part in error["loc"] if not str(part).startswith(("function-", "union["))]
    param = location[0] if location else None
    path = ".".join(location)
    if error["type"] == "missing":
        return BadRequestError(f"Missing required parameter: '{path}'.", param=param)
    got = error.get("input")
    shown = f" (got a JSON {json_type(got)}: {got!r})" if not isinstance(got, (dict, list)) else f" (got a JSON {json_type(got)})"
    return BadRequestError(f"Invalid value for '{path}': {error['msg'].lower()}{shown}.", param=param)
