"""question-answering: extract the span of a context that answers a question.

Query: ``{"question": str, "context": str}`` or a list of such objects; the legacy DeepSpeed-MII
shape puts ``question`` and ``context`` at the top level of the request. Over gRPC the inputs are
two tensors, ``question`` and ``context``. Entry: ``{"answer", "score", "start", "end"}`` with
character offsets into the context. Contexts longer than the model accepts are read in
overlapping windows; only the question itself must fit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import Field

from ..errors import BadRequestError, PayloadTooLargeError
from .base import Deadline, TaskParameters, json_type, parse_text_query
from ._text import TextModelTask

__all__ = ["QuestionAnswering", "QuestionContext"]


@dataclass(frozen=True)
class QuestionContext:
    """One question about one context."""

    question: str
    context: str


class QuestionAnsweringParameters(TaskParameters):
    """``max_answer_length``: longest answer in tokens (default 30)."""

    max_answer_length: int = Field(30, ge=1, le=512)


class QuestionAnswering(TextModelTask):
    """Answer questions by pointing into a context."""

    name = "question-answering"
    parameters_model = QuestionAnsweringParameters
    input_names = ("question", "context")

    auto_class = "AutoModelForQuestionAnswering"

    @classmethod
    def example_request(cls) -> str:
        return '{"query": {"question": "Who?", "context": "Ada wrote it."}}'

    @classmethod
    def _pop_query(cls, body: dict[str, Any]) -> Any:
        if "query" not in body and ("question" in body or "context" in body):
            return {"question": body.pop("question", None), "context": body.pop("context", None)}
        return super()._pop_query(body)

    @classmethod
    def parse_query(cls, query: Any) -> list[Any]:
        items = [query] if isinstance(query, dict) else query
        if not isinstance(items, list):
            raise BadRequestError(
                "'query' must be an object {\"question\": ..., \"context\": ...} or a list of such objects, "
                f"not a JSON {json_type(query)}."
            )
        if not items:
            raise BadRequestError("'query' is empty; send at least one question with its context.")
        parsed = []
        for index, item in enumerate(items):
            where = "query" if isinstance(query, dict) else f"query[{index}]"
            if not isinstance(item, dict):
                raise BadRequestError(
                    f"'{where}' must be an object with 'question' and 'context', not a JSON {json_type(item)}."
                )
            unknown = sorted(set(item) - {"question", "context"})
            if unknown:
                raise BadRequestError(f"'{where}' has unknown fields {unknown}; only 'question' and 'context'.")
            question, context = (_one_string(item.get(field), f"{where}.{field}") for field in ("question", "context"))
            parsed.append(QuestionContext(question, context))
        return parsed

    @classmethod
    def inputs_from_tensors(cls, tensors: Mapping[str, Sequence[str]]) -> list[Any]:
        questions, contexts = list(tensors.get("question", [])), list(tensors.get("context", []))
        if len(questions) != len(contexts):
            raise BadRequestError(
                f"Tensors 'question' ({len(questions)}) and 'context' ({len(contexts)}) must have the same length."
            )
        return cls.parse_query([{"question": q, "context": c} for q, c in zip(questions, contexts)])

    @property
    def sample_inputs(self) -> list[Any]:
        return [QuestionContext("Who wrote it?", "Ada wrote it.")]

    def check(self, inputs: list[QuestionContext], parameters: TaskParameters) -> None:  # type: ignore[override]
        # The question plus special tokens must leave room for a window of context.
        limit = self.max_input_tokens // 2
        counts = self.token_counts([item.question for item in inputs])
        for index, count in enumerate(counts):
            if count > limit:
                where = "query" if len(inputs) == 1 else f"query[{index}]"
                raise PayloadTooLargeError(
                    f"'{where}.question' is {count} tokens long; questions may be at most {limit} tokens "
                    f"(half of {self.facts.name}'s {self.max_input_tokens}-token input). Shorten the question.",
                    tokens=count,
                    limit=limit,
                    index=index,
                )

    def predict(self, inputs: list[QuestionContext], parameters: QuestionAnsweringParameters, deadline: Deadline) -> list[Any]:  # type: ignore[override]
        encoded = self.tokenizer(
            [item.question for item in inputs],
            [item.context for item in inputs],
            truncation="only_second",
            max_length=self.max_input_tokens,
            stride=min(128, self.max_input_tokens // 4),
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
            padding=True,
            return_tensors="pt",
        )
        window_owner = encoded.pop("overflow_to_sample_mapping").tolist()
        offsets = encoded.pop("offset_mapping").tolist()
        model_inputs = {key: value.to(self.device) for key, value in encoded.items()}
        with torch.inference_mode():
            output = self.model(**model_inputs)
        best: dict[int, dict[str, Any]] = {}
        for window, owner in enumerate(window_owner):
            in_context = torch.tensor([sid == 1 for sid in encoded.sequence_ids(window)], device=self.device)
            candidate = _best_span(
                output.start_logits[window].float(),
                output.end_logits[window].float(),
                in_context,
                parameters.max_answer_length,
            )
            if candidate is None:
                continue
            score, start_token, end_token = candidate
            if owner not in best or score > best[owner]["score"]:
                start, end = offsets[window][start_token][0], offsets[window][end_token][1]
                context = inputs[owner].context
                best[owner] = {"answer": context[start:end], "score": score, "start": start, "end": end}
        return [best.get(owner, {"answer": "", "score": 0.0, "start": 0, "end": 0}) for owner in range(len(inputs))]


def _one_string(value: Any, where: str) -> str:
    if value is None:
        raise BadRequestError(
            f"'{where.rsplit('.', 1)[0]}' has no '{where.rsplit('.', 1)[1]}'; question-answering needs both a "
            "question and the context to find the answer in."
        )
    if not isinstance(value, str):
        raise BadRequestError(f"'{where}' must be a string, not a JSON {json_type(value)}.")
    return parse_text_query(value, field=where)[0]


def _best_span(
    start_logits: torch.Tensor, end_logits: torch.Tensor, in_context: torch.Tensor, max_length: int
) -> tuple[float, int, int] | None:
    """Highest-probability (start <= end < start + max_length) span inside the context."""
    if not bool(in_context.any()):
        return None
    masked = torch.finfo(start_logits.dtype).min
    start_p = start_logits.masked_fill(~in_context, masked).softmax(-1)
    end_p = end_logits.masked_fill(~in_context, masked).softmax(-1)
    scores = start_p[:, None] * end_p[None, :]
    length = scores.shape[0]
    positions = torch.arange(length, device=scores.device)
    offset = positions[None, :] - positions[:, None]
    valid = (offset >= 0) & (offset < max_length) & in_context[:, None] & in_context[None, :]
    scores = scores.masked_fill(~valid, 0.0)
    flat = int(scores.argmax())
    return float(scores.view(-1)[flat]), flat // length, flat % length
