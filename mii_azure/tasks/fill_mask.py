"""fill-mask: predict the token hidden behind the tokenizer's mask token.

Entry: ``[{"token_str": str, "score": float, "sequence": str}, ...]``, best first. Each input holds
exactly one mask token (``[MASK]`` for BERT, ``<mask>`` for RoBERTa).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from ..errors import BadRequestError
from .base import Deadline, TaskParameters
from ._text import TextModelTask

__all__ = ["FillMask"]


class FillMaskParameters(TaskParameters):
    """``top_k``: how many candidate tokens to return, best first (default 5)."""

    top_k: int = Field(5, ge=1, le=1000)


class FillMask(TextModelTask):
    """Guess a masked word from its context."""

    name = "fill-mask"
    parameters_model = FillMaskParameters
    auto_class = "AutoModelForMaskedLM"

    @property
    def sample_inputs(self) -> list[Any]:
        return [f"Hello {self.tokenizer.mask_token}."]

    def check(self, inputs: list[str], parameters: TaskParameters) -> None:
        mask = self.tokenizer.mask_token
        for index, text in enumerate(inputs):
            found = text.count(mask)
            if found != 1:
                where = "'query'" if len(inputs) == 1 else f"'query[{index}]'"
                raise BadRequestError(
                    f"{where} must contain the mask token {mask} exactly once (found {found}); put {mask} "
                    "where the word to predict goes.",
                    mask_token=mask,
                    found=found,
                    index=index,
                )
        self.check_lengths(inputs)

    def predict(self, inputs: list[str], parameters: FillMaskParameters, deadline: Deadline) -> list[Any]:  # type: ignore[override]
        encoded = self.encode(inputs)
        with torch.inference_mode():
            logits = self.model(**encoded).logits
        rows, columns = (encoded["input_ids"] == self.tokenizer.mask_token_id).nonzero(as_tuple=True)
        probabilities = logits[rows, columns].float().softmax(dim=-1)
        best = probabilities.topk(min(parameters.top_k, probabilities.shape[-1]), dim=-1)
        entries = []
        for row, column, scores, tokens in zip(
            rows.tolist(), columns.tolist(), best.values.tolist(), best.indices.tolist()
        ):
            input_ids = encoded["input_ids"][row]
            length = int(encoded["attention_mask"][row].sum())
            candidates = []
            for score, token in zip(scores, tokens):
                filled = input_ids.clone()
                filled[column] = token
                candidates.append(
                    {
                        "token_str": self.tokenizer.decode([token]).strip(),
                        "score": score,
                        "sequence": self.tokenizer.decode(filled[:length], skip_special_tokens=True),
                    }
                )
            entries.append(candidates)
        return entries
