"""The operations of the `data_processing` task type: what each accepts and how it runs.

Rows are lists of strings flowing through a chain of generators, one per
operation, from the CSV reader to the CSV writer (both in `data`). `filter`,
`select`, `rename` and `limit` hold one row at a time, so they run in constant
memory over a file of any size, and a `limit` stops reading the source as soon
as it has its rows. `sort`, `dedupe` and
`aggregate` must see every row before they can answer; each is bounded by a
limit below and fails the task, naming its step, rather than exhaust memory.

- `sort` holds every row (pickled) and its sort key, at most `SORT_MAX_ROWS`
  rows: about 0.5 KB a row for 7 columns and 120 bytes of text, so about
  500 MB at the limit (benchmarks/csv_memory.py). A `sort` directly followed
  by a `limit` of at most `TOP_MAX_ROWS` keeps only the best rows seen so far
  (a heap), and has no row limit.
- `dedupe` holds a 16-byte digest of each distinct key, about 110 bytes with
  the set, whatever the row width: at most `DEDUPE_MAX_KEYS` keys, ~220 MB.
- `aggregate` holds each group's key and accumulators, about 0.5 KB a group
  with two aggregations: at most `AGGREGATE_MAX_GROUPS` groups, ~500 MB.

Every column name is resolved when the pipeline is built, from the header and
the steps before, so an unknown column fails before a single data row is read.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import math
import operator
import pickle
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from decimal import Context, Decimal
from typing import Annotated, Any, Literal, Protocol, Self

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from task_queue.errors import PermanentError

SORT_MAX_ROWS = 1_000_000
TOP_MAX_ROWS = 100_000
"""A sort followed by a limit up to this keeps only the best rows, whatever the input's size."""
DEDUPE_MAX_KEYS = 2_000_000
AGGREGATE_MAX_GROUPS = 1_000_000
_AVERAGE = Context(prec=15)

Scalar = StrictStr | StrictInt | StrictFloat
ColumnList = Annotated[list[str], Field(min_length=1, max_length=1000)]


def as_number(text: str) -> float | None:
    """The cell's value when it reads as a finite decimal number ("-12.5", "1e3"), else None."""
    try:
        value = float(text)
    except ValueError:
        return None
    # float() also reads "nan", "inf" and "1_000": none of them is a number in a CSV.
    return value if math.isfinite(value) and "_" not in text else None


def _unique(names: list[str] | None) -> list[str] | None:
    if names is not None and len(set(names)) < len(names):
        duplicates = sorted({name for name in names if names.count(name) > 1})
        raise ValueError(f"columns listed twice: {', '.join(map(repr, duplicates))}")
    return names


@dataclass(frozen=True, slots=True)
class Table:
    """Rows on their way through the pipeline: the header they have now and a lazy iterator.

    `computed` names the columns an aggregate produced: the result reports their
    cells as JSON numbers.
    """

    columns: tuple[str, ...]
    rows: Iterator[list[str]]
    computed: frozenset[str] = field(default_factory=frozenset)

    def index(self, name: str, where: str) -> int:
        try:
            return self.columns.index(name)
        except ValueError:
            shown = ", ".join(repr(c) for c in self.columns[:20])
            more = ", ..." if len(self.columns) > 20 else ""
            raise PermanentError(
                f"{where}: unknown column {name!r} (columns: {shown}{more})"
            ) from None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Filter(_Strict):
    """Keep the rows whose `column` compares true with `value` under `op`."""

    type: Literal["filter"]
    column: str
    op: Literal["eq", "ne", "gt", "gte", "lt", "lte", "contains", "in"]
    value: Scalar | Annotated[list[Scalar], Field(max_length=10_000)]

    @field_validator("value")
    @classmethod
    def _fits_op(cls, value: Any, info: ValidationInfo) -> Any:
        op = info.data.get("op")
        if op == "in" and not isinstance(value, list):
            raise ValueError("op `in` takes a list of values")
        if op != "in" and isinstance(value, list):
            raise ValueError(f"op `{op}` takes one value, not a list")
        return value

    def apply(self, table: Table, where: str) -> Table:
        index = table.index(self.column, where)
        keep = _predicate(self.op, self.value)
        return replace(table, rows=(row for row in table.rows if keep(row[index])))


_ORDERINGS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}


def _text(value: str | int | float) -> str:
    return value if isinstance(value, str) else repr(value)


def _predicate(op: str, value: Any) -> Callable[[str], bool]:
    """A test on one cell: numbers compare as numbers when both sides read as numbers."""
    if op == "contains":
        needle = _text(value)
        return lambda cell: needle in cell
    if op == "in":
        texts = {_text(v) for v in value if as_number(_text(v)) is None}
        numbers = {n for v in value if (n := as_number(_text(v))) is not None}

        def is_in(cell: str) -> bool:
            number = as_number(cell)
            return cell in texts if number is None else number in numbers

        return is_in
    compare = _ORDERINGS[op]
    text = _text(value)
    wanted = as_number(text)

    def holds(cell: str) -> bool:
        number = None if wanted is None else as_number(cell)
        return compare(cell, text) if number is None else compare(number, wanted)

    return holds


class Select(_Strict):
    """Keep these columns, in this order."""

    type: Literal["select"]
    columns: ColumnList

    _no_duplicates = field_validator("columns")(_unique)

    def apply(self, table: Table, where: str) -> Table:
        indexes = [table.index(name, where) for name in self.columns]
        return Table(
            columns=tuple(self.columns),
            rows=([row[i] for i in indexes] for row in table.rows),
            computed=table.computed & set(self.columns),
        )


class Rename(_Strict):
    """Rename columns: {"old": "new"}; the others keep their names."""

    type: Literal["rename"]
    columns: Annotated[dict[str, str], Field(min_length=1, max_length=1000)]

    def apply(self, table: Table, where: str) -> Table:
        for old in self.columns:
            table.index(old, where)
        columns = tuple(self.columns.get(name, name) for name in table.columns)
        for name in columns:
            if columns.count(name) > 1:
                raise PermanentError(f"{where}: two columns would be named {name!r}")
        computed = frozenset(self.columns.get(name, name) for name in table.computed)
        return Table(columns=columns, rows=table.rows, computed=computed)


class Sort(_Strict):
    """Order rows by these columns (numbers before text, empty cells last); stable."""

    type: Literal["sort"]
    by: ColumnList
    descending: bool = False

    _no_duplicates = field_validator("by")(_unique)

    def apply(self, table: Table, where: str, *, keep: int | None = None) -> Table:
        """Sorted rows; with `keep` (a `limit` follows) only the first `keep`, in O(keep) memory."""
        indexes = [table.index(name, where) for name in self.by]
        # Empty cells rank after everything in either direction (SQL's NULLS LAST).
        empty_rank = -1 if self.descending else 2

        def key(row: list[str]) -> tuple[tuple[int, float, str], ...]:
            return tuple(_sort_key(row[i], empty_rank) for i in indexes)

        return replace(table, rows=self._sorted(table.rows, key, keep, where))

    def _sorted(
        self,
        rows: Iterator[list[str]],
        key: Callable[[list[str]], Any],
        keep: int | None,
        where: str,
    ) -> Iterator[list[str]]:
        if keep is not None and keep <= TOP_MAX_ROWS:
            # Both are documented equal to sorted(...)[:keep]: the same stable order.
            best = heapq.nlargest if self.descending else heapq.nsmallest
            yield from best(keep, rows, key=key)
            return
        # Each row held pickled beside its key: about half the memory of a list
        # of str objects, for ~1 µs a row. Not orjson: its bytes objects keep a
        # 4 KiB buffer each. The bytes never leave this call, so loading them is safe.
        held = [
            (key(row), pickle.dumps(row, pickle.HIGHEST_PROTOCOL))
            for row in itertools.islice(rows, SORT_MAX_ROWS + 1)
        ]
        if len(held) > SORT_MAX_ROWS:
            raise PermanentError(
                f"{where}: more than {SORT_MAX_ROWS:,} rows to sort; "
                "filter or aggregate first, or follow the sort with a limit"
            )
        held.sort(key=operator.itemgetter(0), reverse=self.descending)
        for _, row in held:
            yield pickle.loads(row)


def _sort_key(cell: str, empty_rank: int) -> tuple[int, float, str]:
    if cell == "":
        return (empty_rank, 0.0, "")
    number = as_number(cell)
    return (1, 0.0, cell) if number is None else (0, number, "")


class Dedupe(_Strict):
    """Drop rows whose `columns` (every column when omitted) repeat an earlier row's."""

    type: Literal["dedupe"]
    columns: ColumnList | None = None

    _no_duplicates = field_validator("columns")(_unique)

    def apply(self, table: Table, where: str) -> Table:
        names = table.columns if self.columns is None else self.columns
        indexes = [table.index(name, where) for name in names]
        return replace(table, rows=self._first_of_each(table.rows, indexes, where))

    @staticmethod
    def _first_of_each(
        rows: Iterator[list[str]], indexes: list[int], where: str
    ) -> Iterator[list[str]]:
        # A 128-bit digest of the JSON-encoded key, not the key: memory per
        # distinct row stays ~100 bytes however wide the rows are.
        seen: set[bytes] = set()
        for row in rows:
            key = orjson.dumps([row[i] for i in indexes])
            digest = hashlib.blake2b(key, digest_size=16).digest()
            if digest in seen:
                continue
            if len(seen) >= DEDUPE_MAX_KEYS:
                raise PermanentError(f"{where}: more than {DEDUPE_MAX_KEYS:,} distinct rows")
            seen.add(digest)
            yield row


class Aggregation(_Strict):
    """One computed column of an aggregate: `function` over `column`, named `as`."""

    model_config = ConfigDict(populate_by_name=True)

    column: str | None = None
    function: Literal["count", "sum", "avg", "min", "max"]
    as_: str | None = Field(None, alias="as")

    @model_validator(mode="after")
    def _has_column(self) -> Self:
        if self.column is None and self.function != "count":
            raise ValueError(f"`{self.function}` needs a `column`")
        return self

    @property
    def name(self) -> str:
        """The output column: `as`, else "count" or e.g. "sum_amount"."""
        if self.as_ is not None:
            return self.as_
        return self.function if self.column is None else f"{self.function}_{self.column}"


class Aggregate(_Strict):
    """One row per group of equal `group_by` cells (one row in all without it), in first-seen order.

    count counts rows (non-empty cells when given a column); sum and avg add
    numbers exactly, as decimals, and skip empty cells; min and max follow the
    sort order. The output columns are the group_by columns, then each `as`.
    """

    type: Literal["aggregate"]
    group_by: Annotated[list[str], Field(max_length=100)] = Field(default_factory=list)
    aggregations: Annotated[list[Aggregation], Field(min_length=1, max_length=100)]

    @model_validator(mode="after")
    def _distinct_names(self) -> Self:
        _unique([*self.group_by, *(a.name for a in self.aggregations)])
        return self

    def apply(self, table: Table, where: str) -> Table:
        keys = [table.index(name, where) for name in self.group_by]
        factories = [self._accumulator(a, table, where) for a in self.aggregations]
        names = [a.name for a in self.aggregations]
        return Table(
            columns=(*self.group_by, *names),
            rows=self._groups(table.rows, keys, factories, where),
            computed=frozenset(names),
        )

    @staticmethod
    def _accumulator(
        aggregation: Aggregation, table: Table, where: str
    ) -> Callable[[], _Accumulator]:
        if aggregation.column is None:
            return _CountRows
        index = table.index(aggregation.column, where)
        label = f"{where}: {aggregation.function} of {aggregation.column!r}"
        kinds: dict[str, Callable[[], _Accumulator]] = {
            "count": lambda: _CountCells(index),
            "sum": lambda: _Sum(index, label),
            "avg": lambda: _Average(index, label),
            "min": lambda: _Extreme(index, smallest=True),
            "max": lambda: _Extreme(index, smallest=False),
        }
        return kinds[aggregation.function]

    def _groups(
        self,
        rows: Iterator[list[str]],
        keys: list[int],
        factories: list[Callable[[], _Accumulator]],
        where: str,
    ) -> Iterator[list[str]]:
        groups: dict[tuple[str, ...], list[_Accumulator]] = {}
        for row in rows:
            group = tuple([row[i] for i in keys])
            accumulators = groups.get(group)
            if accumulators is None:
                if len(groups) >= AGGREGATE_MAX_GROUPS:
                    raise PermanentError(f"{where}: more than {AGGREGATE_MAX_GROUPS:,} groups")
                accumulators = groups[group] = [make() for make in factories]
            for accumulator in accumulators:
                accumulator.add(row)
        if not groups and not keys:
            groups[()] = [make() for make in factories]  # SQL's answer: count 0 over no rows
        for group, accumulators in groups.items():
            yield [*group, *(a.result() for a in accumulators)]


class _Accumulator(Protocol):
    def add(self, row: list[str]) -> None: ...

    def result(self) -> str: ...


class _CountRows:
    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def add(self, row: list[str]) -> None:
        self.count += 1

    def result(self) -> str:
        return str(self.count)


class _CountCells(_CountRows):
    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def add(self, row: list[str]) -> None:
        if row[self.index] != "":
            self.count += 1


class _Sum:
    """Decimal, not float: money adds up exactly (0.1 + 0.2 is 0.3)."""

    __slots__ = ("count", "index", "label", "total")

    def __init__(self, index: int, label: str) -> None:
        self.index = index
        self.label = label
        self.total = Decimal(0)
        self.count = 0

    def add(self, row: list[str]) -> None:
        cell = row[self.index]
        if cell == "":
            return
        if as_number(cell) is None:
            raise PermanentError(f"{self.label}: {cell[:100]!r} is not a number")
        self.total += Decimal(cell)
        self.count += 1

    def result(self) -> str:
        return _render(self.total) if self.count else ""


class _Average(_Sum):
    __slots__ = ()

    def result(self) -> str:
        return _render(_AVERAGE.divide(self.total, self.count)) if self.count else ""


class _Extreme:
    __slots__ = ("best", "better", "cell", "index")

    def __init__(self, index: int, *, smallest: bool) -> None:
        self.index = index
        self.better = operator.lt if smallest else operator.gt
        self.best: tuple[int, float, str] | None = None
        self.cell = ""

    def add(self, row: list[str]) -> None:
        cell = row[self.index]
        if cell == "":
            return
        key = _sort_key(cell, 2)
        if self.best is None or self.better(key, self.best):
            self.best, self.cell = key, cell

    def result(self) -> str:
        return self.cell


def _render(value: Decimal) -> str:
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


class Limit(_Strict):
    """Keep the first `count` rows; reading stops once they are found."""

    type: Literal["limit"]
    count: int = Field(ge=0)

    def apply(self, table: Table, where: str) -> Table:
        return replace(table, rows=itertools.islice(table.rows, self.count))


Operation = Annotated[
    Filter | Select | Rename | Sort | Dedupe | Aggregate | Limit, Field(discriminator="type")
]


def pipeline(table: Table, operations: Sequence[Operation]) -> Table:
    """The table as the operations, applied in order, will yield it: nothing is read yet.

    Every column name is checked here, so a bad step fails before the first row.
    """
    for number, step in enumerate(operations, start=1):
        where = f"step {number} ({step.type})"
        following = operations[number] if number < len(operations) else None
        if isinstance(step, Sort) and isinstance(following, Limit):
            table = step.apply(table, where, keep=following.count)
        else:
            table = step.apply(table, where)
    return table
