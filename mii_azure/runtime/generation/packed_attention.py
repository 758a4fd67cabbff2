"""Attention over a packed step: the running rows' next tokens and whole joining prompts in one pass.

A fused step gives the model one sequence of ``rows + sum(prompt lengths)`` tokens (batch size 1):
first one token per running row, then each joining prompt. Every layer's matrix products then run
once over all of them, instead of one pass for the decode step and one per prefill group (what
DeepSpeed-FastGen calls Dynamic SplitFuse; here whole short prompts are fused, long ones are still
prefilled in chunks between steps). Attention is the only part that must know which token belongs
to which sequence, so it is registered as a ``transformers`` attention implementation:

* a running row's token attends over that row's columns of the :class:`BatchCache` (its own mask);
* a prompt's tokens attend causally over the prompt itself.

``transformers`` builds no attention mask for an implementation it does not know, so nothing
padded is computed. Which model families route their attention here is checked by measurement,
not by name: :meth:`CausalLMRunner.fused_reason` compares a fused step with the plain passes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Optional

import torch

__all__ = ["PACKED_ATTENTION", "PackedLayout", "packed_layout", "register"]

PACKED_ATTENTION = "mii_azure_packed"

_current = threading.local()


@dataclass
class PackedLayout:
    """Which tokens of a fused step are whose: ``rows`` decode tokens first, then the prompts."""

    rows: int
    decode_bias: Optional[torch.Tensor]  # [rows, 1, 1, columns]: 0 where a row has a token, -inf elsewhere
    spans: list[tuple[int, int]]  # (offset, length) of each joining prompt in the packed sequence
    store: Any  # the BatchCache holding the running rows' keys and values

    def __enter__(self) -> "PackedLayout":
        _current.layout = self
        return self

    def __exit__(self, *exc: Any) -> None:
        _current.layout = None


def packed_layout() -> PackedLayout:
    layout = getattr(_current, "layout", None)
    if layout is None:
        raise RuntimeError(f"The {PACKED_ATTENTION!r} attention runs only inside a fused step of the continuous batcher.")
    return layout


def register() -> None:
    """Make the implementation known to ``transformers`` (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(PACKED_ATTENTION, packed_attention)


def packed_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    scaling: Optional[float] = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """``query``/``key``/``value``: ``[1, heads, tokens, head_dim]`` of the packed step (keys and values
    as the layer produced them, before caching); returns ``[1, tokens, heads, head_dim]``."""
    layout = packed_layout()
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    parts = []
    if layout.rows:
        keys, values = layout.store.views(module.layer_idx)
        parts.append(_decode_attention(query[0, :, : layout.rows], keys, values, layout.decode_bias, scale))
    for offset, length in layout.spans:
        span = slice(offset, offset + length)
        parts.append(_prompt_attention(query[:, :, span], key[:, :, span], value[:, :, span], scale)[0])
    return torch.cat(parts, dim=0).unsqueeze(0), None


def _decode_attention(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: Optional[torch.Tensor], scale: float
) -> torch.Tensor:
    """One query per row: ``query`` ``[heads, rows, d]`` over ``keys``/``values`` ``[rows, kv_heads, columns, d]``;
    returns ``[rows, heads, d]``."""
    heads, rows, dim = query.shape
    kv_heads = keys.shape[1]
    grouped = query.transpose(0, 1).reshape(rows, kv_heads, heads // kv_heads, dim)  # [rows, kv_heads, group, d]
    scores = torch.matmul(grouped, keys.transpose(-1, -2)) * scale  # [rows, kv_heads, group, columns]
    if bias is not None:
        scores = scores + bias
    weights = scores.softmax(dim=-1).to(values.dtype)
    return torch.matmul(weights, values).reshape(rows, heads, dim)


def _prompt_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention within one prompt, ``[1, heads, length, d]``; returns ``[1, length, heads, d]``."""
    heads, kv_heads = query.shape[1], key.shape[1]
    if kv_heads != heads:
        key = key.repeat_interleave(heads // kv_heads, dim=1)
        value = value.repeat_interleave(heads // kv_heads, dim=1)
    output = torch.nn.functional.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scale)
    return output.transpose(1, 2)
