"""What the Azure ML pipeline step runs on the cluster, from the package's own ``mii_azure`` snapshot.

The component's code is the package (its code, without the weights), so ``python -m mii_azure.pipeline.step``
in it imports the snapshot that the package's manifest hashes, and scores with the same
:func:`~mii_azure.pipeline.batch_score` as on this machine. The weights arrive as the step's ``model``
input (a registered model, mounted); the step scores through a view of the package whose ``model`` link
points at that mount.

Commands (``python -m mii_azure.pipeline.step <command> ...``):

``score``
    One node. A file input is scored into ``<output>/scores.jsonl`` as ``batch_score`` writes it; the files
    of a folder are scored in input order (sorted paths) into one ``scores.jsonl`` whose records carry
    ``source`` and ``source_line`` too.
``split``
    Cuts a line file into shards for the parallel job (:func:`~mii_azure.pipeline.ordering.split_into_shards`).
``order``
    Writes the parallel job's rows back in input order (:func:`~mii_azure.pipeline.ordering.restore_order`).

The parallel job's entry script (``mii_batch_entry.py`` at the code's root) calls :func:`init` once per
worker process (the engine loads once) and :func:`run` per mini-batch: each file of the mini-batch is scored
with ``batch_score`` and returned as one JSON row per record, with its ``source`` and ``line``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Optional

from ..errors import ConfigError, MiiAzureError
from .batch_score import batch_score, load_scorer
from .ordering import SCORES_FILE, SUMMARY_FILE, input_files, restore_order, split_into_shards

__all__ = ["PackageView", "score_inputs", "score_files", "init", "run", "shutdown", "main"]

logger = logging.getLogger(__name__)

_MANIFEST = "mii_package.json"


class PackageView:
    """A package whose ``model`` link points at ``model_dir``: links to every entry of the package's code
    folder (read-only on the cluster) in a temporary folder, plus the ``model`` link."""

    def __init__(self, package: Path, model_dir: Optional[Path]) -> None:
        package = Path(package).resolve()
        if not (package / _MANIFEST).is_file():
            raise ConfigError(
                f"{str(package)!r} holds no {_MANIFEST}: the step runs from a mii_azure package's code. Build the "
                "component with mii_azure.pipeline.batch_score_component(...).",
                path=str(package),
            )
        self.package = package
        if model_dir is None:
            self.path = package
            self._staging: Optional[Path] = None
            return
        self._staging = Path(tempfile.mkdtemp(prefix="mii-azure-step-"))
        self.path = self._staging / package.name
        self.path.mkdir()
        for entry in package.iterdir():
            if entry.name != "model":
                (self.path / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
        (self.path / "model").symlink_to(Path(model_dir).resolve(), target_is_directory=True)

    def close(self) -> None:
        """Remove the temporary view (the package and the weights are untouched)."""
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None


def score_inputs(
    scorer: Any,
    input: Path,
    output: Path,
    *,
    parameters: Optional[dict[str, Any]] = None,
    column: Optional[str] = None,
) -> dict[str, Any]:
    """The one-node step: score the file or every file of the folder ``input`` into ``output/scores.jsonl``,
    in input order; write ``output/summary.json``; return the summary."""
    output.mkdir(parents=True, exist_ok=True)
    target = output / SCORES_FILE
    if Path(input).is_file():
        result = batch_score(scorer, input, target, parameters=parameters, column=column, resume=False, quiet=True)
        summary = {"files": 1, "lines": result.lines, "answered": result.answered, "errors": result.errors,
                   "seconds": round(result.seconds, 3)}
    else:
        summary = {"files": 0, "lines": 0, "answered": 0, "errors": 0}
        with open(target, "w", encoding="utf-8") as sink, tempfile.TemporaryDirectory(prefix="mii-azure-step-") as scratch:
            for relative, path in input_files(input):
                rows = Path(scratch) / "rows.jsonl"
                result = batch_score(scorer, path, rows, parameters=parameters, column=column, resume=False, quiet=True)
                with open(rows, encoding="utf-8") as records:
                    for raw in records:
                        record = json.loads(raw)
                        summary["lines"] += 1
                        place = {"line": summary["lines"], "source": relative, "source_line": record.pop("line")}
                        sink.write(json.dumps({**place, **record}) + "\n")
                summary["files"] += 1
                summary["answered"] += result.answered
                summary["errors"] += result.errors
    (output / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def score_files(
    scorer: Any,
    files: Iterable[Any],
    root: Path,
    *,
    parameters: Optional[dict[str, Any]] = None,
    column: Optional[str] = None,
) -> list[str]:
    """One parallel mini-batch: every record of every file, as JSON rows with ``source`` (the file's path
    inside ``root``) and ``line``. An empty file, or a hidden one (not an input), gives one marker row
    (``"lines": 0``), so that the job counts every file of the mini-batch as done."""
    rows: list[str] = []
    with tempfile.TemporaryDirectory(prefix="mii-azure-batch-") as scratch:
        for file in files:
            path = Path(str(file))
            relative = _relative(path, root)
            if any(part.startswith(".") for part in relative.split("/")):  # not an input (as the order step sees it)
                rows.append(json.dumps({"source": relative, "lines": 0}))
                continue
            target = Path(scratch) / "rows.jsonl"
            batch_score(scorer, path, target, parameters=parameters, column=column, resume=False, quiet=True)
            before = len(rows)
            with open(target, encoding="utf-8") as records:
                for raw in records:
                    rows.append(json.dumps({"source": relative, **json.loads(raw)}))
            if len(rows) == before:
                rows.append(json.dumps({"source": relative, "lines": 0}))
    return rows


# --- the parallel job's entry-script contract --------------------------------------------------
class _ParallelState:
    def __init__(self) -> None:
        self.scorer: Any = None
        self.view: Optional[PackageView] = None
        self.root = Path(".")
        self.parameters: dict[str, Any] = {}
        self.column: Optional[str] = None


_state = _ParallelState()


def init(package: Optional[str] = None, argv: Optional[Sequence[str]] = None) -> None:
    """Load the engine once for this worker process: the package (``package``, else the code's root) with the
    weights of ``--model``; ``--input`` is the folder the mini-batches' files come from."""
    parser = argparse.ArgumentParser(allow_abbrev=False, add_help=False)
    parser.add_argument("--model")
    parser.add_argument("--input", required=True)
    parser.add_argument("--parameters", default="")
    parser.add_argument("--column", default="")
    args, _ = parser.parse_known_args(sys.argv[1:] if argv is None else list(argv))  # the job passes its own too
    _configure_logging()
    _state.view = PackageView(Path(package) if package else _code_root(), Path(args.model) if args.model else None)
    _state.scorer = load_scorer(_state.view.path)
    _state.root = Path(args.input)
    _state.parameters = _parameters(args.parameters)
    _state.column = args.column or None
    logger.info("Loaded %s for the parallel step; scoring files of %s.", _state.view.package.name, _state.root)


def run(mini_batch: Iterable[Any]) -> list[str]:
    """Score one mini-batch (paths of files under ``--input``): one JSON row per record."""
    if _state.scorer is None:
        raise ConfigError("run() before init(): the parallel job calls init() first in each worker process.")
    return score_files(_state.scorer, mini_batch, _state.root, parameters=_state.parameters, column=_state.column)


def shutdown() -> None:
    """Close the engine and remove the package view."""
    if _state.scorer is not None:
        _state.scorer.engine.close()
        _state.scorer = None
    if _state.view is not None:
        _state.view.close()
        _state.view = None


# --- the commands --------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m mii_azure.pipeline.step score|split|order ...``; 0 on success, 2 on a refused input."""
    args = _parser().parse_args(argv)
    _configure_logging()
    try:
        if args.command == "score":
            view = PackageView(Path(args.package) if args.package else _code_root(), Path(args.model) if args.model else None)
            scorer = load_scorer(view.path)
            try:
                summary = score_inputs(scorer, Path(args.input), Path(args.output), parameters=_parameters(args.parameters),
                                       column=args.column or None)
            finally:
                scorer.engine.close()
                view.close()
        elif args.command == "split":
            split = split_into_shards(args.input, args.output, shards=args.shards)
            summary = {"lines": split.lines, "shards": len(split.shards)}
        else:
            output = Path(args.output)
            order = restore_order(args.scores, args.input, output / SCORES_FILE, keep_source=args.keep_source,
                                  column=args.column or None)
            summary = order.as_dict()
            (output / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    except MiiAzureError as exc:
        logger.error("%s", exc.message)
        return 2
    logger.info("%s: %s", args.command, json.dumps(summary))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mii_azure.pipeline.step", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    score = commands.add_parser("score", help="score a file, or a folder's files in order, on this node")
    score.add_argument("--package", help="the package's code folder (default: the code this module is part of)")
    score.add_argument("--model", help="the weights (the step's model input); default: the package's own link")
    score.add_argument("--input", required=True)
    score.add_argument("--output", required=True, help="folder that gets scores.jsonl and summary.json")
    score.add_argument("--parameters", default="", help="JSON object of default parameters")
    score.add_argument("--column", default="", help="the text column of a table input")
    split = commands.add_parser("split", help="cut a line file into shards for the parallel job")
    split.add_argument("--input", required=True)
    split.add_argument("--output", required=True)
    split.add_argument("--shards", type=int, required=True)
    order = commands.add_parser("order", help="write the parallel job's rows back in input order")
    order.add_argument("--scores", required=True, help="the parallel step's output (file or folder of rows)")
    order.add_argument("--input", required=True, help="the folder the parallel step scored")
    order.add_argument("--output", required=True, help="folder that gets scores.jsonl and summary.json")
    order.add_argument("--keep-source", action="store_true", help="keep each record's source file and line")
    order.add_argument("--column", default="", help="the text column of table inputs")
    return parser


def _parameters(text: str) -> dict[str, Any]:
    if not text or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"--parameters is not JSON ({exc}); pass an object such as {{\"max_new_tokens\": 32}}.") from None
    if not isinstance(value, dict):
        raise ConfigError("--parameters must be a JSON object such as {\"max_new_tokens\": 32}.")
    return value


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return Path(os.path.relpath(path, root)).as_posix()


def _code_root() -> Path:
    """The package's code folder: the working directory when it holds a manifest (Azure ML runs the command
    there), else the folder this snapshot of mii_azure sits in."""
    here = Path.cwd()
    return here if (here / _MANIFEST).is_file() else Path(__file__).resolve().parents[2]


def _configure_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


if __name__ == "__main__":
    raise SystemExit(main())
