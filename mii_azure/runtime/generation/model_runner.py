"""The forward passes continuous batching needs, over a ``transformers`` causal LM.

Three calls: prefill a group of whole prompts (padded on the left), extend one sequence's cache by
a chunk of its prompt, and decode one token for every row of the running batch (a
:class:`BatchCache`). Each returns the logits of each row's last position. This is the seam where
another backend (DeepSpeed-FastGen on GPU) can stand in: the scheduler only needs these calls.
"""

from __future__ import annotations

import inspect
from typing import Any, Optional

import torch

from .batch_cache import BatchCache
from .kv_cache import PaddedCache, unsupported_reason

__all__ = ["CausalLMRunner"]


class CausalLMRunner:
    """Runs a decoder-only ``transformers`` model step by step on its own device."""

    def __init__(self, model: Any, *, max_positions: Optional[int]) -> None:
        self.model = model
        self.max_positions = max_positions
        self.device = next(model.parameters()).device
        accepted = inspect.signature(model.forward).parameters
        self._takes_positions = "position_ids" in accepted
        self._takes_cache_position = "cache_position" in accepted
        self._takes_logits_to_keep = "logits_to_keep" in accepted
        # transformers 5.24 renamed ``past_key_values`` to ``cache`` (in and out); older 5.x has the old name.
        self._cache_name = "cache" if "cache" in accepted else "past_key_values"

    def unsupported_reason(self) -> Optional[str]:
        """Why this model cannot be batched continuously here (None when it can), from one tiny pass."""
        _, probe = self.prefill([[0]])
        return unsupported_reason(probe.cache, max_positions=self.max_positions)

    def prefill(self, prompts: list[list[int]]) -> tuple[torch.Tensor, PaddedCache]:
        """Run whole prompts as one batch; the last-position logits ``[rows, vocab]`` and their cache."""
        width = max(len(prompt) for prompt in prompts)
        ids = torch.zeros((len(prompts), width), dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt) :] = 1
        mask = mask.to(self.device)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        logits, cache = self._forward(ids.to(self.device), mask, positions, None, past=0)
        return logits, PaddedCache(cache, mask)

    def extend(self, state: PaddedCache, chunk: list[int]) -> torch.Tensor:
        """Add the next ``chunk`` of a one-row sequence's prompt to its cache; its last logits."""
        past = state.width
        mask = state.grow(len(chunk))
        positions = torch.arange(past, past + len(chunk), device=self.device).unsqueeze(0)
        ids = torch.tensor([chunk], dtype=torch.long, device=self.device)
        logits, _ = self._forward(ids, mask, positions, state.cache, past=past)
        return logits

    def decode(self, batch: BatchCache, tokens: list[int]) -> torch.Tensor:
        """One new token per row of the running batch; the logits for the token after it, ``[rows, vocab]``."""
        past = batch.width
        positions = batch.lengths().to(self.device).unsqueeze(1)
        mask = batch.begin_step()
        ids = torch.tensor(tokens, dtype=torch.long, device=self.device).unsqueeze(1)
        try:
            logits, _ = self._forward(ids, mask, positions, batch.cache, past=past)
        finally:
            batch.end_step()
        return logits

    def _forward(
        self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any, *, past: int
    ) -> tuple[torch.Tensor, Any]:
        kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, self._cache_name: cache, "use_cache": True}
        if self._takes_positions:
            kwargs["position_ids"] = positions
        if self._takes_cache_position:
            kwargs["cache_position"] = torch.arange(past, past + ids.shape[1], device=self.device)
        if self._takes_logits_to_keep:
            kwargs["logits_to_keep"] = 1
        with torch.inference_mode():
            output = self.model(**kwargs)
        return output.logits[:, -1, :], getattr(output, self._cache_name)
