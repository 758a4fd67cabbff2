"""The running batch's KV cache: preallocated slots written in place, so a step copies nothing.

``transformers``' ``DynamicCache`` appends each new token by concatenation, copying the whole cache
at every step, and joining or dropping a row would copy it again. Here every layer keeps one buffer
of ``[row slots, heads, columns, head_dim]``. Rows are right-aligned: every row's last token is at
column ``end - 1`` and a decode step writes column ``end`` for all rows at once. A joining sequence
is copied into the next free slot; a leaving one is replaced by the last row (one row copied). The
buffers grow by doubling, and move left when the columns at the start are no longer used.

A fused step (:mod:`.packed_attention`) writes the running rows' next column and whole joining
prompts, right-aligned in new slots, in the same pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from .kv_cache import PaddedCache

__all__ = ["BatchCache"]

_FIRST_COLUMNS = 64
_FIRST_ROWS = 4


class BatchCache:
    """Right-aligned KV cache of the rows being decoded; :attr:`cache` is what the model is given."""

    def __init__(self) -> None:
        self.rows = 0
        self.end = 0  # one past the last real column of every row
        self.start = 0  # the first column any row uses
        self._lengths = torch.zeros(0, dtype=torch.long)
        self._keys: list[torch.Tensor] = []
        self._values: list[torch.Tensor] = []
        self._mask = torch.zeros((0, 0), dtype=torch.long)
        self._adding = 0  # tokens of the forward pass in progress
        self._packed: Optional[_PackedWrite] = None  # the fused step in progress
        self.cache = DynamicCache()
        self.cache.layers = []

    # --- what the forward pass sees -----------------------------------------------------------
    @property
    def width(self) -> int:
        """Columns the rows span: the past the model attends over."""
        return self.end - self.start

    def lengths(self) -> torch.Tensor:
        """Real tokens of each row."""
        return self._lengths[: self.rows]

    def begin_step(self) -> torch.Tensor:
        """Make room for one more token per row; the attention mask of that step, ``[rows, width + 1]``."""
        self._make_room(self.rows, 0, adding=1)
        self._mask[: self.rows, self.end] = 1
        self._adding = 1
        return self._mask[: self.rows, self.start : self.end + 1]

    def end_step(self) -> None:
        """The forward pass wrote its column: count it."""
        self._lengths[: self.rows] += self._adding
        self.end += self._adding
        self._adding = 0

    def views(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        columns = slice(self.start, self.end + self._adding)
        return self._keys[layer][: self.rows, :, columns], self._values[layer][: self.rows, :, columns]

    def write(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._packed is not None:
            return self._write_packed(self._packed, layer, keys, values)
        columns = slice(self.end, self.end + keys.shape[2])
        self._keys[layer][: self.rows, :, columns] = keys
        self._values[layer][: self.rows, :, columns] = values
        return self.views(layer)

    # --- a fused step ----------------------------------------------------------------------------
    @property
    def allocated(self) -> bool:
        return bool(self._keys)

    def allocate_like(self, template: PaddedCache) -> None:
        """Create the buffers with the layers, heads, head sizes, dtype and device of ``template``."""
        self._allocate(list(template.cache.layers))

    def begin_packed(self, prompt_lengths: list[int]) -> torch.Tensor:
        """Make room for one more token per running row and for whole prompts of ``prompt_lengths``
        tokens in new slots after them; the running rows' attention mask ``[rows, width + 1]``."""
        self._make_room(self.rows + len(prompt_lengths), max(prompt_lengths, default=0), adding=1)
        self._mask[: self.rows, self.end] = 1
        for slot, length in enumerate(prompt_lengths, start=self.rows):
            self._place(slot, length, self.end + 1)
        self._packed = _PackedWrite(self.rows, list(prompt_lengths))
        self._adding = 1
        return self._mask[: self.rows, self.start : self.end + 1]

    def end_packed(self) -> None:
        """The fused step wrote its tokens: the prompts are rows now, after the running ones."""
        packed, self._packed = self._packed, None
        if packed is None:
            return
        self._lengths[: packed.rows] += 1
        self.end += 1
        self._adding = 0
        self.rows = packed.rows + len(packed.lengths)
        if packed.lengths:
            longest = self.end - max(packed.lengths)
            self.start = min(self.start, longest) if packed.rows else longest

    def abort_packed(self) -> None:
        """The fused step failed: nothing it wrote counts (the running rows keep their columns)."""
        if self._packed is not None:
            self._mask[: self._packed.rows, self.end] = 0
            self._packed = None
            self._adding = 0

    def _write_packed(
        self, packed: "_PackedWrite", layer: int, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values ``[1, kv_heads, tokens, d]`` of a fused step go to their rows' columns."""
        rows, end = packed.rows, self.end
        for store, new in ((self._keys[layer], keys), (self._values[layer], values)):
            if rows:
                store[:rows, :, end] = new[0, :, :rows].transpose(0, 1)
            offset = rows
            for slot, length in enumerate(packed.lengths, start=rows):
                store[slot, :, end + 1 - length : end + 1] = new[0, :, offset : offset + length]
                offset += length
        return keys, values

    # --- rows joining and leaving --------------------------------------------------------------
    def join(self, prefilled: PaddedCache, rows: list[int]) -> None:
        """Copy ``rows`` of a prefilled group into the next slots (after the current rows)."""
        layers = list(prefilled.cache.layers)
        if not self._keys:
            self._allocate(layers)
        lengths = prefilled.lengths()
        longest = int(lengths[rows].max())
        self._make_room(self.rows + len(rows), longest, adding=0)
        width = prefilled.width
        for slot, row in enumerate(rows, start=self.rows):
            length = int(lengths[row])
            target = self._place(slot, length, self.end)
            source = slice(width - length, width)
            for index, layer in enumerate(layers):
                self._keys[index][slot, :, target] = layer.keys[row, :, source]
                self._values[index][slot, :, target] = layer.values[row, :, source]
        self.rows += len(rows)
        self.start = min(self.start, self.end - longest) if self.rows > len(rows) else self.end - longest

    def keep(self, rows: list[int]) -> list[int]:
        """Keep only ``rows``; returns the old row index now in each slot (the last row fills a gap)."""
        kept = set(rows)
        order = list(range(self.rows))
        slot = 0
        while slot < len(order):
            if order[slot] in kept:
                slot += 1
                continue
            last = len(order) - 1
            if slot != last:
                self._move(last, slot)
                order[slot] = order[last]
            order.pop()
        self.rows = len(order)
        self.start = self.end - int(self._lengths[: self.rows].max()) if self.rows else self.end
        return order

    def _make_room(self, rows: int, longest: int, *, adding: int) -> None:
        """Slots for ``rows`` rows, and columns for the rows to end ``adding`` columns after :attr:`end`
        with a new row of ``longest`` tokens before that end: move left first (unused columns at the
        start, or no room for the new end), then right if the new row is longer than the columns before it."""
        if self.rows == 0:
            self.end = self.start = 0
        if self.start > 0 and (longest > self.end + adding or self.end + adding > self._mask.shape[1]):
            self._shift_left(self.start)
        if longest > self.end + adding:
            self._shift_right(longest - self.end - adding)
        self._grow(rows, self.end + adding)

    def _place(self, slot: int, length: int, end: int) -> slice:
        """Mark ``slot`` as a row of ``length`` tokens ending before column ``end``; its columns."""
        columns = slice(end - length, end)
        self._mask[slot].zero_()
        self._mask[slot, columns] = 1
        self._lengths[slot] = length
        return columns

    # --- storage -------------------------------------------------------------------------------
    def _allocate(self, layers: list[Any]) -> None:
        self._mask = torch.zeros((_FIRST_ROWS, _FIRST_COLUMNS), dtype=torch.long, device=layers[0].keys.device)
        self._lengths = torch.zeros(_FIRST_ROWS, dtype=torch.long)
        for index, layer in enumerate(layers):
            _, heads, _, key_dim = layer.keys.shape
            value_dim = layer.values.shape[-1]
            self._keys.append(layer.keys.new_zeros((_FIRST_ROWS, heads, _FIRST_COLUMNS, key_dim)))
            self._values.append(layer.values.new_zeros((_FIRST_ROWS, heads, _FIRST_COLUMNS, value_dim)))
            self.cache.layers.append(_SlotLayer(self, index))

    def _reserve_columns(self, columns: int) -> None:
        self._grow(self.rows, columns)

    def _grow(self, rows: int, need_columns: int) -> None:
        capacity_rows, capacity_columns = self._mask.shape
        if rows <= capacity_rows and need_columns <= capacity_columns:
            return
        new_rows = max(capacity_rows, _grown(capacity_rows, rows))
        new_columns = max(capacity_columns, _grown(capacity_columns, need_columns))
        self._mask = _resized(self._mask, (new_rows, new_columns))
        self._lengths = torch.cat([self._lengths, self._lengths.new_zeros(new_rows - capacity_rows)])
        for index in range(len(self._keys)):
            self._keys[index] = _resized(self._keys[index], (new_rows, None, new_columns, None))
            self._values[index] = _resized(self._values[index], (new_rows, None, new_columns, None))

    def _shift_left(self, by: int) -> None:
        rows, used = slice(0, self.rows), slice(by, self.end)
        for buffers in (self._keys, self._values):
            for index, buffer in enumerate(buffers):
                buffer[rows, :, : self.end - by] = buffer[rows, :, used].clone()
        self._mask[rows, : self.end - by] = self._mask[rows, used].clone()
        self._mask[rows, self.end - by : self.end] = 0
        self.end -= by
        self.start -= by

    def _shift_right(self, by: int) -> None:
        """Move every row ``by`` columns right (the cache starts at column 0 here)."""
        self._reserve_columns(self.end + by)
        rows, used = slice(0, self.rows), slice(0, self.end)
        for buffers in (self._keys, self._values):
            for buffer in buffers:
                buffer[rows, :, by : self.end + by] = buffer[rows, :, used].clone()
        self._mask[rows, by : self.end + by] = self._mask[rows, used].clone()
        self._mask[rows, :by] = 0
        self.end += by
        self.start += by

    def _move(self, source: int, target: int) -> None:
        columns = slice(self.start, self.end)
        for buffers in (self._keys, self._values):
            for buffer in buffers:
                buffer[target, :, columns] = buffer[source, :, columns]
        self._mask[target] = self._mask[source]
        self._lengths[target] = self._lengths[source]


@dataclass
class _PackedWrite:
    rows: int  # running rows, one token each, first in the packed sequence
    lengths: list[int]  # the joining prompts after them


class _SlotLayer(DynamicLayer):
    """One layer of :class:`BatchCache` as ``transformers`` expects a cache layer to behave."""

    def __init__(self, store: BatchCache, index: int) -> None:
        self._store = store
        self._index = index
        self.is_initialized = True

    @property  # type: ignore[override]
    def keys(self) -> torch.Tensor:
        return self._store.views(self._index)[0]

    @keys.setter
    def keys(self, value: Any) -> None:  # the base class's initial ``None``; the buffers are the store's
        pass

    @property  # type: ignore[override]
    def values(self) -> torch.Tensor:
        return self._store.views(self._index)[1]

    @values.setter
    def values(self, value: Any) -> None:
        pass

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return self._store.write(self._index, key_states, value_states)

    def get_seq_length(self, *args: Any, **kwargs: Any) -> int:
        return self._store.end - self._store.start

    def get_mask_sizes(self, query: Any, *args: Any, **kwargs: Any) -> tuple[int, int]:
        # transformers 5.0 passes the cache positions, later versions the query length.
        query_length = query if isinstance(query, int) else int(query.shape[0])
        return self.get_seq_length() + query_length, 0


def _grown(capacity: int, needed: int) -> int:
    while capacity < needed:
        capacity *= 2
    return capacity


def _resized(tensor: torch.Tensor, shape: tuple[Any, ...]) -> torch.Tensor:
    """A zero tensor of ``shape`` (None keeps a dimension) holding ``tensor`` in its leading corner."""
    full = tuple(size if size is not None else tensor.shape[dim] for dim, size in enumerate(shape))
    grown = tensor.new_zeros(full)
    grown[tuple(slice(0, size) for size in tensor.shape)] = tensor
    return grown
