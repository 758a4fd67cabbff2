"""CUDA graphs for static-shape tasks: pad each call to a shape bucket, replay the bucket's graph.

A CUDA graph replays a recorded sequence of kernels on the same memory, so it only fits calls of one
shape. DeepSpeed's own ``enable_cuda_graph`` records a single graph at the first call's shape and
copies every later call into it, which is wrong for a server whose batches and inputs vary. Here
each call is padded to the smallest *bucket* that holds it (batch sizes in powers of two up to the
planned batch, sequence lengths in steps of :data:`LENGTH_STEP` tokens up to the input limit), one
graph is captured per bucket the first time it is needed, and the outputs are trimmed back to the
call's own shape before the task sees them. Padding never changes an answer: padded positions are
masked out (``attention_mask`` 0) and padded rows are copies of a real row whose outputs are dropped.

:class:`GraphedModule` does the padding and trimming on any device, so that part is tested on CPU;
capturing and replaying needs CUDA. A capture that fails (a model that synchronizes with the host
inside its forward, say) turns graphs off for that module, runs the call eagerly, and is reported
through :attr:`GraphedModule.failure`, never silently.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

__all__ = ["ShapeBuckets", "GraphedModule", "LENGTH_STEP", "PER_TOKEN_OUTPUTS"]

logger = logging.getLogger(__name__)

#: Sequence lengths are padded up to a multiple of this many tokens.
LENGTH_STEP = 64
#: Most graphs kept per module; calls of further shapes run eagerly.
MAX_GRAPHS = 64
#: Output fields with one entry per input token (trimmed back along the sequence axis). A
#: ``logits`` tensor is per token when it has three dimensions (token classification, fill-mask).
PER_TOKEN_OUTPUTS = frozenset({"last_hidden_state", "start_logits", "end_logits"})


@dataclass(frozen=True)
class ShapeBuckets:
    """The padded shapes calls are rounded up to."""

    batch_sizes: tuple[int, ...]
    #: Longest sequence a bucket may have; ``None`` when sequences are not padded (diffusion).
    max_length: Optional[int] = None
    length_step: int = LENGTH_STEP

    @classmethod
    def up_to(cls, max_batch_size: int, max_length: Optional[int] = None) -> "ShapeBuckets":
        """Powers of two up to ``max_batch_size`` (itself included), lengths up to ``max_length``."""
        sizes = []
        size = 1
        while size < max_batch_size:
            sizes.append(size)
            size *= 2
        sizes.append(max(1, max_batch_size))
        return cls(batch_sizes=tuple(sizes), max_length=max_length)

    def batch_size(self, rows: int) -> Optional[int]:
        """The smallest bucket holding ``rows`` rows; ``None`` above the largest."""
        return next((size for size in self.batch_sizes if size >= rows), None)

    def length(self, tokens: int) -> int:
        """``tokens`` rounded up to the next step, never past ``max_length`` (nor below ``tokens``)."""
        if self.max_length is None:
            return tokens
        rounded = -(-tokens // self.length_step) * self.length_step
        return max(tokens, min(rounded, self.max_length))


@dataclass
class _Graph:
    graph: Any
    args: list[Any]
    kwargs: dict[str, Any]
    outputs: Any


@dataclass
class _Call:
    """One call's inputs, padded to its bucket, and how to trim the outputs back."""

    args: list[Any]
    kwargs: dict[str, Any]
    rows: int
    length: Optional[int]
    padded_length: Optional[int]
    signature: tuple[Any, ...] = field(default=())


class GraphedModule(torch.nn.Module):
    """Wraps a module whose calls are padded to shape buckets and replayed from CUDA graphs.

    ``pad_sequences`` pads the second axis of every two-dimensional integer input (token ids,
    attention and token-type masks) to the bucket length: ``input_ids`` with ``pad_token_id``,
    everything else with 0. Every tensor input whose first axis is the batch gets its rows padded
    with copies of the last row. Attributes the wrapper does not have are the wrapped module's.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        buckets: ShapeBuckets,
        *,
        pad_token_id: int = 0,
        pad_sequences: bool = True,
        max_graphs: int = MAX_GRAPHS,
    ) -> None:
        super().__init__()
        self.module = module
        self.buckets = buckets
        self.pad_token_id = pad_token_id
        self.pad_sequences = pad_sequences
        self.max_graphs = max_graphs
        #: Why graphs were turned off, if a capture failed; ``None`` while they work.
        self.failure: Optional[str] = None
        self._graphs: dict[tuple[Any, ...], _Graph] = {}
        self._pool: Any = None
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["module"], name)

    @property
    def captures(self) -> bool:
        """Whether calls replay CUDA graphs (on a CUDA device, with no failed capture)."""
        return self.failure is None and _on_cuda(self.module)

    @property
    def graph_count(self) -> int:
        """Graphs captured so far, one per bucket used."""
        return len(self._graphs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        rows = _batch_rows(args, kwargs)
        if rows is None or self.buckets.batch_size(rows) is None:
            return self.module(*args, **kwargs)
        nested = _nested_tensor_argument(args, kwargs)
        if nested is not None:
            # Tensors inside a dict or list could be neither padded nor copied into a graph's inputs.
            if self.failure is None:
                self.failure = f"{type(self.module).__name__} takes tensors inside {nested!r}, which a graph cannot take as inputs"
                logger.warning("CUDA graphs turned off: %s", self.failure)
            return self.module(*args, **kwargs)
        call = self._pad(list(args), dict(kwargs), rows)
        if self.captures:
            with self._lock:
                outputs = self._replay(call)
            if outputs is not None:
                return self._trim(outputs, call, copy=True)
        return self._trim(self.module(*call.args, **call.kwargs), call, copy=False)

    def prepare(self, *args: Any, **kwargs: Any) -> None:
        """Run one eager call at the largest bucket before any capture, so that kernels which size
        their workspace on first use (DeepSpeed's injected layers do) size it for every bucket."""
        rows = _batch_rows(args, kwargs)
        if rows is None:
            return
        largest = self.buckets.batch_sizes[-1]
        call = self._pad(list(args), dict(kwargs), rows, batch=largest, length=self.buckets.max_length)
        with torch.inference_mode():
            self.module(*call.args, **call.kwargs)

    # --- padding --------------------------------------------------------------------------
    def _pad(
        self, args: list[Any], kwargs: dict[str, Any], rows: int, *, batch: Optional[int] = None, length: Optional[int] = None
    ) -> _Call:
        target_rows = batch or self.buckets.batch_size(rows) or rows
        current = _sequence_length(args, kwargs) if self.pad_sequences else None
        padded_length = None
        if current is not None:
            padded_length = max(current, length or self.buckets.length(current))

        def pad(name: Optional[str], value: Any) -> Any:
            if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != rows:
                return value
            if padded_length is not None and _is_token_tensor(value) and padded_length > value.shape[1]:
                fill = self.pad_token_id if name == "input_ids" else 0
                extra = value.new_full((value.shape[0], padded_length - value.shape[1]), fill)
                value = torch.cat([value, extra], dim=1)
            if target_rows > rows:
                value = torch.cat([value, value[-1:].expand(target_rows - rows, *value.shape[1:])], dim=0)
            return value

        padded_args = [pad(None, value) for value in args]
        padded_kwargs = {name: pad(name, value) for name, value in kwargs.items()}
        return _Call(
            padded_args,
            padded_kwargs,
            rows,
            current,
            padded_length,
            signature=_signature(padded_args, padded_kwargs),
        )

    def _trim(self, outputs: Any, call: _Call, *, copy: bool) -> Any:
        def trim(name: Optional[str], value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                if value.dim() > 0 and value.shape[0] >= call.rows:
                    value = value[: call.rows]
                if (
                    call.length is not None
                    and call.padded_length != call.length
                    and value.dim() >= 2
                    and value.shape[1] == call.padded_length
                    and (name in PER_TOKEN_OUTPUTS or (name == "logits" and value.dim() == 3))
                ):
                    value = value[:, : call.length]
                return value.clone() if copy else value
            return value

        return _map_outputs(outputs, trim)

    # --- CUDA graphs ----------------------------------------------------------------------
    def _replay(self, call: _Call) -> Any:
        """The bucket's graph replayed on ``call``'s inputs; ``None`` to run eagerly instead."""
        entry = self._graphs.get(call.signature)
        if entry is None:
            if len(self._graphs) >= self.max_graphs:
                return None
            try:
                entry = self._capture(call)
            except Exception as exc:  # a forward that cannot be captured: run eagerly from now on
                self.failure = f"capturing a CUDA graph of {type(self.module).__name__} failed ({type(exc).__name__}: {exc})"
                logger.warning("CUDA graphs turned off: %s", self.failure)
                self._graphs.clear()
                torch.cuda.synchronize()
                return None
            self._graphs[call.signature] = entry
            logger.info("Captured CUDA graph %d for inputs %s", len(self._graphs), _describe(call.signature))
        for static, value in zip(entry.args, call.args):
            if isinstance(static, torch.Tensor):
                static.copy_(value)
        for name, static in entry.kwargs.items():
            if isinstance(static, torch.Tensor):
                static.copy_(call.kwargs[name])
        entry.graph.replay()
        return entry.outputs

    def _capture(self, call: _Call) -> _Graph:
        static_args = [_static_copy(value) for value in call.args]
        static_kwargs = {name: _static_copy(value) for name, value in call.kwargs.items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # lazy initialization (cuBLAS handles, workspaces) happens outside the graph
                self.module(*static_args, **static_kwargs)
        torch.cuda.current_stream().wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        # One memory pool for every bucket: graphs never run concurrently (replays hold the lock),
        # and each keeps its own inputs and outputs alive, so only scratch memory is shared.
        with torch.cuda.graph(graph, pool=self._pool):
            outputs = self.module(*static_args, **static_kwargs)
        return _Graph(graph, static_args, static_kwargs, outputs)


def _on_cuda(module: torch.nn.Module) -> bool:
    parameter = next(module.parameters(), None)
    return parameter is not None and parameter.is_cuda


def _batch_rows(args: tuple[Any, ...] | list[Any], kwargs: Mapping[str, Any]) -> Optional[int]:
    """The batch size: the first axis of the first tensor input with one."""
    for value in [*args, *kwargs.values()]:
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return int(value.shape[0])
    return None


def _nested_tensor_argument(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Optional[str]:
    """The name (or position) of an argument that holds tensors inside a container, if any."""

    def holds_tensor(value: Any) -> bool:
        if isinstance(value, Mapping):
            return any(isinstance(item, torch.Tensor) or holds_tensor(item) for item in value.values())
        if isinstance(value, (list, tuple)):
            return any(isinstance(item, torch.Tensor) or holds_tensor(item) for item in value)
        return False

    for name, value in [*((f"argument {index}", value) for index, value in enumerate(args)), *kwargs.items()]:
        if holds_tensor(value):
            return name
    return None


def _is_token_tensor(value: torch.Tensor) -> bool:
    return value.dim() == 2 and not value.is_floating_point()


def _sequence_length(args: list[Any], kwargs: Mapping[str, Any]) -> Optional[int]:
    for value in [*args, *kwargs.values()]:
        if isinstance(value, torch.Tensor) and _is_token_tensor(value):
            return int(value.shape[1])
    return None


def _signature(args: list[Any], kwargs: Mapping[str, Any]) -> tuple[Any, ...]:
    """What must be equal for two calls to replay the same graph."""

    def key(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return ("tensor", tuple(value.shape), value.dtype, value.device)
        return ("value", repr(value))

    return (tuple(key(value) for value in args), tuple((name, key(value)) for name, value in sorted(kwargs.items())))


def _describe(signature: tuple[Any, ...]) -> str:
    shapes = [part[1] for part in signature[0] if part[0] == "tensor"]
    shapes += [f"{name}={part[1]}" for name, part in signature[1] if part[0] == "tensor"]
    return ", ".join(str(shape) for shape in shapes)


def _static_copy(value: Any) -> Any:
    return value.clone() if isinstance(value, torch.Tensor) else value


def _map_outputs(outputs: Any, function: Callable[[Optional[str], Any], Any]) -> Any:
    """Apply ``function(name, tensor)`` to every tensor of a model output, keeping its type."""
    if isinstance(outputs, torch.Tensor):
        return function(None, outputs)
    if isinstance(outputs, Mapping) and hasattr(outputs, "to_tuple"):  # transformers/diffusers ModelOutput
        return type(outputs)(**{name: _map_outputs_named(name, value, function) for name, value in outputs.items()})
    if isinstance(outputs, tuple):
        return type(outputs)(_map_outputs(value, function) for value in outputs)
    if isinstance(outputs, list):
        return [_map_outputs(value, function) for value in outputs]
    return outputs


def _map_outputs_named(name: str, value: Any, function: Callable[[Optional[str], Any], Any]) -> Any:
    if isinstance(value, torch.Tensor):
        return function(name, value)
    return _map_outputs(value, function)
