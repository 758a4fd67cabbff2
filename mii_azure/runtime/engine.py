"""The engine: one loaded, optimized model serving one task, shared by every request of a process."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from collections.abc import Iterator
from typing import Any, Optional, Union

from ..config import ServingSettings
from ..errors import BadRequestError, ConfigError
from ..hardware import Hardware
from ..models import ModelFacts, find_model_folder, resolve_model, resolve_task
from ..planner import OptimizationPlan, PlanOverrides, make_plan
from ..tasks import get_task
from ..tasks.base import Deadline, LoadOptions, ScoringRequest, Task
from .batcher import Batcher
from .generation import StreamEnd, StreamEvent, TextPiece
from .generation.model_runner import CausalLMRunner
from .generation.scheduler import ContinuousBatcher
from .optimize import AppliedPlan, apply_plan, graph_failures
from .parallel import TensorParallelGroup
from .zero_inference import ZeroInference

__all__ = ["Engine", "STREAMING_TASKS"]

#: Tasks whose answers can stream (DESIGN.md section 3a).
STREAMING_TASKS = ("text-generation", "text2text-generation")

logger = logging.getLogger(__name__)

# The first call may compile kernels or fill caches; it is not held to the request timeout.
_WARM_UP_TIMEOUT_S = 3600.0


class Engine:
    """Runs validated requests through a loaded task, batching concurrent ones."""

    def __init__(
        self,
        task: Task,
        plan: OptimizationPlan,
        applied: AppliedPlan,
        *,
        load_seconds: float = 0.0,
        group: Optional[TensorParallelGroup] = None,
    ) -> None:
        self.task = task
        self.plan = plan
        self.applied = applied
        self.group = group
        self.facts: ModelFacts = task.facts
        self.settings: ServingSettings = task.settings
        self.load_seconds = load_seconds
        runner, self.scheduling_reason = choose_scheduling(task, applied, settings=self.settings, distributed=group is not None)
        #: "continuous" (per decode step) or "request" (whole requests batched); scheduling_reason says why.
        self.scheduling = "continuous" if runner is not None else "request"
        max_batch_size = self.settings.batch_limit(plan.max_batch_size)
        self.batcher: Union[Batcher, ContinuousBatcher]
        if runner is not None:
            self.batcher = _continuous_batcher(task, runner, plan, self.settings, max_batch_size)
        else:
            self.batcher = Batcher(
                self._run_batch,
                check=lambda inputs, parameters: self.task.check(inputs, parameters),
                can_share=lambda parameters: self.task.shares_batches(parameters),
                max_batch_size=max_batch_size,
                max_wait_ms=self.settings.max_wait_ms,
                max_queue=self.settings.max_queue,
            )

    @classmethod
    def load(
        cls,
        model_dir: Path,
        *,
        settings: Optional[ServingSettings] = None,
        plan: Optional[OptimizationPlan] = None,
        hardware: Optional[Hardware] = None,
        overrides: Optional[PlanOverrides] = None,
    ) -> "Engine":
        """Resolve the model in ``model_dir`` (or one level down), plan it for ``hardware`` (this
        machine by default, with ``overrides``) unless ``plan`` is given, load and optimize it, and
        warm it up."""
        settings = settings or ServingSettings()
        started = time.perf_counter()
        folder = find_model_folder(Path(model_dir))
        facts = resolve_model(folder)
        task_name = resolve_task(facts, settings.task)
        plan = plan or make_plan(facts, hardware or Hardware.local(), task=task_name, overrides=overrides or PlanOverrides())
        if plan.task != task_name:
            raise ConfigError(
                f"The plan is for {plan.task!r} but this deployment serves {task_name!r}; make the plan with task={task_name!r}.",
                conflict="task",
            )
        zero = ZeroInference(plan, settings) if plan.zero_offload else None
        # ZeRO-Inference loads on the host and streams to the GPU; everything else loads where it runs.
        device = "cuda" if plan.hardware.kind == "gpu" and zero is None else "cpu"
        options = LoadOptions(device=device, dtype=plan.dtype)
        group = TensorParallelGroup(folder, plan, settings) if plan.tensor_parallel > 1 else None
        try:
            if group is not None:
                group.start()
            if zero is not None:
                zero.before_loading()
            logger.info("Loading %s from %s for %s (%s on %s)", facts.architecture, folder, task_name, options.dtype, options.device)
            task_cls = get_task(task_name)
            task = task_cls.load(folder, facts, settings, options)
            task.enforce_deadline = group is None
            applied = apply_plan(
                task,
                plan,
                distributed=group is not None,
                zero=zero,
                reload=lambda: task_cls.load(folder, facts, settings, options),
            )
            for fallback in applied.fallbacks:
                logger.warning("Plan not applied as planned: %s", fallback)
            engine = cls(task, plan, applied, load_seconds=time.perf_counter() - started, group=group)
            engine.warm_up()
        except BaseException:
            if group is not None:
                group.kill()
            raise
        logger.info(
            "Loaded %s (%s parameters, batches up to %d, %s batching: %s) for %s in %.1f s; applied: %s",
            facts.name,
            f"{facts.parameter_count:,}" if facts.parameter_count else "unknown",
            engine.batcher.max_batch_size,
            engine.scheduling,
            engine.scheduling_reason,
            task_name,
            engine.load_seconds,
            engine.applied.describe(),
        )
        return engine

    @property
    def task_name(self) -> str:
        """The task this engine serves."""
        return self.task.name

    def warm_up(self) -> list[Any]:
        """Answer the task's sample input once, so the first real request is not the slow one (and
        the first CUDA graph is captured: a capture that fails is recorded in :attr:`applied`)."""
        parameters = type(self.task).parse_parameters({})
        request = ScoringRequest(inputs=self.task.sample_inputs, parameters=parameters)
        answer = self.infer(request, Deadline(_WARM_UP_TIMEOUT_S))
        self.refresh_applied()
        return answer

    def refresh_applied(self) -> AppliedPlan:
        """:attr:`applied`, updated with CUDA graphs turned off since loading (a failed capture)."""
        failures = [failure for failure in graph_failures(self.task) if failure not in self.applied.fallbacks]
        if failures:
            self.applied = self.applied.model_copy(update={"cuda_graph": False, "fallbacks": self.applied.fallbacks + tuple(failures)})
            for failure in failures:
                logger.warning("Plan not applied as planned: %s", failure)
        return self.applied

    def infer(self, request: ScoringRequest, deadline: Deadline) -> list[Any]:
        """Check and run one request in some batch; its entries in input order."""
        return self.batcher.submit(request.inputs, request.parameters, deadline)

    def stream(self, request: ScoringRequest, deadline: Deadline) -> Iterator[StreamEvent]:
        """Run a one-input generation request, yielding its text as it is made, then its entry.

        Raises a RequestError (from the first ``next``) for a request that cannot stream or fails;
        closing the iterator early gives up the request.
        """
        if self.task.name not in STREAMING_TASKS:
            raise BadRequestError(
                f"Streaming is for text generation; this deployment serves {self.task.name}. "
                "Send the request without \"stream\": true.",
                task=self.task.name,
            )
        if len(request.inputs) != 1:
            raise BadRequestError(
                f"A streamed request carries exactly one input; this one has {len(request.inputs)}. "
                "Send one request per input, or leave out \"stream\": true.",
                inputs=len(request.inputs),
            )
        if isinstance(self.batcher, ContinuousBatcher):
            return self.batcher.stream(request.inputs[0], request.parameters, deadline)  # type: ignore[arg-type]
        return self._stream_whole(request, deadline)

    def _stream_whole(self, request: ScoringRequest, deadline: Deadline) -> Iterator[StreamEvent]:
        # Request-level batching makes the text in one go: it streams as one piece.
        (entry,) = self.infer(request, deadline)
        text = entry["generated_text"]
        if getattr(request.parameters, "return_full_text", False):
            text = text[len(request.inputs[0]) :]  # pieces are new text only, as with continuous batching
        if text:
            yield TextPiece(text)
        yield StreamEnd(entry)

    def close(self) -> None:
        """Finish queued requests, stop the batching worker and any follower ranks."""
        self.batcher.close()
        if self.group is not None:
            self.group.stop()

    def _run_batch(self, inputs: list[Any], parameters: Any, deadline: Deadline) -> list[Any]:
        # Looked up on each call, so the task (or its model) can be swapped under the batcher.
        if self.group is not None:
            return self.group.run(self.task.predict, inputs, parameters, deadline)
        return self.task.predict(inputs, parameters, deadline)


def choose_scheduling(
    task: Task, applied: AppliedPlan, *, settings: ServingSettings, distributed: bool
) -> tuple[Optional[CausalLMRunner], str]:
    """The model runner and why, when text generation can be scheduled per decode step here; else
    None and why not (whole requests are batched together, each batch running to its end)."""
    if task.name != "text-generation":
        return None, f"{task.name} batches whole requests"
    if not settings.continuous_batching:
        return None, "continuous batching is turned off (continuous_batching=false)"
    if distributed:
        return None, "tensor-parallel ranks run whole batches in lockstep"
    if applied.zero_offload:
        return None, "ZeRO-Inference streams the weights once per whole batch"
    if applied.deepspeed or applied.kernel_inject:
        return None, "DeepSpeed's injected layers keep one KV cache for the whole batch"
    if applied.cuda_graph:
        return None, "CUDA graphs replay whole-batch shapes"
    runner = CausalLMRunner(task.model, max_positions=task.facts.max_positions)  # type: ignore[attr-defined]
    unsupported = runner.unsupported_reason()
    if unsupported:
        return None, f"{task.facts.name} cannot join and leave a running batch: {unsupported}"
    fused = runner.fused_reason()
    prefill = "joining prompts are prefilled in the decode step's own pass" if fused is None else (
        f"prompts are prefilled in passes of their own, because {fused}")
    return runner, f"sequences join and leave the batch between decode steps; {prefill}"


def _continuous_batcher(
    task: Task, runner: CausalLMRunner, plan: OptimizationPlan, settings: ServingSettings, max_batch_size: int
) -> ContinuousBatcher:
    max_positions = task.facts.max_positions
    budget = settings.kv_cache_tokens or plan.kv_cache_tokens or max_batch_size * (max_positions or 2048)
    return ContinuousBatcher(
        runner,
        task.tokenizer,  # type: ignore[attr-defined]
        check=task.check,  # type: ignore[arg-type]
        encode=task.prompt_tokens,  # type: ignore[attr-defined]
        end_of_text=task.end_of_text_ids(),  # type: ignore[attr-defined]
        max_batch_size=max_batch_size,
        kv_cache_tokens=budget,
        prefill_chunk_tokens=settings.prefill_chunk_tokens,
        max_queue=settings.max_queue,
    )
