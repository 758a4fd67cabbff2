"""Input files for batch scoring, read as a stream of numbered rows, never whole into memory.

* JSON Lines (any suffix but the ones below): each line a DESIGN.md section-3 request or a bare JSON string;
* ``.txt``: one input text per line;
* ``.csv`` / ``.tsv`` (pandas, read in chunks): one input text per data row, from one column;
* ``.parquet`` / ``.pq`` (pyarrow, read a row group at a time): one input text per row, from one column.

Row N is the N-th line of a line file, or the N-th data row of a table (1-based, the header not
counted). A table's text column is ``column`` if given, else its only string column, else the one of
its string columns named ``text``, ``query``, ``prompt`` or ``input`` (in that order).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..errors import ConfigError, MissingDependencyError

__all__ = ["Row", "InputSource", "open_source", "BATCH_INSTALL", "TEXT_COLUMN_NAMES"]

BATCH_INSTALL = 'pip install "mii-azure[batch]"'
# Column names taken as the text column when a table has several string columns.
TEXT_COLUMN_NAMES = ("text", "query", "prompt", "input")
_CSV_SUFFIXES = {".csv": ",", ".tsv": "\t"}
_PARQUET_SUFFIXES = (".parquet", ".pq")
_CSV_CHUNK_ROWS = 4096
_PARQUET_BATCH_ROWS = 4096
_READ_BYTES = 1 << 20


@dataclass(frozen=True)
class Row:
    """One input row: its 1-based ``number`` and its ``text``, or the ``problem`` that leaves it without one."""

    number: int
    text: Optional[str]
    problem: Optional[str] = None


class InputSource:
    """A file of rows to score. ``json_requests``: each row is JSON (a request or a string), else the input text."""

    json_requests: bool = False
    unit: str = "lines"  # what a row is called in messages

    def __init__(self, path: Path) -> None:
        self.path = path

    def count(self) -> int:
        """How many rows the file holds (one streaming pass; a table is checked for parse errors on the way)."""
        raise NotImplementedError

    def rows(self, skip: int = 0) -> Iterator[Row]:
        """Rows ``skip + 1`` onwards, in order."""
        raise NotImplementedError


class LineSource(InputSource):
    """JSON Lines or text lines, split on ``\\n`` only (a trailing ``\\r`` is dropped), read in pieces."""

    def __init__(self, path: Path, *, json_requests: bool) -> None:
        super().__init__(path)
        self.json_requests = json_requests

    def count(self) -> int:
        newlines, last = 0, b"\n"
        with open(self.path, "rb") as handle:
            while block := handle.read(_READ_BYTES):
                newlines += block.count(b"\n")
                last = block[-1:]
        return newlines + (last != b"\n")

    def rows(self, skip: int = 0) -> Iterator[Row]:
        with open(self.path, "rb") as handle:
            for index, raw in enumerate(handle):
                if index < skip:
                    continue
                data = raw[:-1] if raw.endswith(b"\n") else raw
                data = data[:-1] if data.endswith(b"\r") else data
                try:
                    yield Row(index + 1, data.decode("utf-8"))
                except UnicodeDecodeError as exc:
                    yield Row(index + 1, None, f"The line is not valid UTF-8 (byte {exc.start + 1}); save the file as UTF-8.")


class TableSource(InputSource):
    """A table's text column; a null or blank cell is a row with a problem (an error record)."""

    unit = "rows"

    def __init__(self, path: Path, column: str) -> None:
        super().__init__(path)
        self.column = column

    def _problem(self, number: int, value: Any) -> Optional[Row]:
        if value is None or (isinstance(value, float) and value != value):  # null, NaN
            return Row(number, None, f"The cell of row {number} in column {self.column!r} is empty; every row needs one input text.")
        if not isinstance(value, str):
            return Row(number, None, f"The cell of row {number} in column {self.column!r} holds {type(value).__name__}, not text.")
        if not value.strip():
            return Row(number, None, f"The cell of row {number} in column {self.column!r} is empty; every row needs one input text.")
        return None

    def _row(self, number: int, value: Any) -> Row:
        return self._problem(number, value) or Row(number, value)


class CsvSource(TableSource):
    """A CSV (or TSV) file with a header row, parsed by pandas in chunks; cells are read as written."""

    def __init__(self, path: Path, column: Optional[str]) -> None:
        self.path, self.separator = path, _CSV_SUFFIXES[path.suffix.lower()]
        self._pandas = _import("pandas")
        head = self._read(nrows=_CSV_CHUNK_ROWS, all_columns=True)
        text_columns = [str(name) for name in head.columns if self._pandas.api.types.is_string_dtype(head[name])]
        super().__init__(path, _choose_column(path, [str(name) for name in head.columns], text_columns, column))

    def _read(self, *, nrows: Optional[int] = None, chunks: bool = False, all_columns: bool = False) -> Any:
        options: dict[str, Any] = {"sep": self.separator, "encoding": "utf-8", "skip_blank_lines": False,
                                   "keep_default_na": False, "na_values": [""]}
        if not all_columns:
            options.update(usecols=[self.column], dtype={self.column: str})
        if chunks:
            options["chunksize"] = _CSV_CHUNK_ROWS
        try:
            return self._pandas.read_csv(self.path, nrows=nrows, **options)
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{str(self.path)!r} is not valid UTF-8 ({exc.reason} at byte {exc.start}); save it as UTF-8.",
                              path=str(self.path)) from None
        except (ValueError, self._pandas.errors.ParserError) as exc:  # EmptyDataError and ParserError are ValueErrors
            raise ConfigError(f"{str(self.path)!r} could not be read as a table with a header row: {exc}", path=str(self.path)) from None

    def _chunks(self) -> Iterator[Any]:
        reader = self._read(chunks=True)
        try:
            while True:
                try:
                    chunk = next(reader)
                except StopIteration:
                    return
                except UnicodeDecodeError as exc:
                    raise ConfigError(f"{str(self.path)!r} is not valid UTF-8 ({exc.reason}); save it as UTF-8.",
                                      path=str(self.path)) from None
                except (ValueError, self._pandas.errors.ParserError) as exc:
                    raise ConfigError(f"{str(self.path)!r} could not be parsed: {exc}", path=str(self.path)) from None
                yield chunk[self.column]
        finally:
            reader.close()

    def count(self) -> int:
        return sum(len(chunk) for chunk in self._chunks())

    def rows(self, skip: int = 0) -> Iterator[Row]:
        start = 0
        for chunk in self._chunks():
            end = start + len(chunk)
            if end > skip:
                for offset, value in enumerate(chunk.tolist()[max(0, skip - start):]):
                    yield self._row(max(start, skip) + offset + 1, value)
            start = end


class ParquetSource(TableSource):
    """A Parquet file, read one row group (in record batches of the text column only) at a time."""

    def __init__(self, path: Path, column: Optional[str]) -> None:
        pyarrow = _import("pyarrow")
        parquet = _import("pyarrow.parquet", package="pyarrow")
        try:
            self._file = parquet.ParquetFile(str(path))
        except (OSError, pyarrow.ArrowException) as exc:
            raise ConfigError(f"{str(path)!r} could not be read as Parquet: {exc}", path=str(path)) from None
        schema = self._file.schema_arrow
        names = list(schema.names)
        text_columns = [field.name for field in schema if _is_text(pyarrow, field.type)]
        chosen = _choose_column(path, names, text_columns, column)
        if chosen not in text_columns:
            raise ConfigError(
                f"Column {chosen!r} of {str(path)!r} holds {schema.field(chosen).type}, not text; "
                f"its text columns are {_listed(text_columns)}.",
                path=str(path), column=chosen, columns=names,
            )
        super().__init__(path, chosen)

    def count(self) -> int:
        return self._file.metadata.num_rows

    def rows(self, skip: int = 0) -> Iterator[Row]:
        metadata = self._file.metadata
        first, start = 0, 0
        while first < metadata.num_row_groups and start + metadata.row_group(first).num_rows <= skip:
            start += metadata.row_group(first).num_rows
            first += 1
        if first == metadata.num_row_groups:
            return
        groups = list(range(first, metadata.num_row_groups))
        for batch in self._file.iter_batches(batch_size=_PARQUET_BATCH_ROWS, row_groups=groups, columns=[self.column]):
            values = batch.column(0).to_pylist()
            end = start + len(values)
            if end > skip:
                for offset, value in enumerate(values[max(0, skip - start):]):
                    yield self._row(max(start, skip) + offset + 1, value)
            start = end


def open_source(path: Path, *, column: Optional[str] = None) -> InputSource:
    """The source for ``path``, by its suffix; ``column`` names a table's text column."""
    if not path.is_file():
        raise ConfigError(
            f"The input {str(path)!r} is not a file; give a .jsonl, .txt, .csv, .tsv or .parquet file.", path=str(path)
        )
    suffix = path.suffix.lower()
    if suffix in _CSV_SUFFIXES:
        return CsvSource(path, column)
    if suffix in _PARQUET_SUFFIXES:
        return ParquetSource(path, column)
    if column is not None:
        raise ConfigError(
            f"column={column!r} names a column of a CSV or Parquet table, but {str(path)!r} is a line file "
            "(.jsonl: one request per line; .txt: one text per line). Leave column out, or give a .csv or .parquet file.",
            path=str(path), column=column,
        )
    return LineSource(path, json_requests=suffix != ".txt")


def _choose_column(path: Path, names: Sequence[str], text_columns: Sequence[str], column: Optional[str]) -> str:
    if column is not None:
        if column not in names:
            raise ConfigError(
                f"{str(path)!r} has no column {column!r}; its columns are {_listed(names)}. Pass one of them as column= (--column).",
                path=str(path), column=column, columns=list(names),
            )
        return column
    if len(text_columns) == 1:
        return text_columns[0]
    for name in TEXT_COLUMN_NAMES:
        if name in text_columns:
            return name
    found = f"its text columns are {_listed(text_columns)}" if text_columns else "it has no text column"
    raise ConfigError(
        f"Which column of {str(path)!r} holds the inputs? Its columns are {_listed(names)} ({found}); "
        f"pass one as column= (--column), or name it one of {', '.join(TEXT_COLUMN_NAMES)}.",
        path=str(path), columns=list(names), text_columns=list(text_columns),
    )


def _is_text(pyarrow: Any, kind: Any) -> bool:
    types = pyarrow.types
    if types.is_dictionary(kind):
        kind = kind.value_type
    return bool(types.is_string(kind) or types.is_large_string(kind) or getattr(types, "is_string_view", lambda _: False)(kind))


def _listed(names: Sequence[str]) -> str:
    return ", ".join(repr(name) for name in names) if names else "(none)"


def _import(module: str, *, package: Optional[str] = None) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        name = package or module
        raise MissingDependencyError(
            f"Reading CSV and Parquet inputs needs {name}, which this environment lacks; install it with: {BATCH_INSTALL}",
            package=name, install=BATCH_INSTALL,
        ) from exc
