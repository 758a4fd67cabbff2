"""The KV cache of prompts being prefilled, and which caches continuous batching can take.

A prefilled group's prompts end at the last column; shorter ones are padded on the left, and an
attention mask marks the real positions. The cache is ``transformers``' own ``DynamicCache``, whose
layers keep ``[rows, heads, tokens, head_dim]`` tensors; :func:`unsupported_reason` says when a
model's cache is of another kind. Prefilled rows then move into the running batch's
:class:`~mii_azure.runtime.generation.batch_cache.BatchCache`.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

__all__ = ["PaddedCache", "unsupported_reason"]


def _layers(cache: Any) -> list[Any]:
    return list(getattr(cache, "layers", []))


def unsupported_reason(cache: Any, *, max_positions: Optional[int]) -> Optional[str]:
    """Why rows of ``cache`` cannot be joined and dropped here (None when they can)."""
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    layers = _layers(cache)
    if not layers:
        return f"its cache is a {type(cache).__name__}, not a DynamicCache with per-layer tensors"
    for layer in layers:
        if type(layer) is DynamicLayer:
            continue
        if type(layer) is DynamicSlidingWindowLayer:
            window = layer.sliding_window
            if max_positions and window >= max_positions:
                continue  # the window never slides: the layer holds every position
            return f"its attention slides over a window of {window} tokens"
        return f"its cache has {type(layer).__name__} layers"
    return None


class PaddedCache:
    """A batched ``DynamicCache`` and its ``[rows, columns]`` attention mask (1 = a real token)."""

    def __init__(self, cache: Any, mask: torch.Tensor) -> None:
        self.cache = cache
        self.mask = mask

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])

    def lengths(self) -> torch.Tensor:
        """Real tokens of each row."""
        return self.mask.sum(dim=1)

    def grow(self, columns: int) -> torch.Tensor:
        """The mask for a forward pass adding ``columns`` real tokens to every row (kept as the new mask)."""
        ones = torch.ones((self.rows, columns), dtype=self.mask.dtype, device=self.mask.device)
        self.mask = torch.cat([self.mask, ones], dim=1)
        return self.mask
