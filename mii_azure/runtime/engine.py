"""The engine: one loaded, optimized model serving one task, shared by every request of a process."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Optional

from ..config import ServingSettings
from ..errors import ConfigError
from ..hardware import Hardware
from ..models import ModelFacts, find_model_folder, resolve_model, resolve_task
from ..planner import OptimizationPlan, PlanOverrides, make_plan
from ..tasks import get_task
from ..tasks.base import Deadline, LoadOptions, ScoringRequest, Task
from .batcher import Batcher
from .optimize import AppliedPlan, apply_plan, graph_failures
from .parallel import TensorParallelGroup
from .zero_inference import ZeroInference

__all__ = ["Engine"]

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
        self.batcher = Batcher(
            self._run_batch,
            check=lambda inputs, parameters: self.task.check(inputs, parameters),
            can_share=lambda parameters: self.task.shares_batches(parameters),
            max_batch_size=self.settings.batch_limit(plan.max_batch_size),
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
            "Loaded %s (%s parameters, batches up to %d) for %s in %.1f s; applied: %s",
            facts.name,
            f"{facts.parameter_count:,}" if facts.parameter_count else "unknown",
            engine.batcher.max_batch_size,
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
