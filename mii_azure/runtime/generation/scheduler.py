"""Continuous batching: text generation scheduled per decode step, on one worker thread.

Between two decode steps, finished sequences leave the batch and waiting ones join: first their
prefill (short prompts together, a long one in chunks of ``prefill_chunk_tokens`` so that it stalls
the others' decoding for one chunk at a time), then decoding with the rest. Where the runner can
(:attr:`CausalLMRunner.fuses_prefill`), short prompts are prefilled inside the next decode step's
own forward pass instead of a pass of their own. A sequence is admitted
while the batch has fewer than ``max_batch_size`` rows and the padded cache, rows times the longest
sequence it may reach, stays within ``kv_cache_tokens``; otherwise it waits its turn, so nothing
runs out of memory and nothing is dropped. Every sequence keeps its own sampling settings and random
generator. The queue limit (503 with Retry-After), deadlines (504) and failure isolation mean what
they mean for request-level batching (:mod:`mii_azure.runtime.batcher`).

It reports to the process's serving metrics (:mod:`mii_azure.runtime.metrics`): each sequence's time
to first token, the tokens generated, the rows of every prefill pass and decode step, the requests it
holds and the KV cache the running batch needs (once per step, so the decode loop stays cheap).

All model and tokenizer work happens on the worker thread.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import torch

from ...errors import BadRequestError, RequestError, ScoringError
from ...tasks.base import Deadline
from ...tasks.generation import TextGenerationParameters
from .events import StreamEnd, StreamEvent, TextPiece
from ..batcher import queue_full_error, shutting_down_error, timeout_error
from ..metrics import serving_metrics
from .batch_cache import BatchCache
from .kv_cache import PaddedCache
from .model_runner import CausalLMRunner
from .sampling import TokenChooser, greedy_rows
from .text import SequenceText

__all__ = ["ContinuousBatcher", "ContinuousStats"]

logger = logging.getLogger(__name__)

CheckFn = Callable[[list[str], TextGenerationParameters], None]
EncodeFn = Callable[[str], list[int]]


@dataclass
class ContinuousStats:
    """Counters of what the scheduler did, for logs, tests and benchmarks."""

    steps: int = 0  # decode steps
    prefills: int = 0  # prefill passes (a chunk of a long prompt counts as one)
    requests: int = 0
    inputs: int = 0
    largest_batch: int = 0  # most rows decoded together
    rejected_full: int = 0
    timed_out: int = 0
    cancelled: int = 0
    waited_for_cache: int = 0  # times the head of the queue waited for KV-cache room


@dataclass(eq=False)
class _Request:
    inputs: list[str]
    parameters: TextGenerationParameters
    deadline: Deadline
    events: Optional["queue.Queue[Union[StreamEvent, BaseException]]"] = None
    future: "Future[list[Any]]" = field(default_factory=Future)
    sequences: list["_Sequence"] = field(default_factory=list)
    gave_up: bool = False  # the caller timed out or closed its stream
    submitted: float = field(default_factory=time.perf_counter)

    def answered(self) -> bool:
        return self.future.done()


@dataclass(eq=False)
class _Sequence:
    request: _Request
    input: str
    prompt: list[int]
    chooser: TokenChooser
    text: SequenceText
    max_new_tokens: int
    state: Optional[PaddedCache] = None  # its own cache while its prompt is prefilled in chunks
    prefilled: int = 0
    last_token: int = -1  # sampled, not yet in the cache

    @property
    def reach(self) -> int:
        """The most positions this sequence may occupy in the cache."""
        return len(self.prompt) + self.max_new_tokens

    def seen(self) -> torch.Tensor:
        return torch.tensor(self.prompt + self.text.tokens, dtype=torch.long)


class ContinuousBatcher:
    """Schedules decoder-only generation per step; :meth:`submit` and :meth:`stream` are thread-safe."""

    def __init__(
        self,
        runner: CausalLMRunner,
        tokenizer: Any,
        *,
        check: CheckFn,
        encode: EncodeFn,
        end_of_text: set[int],
        max_batch_size: int,
        kv_cache_tokens: int,
        prefill_chunk_tokens: int,
        max_queue: int,
        name: str = "mii-azure-continuous",
    ) -> None:
        self.runner = runner
        self._tokenizer = tokenizer
        self._check = check
        self._encode = encode
        self._end_of_text = end_of_text
        self.max_batch_size = max(1, max_batch_size)
        self.kv_cache_tokens = kv_cache_tokens
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self.max_queue = max_queue
        self.stats = ContinuousStats()
        self._inbox: "queue.Queue[Optional[_Request]]" = queue.Queue()
        self._waiting_sequences: deque[_Sequence] = deque()
        self._chunking: Optional[_Sequence] = None
        self._running: list[_Sequence] = []
        self._prefilling: list[_Sequence] = []  # the sequences of the current prefill pass
        self._batch = BatchCache()
        self._waiting = 0
        self._lock = threading.Lock()
        self._closed = False
        self._stopping = False
        self._metrics = serving_metrics()
        self._metrics.set_kv_cache(0, kv_cache_tokens)
        self._generated = 0  # tokens generated since the metrics last heard (worker thread only)
        self._worker = threading.Thread(target=self._loop, name=name, daemon=True)
        self._worker.start()
        # Stop the worker before the interpreter finalizes: a daemon thread that has run torch ops can
        # abort the process ("terminate called without an active exception") when it is killed there.
        atexit.register(self.close, 5.0)

    # --- callers -----------------------------------------------------------------------------
    def submit(self, inputs: list[str], parameters: TextGenerationParameters, deadline: Deadline) -> list[Any]:
        """Generate for every input; block until all entries are ready (in input order)."""
        request = self._enqueue(_Request(list(inputs), parameters, deadline))
        try:
            return request.future.result(timeout=deadline.remaining())
        except (FutureTimeout, CancelledError):
            self._give_up(request, timed_out=True)
            raise timeout_error(deadline) from None

    def stream(self, text: str, parameters: TextGenerationParameters, deadline: Deadline) -> Iterator[StreamEvent]:
        """Generate for one input, yielding :class:`TextPiece` events as text is made, then a
        :class:`StreamEnd`. Errors are raised from ``next``; closing the iterator gives up the request."""
        request = self._enqueue(_Request([text], parameters, deadline, events=queue.Queue()))
        return _EventStream(self, request)

    def close(self, timeout_s: float = 60.0) -> None:
        """Stop taking requests, finish the accepted ones, stop the worker."""
        with self._lock:
            self._closed = True
        self._inbox.put(None)
        self._worker.join(timeout_s)

    @property
    def waiting(self) -> int:
        """Requests queued or running."""
        with self._lock:
            return self._waiting

    def _enqueue(self, request: _Request) -> _Request:
        with self._lock:
            if self._closed:
                raise shutting_down_error()
            if self._waiting >= self.max_queue:
                self.stats.rejected_full += 1
                raise queue_full_error(self.max_queue)
            self._waiting += 1
            self._metrics.set_queue_depth(self._waiting)
        self._inbox.put(request)
        return request

    def _give_up(self, request: _Request, *, timed_out: bool) -> None:
        """The caller stopped waiting; the worker drops the request's sequences at its next step."""
        with self._lock:
            if request.gave_up:
                return
            request.gave_up = True
            if timed_out:
                self.stats.timed_out += 1
            else:
                self.stats.cancelled += 1

    # --- the worker --------------------------------------------------------------------------
    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                self._publish()
                idle = not (self._running or self._chunking or self._waiting_sequences)
                if not self._take_requests(block=idle):
                    return
                self._drop_abandoned()
                joining: list[_Sequence] = []
                try:
                    joining = self._prefill_step()
                except Exception as exc:  # a fault in one prefill fails only the sequences in it
                    logger.exception("Prefill failed")
                    self._fail_group(self._prefilling, exc)
                self._prefilling = []
                if self._running or joining:
                    try:
                        self._decode_step(joining)
                    except Exception as exc:  # fails the sequences of that pass only
                        logger.exception("Decode step failed")
                        self._fail_group(list(self._running) + joining, exc)
                        self._running, self._batch = [], BatchCache()

    def _take_requests(self, *, block: bool) -> bool:
        """Move new requests into the waiting line; False once closed with nothing left to do."""
        while True:
            try:
                item = self._inbox.get(block=block and not self._stopping)
            except queue.Empty:
                break
            block = False
            if item is None:
                self._stopping = True
            else:
                self._accept(item)
        busy = self._running or self._chunking or self._waiting_sequences
        return bool(busy) or not self._stopping

    def _accept(self, request: _Request) -> None:
        if request.gave_up:
            self._answer(request, error=timeout_error(request.deadline))
            return
        try:
            self._check(request.inputs, request.parameters)
            prompts = [self._encode(text) for text in request.inputs]
        except RequestError as exc:
            self._answer(request, error=exc)
            return
        except Exception as exc:  # a bug in a check must not stop the worker
            logger.exception("Request check failed")
            self._answer(request, error=ScoringError(f"Checking the request failed: {type(exc).__name__}: {exc}"))
            return
        parameters = request.parameters
        for index, (text, prompt) in enumerate(zip(request.inputs, prompts)):
            if not prompt:
                self._answer(
                    request,
                    error=BadRequestError(
                        f"Input {index} encodes to no tokens with this model's tokenizer; send some text it can read.",
                        index=index,
                    ),
                )
                return
            sequence = _Sequence(
                request=request,
                input=text,
                prompt=prompt,
                chooser=TokenChooser(
                    sampling=parameters.sampling,
                    temperature=parameters.temperature,
                    top_k=parameters.top_k,
                    top_p=parameters.top_p,
                    repetition_penalty=parameters.repetition_penalty,
                    seed=parameters.seed,
                ),
                text=SequenceText(self._tokenizer, end_of_text=self._end_of_text, stops=parameters.stop_sequences),
                max_new_tokens=parameters.max_new_tokens,
            )
            if sequence.reach > self.kv_cache_tokens:
                self._answer(
                    request,
                    error=BadRequestError(
                        f"A prompt of {len(prompt)} tokens plus max_new_tokens={parameters.max_new_tokens} needs "
                        f"{sequence.reach} tokens of KV cache; this deployment holds {self.kv_cache_tokens}. "
                        "Lower max_new_tokens or shorten the prompt.",
                        needed=sequence.reach,
                        limit=self.kv_cache_tokens,
                    ),
                )
                return
            request.sequences.append(sequence)
        with self._lock:
            self.stats.requests += 1
            self.stats.inputs += len(prompts)
        self._waiting_sequences.extend(request.sequences)

    def _drop_abandoned(self) -> None:
        """Sequences whose caller gave up or whose deadline passed leave at this step."""
        def abandoned(sequence: _Sequence) -> bool:
            request = sequence.request
            if request.answered():
                return True
            if request.gave_up:
                self._answer(request, error=timeout_error(request.deadline))
                return True
            if request.deadline.remaining() <= 0:
                with self._lock:
                    self.stats.timed_out += 1
                self._answer(request, error=timeout_error(request.deadline))
                return True
            return False

        self._waiting_sequences = deque(s for s in self._waiting_sequences if not abandoned(s))
        if self._chunking is not None and abandoned(self._chunking):
            self._chunking = None
        keep = [row for row, sequence in enumerate(self._running) if not abandoned(sequence)]
        self._keep_rows(keep)

    def _room_for(self, sequence: _Sequence, joining: list[_Sequence]) -> bool:
        rows = self._running + joining + ([self._chunking] if self._chunking else [])
        if len(rows) + 1 > self.max_batch_size:
            return False
        reach = max([s.reach for s in rows] + [sequence.reach])
        return (len(rows) + 1) * reach <= self.kv_cache_tokens

    def _prefill_step(self) -> list[_Sequence]:
        """Prefill at most ``prefill_chunk_tokens`` of waiting prompts (or one chunk of a long one).
        When the runner fuses prefill into decode steps, whole prompts are not run here but returned,
        to join the next step."""
        chunk = self.prefill_chunk_tokens
        if self._chunking is not None:
            self._prefilling = [self._chunking]
            self._extend_chunk(self._chunking)
            return []
        group: list[_Sequence] = []
        while self._waiting_sequences:
            sequence = self._waiting_sequences[0]
            width = max([len(s.prompt) for s in group] + [len(sequence.prompt)])
            if group and (len(group) + 1) * width > chunk:
                break
            if not self._room_for(sequence, group):
                with self._lock:
                    self.stats.waited_for_cache += 1
                break
            self._waiting_sequences.popleft()
            if len(sequence.prompt) > chunk:
                if group:  # a long prompt goes alone, in chunks, after this group
                    self._waiting_sequences.appendleft(sequence)
                    break
                self._prefilling = [sequence]
                self._chunking = sequence
                self._extend_chunk(sequence)
                return []
            group.append(sequence)
        if not group or self.runner.fuses_prefill:
            return group
        self._prefilling = group
        self._metrics.observe_batch(len(group), phase="prefill")
        logits, state = self.runner.prefill([s.prompt for s in group])
        with self._lock:
            self.stats.prefills += 1
        for sequence in group:
            sequence.prefilled = len(sequence.prompt)
        self._start_decoding(group, logits, state)
        return []

    def _extend_chunk(self, sequence: _Sequence) -> None:
        chunk = self.prefill_chunk_tokens
        start = sequence.prefilled
        piece = sequence.prompt[start : start + chunk]
        self._metrics.observe_batch(1, phase="prefill")
        if sequence.state is None:
            logits, sequence.state = self.runner.prefill([piece])
        else:
            logits = self.runner.extend(sequence.state, piece)
        sequence.prefilled += len(piece)
        with self._lock:
            self.stats.prefills += 1
        if sequence.prefilled < len(sequence.prompt):
            return
        self._chunking = None
        state, sequence.state = sequence.state, None
        self._start_decoding([sequence], logits, state)

    def _start_decoding(self, group: list[_Sequence], logits: torch.Tensor, state: PaddedCache) -> None:
        """Take each prefilled sequence's first token; those not finished join the running batch."""
        tokens = self._choose(group, logits)
        now = time.perf_counter()
        for sequence in group:
            self._metrics.observe_first_token(now - sequence.request.submitted)
        joining = [row for row, (sequence, token) in enumerate(zip(group, tokens)) if not self._advance(sequence, token)]
        if joining:
            self._batch.join(state, joining)
            self._running.extend(group[row] for row in joining)

    def _decode_step(self, joining: list[_Sequence]) -> None:
        """One token for every running row; ``joining`` prompts (from a fusing runner) are prefilled in
        the same pass and take their first token."""
        running = self._running
        if running:
            self._metrics.observe_batch(len(running), phase="decode")
        if joining:
            self._metrics.observe_batch(len(joining), phase="prefill")
        last_tokens = [sequence.last_token for sequence in running]
        if self.runner.fuses_prefill:
            decoded, prefilled = self.runner.step(self._batch, last_tokens, [sequence.prompt for sequence in joining])
            logits = torch.cat([decoded, prefilled]) if joining else decoded
        else:
            logits = self.runner.decode(self._batch, last_tokens)
        with self._lock:
            self.stats.steps += 1 if running else 0
            self.stats.prefills += 1 if joining else 0
            self.stats.largest_batch = max(self.stats.largest_batch, len(running))
        if joining:
            now = time.perf_counter()
            for sequence in joining:
                sequence.prefilled = len(sequence.prompt)
                self._metrics.observe_first_token(now - sequence.request.submitted)
            self._running = running = running + joining  # the batch holds them in this order now
        tokens = self._choose(running, logits)
        keep = [row for row, (sequence, token) in enumerate(zip(running, tokens)) if not self._advance(sequence, token)]
        self._keep_rows(keep)

    def _keep_rows(self, keep: list[int]) -> None:
        if len(keep) == len(self._running):
            return
        order = self._batch.keep(keep)
        self._running = [self._running[row] for row in order]

    def _choose(self, sequences: list[_Sequence], logits: torch.Tensor) -> list[int]:
        greedy = [row for row, sequence in enumerate(sequences) if sequence.chooser.plain_greedy]
        tokens = [0] * len(sequences)
        if greedy:
            picks = greedy_rows(logits[greedy] if len(greedy) < len(sequences) else logits)
            for row, token in zip(greedy, picks):
                tokens[row] = token
        for row, sequence in enumerate(sequences):
            if not sequence.chooser.plain_greedy:
                tokens[row] = sequence.chooser.choose(logits[row], sequence.seen())
        return tokens

    def _advance(self, sequence: _Sequence, token: int) -> bool:
        """Add ``token`` to the sequence and stream what became final; True when it is done."""
        text = sequence.text
        before = text.num_tokens
        text.add(token)
        self._generated += text.num_tokens - before
        sequence.last_token = token
        done = text.finished or text.num_tokens >= sequence.max_new_tokens
        piece = text.finish() if done else text.release()
        request = sequence.request
        if piece and request.events is not None:
            request.events.put(TextPiece(piece))
        if done and all(s.text.finished for s in request.sequences):
            self._answer(request, result=[self._entry(s) for s in request.sequences])
        return done

    def _entry(self, sequence: _Sequence) -> dict[str, Any]:
        text = sequence.text.text
        if sequence.request.parameters.return_full_text:
            text = sequence.input + text
        return {"generated_text": text, "num_tokens": sequence.text.num_tokens}

    def _fail_group(self, sequences: list[_Sequence], error: BaseException) -> None:
        for request in {id(s.request): s.request for s in sequences}.values():
            self._answer(request, error=ScoringError(f"Scoring failed: {type(error).__name__}: {error}"))
        failed = {id(s.request) for s in sequences}
        self._waiting_sequences = deque(s for s in self._waiting_sequences if id(s.request) not in failed)
        if self._chunking is not None and id(self._chunking.request) in failed:
            self._chunking = None
        self._keep_rows([row for row, s in enumerate(self._running) if id(s.request) not in failed])

    def _answer(self, request: _Request, *, result: Optional[list[Any]] = None, error: Optional[BaseException] = None) -> None:
        if request.answered():
            return
        self._flush_generated()
        with self._lock:  # before the caller hears, so that its next look at the queue is current
            self._waiting -= 1
            self._metrics.set_queue_depth(self._waiting)
        if error is not None:
            request.future.set_exception(error)
            if request.events is not None:
                request.events.put(error)
        else:
            request.future.set_result(result or [])
            if request.events is not None:
                request.events.put(StreamEnd(result[0] if result else {}))

    def _flush_generated(self) -> None:
        if self._generated:
            self._metrics.count_generated_tokens(self._generated)
            self._generated = 0

    def _publish(self) -> None:
        """Tell the metrics what the last step did and what the running batch holds (once per step)."""
        self._flush_generated()
        rows = len(self._running)
        reach = max((sequence.reach for sequence in self._running), default=0)
        if self._chunking is not None:
            rows += 1
            reach = max(reach, self._chunking.reach)
        self._metrics.set_kv_cache(rows * reach, self.kv_cache_tokens)


class _EventStream:
    """One streamed request's events, as they come; closing it (even before the first ``next``) gives
    the request up."""

    def __init__(self, batcher: ContinuousBatcher, request: _Request) -> None:
        self._batcher = batcher
        self._request = request
        self._done = False

    def __iter__(self) -> "_EventStream":
        return self

    def __next__(self) -> StreamEvent:
        events = self._request.events
        if self._done or events is None:
            raise StopIteration
        try:
            event = events.get(timeout=self._request.deadline.remaining())
        except queue.Empty:
            self._done = True
            self._batcher._give_up(self._request, timed_out=True)
            raise timeout_error(self._request.deadline) from None
        if isinstance(event, BaseException):
            self._done = True
            raise event
        if isinstance(event, StreamEnd):
            self._done = True
        return event

    def close(self) -> None:
        """Stop reading; the worker drops the sequence at its next step if it still runs."""
        self._done = True
        if not self._request.answered():
            self._batcher._give_up(self._request, timed_out=False)
