"""Choosing each sequence's next token from its logits, with its own settings and random generator.

The rules and their order are those of ``transformers``' ``generate``: repetition penalty over the
prompt and the tokens so far, then (when sampling) temperature, top-k and top-p, then a draw. Each
sequence draws from its own ``torch.Generator``, so a seeded request gives the same tokens whatever
it is batched with.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Optional

import torch

__all__ = ["TokenChooser", "greedy_rows"]


@dataclass(frozen=True)
class _Rule:
    sampling: bool
    temperature: float
    top_k: int
    top_p: float
    repetition_penalty: float


class TokenChooser:
    """One sequence's way of picking tokens."""

    def __init__(
        self,
        *,
        sampling: bool,
        temperature: Optional[float] = None,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        repetition_penalty: float = 1.0,
        seed: Optional[int] = None,
    ) -> None:
        self.rule = _Rule(
            sampling=sampling,
            temperature=temperature if temperature is not None else 1.0,
            top_k=top_k if top_k is not None else 50,
            top_p=top_p if top_p is not None else 1.0,
            repetition_penalty=repetition_penalty,
        )
        self._generator: Optional[torch.Generator] = None
        if sampling:
            self._generator = torch.Generator()
            self._generator.manual_seed(seed if seed is not None else secrets.randbits(63))

    @property
    def plain_greedy(self) -> bool:
        """Greedy without a penalty: the argmax of the raw logits (batched by :func:`greedy_rows`)."""
        return not self.rule.sampling and self.rule.repetition_penalty == 1.0

    def choose(self, logits: torch.Tensor, seen: torch.Tensor) -> int:
        """The next token id from one row of logits (``[vocab]``) and the ids seen so far (``[n]``)."""
        rule = self.rule
        scores = logits.float()
        if rule.repetition_penalty != 1.0 and seen.numel():
            scores = scores.clone()
            picked = scores.gather(0, seen)
            picked = torch.where(picked < 0, picked * rule.repetition_penalty, picked / rule.repetition_penalty)
            scores.scatter_(0, seen, picked)
        if not rule.sampling:
            return int(scores.argmax())
        if rule.temperature != 1.0:
            scores = scores / rule.temperature
        if 0 < rule.top_k < scores.numel():
            kth = torch.topk(scores, rule.top_k).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if rule.top_p < 1.0:
            ordered, order = torch.sort(scores, descending=False)
            cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
            drop = cumulative <= 1 - rule.top_p
            drop[-1] = False  # keep at least the likeliest token
            scores = scores.masked_fill(drop.scatter(0, order, drop), float("-inf"))
        probabilities = scores.softmax(dim=-1)
        return int(torch.multinomial(probabilities, 1, generator=self._generator))


def greedy_rows(logits: torch.Tensor) -> list[int]:
    """The argmax of every row of ``[rows, vocab]`` logits."""
    return logits.argmax(dim=-1).tolist()
