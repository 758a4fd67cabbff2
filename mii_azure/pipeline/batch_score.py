"""Batch scoring on this machine: one request per input line, through the same engine and scoring service.

Input (read as a stream, see :mod:`.sources`): a JSON Lines file whose lines are DESIGN.md section-3
requests (``{"query": ..., "parameters": ...}``) or bare JSON strings, a text file (``.txt``) with one
input per line, or a CSV/TSV/Parquet table with one input per row in a text column. Output: one JSON line
per input line (or data row), in input order, each carrying its 1-based ``line``: the scoring service's
answer (``responses``, ``task``, ``model``, ``timing``), or ``error`` (``code``, ``message``) for a line
that could not be answered (malformed, or an empty cell); scoring goes on after a bad line.

Requests go to the engine from as many threads as twice its batch size (see ``in_flight``), so that its
batches stay full while finished answers are collected, and answers are written in order, each with one
``write`` and a flush. A killed run leaves at most a partial last line,
which a resumed run cuts off before it skips the lines already answered: nothing is duplicated or lost.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from ..errors import BadRequestError, ConfigError, RequestError
from .sources import InputSource, Row, open_source

__all__ = ["batch_score", "BatchScoreSummary", "load_scorer"]

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
# Log progress this often when there is no progress bar.
_LOG_EVERY_S = 10.0


@dataclass(frozen=True)
class BatchScoreSummary:
    """What a batch-scoring run did."""

    output: Path
    lines: int  # input lines (or data rows of a table)
    answered: int  # answered in this run
    errors: int  # error records written in this run
    skipped: int  # already in the output from an earlier run
    seconds: float

    @property
    def rows_per_s(self) -> float:
        """Lines scored per second in this run."""
        done = self.answered + self.errors
        return done / self.seconds if self.seconds > 0 else 0.0


def batch_score(
    model: PathLike,
    input: PathLike,
    output: PathLike,
    *,
    parameters: Optional[Mapping[str, Any]] = None,
    column: Optional[str] = None,
    batch_size: Optional[int] = None,
    resume: bool = True,
    quiet: bool = False,
    **overrides: Any,
) -> BatchScoreSummary:
    """Score every line of ``input`` with ``model`` (a model folder or a mii_azure package) into ``output``.

    ``model`` may also be a scorer :func:`load_scorer` loaded: it is used as it is and left open, so that one
    engine scores many files (the Azure ML pipeline step does this).

    ``input`` is a ``.jsonl`` file of requests or JSON strings, a ``.txt`` file of texts, or a ``.csv``,
    ``.tsv`` or ``.parquet`` table whose ``column`` holds the texts (by default its only text column,
    or the one named text, query, prompt or input); row N of a table is ``line`` N of the output.
    ``parameters`` are defaults for every request (a line's own ``parameters`` win). ``batch_size``
    caps how many inputs run together (the plan's batch by default). With ``resume`` (the default) a
    re-run keeps the lines already in ``output`` and scores only the rest; ``resume=False`` starts
    ``output`` afresh. A progress bar shows rows/s and the ETA in an interactive terminal unless
    ``quiet``; elsewhere progress is logged. Plan overrides (``dtype=...``) go to the engine.
    """
    source, target = open_source(Path(input), column=column), Path(output)
    total = source.count()
    done = _answered_lines(target) if resume and target.exists() else 0
    if done > total:
        raise ConfigError(
            f"{str(target)!r} holds {done} answers but {str(source.path)!r} has only {total} {source.unit}: it is the "
            "output of another input. Write to a new file, or pass resume=False to start it afresh.",
            output=str(target),
        )
    owned = not _is_scorer(model)
    service = _load_service(Path(model), batch_size=batch_size, overrides=overrides) if owned else model
    defaults = dict(parameters or {})
    started = time.perf_counter()
    answered = errors = 0
    workers = in_flight(service.engine.batcher)
    try:
        with open(target, "a" if done else "w", encoding="utf-8") as sink, _Progress(total, done, quiet) as progress:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mii-azure-batch") as pool:
                records = _score_in_order(pool, service, source, source.rows(done), defaults, window=2 * workers)
                for number, record in records:
                    sink.write(json.dumps({"line": number, **record}) + "\n")
                    sink.flush()
                    if "error" in record:
                        errors += 1
                    else:
                        answered += 1
                    progress.advance()
    finally:
        if owned:
            service.engine.close()
    summary = BatchScoreSummary(target, total, answered, errors, done, time.perf_counter() - started)
    logger.info(
        "Scored %d lines into %s in %.1f s (%.1f rows/s): %d answered, %d errors, %d kept from an earlier run.",
        answered + errors, target, summary.seconds, summary.rows_per_s, answered, errors, done,
    )
    return summary


def load_scorer(model: PathLike, *, batch_size: Optional[int] = None, **overrides: Any) -> Any:
    """The scoring service :func:`batch_score` loads for ``model`` (same arguments), to pass as its ``model``
    for several files in a row; close it with ``scorer.engine.close()``."""
    return _load_service(Path(model), batch_size=batch_size, overrides=overrides)


def _is_scorer(model: Any) -> bool:
    return hasattr(model, "score") and hasattr(model, "engine")


def in_flight(batcher: Any) -> int:
    """How many requests batch scoring keeps in the engine at once: twice its batch, so that a full batch
    runs while the next one waits its turn (and a continuous batcher refills a row as soon as one ends),
    yet never more than its queue takes (a full queue would answer 503)."""
    rows = max(1, int(batcher.max_batch_size))
    return max(2, min(2 * rows, int(getattr(batcher, "max_queue", 2 * rows))))


def _score_in_order(
    pool: ThreadPoolExecutor,
    service: Any,
    source: InputSource,
    rows: Iterable[Row],
    defaults: dict[str, Any],
    *,
    window: int,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for ``rows``, in order, with up to ``window`` of them submitted."""
    pending: deque[tuple[int, Future]] = deque()
    for row in rows:
        pending.append((row.number, pool.submit(_score_line, service, row, defaults, source.json_requests)))
        if len(pending) >= window:
            number, future = pending.popleft()
            yield number, future.result()
    while pending:
        number, future = pending.popleft()
        yield number, future.result()


def _score_line(service: Any, row: Row, defaults: dict[str, Any], json_requests: bool) -> dict[str, Any]:
    """The record of one row: the service's answer, or the error that stopped it (never raises)."""
    try:
        return service.score(_request(row, defaults, json_requests=json_requests))
    except RequestError as exc:
        return exc.to_body()
    except Exception as exc:  # a fault on one line must not end the run
        logger.exception("Scoring a line failed")
        return {"error": {"code": "internal_error", "message": f"Scoring failed: {type(exc).__name__}: {exc}"}}


def _request(row: Row, defaults: dict[str, Any], *, json_requests: bool) -> Any:
    """The request a row holds: a JSON request object, a JSON string, or (text lines, table cells) the text itself."""
    if row.text is None:
        raise BadRequestError(row.problem or "The row holds no input.")
    line = row.text
    text = line.strip()
    if not text:
        raise BadRequestError("The line is empty; every line needs one request or one input text.")
    if not json_requests:
        return {"query": line, "parameters": dict(defaults)}
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadRequestError(f"The line is not valid JSON: {exc.msg} at column {exc.colno}.") from None
    if isinstance(payload, str):
        return {"query": payload, "parameters": dict(defaults)}
    if isinstance(payload, dict) and defaults:
        given = payload.get("parameters")
        if isinstance(given, dict):
            return {**payload, "parameters": {**defaults, **given}}
        if given is None:
            return {**payload, "parameters": dict(defaults)}
    return payload  # anything else: the scoring service says what is wrong with it


def _answered_lines(target: Path) -> int:
    """How many whole records ``target`` holds; a partial last record (a killed run) is cut off."""
    data = target.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(target, "r+b") as handle:
            handle.truncate(end)
        logger.info("Cut off the partial last line of %s (the previous run was stopped while writing it).", target)
    return data[:end].count(b"\n")


def _load_service(model: Path, *, batch_size: Optional[int], overrides: dict[str, Any]) -> Any:
    from ..config import ServingSettings
    from ..packaging import MANIFEST_FILE, Package
    from ..runtime.engine import Engine
    from ..runtime.service import ScoringService

    if (model / MANIFEST_FILE).is_file():
        bundle = Package.load(model)
        bundle.verify()
        if bundle.model_dir is None:
            raise ConfigError(f"The package at {str(model)!r} has no local weights to score with.", path=str(model))
        values = bundle.manifest.settings.model_dump()
        settings = ServingSettings(**{**values, "max_batch_size": batch_size or values.get("max_batch_size")})
        return ScoringService(Engine.load(bundle.model_dir, settings=settings, plan=None, overrides=_plan_overrides(overrides)))
    settings = ServingSettings(max_batch_size=batch_size)
    return ScoringService(Engine.load(model, settings=settings, overrides=_plan_overrides(overrides)))


def _plan_overrides(overrides: dict[str, Any]) -> Any:
    from ..planner import PlanOverrides

    return PlanOverrides(**overrides)


class _Progress:
    """A rich progress bar (rows/s, ETA) in an interactive terminal, else a log line every few seconds."""

    def __init__(self, total: int, done: int, quiet: bool) -> None:
        self.total, self.done = total, done
        self._bar: Any = None
        self._task: Any = None
        self._interactive = not quiet and sys.stderr.isatty()
        self._quiet = quiet
        self._last_log = time.monotonic()

    def __enter__(self) -> "_Progress":
        if self._interactive:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("scoring"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]} rows/s"), TimeRemainingColumn(),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task("scoring", total=self.total, completed=self.done, rate="-")
        self._started = time.monotonic()
        self._start_done = self.done
        return self

    def advance(self) -> None:
        self.done += 1
        rate = (self.done - self._start_done) / max(time.monotonic() - self._started, 1e-9)
        if self._bar is not None:
            self._bar.update(self._task, advance=1, rate=f"{rate:.1f}")
        elif not self._quiet and time.monotonic() - self._last_log >= _LOG_EVERY_S:
            self._last_log = time.monotonic()
            left = (self.total - self.done) / rate if rate else float("inf")
            logger.info("Scored %d of %d lines (%.1f rows/s, about %.0f s left).", self.done, self.total, rate, left)

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.stop()
