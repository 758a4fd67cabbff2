"""text-classification and token-classification.

text-classification entry: ``[{"label": str, "score": float}, ...]``, best first, ``top_k`` long.
token-classification entry: ``[{"entity_group", "score", "word", "start", "end"}, ...]``: consecutive
tokens of the same entity type grouped (B-/I- prefixes understood), "O" tokens left out.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from pydantic import Field

from ..errors import BadRequestError
from .base import Deadline, TaskParameters
from ._text import TextModelTask

__all__ = ["TextClassification", "TokenClassification"]


class TextClassificationParameters(TaskParameters):
    """``top_k``: how many labels to return, best first (default 1)."""

    top_k: int = Field(1, ge=1)


class TextClassification(TextModelTask):
    """Label a whole text (sentiment, topic...)."""

    name = "text-classification"
    parameters_model = TextClassificationParameters
    auto_class = "AutoModelForSequenceClassification"

    @property
    def sample_inputs(self) -> list[Any]:
        return ["Hello world"]

    def check(self, inputs: list[str], parameters: TextClassificationParameters) -> None:  # type: ignore[override]
        labels = self.model.config.num_labels
        if parameters.top_k > labels:
            raise BadRequestError(
                f"Invalid parameter 'top_k': {parameters.top_k} is more than the model's {labels} labels.",
                top_k=parameters.top_k,
                labels=labels,
            )
        self.check_lengths(inputs)

    def predict(self, inputs: list[str], parameters: TextClassificationParameters, deadline: Deadline) -> list[Any]:  # type: ignore[override]
        with torch.inference_mode():
            logits = self.model(**self.encode(inputs)).logits.float()
        if self.model.config.problem_type == "multi_label_classification":
            scores = logits.sigmoid()
        else:
            scores = logits.softmax(dim=-1)
        best = scores.topk(parameters.top_k, dim=-1)
        id2label = self.model.config.id2label
        return [
            [{"label": id2label[index], "score": score} for score, index in zip(row_scores, row_indices)]
            for row_scores, row_indices in zip(best.values.tolist(), best.indices.tolist())
        ]


class TokenClassificationParameters(TaskParameters):
    """``ignore_labels``: labels left out of the answer (default ``["O"]``)."""

    ignore_labels: list[str] = ["O"]


class TokenClassification(TextModelTask):
    """Find entities (people, places...) in a text, with their character offsets."""

    name = "token-classification"
    parameters_model = TokenClassificationParameters
    auto_class = "AutoModelForTokenClassification"

    @property
    def sample_inputs(self) -> list[Any]:
        return ["Hello world"]

    def check(self, inputs: list[str], parameters: TaskParameters) -> None:
        self.check_lengths(inputs)

    def predict(self, inputs: list[str], parameters: TokenClassificationParameters, deadline: Deadline) -> list[Any]:  # type: ignore[override]
        encoded = self.encode(inputs, return_offsets_mapping=True, return_special_tokens_mask=True)
        offsets = encoded.pop("offset_mapping").tolist()
        special = encoded.pop("special_tokens_mask").tolist()
        with torch.inference_mode():
            probabilities = self.model(**encoded).logits.float().softmax(dim=-1)
        best = probabilities.max(dim=-1)
        id2label = self.model.config.id2label
        ignored = set(parameters.ignore_labels)
        entries = []
        for row, text in enumerate(inputs):
            tokens = [
                (id2label[label], score, start, end)
                for label, score, (start, end), is_special, mask in zip(
                    best.indices[row].tolist(),
                    best.values[row].tolist(),
                    offsets[row],
                    special[row],
                    encoded["attention_mask"][row].tolist(),
                )
                if mask and not is_special and end > start
            ]
            entries.append(_group_entities(text, tokens, ignored))
        return entries


def _group_entities(
    text: str, tokens: list[tuple[str, float, int, int]], ignored: set[str]
) -> list[dict[str, Any]]:
    """Merge consecutive tokens of one entity type into groups (the "simple" strategy)."""
    groups: list[dict[str, Any]] = []
    current: Optional[dict[str, Any]] = None
    for label, score, start, end in tokens:
        if label in ignored:
            current = None
            continue
        prefix, _, entity = label.partition("-") if label[:2] in ("B-", "I-") else ("", "", label)
        continues = current is not None and current["entity_group"] == entity and prefix != "B"
        if continues:
            current["scores"].append(score)
            current["end"] = end
        else:
            current = {"entity_group": entity, "scores": [score], "start": start, "end": end}
            groups.append(current)
    return [
        {
            "entity_group": group["entity_group"],
            "score": sum(group["scores"]) / len(group["scores"]),
            "word": text[group["start"] : group["end"]],
            "start": group["start"],
            "end": group["end"],
        }
        for group in groups
    ]
