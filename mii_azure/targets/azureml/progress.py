"""What a deployment is doing, while it does it: one line per stage with its elapsed time (rich), and
the same stages in the log for runs nobody watches."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable, Union

__all__ = ["StageReporter", "ProgressLike"]

logger = logging.getLogger("mii_azure.azureml")

#: ``True`` for the rich display, ``False`` for none, or a callable that takes each line.
ProgressLike = Union[bool, Callable[[str], None], None]


class StageReporter:
    """Reports the stages of one deployment (preflight, model, environment, endpoint, deployment, ...)."""

    def __init__(self, progress: ProgressLike, *, title: str) -> None:
        self.title = title
        self._callback = progress if callable(progress) else None
        self._rich: Any = None
        self._started = time.monotonic()
        if progress is True:
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._rich = Progress(SpinnerColumn(finished_text="[green]✓"), TextColumn("{task.description}"), TimeElapsedColumn(), transient=False)

    def __enter__(self) -> "StageReporter":
        if self._rich is not None:
            self._rich.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._rich is not None:
            self._rich.stop()

    @contextmanager
    def stage(self, name: str, detail: str) -> Iterator[Callable[[str], None]]:
        """Run one stage; the block may call the yielded function to update its text."""
        started = time.monotonic()
        logger.info("%s: %s: %s", self.title, name, detail)
        self._emit(f"[{name}] {detail}")
        task = self._rich.add_task(f"[bold]{name}[/] {detail}", total=1) if self._rich is not None else None

        def update(text: str) -> None:
            logger.info("%s: %s: %s", self.title, name, text)
            if task is not None:
                self._rich.update(task, description=f"[bold]{name}[/] {text}")
            self._emit(f"[{name}] {text}")

        try:
            yield update
        except BaseException:
            if task is not None:
                self._rich.update(task, description=f"[bold red]{name}[/] failed after {time.monotonic() - started:.0f} s")
            raise
        if task is not None:
            self._rich.update(task, completed=1)
        logger.info("%s: %s done in %.1f s", self.title, name, time.monotonic() - started)

    def note(self, text: str) -> None:
        """A line that belongs to no stage (a choice made, a warning)."""
        logger.info("%s: %s", self.title, text)
        if self._rich is not None:
            self._rich.console.print(text)
        self._emit(text)

    @property
    def elapsed_s(self) -> float:
        """Seconds since the deployment started."""
        return time.monotonic() - self._started

    def _emit(self, line: str) -> None:
        if self._callback is not None:
            self._callback(line)


def describe_wait(seconds: float) -> str:
    """``2m05s`` style."""
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes else f"{rest}s"

