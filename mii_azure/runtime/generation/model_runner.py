"""The forward passes continuous batching needs, over a ``transformers`` causal LM.

Four calls: prefill a group of whole prompts (padded on the left), extend one sequence's cache by
a chunk of its prompt, decode one token for every row of the running batch (a :class:`BatchCache`),
and a fused step that does that decode and prefills whole joining prompts in the same pass
(:mod:`.packed_attention`; only where :meth:`CausalLMRunner.fused_reason` found it gives the
separate passes' logits). Each returns the logits of each row's last position. This is the seam
where another backend (DeepSpeed-FastGen on GPU) can stand in: the scheduler only needs these calls.
"""

from __future__ import annotations

import inspect
from typing import Any, Optional

import torch

from .batch_cache import BatchCache
from .kv_cache import PaddedCache, unsupported_reason
from .packed_attention import PACKED_ATTENTION, PackedLayout, register

__all__ = ["CausalLMRunner"]


class CausalLMRunner:
    """Runs a decoder-only ``transformers`` model step by step on its own device."""

    def __init__(self, model: Any, *, max_positions: Optional[int]) -> None:
        self.model = model
        self.max_positions = max_positions
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        accepted = inspect.signature(model.forward).parameters
        self._takes_positions = "position_ids" in accepted
        self._takes_cache_position = "cache_position" in accepted
        self._takes_logits_to_keep = "logits_to_keep" in accepted
        # transformers 5.24 renamed ``past_key_values`` to ``cache`` (in and out); older 5.x has the old name.
        self._cache_name = "cache" if "cache" in accepted else "past_key_values"
        self._template: Optional[PaddedCache] = None  # a one-token cache: the layers' shapes for new batches
        self.fuses_prefill = False  # set by :meth:`fused_reason`
        self._head: Optional[_OutputHead] = None  # the fused step's own output projection, where it matches

    def unsupported_reason(self) -> Optional[str]:
        """Why this model cannot be batched continuously here (None when it can), from one tiny pass."""
        _, self._template = self.prefill([[0]])
        return unsupported_reason(self._template.cache, max_positions=self.max_positions)

    def fused_reason(self) -> Optional[str]:
        """Why joining prompts cannot be prefilled inside decode steps here (None when they can, and
        :attr:`fuses_prefill` turns on). Decided by measurement on a tiny workload: two prompts fused
        into an empty batch, a decode step with a third prompt fused in, then a plain decode step must
        give the logits of the separate passes (this catches a family whose attention does not go
        through ``transformers``' attention interface)."""
        self.fuses_prefill = False
        if not self._takes_positions:
            return "its forward pass takes no position ids"
        self._head = _OutputHead.matching(self.model)
        vocabulary = getattr(self.model.get_input_embeddings(), "num_embeddings", 16)
        ids = [token % vocabulary for token in range(1, 15)]
        two, third_prompt = [ids[0:3], ids[3:5]], [ids[7:11]]
        try:
            register()
            separate = BatchCache()
            first, state = self.prefill(two)
            separate.join(state, [0, 1])
            second = self.decode(separate, ids[5:7])
            third, joining = self.prefill(third_prompt)
            separate.join(joining, [0])
            fourth = self.decode(separate, ids[11:14])

            fused = BatchCache()
            _, fused_first = self.step(fused, [], two)
            fused_second, fused_third = self.step(fused, ids[5:7], third_prompt)
            fused_fourth, _ = self.step(fused, ids[11:14], [])
        except Exception as exc:  # any failure keeps the separate passes, which are known to work
            return f"a fused step failed on a tiny input ({type(exc).__name__}: {exc})"
        for name, expected, got in (("prefill", first, fused_first), ("decode", second, fused_second),
                                    ("joining prefill", third, fused_third), ("next decode", fourth, fused_fourth)):
            if not _close(expected, got):
                return f"a fused step's {name} logits differ from the separate passes' (its attention is its own)"
        self.fuses_prefill = True
        return None

    def step(self, batch: BatchCache, tokens: list[int], prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """One fused pass: the next token of each running row and whole ``prompts`` that join the batch
        as new rows after them. Returns the logits after each row's token ``[rows, vocab]`` and after
        each prompt ``[prompts, vocab]``."""
        if not batch.allocated:
            if self._template is None:
                self.unsupported_reason()  # keeps its one-token cache as the template
            batch.allocate_like(self._template)  # type: ignore[arg-type]
        rows, lengths = len(tokens), [len(prompt) for prompt in prompts]
        positions = batch.lengths().tolist() + [index for length in lengths for index in range(length)]
        spans, keep, offset = [], list(range(rows)), rows
        for length in lengths:
            spans.append((offset, length))
            offset += length
            keep.append(offset - 1)
        ids = torch.tensor([tokens + [token for prompt in prompts for token in prompt]], dtype=torch.long, device=self.device)
        mask = batch.begin_packed(lengths)
        try:
            bias = None
            if rows:
                bias = torch.zeros(mask.shape, dtype=self.dtype, device=self.device).masked_fill_(mask == 0, float("-inf"))
                bias = bias[:, None, None, :]
            kwargs: dict[str, Any] = {"input_ids": ids, self._cache_name: batch.cache, "use_cache": True,
                                      "position_ids": torch.tensor([positions], dtype=torch.long, device=self.device)}
            if self._takes_cache_position:
                kwargs["cache_position"] = torch.arange(batch.width, batch.width + offset, device=self.device)
            indices = torch.tensor(keep, dtype=torch.long, device=self.device)
            config = self.model.config
            previous = config._attn_implementation
            config._attn_implementation = PACKED_ATTENTION
            try:
                with PackedLayout(rows, bias, spans, batch), torch.inference_mode():
                    logits = self._last_logits(kwargs, indices)
            finally:
                config._attn_implementation = previous
        except BaseException:
            batch.abort_packed()
            raise
        batch.end_packed()
        return logits[:rows], logits[rows:]

    def _last_logits(self, kwargs: dict[str, Any], indices: torch.Tensor) -> torch.Tensor:
        """The logits at ``indices`` of a batch-of-one pass ``[len(indices), vocab]``."""
        if self._head is not None:
            hidden = self.model.base_model(**kwargs).last_hidden_state
            return self._head(hidden[0, indices])
        if self._takes_logits_to_keep:
            return self.model(**kwargs, logits_to_keep=indices).logits[0]
        return self.model(**kwargs).logits[0, indices]

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


def _close(expected: torch.Tensor, got: torch.Tensor) -> bool:
    """Equal up to floating-point reordering (looser in half precision)."""
    if expected.shape != got.shape:
        return False
    tolerance = 1e-3 if expected.dtype == torch.float32 else 5e-2
    expected, got = expected.float(), got.float()
    scale = max(1.0, float(expected.abs().max()))
    return bool((expected - got).abs().max() <= tolerance * scale)


class _OutputHead:
    """A causal LM's output projection computed as ``weight @ hidden.T``: with MKL on CPU that takes
    25-40% less time for 8 to 64 rows than ``hidden @ weight.T`` (the vocabulary is the long side;
    measured, FACTS.md). Used only where it gives the model's own logits."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
        self.weight = weight
        self.bias = bias

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = torch.mm(self.weight, hidden.T).T
        return logits + self.bias if self.bias is not None else logits

    @classmethod
    def matching(cls, model: Any) -> Optional["_OutputHead"]:
        """The head when the base model's last hidden state through it gives the model's logits on a
        tiny input; None otherwise (a model that scales or caps its logits keeps its own head)."""
        linear = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        base = getattr(model, "base_model", None)
        if not isinstance(linear, torch.nn.Linear) or base is None or base is model:
            return None
        head = cls(linear.weight, linear.bias)
        ids = torch.tensor([[1, 2, 3]], dtype=torch.long, device=linear.weight.device)
        try:
            with torch.inference_mode():
                expected = model(input_ids=ids, use_cache=False).logits[0]
                got = head(base(input_ids=ids, use_cache=False).last_hidden_state[0])
        except Exception:  # a base model that wants more than the ids: keep the model's own head
            return None
        return head if _close(expected, got) else None
