"""The KV cache of a batch whose sequences have different lengths, kept right-aligned.

Each row's tokens end at the last column; shorter rows are padded on the left, and an attention
mask marks the real positions. Rows join (:meth:`PaddedCache.join`, padding the narrower side) and
leave (:meth:`PaddedCache.keep`, dropping columns no remaining row uses) between decode steps. It
works on ``transformers``' ``DynamicCache``, whose layers keep ``[rows, heads, tokens, head_dim]``
tensors; :func:`unsupported_reason` says when a model's cache is of another kind.
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
            if max_positions and window > max_positions:
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

    def join(self, other: "PaddedCache") -> None:
        """Append ``other``'s rows (after this batch's), padding whichever is narrower on the left."""
        width = max(self.width, other.width)
        mine, theirs = _layers(self.cache), _layers(other.cache)
        for layer, joining in zip(mine, theirs):
            layer.keys = torch.cat([_pad_left(layer.keys, width), _pad_left(joining.keys, width)], dim=0)
            layer.values = torch.cat([_pad_left(layer.values, width), _pad_left(joining.values, width)], dim=0)
        self.mask = torch.cat([_pad_left(self.mask, width, dim=1), _pad_left(other.mask, width, dim=1)], dim=0)
        self._sync_lengths()

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (in this order), then drop the left columns none of them uses."""
        index = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        used = mask.any(dim=0).nonzero()
        start = int(used[0]) if used.numel() else mask.shape[1]
        self.mask = mask[:, start:]
        for layer in _layers(self.cache):
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]
            layer.values = layer.values.index_select(0, index)[:, :, start:]
        self._sync_lengths()

    def _sync_lengths(self) -> None:
        for layer in _layers(self.cache):
            if hasattr(layer, "cumulative_length"):  # a sliding-window layer whose window never slides
                layer.cumulative_length = self.width


def _pad_left(tensor: torch.Tensor, width: int, *, dim: int = 2) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)
