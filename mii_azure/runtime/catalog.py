"""The Azure ML model catalog's request and answer shapes on ``/score``.

Deployments from the Azure ML model catalog, and clients written for them (LangChain's Azure ML
content formatters among them), speak these shapes; ``/score`` accepts them beside the native one
(DESIGN.md section 3) and answers in the catalog's shape when asked in it:

===========================================================================  ==========================
request                                                                       answer
===========================================================================  ==========================
``{"input_data": {"input_string": ["text", ...], "parameters": {...}}}``      ``[{"0": "text"}, ...]``
``{"input_data": {"input_string": [...]}, "parameters": {...}}``              the same
``{"inputs": {"input_string": [...]}, "parameters": {...}}``                  the same
``{"input_data": {"columns": [...], "index": [...], "data": [...]}, ...}``    the same
``{"input_data": {"input_string": [{"role": ..., "content": ...}, ...]}}``    ``{"output": "text"}``
===========================================================================  ==========================

The texts are the queries and ``parameters`` are the native parameters; generation answers carry
the generated text (the continuation, or prompt and continuation with ``return_full_text``). A list
of messages is one chat, rendered with the model's chat template. Other tasks answer their
section-3 entries as the list.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

from ..errors import BadRequestError
from ..tasks.base import json_type
from .chat_template import render_chat

__all__ = ["CatalogRequest", "is_catalog_request", "read_catalog_request", "catalog_answer"]

_CONTAINERS = ("input_data", "inputs")


@dataclass(frozen=True)
class CatalogRequest:
    """A catalog-shaped request as the native request it stands for; ``chat`` when it was messages."""

    native: dict[str, Any]
    chat: bool = False


def is_catalog_request(payload: Any) -> bool:
    """Whether a decoded body uses the catalog's shape (an ``input_data`` object, or ``inputs``
    holding ``input_string``) rather than the native ``query``."""
    if not isinstance(payload, Mapping) or "query" in payload:
        return False
    if isinstance(payload.get("input_data"), Mapping):
        return True
    inputs = payload.get("inputs")
    return isinstance(inputs, Mapping) and "input_string" in inputs


def read_catalog_request(payload: Mapping[str, Any], *, tokenizer: Optional[Any] = None) -> CatalogRequest:
    """The native request a catalog-shaped body stands for; BadRequestError says what is wrong."""
    container = next(name for name in _CONTAINERS if isinstance(payload.get(name), Mapping))
    body: Mapping[str, Any] = payload[container]
    extra = sorted(set(payload) - {container, "parameters"})
    if extra:
        raise BadRequestError(
            f"A model catalog request carries '{container}' and 'parameters'; it also has "
            f"{', '.join(map(repr, extra))}. Remove them, or send the native shape {{\"query\": ...}}.",
        )
    parameters = _parameters(payload.get("parameters"), body.get("parameters"), container)
    if "input_string" in body:
        unknown = sorted(set(body) - {"input_string", "parameters"})
        if unknown:
            raise BadRequestError(
                f"'{container}' has field(s) {', '.join(map(repr, unknown))}; it carries 'input_string' "
                "and optionally 'parameters'."
            )
        texts = body["input_string"]
    elif "data" in body:
        texts = _split_orient_texts(body, container)
    else:
        raise BadRequestError(
            f"'{container}' needs 'input_string' (a list of texts) such as "
            '{"input_data": {"input_string": ["some text"], "parameters": {"max_new_tokens": 32}}}.'
        )
    if isinstance(texts, list) and texts and all(isinstance(item, Mapping) for item in texts):
        prompt = render_chat(tokenizer, texts, field=f"{container}.input_string")
        return CatalogRequest({"query": [prompt], "parameters": parameters}, chat=True)
    if not isinstance(texts, list):
        raise BadRequestError(
            f"'{container}.input_string' must be a list of texts, not a JSON {json_type(texts)}."
        )
    return CatalogRequest({"query": texts, "parameters": parameters})


def catalog_answer(answer: Mapping[str, Any], *, chat: bool = False) -> Any:
    """A native ``/score`` answer in the catalog's shape: ``[{"0": text}, ...]`` for generation,
    ``{"output": text}`` for a chat, the entries themselves for other tasks."""
    entries = answer["responses"]
    texts = [entry["generated_text"] for entry in entries if isinstance(entry, Mapping) and "generated_text" in entry]
    if len(texts) != len(entries):
        return list(entries)
    if chat:
        return {"output": texts[0]}
    return [{"0": text} for text in texts]


def _parameters(outer: Any, inner: Any, container: str) -> dict[str, Any]:
    for where, value in (("parameters", outer), (f"{container}.parameters", inner)):
        if value is not None and not isinstance(value, Mapping):
            raise BadRequestError(f"'{where}' must be a JSON object of parameters, not a JSON {json_type(value)}.")
    if outer and inner:
        raise BadRequestError(
            f"Parameters are given twice, in 'parameters' and in '{container}.parameters'; give them once."
        )
    return dict(outer or inner or {})


def _split_orient_texts(body: Mapping[str, Any], container: str) -> list[Any]:
    """The texts of a pandas "split" table (``columns``/``index``/``data``) with one text column."""
    columns = body.get("columns", ["input_string"])
    data = body["data"]
    if not isinstance(columns, list) or len(columns) != 1:
        raise BadRequestError(
            f"'{container}.columns' must name exactly one text column (such as [\"input_string\"]); got {columns!r}."
        )
    if not isinstance(data, list):
        raise BadRequestError(f"'{container}.data' must be a list of rows, not a JSON {json_type(data)}.")
    texts = []
    for index, row in enumerate(data):
        if isinstance(row, list):
            if len(row) != 1:
                raise BadRequestError(f"'{container}.data[{index}]' must hold one value (the text column).")
            row = row[0]
        texts.append(row)
    return texts
