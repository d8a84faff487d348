"""The `data_processing` task type: a CSV, a list of operations, an output CSV.

The CSV comes inline (`csv_data`) or from `csv_url`, which is streamed through
the shared SSRF guard into a temporary file under DATA_DIR/tmp in 1 MiB chunks,
never held whole in memory. The operations then run row by row in a worker
thread (see `csv_ops`), so a 200 MB file neither blocks the event loop nor
grows the worker's memory. The output is written atomically to
DATA_DIR/outputs/<task id>.csv, where the API's output endpoint serves it,
with formula cells escaped.

Why the stdlib `csv` module and not pandas or polars: a dataframe library holds
the table (or, lazily, whole chunks of it) in memory and would be a heavy
dependency for seven row operations; a reader, a chain of generators and a
writer keep memory bounded by the limits in `csv_ops` whatever the file's
size, and need nothing installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Self, TextIO

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from task_queue.errors import PermanentError
from task_queue.processors import csv_ops
from task_queue.processors.csv_ops import Operation, Table, as_number
from task_queue.processors.urls import (
    UnsafeURL,
    check_download,
    guarded_request,
    limited_chunks,
    parse_http_url,
)
from task_queue.registry import TaskContext, default_registry

CSV_MAX_BYTES = 1024 * 1024 * 1024
"""A larger download fails the task: it bounds the temporary file on disk, not memory."""
CSV_DATA_MAX_CHARS = 1024 * 1024
DOWNLOAD_TIMEOUT_SECONDS = 30.0
"""For connecting and for each read, not the whole download (the task's timeout bounds that)."""
DOWNLOAD_CHUNK_BYTES = 1024 * 1024
"""Each chunk is written from a worker thread: large enough that the hops cost little."""
OUTPUTS = "outputs"
MAX_LINE_CHARS = 1024 * 1024
"""A longer physical line is refused: without a newline the reader would buffer it whole."""
AGGREGATES_MAX_ROWS = 1000
AGGREGATES_MAX_CHARS = 256 * 1024
"""The result's `aggregates` stop at either cap; the output file has every row."""
CHECKPOINT_ROWS = 16_384
"""How often, in rows read, the pipeline reports progress and checks it is still wanted."""
_FORMULA_TRIGGERS = frozenset("=+-@\t\r")


class DataPayload(BaseModel):
    """One source, `csv_url` or `csv_data`, and the operations to apply to it in order."""

    model_config = ConfigDict(extra="forbid")

    csv_url: Annotated[str, Field(max_length=2048)] | None = None
    csv_data: Annotated[str, Field(max_length=CSV_DATA_MAX_CHARS)] | None = None
    operations: Annotated[list[Operation], Field(max_length=100)] = Field(default_factory=list)

    @field_validator("csv_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_http_url(value)
            except UnsafeURL as exc:
                raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.csv_url is None) == (self.csv_data is None):
            raise ValueError("give exactly one of `csv_url` and `csv_data`")
        return self


# A 1 GiB CSV (CSV_MAX_BYTES) takes about a minute here: ten leave room for slow disks.
@default_registry.task("data_processing", payload=DataPayload, timeout_seconds=600)
async def process_csv(payload: DataPayload, ctx: TaskContext) -> dict[str, Any]:
    """Run the operations over the CSV; the result names the output file and its counts."""
    output = ctx.data_dir / OUTPUTS / f"{ctx.task.id}.csv"
    if payload.csv_data is not None:
        inline = payload.csv_data.removeprefix("\ufeff")
        outcome = await _run(ctx, lambda: io.StringIO(inline), payload, output)
    else:
        assert payload.csv_url is not None  # DataPayload guarantees one source
        spool = await asyncio.to_thread(_spool_file, ctx.data_dir, ctx.task.id)
        try:
            await _download(ctx, payload.csv_url, spool)
            outcome = await _run(ctx, lambda: _open_text(spool), payload, output)
        finally:
            await asyncio.to_thread(spool.unlink, missing_ok=True)
    ctx.logger.info(
        "csv processed",
        rows_in=outcome.rows_in,
        rows_out=outcome.rows_out,
        bytes=outcome.bytes,
    )
    return {
        "rows_in": outcome.rows_in,
        "rows_out": outcome.rows_out,
        "columns": outcome.columns,
        "aggregates": outcome.aggregates,
        "output": f"{OUTPUTS}/{output.name}",
        "output_url": f"/api/v1/tasks/{ctx.task.id}/output",
        "bytes": outcome.bytes,
    }


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a run read and wrote."""

    rows_in: int
    rows_out: int
    columns: list[str]
    aggregates: list[dict[str, Any]] | None
    bytes: int


class Abandoned(Exception):
    """The task stopped waiting for its pipeline (timeout, cancel, shutdown): stop reading."""


async def _run(
    ctx: TaskContext, open_source: Callable[[], TextIO], payload: DataPayload, output: Path
) -> Outcome:
    """The pipeline in a worker thread, reporting `{"rows_read": n}` as progress.

    A thread cannot be cancelled, so when this coroutine is, the pipeline's next
    checkpoint raises Abandoned and the thread lets go of its files.
    """
    stop = threading.Event()

    def checkpoint(rows_read: int) -> None:
        if stop.is_set():
            raise Abandoned
        ctx.report_progress({"rows_read": rows_read})

    def process() -> Outcome:
        output.parent.mkdir(parents=True, exist_ok=True)
        with open_source() as text:
            return run_pipeline(text, payload.operations, output, checkpoint)

    try:
        return await asyncio.to_thread(process)
    finally:
        stop.set()


def run_pipeline(
    text: TextIO,
    operations: Sequence[Operation],
    output: Path,
    checkpoint: Callable[[int], None],
) -> Outcome:
    """Apply `operations` in order to the CSV in `text` and write the rows to `output`.

    Meant for a worker thread. `checkpoint` is called with the rows read so far
    every CHECKPOINT_ROWS rows; whatever it raises abandons the run. The output
    appears atomically (a temporary file renamed into place) and only when the
    whole run succeeded.
    """
    source = _Source(text, checkpoint)
    table = csv_ops.pipeline(Table(source.columns, source.rows()), operations)
    aggregates: list[dict[str, Any]] | None = None
    if any(isinstance(step, csv_ops.Aggregate) for step in operations):
        aggregates = []
        table = replace(table, rows=_copied(table, aggregates))
    rows_out = _write(table, output)
    return Outcome(
        rows_in=source.rows_read,
        rows_out=rows_out,
        columns=list(table.columns),
        aggregates=aggregates,
        bytes=output.stat().st_size,
    )


class _Source:
    """The data rows of a CSV text stream, counted; short rows are padded with empty cells."""

    def __init__(self, text: TextIO, checkpoint: Callable[[int], None]) -> None:
        self._reader = csv.reader(self._lines(text))
        self._checkpoint = checkpoint
        self.rows_read = 0
        header = self._next_header()
        duplicates = sorted({name for name in header if header.count(name) > 1})
        if duplicates:
            named = ", ".join(map(repr, duplicates))
            raise PermanentError(f"the header names a column twice: {named}")
        self.columns = tuple(header)

    @staticmethod
    def _lines(text: TextIO) -> Iterator[str]:
        while line := text.readline(MAX_LINE_CHARS):
            if len(line) == MAX_LINE_CHARS and not line.endswith("\n"):
                raise PermanentError(f"a line is longer than {MAX_LINE_CHARS:,} characters")
            yield line

    def _next_header(self) -> list[str]:
        with self._errors():
            for row in self._reader:
                if row:
                    return row
        raise PermanentError("the CSV is empty: it needs a header row")

    def rows(self) -> Iterator[list[str]]:
        width = len(self.columns)
        with self._errors():
            for row in self._reader:
                if not row:
                    continue  # a blank line
                self.rows_read += 1
                if self.rows_read % CHECKPOINT_ROWS == 0:
                    self._checkpoint(self.rows_read)
                if len(row) != width:
                    if len(row) > width:
                        raise PermanentError(
                            f"line {self._reader.line_num}: {len(row)} cells, "
                            f"but the header has {width} columns"
                        )
                    row.extend([""] * (width - len(row)))
                yield row

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """What the reader raises on a broken file becomes a permanent error naming the line."""
        try:
            yield
        except UnicodeDecodeError:
            line = self._reader.line_num + 1
            raise PermanentError(f"the CSV is not UTF-8 text (near line {line})") from None
        except csv.Error as exc:
            raise PermanentError(f"line {self._reader.line_num}: not valid CSV: {exc}") from None


def _copied(table: Table, into: list[dict[str, Any]]) -> Iterator[list[str]]:
    """The rows unchanged; the first of them, up to the caps, also copied `into` as JSON."""
    computed = [name in table.computed for name in table.columns]
    chars = 0
    for row in table.rows:
        chars += sum(map(len, row))
        if len(into) < AGGREGATES_MAX_ROWS and chars <= AGGREGATES_MAX_CHARS:
            into.append(_json_row(table.columns, row, computed))
        yield row


def _write(table: Table, output: Path) -> int:
    """Write the header and rows with formulas escaped; returns the number of rows."""
    rows_out = 0
    descriptor, partial = tempfile.mkstemp(
        dir=output.parent, prefix=f".{output.name}.", suffix=".partial"
    )
    try:
        with open(descriptor, "w", encoding="utf-8", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(map(escape_formula, table.columns))
            for row in table.rows:
                writer.writerow(map(escape_formula, row))
                rows_out += 1
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, output)
    except BaseException:
        os.unlink(partial)
        raise
    return rows_out


def escape_formula(cell: str) -> str:
    """The cell made inert for spreadsheets (OWASP CSV injection): prefixed with a quote.

    Cells starting with = + - @ tab or CR are formulas to Excel and LibreOffice;
    numbers such as -12.5 or +3 are left alone, since a spreadsheet reads them as
    numbers, not formulas.
    """
    if cell[:1] in _FORMULA_TRIGGERS and as_number(cell) is None:
        return "'" + cell
    return cell


def _json_row(columns: Sequence[str], row: list[str], computed: list[bool]) -> dict[str, Any]:
    return {
        name: _json_number(cell) if is_computed else cell
        for name, cell, is_computed in zip(columns, row, computed, strict=True)
    }


def _json_number(cell: str) -> int | float | str | None:
    """An aggregate's cell as JSON: a number, null when empty, the text (min/max of text) else."""
    if cell == "":
        return None
    number = as_number(cell)
    if number is None:
        return cell
    return int(cell) if cell.lstrip("+-").isdigit() else number


def _spool_file(data_dir: Path, task_id: str) -> Path:
    """A new empty file under DATA_DIR/tmp for the download; unique, even for a re-run task."""
    folder = data_dir / "tmp"
    folder.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(dir=folder, prefix=f"{task_id}.", suffix=".csv")
    os.close(descriptor)
    return Path(name)


def _open_text(path: Path) -> TextIO:
    # utf-8-sig: spreadsheets often start their UTF-8 exports with a byte-order mark.
    return path.open(encoding="utf-8-sig", newline="")


async def _download(ctx: TaskContext, url: str, path: Path) -> None:
    """Stream `url` into `path` through the SSRF guard, a bounded chunk at a time."""
    async with guarded_request(
        ctx.http,
        "GET",
        url,
        allow_private=ctx.settings.allow_private_urls,
        timeout=DOWNLOAD_TIMEOUT_SECONDS,
    ) as response:
        check_download(response, "csv_url")
        chunks = limited_chunks(response, CSV_MAX_BYTES, DOWNLOAD_CHUNK_BYTES)
        with await asyncio.to_thread(path.open, "wb") as file:
            try:
                async for chunk in chunks:
                    await asyncio.to_thread(file.write, chunk)
            except PermanentError as exc:
                raise PermanentError(f"csv_url: {exc}") from None
