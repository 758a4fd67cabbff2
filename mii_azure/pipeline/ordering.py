"""Splitting an input into shards for Azure ML's parallel job, and putting its records back in input order.

A parallel job splits a folder of files into mini-batches (``mini_batch_size`` files each), runs them on
``instance_count`` nodes in whatever order they finish, and appends what each ``run(mini_batch)``
returns to one file (``append_row_to``). So every row the scoring step returns names its ``source``
(the file's path inside the input folder, with ``/``) and its 1-based ``line`` in that file, and
:func:`restore_order` writes the records again in input order: files in sorted order of their paths,
lines in order within a file, numbered 1, 2, ... over the whole input. A line whose mini-batch failed
(after the job's retries, under its error thresholds) gets an error record (code ``not_scored``), so the
output still holds one record per input line; a row returned twice (a retried mini-batch) is kept once.

A single input file is first cut by :func:`split_into_shards` into contiguous shards whose sorted names
keep its order, so the records' numbering is the file's own.

Only the standard library is used; rows are read back one source file at a time, never all at once.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from ..errors import ConfigError

__all__ = [
    "SplitSummary",
    "OrderSummary",
    "split_into_shards",
    "restore_order",
    "input_files",
    "SCORES_FILE",
    "SUMMARY_FILE",
    "NOT_SCORED",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
#: The records' file in the step's output folder (JSON Lines, one record per input line, in input order).
SCORES_FILE = "scores.jsonl"
#: What the step did, beside it (JSON).
SUMMARY_FILE = "summary.json"
#: The error code of a line for which the parallel job returned no record.
NOT_SCORED = "not_scored"
#: Inputs that are cut at line ends; a table (CSV with quoted newlines, Parquet) is not.
_TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq")
_SHARD_PREFIX = "part-"


@dataclass(frozen=True)
class SplitSummary:
    """What :func:`split_into_shards` wrote."""

    lines: int
    shards: list[Path]


@dataclass(frozen=True)
class OrderSummary:
    """What :func:`restore_order` wrote: ``lines`` records (``missing`` of them ``not_scored`` errors) from
    ``files`` input files; ``duplicates`` rows seen twice and ``unexpected`` rows matching no input line
    were dropped."""

    output: Path
    files: int
    lines: int
    errors: int
    missing: int
    duplicates: int
    unexpected: int

    def as_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready values."""
        return {key: (str(value) if isinstance(value, Path) else value) for key, value in self.__dict__.items()}


def split_into_shards(input: PathLike, folder: PathLike, *, shards: int) -> SplitSummary:
    """Cut the line file ``input`` (JSON Lines or ``.txt``) into at most ``shards`` files of contiguous lines in
    ``folder``, named ``part-00000<suffix>``, ``part-00001<suffix>``, ...; bytes are copied as they are. An
    empty input gives one empty shard (a parallel job needs a file to run)."""
    source, target = Path(input), Path(folder)
    if not source.is_file():
        raise ConfigError(f"The input {str(source)!r} is not a file.", path=str(source))
    if source.suffix.lower() in _TABLE_SUFFIXES:
        raise ConfigError(
            f"{source.name!r} is a table; a table is not cut into shards (its rows may span lines). Give the "
            "pipeline step a uri_folder of several table files instead (input_type='uri_folder'), or score it on "
            "one node (instance_count=1).",
            path=str(source),
        )
    if shards < 1:
        raise ConfigError(f"shards={shards}: cut the input into at least one shard.", shards=shards)
    total = _rows_in(source, None)
    per_shard = max(1, math.ceil(total / shards))
    count = max(1, math.ceil(total / per_shard))
    width = max(5, len(str(count - 1)))
    target.mkdir(parents=True, exist_ok=True)
    suffix = source.suffix or ".jsonl"
    written: list[Path] = []
    with open(source, "rb") as handle:
        for index in range(count):
            path = target / f"{_SHARD_PREFIX}{index:0{width}d}{suffix}"
            with open(path, "wb") as sink:
                for _ in range(per_shard):
                    line = handle.readline()
                    if not line:
                        break
                    sink.write(line)
            written.append(path)
    logger.info("Cut %s (%d lines) into %d shards of up to %d lines in %s.", source, total, len(written), per_shard, target)
    return SplitSummary(total, written)


def input_files(root: PathLike) -> list[tuple[str, Path]]:
    """(relative POSIX path, path) of every file under ``root`` in input order (sorted by relative path);
    hidden files and folders (a leading ``.``) are left out. A file ``root`` is one input of its own name."""
    base = Path(root)
    if base.is_file():
        return [(base.name, base)]
    if not base.is_dir():
        raise ConfigError(f"The input {str(base)!r} is neither a file nor a folder.", path=str(base))
    found = []
    for folder, folders, names in os.walk(base):
        folders[:] = [name for name in folders if not name.startswith(".")]
        for name in names:
            if not name.startswith("."):
                path = Path(folder) / name
                found.append((path.relative_to(base).as_posix(), path))
    return sorted(found)


def restore_order(
    scores: PathLike,
    inputs: PathLike,
    output: PathLike,
    *,
    keep_source: bool = True,
    column: Optional[str] = None,
) -> OrderSummary:
    """Write the records of ``scores`` (a file, or a folder of files, of rows with ``source`` and ``line``)
    into ``output`` in the order of ``inputs`` (the folder the scoring step read), one per input line.

    Each record is ``{"line": <1-based over the whole input>, ...}`` with the scoring answer (or ``error``);
    with ``keep_source`` also ``source`` (the input file's relative path) and ``source_line``. How many lines
    a file has is counted as batch scoring counts it (data rows of a table, with ``column``)."""
    runs = _index_rows(_row_files(Path(scores)))
    files = input_files(inputs)
    target = Path(output)
    target.parent.mkdir(parents=True, exist_ok=True)
    number = errors = missing = duplicates = past_the_end = 0
    known = set()
    with open(target, "w", encoding="utf-8") as sink:
        for relative, path in files:
            known.add(relative)
            expected = _rows_in(path, column)
            records, seen_twice = _records_of(runs.get(relative, []))
            duplicates += seen_twice
            for line in range(1, expected + 1):
                number += 1
                record = records.pop(line, None)
                if record is None:
                    missing += 1
                    record = {"error": {"code": NOT_SCORED, "message": (
                        f"No record came back for line {line} of {relative}: the parallel job's mini-batch holding "
                        "it failed after its retries. Its logs (user/error/ and user/stdout/ under the step's outputs "
                        "and logs) say why; score the file again on its own."
                    )}}
                if "error" in record:
                    errors += 1
                place = {"source": relative, "source_line": line} if keep_source else {}
                sink.write(json.dumps({"line": number, **place, **record}) + "\n")
            if records:
                past_the_end += len(records)
                logger.warning("%d rows for %s name lines past its %d lines; they are dropped.", len(records), relative, expected)
    strangers = sum(run.rows for source, entries in runs.items() if source not in known for run in entries)
    if strangers:
        logger.warning("%d rows name files that are not in the input; they are dropped.", strangers)
    unexpected = strangers + past_the_end
    summary = OrderSummary(target, len(files), number, errors, missing, duplicates, unexpected)
    logger.info(
        "Wrote %d records for %d files into %s in input order (%d errors, %d not scored, %d duplicate rows dropped).",
        number, len(files), target, errors, missing, duplicates,
    )
    return summary


# --- internals -------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Run:
    """Consecutive rows of one source in one rows file: where they start and how many there are."""

    file: Path
    offset: int
    rows: int


def _row_files(scores: Path) -> list[Path]:
    if scores.is_file():
        return [scores]
    if not scores.is_dir():
        raise ConfigError(f"The scoring step's output {str(scores)!r} is neither a file nor a folder.", path=str(scores))
    return [path for _, path in input_files(scores)]


def _index_rows(files: list[Path]) -> dict[str, list[_Run]]:
    """Where each source's rows are: the parallel job appends a mini-batch's rows together, so a source's
    rows are usually one run; any interleaving just makes more runs."""
    runs: dict[str, list[_Run]] = {}
    for file in files:
        current: Optional[str] = None
        with open(file, "rb") as handle:
            offset = 0
            for raw in handle:
                source = _source_of(raw, file)
                if source is None:
                    offset += len(raw)
                    continue
                entries = runs.setdefault(source, [])
                if source == current and entries and entries[-1].file == file:
                    last = entries[-1]
                    entries[-1] = _Run(file, last.offset, last.rows + 1)
                else:
                    entries.append(_Run(file, offset, 1))
                current = source
                offset += len(raw)
    return runs


def _source_of(raw: bytes, file: Path) -> Optional[str]:
    text = raw.strip()
    if not text:
        return None
    try:
        row = json.loads(text)
    except ValueError:
        logger.warning("A row of %s is not JSON; it is skipped: %r", file, text[:200])
        return None
    source = row.get("source") if isinstance(row, dict) else None
    return source if isinstance(source, str) else None


def _records_of(runs: list[_Run]) -> tuple[dict[int, dict[str, Any]], int]:
    """{line: record without source and line} for one source, and how many rows repeated a line."""
    records: dict[int, dict[str, Any]] = {}
    repeated = 0
    for run in runs:
        with open(run.file, "rb") as handle:
            handle.seek(run.offset)
            read = 0
            while read < run.rows:
                raw = handle.readline()
                if not raw:
                    break
                if not raw.strip():
                    continue
                read += 1
                row = json.loads(raw)
                line = row.get("line")
                if not isinstance(line, int) or line < 1:
                    continue  # an empty file's marker row
                if line in records:
                    repeated += 1
                    continue
                records[line] = {key: value for key, value in row.items() if key not in ("source", "line", "source_line")}
    return records, repeated


def _rows_in(path: Path, column: Optional[str]) -> int:
    """How many rows batch scoring reads from ``path`` (lines of a line file, data rows of a table)."""
    from .sources import open_source

    return open_source(path, column=column).count()
