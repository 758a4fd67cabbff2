"""The engine: one loaded model serving one task, shared by every request of a process."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Optional

from ..config import ServingSettings
from ..errors import RequestTimeoutError
from ..models import ModelFacts, find_model_folder, resolve_model, resolve_task
from ..tasks import get_task
from ..tasks.base import Deadline, LoadOptions, ScoringRequest, Task

__all__ = ["Engine"]

logger = logging.getLogger(__name__)

# The first call may compile kernels or fill caches; it is not held to the request timeout.
_WARM_UP_TIMEOUT_S = 3600.0


class Engine:
    """Runs validated requests through a loaded task, one model call at a time."""

    def __init__(self, task: Task, *, load_seconds: float = 0.0) -> None:
        self.task = task
        self.facts: ModelFacts = task.facts
        self.settings: ServingSettings = task.settings
        self.load_seconds = load_seconds
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls,
        model_dir: Path,
        *,
        settings: Optional[ServingSettings] = None,
        options: Optional[LoadOptions] = None,
    ) -> "Engine":
        """Resolve the model in ``model_dir`` (or one level down), load it for its task, and warm it up."""
        settings = settings or ServingSettings()
        options = options or LoadOptions()
        started = time.perf_counter()
        folder = find_model_folder(Path(model_dir))
        facts = resolve_model(folder)
        task_name = resolve_task(facts, settings.task)
        logger.info("Loading %s from %s for %s (%s on %s)", facts.architecture, folder, task_name, options.dtype, options.device)
        task = get_task(task_name).load(folder, facts, settings, options)
        engine = cls(task, load_seconds=time.perf_counter() - started)
        engine.warm_up()
        logger.info(
            "Loaded %s (%s parameters, %s) for %s in %.1f s",
            facts.name,
            f"{facts.parameter_count:,}" if facts.parameter_count else "unknown",
            options.dtype,
            task_name,
            engine.load_seconds,
        )
        return engine

    @property
    def task_name(self) -> str:
        """The task this engine serves."""
        return self.task.name

    def warm_up(self) -> list[Any]:
        """Answer the task's sample input once, so the first real request is not the slow one."""
        task_cls = type(self.task)
        parameters = task_cls.parse_parameters({})
        request = ScoringRequest(inputs=self.task.sample_inputs, parameters=parameters)
        return self.infer(request, Deadline(_WARM_UP_TIMEOUT_S))

    def infer(self, request: ScoringRequest, deadline: Deadline) -> list[Any]:
        """Check and run one request; entries in input order."""
        if not self._lock.acquire(timeout=deadline.remaining()):
            raise RequestTimeoutError(
                f"The request waited {deadline.timeout_s:g} s for the model without getting a turn; the "
                "deployment is overloaded. Retry later or add instances.",
                timeout_s=deadline.timeout_s,
            )
        try:
            self.task.check(request.inputs, request.parameters)
            return self.task.predict(request.inputs, request.parameters, deadline)
        finally:
            self._lock.release()
