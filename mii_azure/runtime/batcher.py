"""Dynamic batching: concurrent requests gathered into batches for one model, on one worker thread.

Requests arrive from many threads (the inference server's request threads, gRPC calls). The worker
takes the oldest waiting request, then gathers more requests whose parameters are equal (and whose
task allows sharing) until ``max_batch_size`` inputs are collected or its wait ends. The wait is
adaptive: at most ``WAIT_FRACTION`` of the time recent batches took to run, and never more than
``max_wait_ms``. A tiny model that answers in milliseconds thus waits a fraction of a millisecond,
while a generation batch that runs for seconds waits long enough to fill up with clients that
arrive together; the latency this adds is bounded to a few percent of the model's own time.
It runs the batch once and hands each caller exactly its own entries, in order. Requests that cannot
join wait for the next batch, keeping their order. A full queue turns into a 503 with Retry-After
instead of unbounded memory growth; a caller whose deadline passes gets a 504 and its inputs are
skipped if they have not started.

All model and tokenizer work happens on the worker thread, so tasks need not be thread-safe.
Each model call's size, the requests held and the tokens of generated entries (their ``num_tokens``)
go to the process's serving metrics (:mod:`mii_azure.runtime.metrics`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..errors import RequestError, RequestTimeoutError, ScoringError, ServiceUnavailableError
from ..tasks.base import Deadline, TaskParameters
from .metrics import serving_metrics

__all__ = ["Batcher", "BatchStats", "WAIT_FRACTION", "queue_full_error", "shutting_down_error", "timeout_error"]

#: A batch waits for company at most this fraction of the time recent batches took to run.
WAIT_FRACTION = 0.05
# Weight of the newest batch in the running average of batch durations.
_SMOOTHING = 0.3

logger = logging.getLogger(__name__)

CheckFn = Callable[[list[Any], TaskParameters], None]
RunFn = Callable[[list[Any], TaskParameters, Deadline], list[Any]]
ShareFn = Callable[[TaskParameters], bool]


@dataclass
class _Request:
    inputs: list[Any]
    parameters: TaskParameters
    deadline: Deadline
    future: "Future[list[Any]]" = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class BatchStats:
    """Counters of what the batcher did, for logs, tests and benchmarks (a batch is one model call)."""

    batches: int = 0
    requests: int = 0
    inputs: int = 0
    largest_batch: int = 0
    rejected_full: int = 0
    timed_out: int = 0


class Batcher:
    """Gathers requests into batches and runs them on a dedicated worker thread."""

    def __init__(
        self,
        run: RunFn,
        *,
        check: CheckFn,
        can_share: ShareFn,
        max_batch_size: int,
        max_wait_ms: float,
        max_queue: int,
        name: str = "mii-azure-batcher",
    ) -> None:
        self._run = run
        self._check = check
        self._can_share = can_share
        self.max_batch_size = max(1, max_batch_size)
        self.max_wait_s = max(0.0, max_wait_ms) / 1000
        self._batch_seconds = 0.0  # running average of how long a batch takes
        self.max_queue = max_queue
        self.stats = BatchStats()
        self._queue: "queue.Queue[Optional[_Request]]" = queue.Queue()
        self._held: deque[_Request] = deque()
        self._waiting = 0
        self._lock = threading.Lock()
        self._closed = False
        self._metrics = serving_metrics()
        self._worker = threading.Thread(target=self._loop, name=name, daemon=True)
        self._worker.start()

    # --- callers -----------------------------------------------------------------------------
    def submit(self, inputs: list[Any], parameters: TaskParameters, deadline: Deadline) -> list[Any]:
        """Run ``inputs`` with ``parameters`` in some batch; block until their entries are ready."""
        with self._lock:
            if self._closed:
                raise shutting_down_error()
            if self._waiting >= self.max_queue:
                self.stats.rejected_full += 1
                raise queue_full_error(self.max_queue)
            self._waiting += 1
            self._metrics.set_queue_depth(self._waiting)
        request = _Request(inputs, parameters, deadline)
        self._queue.put(request)
        try:
            return request.future.result(timeout=deadline.remaining())
        except (FutureTimeout, CancelledError):
            if request.future.cancel():  # not started: its inputs are skipped
                self._release(1)
            with self._lock:
                self.stats.timed_out += 1
            raise timeout_error(deadline) from None

    def close(self, timeout_s: float = 60.0) -> None:
        """Stop taking requests, finish the queued ones, stop the worker."""
        with self._lock:
            self._closed = True
        self._queue.put(None)
        self._worker.join(timeout_s)

    @property
    def wait_s(self) -> float:
        """How long the next batch waits for more requests to join."""
        return min(self.max_wait_s, WAIT_FRACTION * self._batch_seconds)

    @property
    def waiting(self) -> int:
        """Requests queued or running."""
        with self._lock:
            return self._waiting

    # --- the worker --------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            first = self._next(block=True)
            if first is None:
                if self._held:
                    continue
                return
            batch = self._gather(first)
            if batch:
                self._execute(batch)

    def _next(self, *, block: bool, timeout: Optional[float] = None) -> Optional[_Request]:
        if self._held:
            return self._held.popleft()
        try:
            item = self._queue.get(block=block, timeout=timeout)
        except queue.Empty:
            return None
        if item is None:
            self._queue.put(None)  # keep the stop signal for the loop
        return item

    def _admit(self, request: _Request) -> bool:
        """Start ``request`` (False if it was cancelled or fails its checks, which answers it)."""
        if not request.future.set_running_or_notify_cancel():
            return False
        try:
            self._check(request.inputs, request.parameters)
        except RequestError as exc:
            self._finish(request, error=exc)
            return False
        except Exception as exc:  # a bug in a check must not stop the worker
            logger.exception("Request check failed")
            self._finish(request, error=ScoringError(f"Checking the request failed: {type(exc).__name__}: {exc}"))
            return False
        return True

    def _gather(self, first: _Request) -> list[_Request]:
        if not self._admit(first):
            return []
        batch, size = [first], len(first.inputs)
        if size >= self.max_batch_size or not self._can_share(first.parameters):
            return batch
        passed_over: list[_Request] = []
        until = time.perf_counter() + self.wait_s
        while size < self.max_batch_size:
            remaining = until - time.perf_counter()
            candidate = self._next(block=True, timeout=remaining) if remaining > 0 else self._next(block=False)
            if candidate is None:
                break
            joins = (
                candidate.parameters == first.parameters
                and self._can_share(candidate.parameters)
                and size + len(candidate.inputs) <= self.max_batch_size
            )
            if not joins:
                passed_over.append(candidate)
                continue
            if self._admit(candidate):
                batch.append(candidate)
                size += len(candidate.inputs)
        self._held.extendleft(reversed(passed_over))
        return batch

    def _execute(self, batch: list[_Request]) -> None:
        parameters = batch[0].parameters
        deadline = max((request.deadline for request in batch), key=lambda d: d.remaining())
        inputs = [item for request in batch for item in request.inputs]
        try:
            entries = self._run_chunks(inputs, parameters, deadline)
        except RequestError as exc:  # a timeout or refusal that holds for the whole batch
            for request in batch:
                self._finish(request, error=exc)
            return
        except Exception as exc:
            if len(batch) > 1:  # isolate the failure: every request gets its own answer
                for request in batch:
                    self._execute_alone(request)
                return
            self._finish(batch[0], error=exc)
            return
        self._record(batch)
        start = 0
        for request in batch:
            self._finish(request, result=entries[start : start + len(request.inputs)])
            start += len(request.inputs)

    def _execute_alone(self, request: _Request) -> None:
        try:
            result = self._run_chunks(request.inputs, request.parameters, request.deadline)
        except Exception as exc:
            self._finish(request, error=exc)
            return
        self._record([request])
        self._finish(request, result=result)

    def _run_chunks(self, inputs: list[Any], parameters: TaskParameters, deadline: Deadline) -> list[Any]:
        """A request larger than the batch size runs as several batches."""
        entries: list[Any] = []
        for start in range(0, len(inputs), self.max_batch_size):
            chunk = inputs[start : start + self.max_batch_size]
            began = time.perf_counter()
            done = self._run(chunk, parameters, deadline)
            entries += done
            elapsed = time.perf_counter() - began
            self._batch_seconds = elapsed if not self._batch_seconds else (
                _SMOOTHING * elapsed + (1 - _SMOOTHING) * self._batch_seconds
            )
            with self._lock:
                self.stats.batches += 1
                self.stats.inputs += len(chunk)
                self.stats.largest_batch = max(self.stats.largest_batch, len(chunk))
            self._metrics.observe_batch(len(chunk), phase="batch")
            self._metrics.count_generated_tokens(_generated_tokens(done))
        return entries

    def _record(self, batch: list[_Request]) -> None:
        with self._lock:
            self.stats.requests += len(batch)

    def _finish(self, request: _Request, *, result: Optional[list[Any]] = None, error: Optional[BaseException] = None) -> None:
        self._release(1)  # before the caller hears, so that its next look at the queue is current
        if error is not None:
            if not isinstance(error, RequestError):
                logger.error("Scoring failed", exc_info=error)
                error = ScoringError(f"Scoring failed: {type(error).__name__}: {error}")
            request.future.set_exception(error)
        else:
            request.future.set_result(result or [])

    def _release(self, count: int) -> None:
        with self._lock:
            self._waiting -= count
            self._metrics.set_queue_depth(self._waiting)


def _generated_tokens(entries: list[Any]) -> int:
    """Tokens the generated entries of one batch hold (their ``num_tokens``; 0 for other tasks)."""
    total = 0
    for entry in entries:
        if isinstance(entry, dict):
            count = entry.get("num_tokens")
            if isinstance(count, int) and not isinstance(count, bool):
                total += count
    return total


def queue_full_error(limit: int) -> ServiceUnavailableError:
    """The 503 for a request beyond the queue limit."""
    return ServiceUnavailableError(
        f"The deployment's queue is full ({limit} requests waiting); retry shortly or add instances.",
        retry_after=1,
        queue_limit=limit,
    )


def shutting_down_error() -> ServiceUnavailableError:
    """The 503 for a request that arrives while the engine stops."""
    return ServiceUnavailableError("The deployment is shutting down; retry on another instance.", retry_after=5)


def timeout_error(deadline: Deadline) -> RequestTimeoutError:
    """The 504 for a request that waited or ran past its deadline."""
    return RequestTimeoutError(
        f"The request ran past its timeout of {deadline.timeout_s:g} s (waited for the model or ran too long). "
        "Send fewer or shorter inputs, or raise the deployment's request timeout.",
        timeout_s=deadline.timeout_s,
    )
