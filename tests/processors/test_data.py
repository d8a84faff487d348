"""The `data_processing` task type runs CSV operations in order, streamed, against real peers."""

from __future__ import annotations

import asyncio
import csv
import io
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from task_queue._clock import ManualClock
from task_queue.backends.memory import MemoryBackend
from task_queue.config import Settings
from task_queue.errors import PermanentError, Retry
from task_queue.logs import get_logger
from task_queue.processors import csv_ops, data
from task_queue.processors.data import CHECKPOINT_ROWS, DataPayload, process_csv, run_pipeline
from task_queue.processors.urls import UnsafeURL
from task_queue.registry import TaskContext, default_registry
from task_queue.task import Task, TaskStatus
from task_queue.worker.pool import WorkerPool
from tests.worker.conftest import eventually

SALES = """\
region,customer,amount,status
eu,ada@example.com,120,paid
us,bob@example.com,9,paid
eu,cy@example.com,80.5,refunded
us,ada@example.com,100,paid
eu,ada@example.com,0.1,paid
apac,dee@example.com,,paid
us,eve@example.com,0.2,paid
"""

Run = Callable[..., Awaitable[tuple[dict[str, Any], list[dict[str, str]]]]]


def settings_for(data_dir: Path, *, allow_private: bool = True) -> Settings:
    return Settings.load(
        environ={},
        overrides={"allow_private_urls": allow_private, "data_dir": data_dir, "log_file": ""},
    )


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(follow_redirects=False) as client:
        yield client


@pytest.fixture
def progress() -> list[Any]:
    return []


@pytest.fixture
def context(
    tmp_path: Path, http: httpx.AsyncClient, progress: list[Any]
) -> Callable[..., TaskContext]:
    """A new task's context each call: real settings over tmp_path and a real HTTP client."""

    def make(*, allow_private: bool = True) -> TaskContext:
        return TaskContext(
            task=Task.new("data_processing", {}, now=0.0),
            settings=settings_for(tmp_path, allow_private=allow_private),
            logger=get_logger("tests.data"),
            http=http,
            report_progress=progress.append,
        )

    return make


@pytest.fixture
def run(tmp_path: Path, context: Callable[..., TaskContext]) -> Run:
    """Process a payload; returns the result and the output file's rows as dicts."""

    async def process(
        operations: list[dict[str, Any]] | None = None,
        *,
        csv_data: str = SALES,
        csv_url: str | None = None,
        allow_private: bool = True,
    ) -> tuple[dict[str, Any], list[dict[str, str]]]:
        source = {"csv_data": csv_data} if csv_url is None else {"csv_url": csv_url}
        model = DataPayload.model_validate({**source, "operations": operations or []})
        result = await process_csv(model, context(allow_private=allow_private))
        with (tmp_path / result["output"]).open(encoding="utf-8", newline="") as output:
            return result, list(csv.DictReader(output))

    return process


def column(rows: list[dict[str, str]], name: str) -> list[str]:
    return [row[name] for row in rows]


def where(column: str, op: str, value: Any) -> dict[str, Any]:
    return {"type": "filter", "column": column, "op": op, "value": value}


# Filter


@pytest.mark.parametrize(
    ("op", "value", "amounts"),
    [
        ("eq", 100, ["100"]),
        ("ne", "100", ["120", "9", "80.5", "0.1", "", "0.2"]),
        ("gt", 80.5, ["120", "100"]),
        ("gte", "80.5", ["120", "80.5", "100"]),
        ("lt", 9, ["0.1", "", "0.2"]),
        ("lte", 9, ["9", "0.1", "", "0.2"]),
        ("contains", "0.", ["80.5", "0.1", "0.2"]),
        ("in", [9, "100", "0.10"], ["9", "100", "0.1"]),
    ],
)
async def test_filter_supports_every_op(run: Run, op: str, value: Any, amounts: list[str]) -> None:
    _, rows = await run([where("amount", op, value)])
    assert column(rows, "amount") == amounts


async def test_filter_compares_numbers_as_numbers_not_text(run: Run) -> None:
    # As text "9" > "10"; as numbers it is not.
    _, rows = await run([where("amount", "gt", "10")])
    assert column(rows, "amount") == ["120", "80.5", "100"]


async def test_filter_compares_as_text_when_a_side_is_not_a_number(run: Run) -> None:
    _, by_text = await run([where("region", "lt", "f")])
    assert column(by_text, "region") == ["eu", "eu", "eu", "apac"]
    # An empty cell is not a number, so "" < "9" as text.
    _, mixed = await run([where("amount", "lt", 1)])
    assert column(mixed, "amount") == ["0.1", "", "0.2"]


async def test_filter_in_matches_text_values(run: Run) -> None:
    _, rows = await run([where("region", "in", ["apac", "us"])])
    assert column(rows, "region") == ["us", "us", "apac", "us"]


async def test_filter_contains_is_a_case_sensitive_substring_test(run: Run) -> None:
    _, rows = await run([where("customer", "contains", "ada@")])
    assert len(rows) == 3
    _, none = await run([where("customer", "contains", "ADA@")])
    assert none == []


# Select, rename, sort, dedupe, limit


async def test_select_keeps_the_columns_in_the_order_given(run: Run) -> None:
    result, rows = await run([{"type": "select", "columns": ["status", "region"]}])
    assert result["columns"] == ["status", "region"]
    assert list(rows[0]) == ["status", "region"]
    assert rows[0] == {"status": "paid", "region": "eu"}


async def test_rename_then_select_uses_the_new_name(run: Run) -> None:
    result, rows = await run(
        [
            {"type": "rename", "columns": {"amount": "total"}},
            {"type": "select", "columns": ["total"]},
        ]
    )
    assert result["columns"] == ["total"]
    assert column(rows, "total")[:2] == ["120", "9"]


async def test_sort_orders_numbers_numerically_with_empty_cells_last(run: Run) -> None:
    _, rows = await run([{"type": "sort", "by": ["amount"]}])
    assert column(rows, "amount") == ["0.1", "0.2", "9", "80.5", "100", "120", ""]


async def test_sort_descending_still_puts_empty_cells_last(run: Run) -> None:
    _, rows = await run([{"type": "sort", "by": ["amount"], "descending": True}])
    assert column(rows, "amount") == ["120", "100", "80.5", "9", "0.2", "0.1", ""]


async def test_sort_by_several_columns_is_stable(run: Run) -> None:
    _, rows = await run([{"type": "sort", "by": ["region", "status"]}])
    assert [(r["region"], r["customer"]) for r in rows] == [
        ("apac", "dee@example.com"),
        ("eu", "ada@example.com"),
        ("eu", "ada@example.com"),
        ("eu", "cy@example.com"),
        ("us", "bob@example.com"),
        ("us", "ada@example.com"),
        ("us", "eve@example.com"),
    ]


async def test_sort_then_limit_keeps_the_top_rows(run: Run) -> None:
    _, rows = await run(
        [{"type": "sort", "by": ["amount"], "descending": True}, {"type": "limit", "count": 2}]
    )
    assert column(rows, "amount") == ["120", "100"]


async def test_sort_then_limit_needs_no_row_limit(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(csv_ops, "SORT_MAX_ROWS", 3)
    _, rows = await run([{"type": "sort", "by": ["amount"]}, {"type": "limit", "count": 2}])
    assert column(rows, "amount") == ["0.1", "0.2"]


async def test_sort_then_a_limit_above_the_heap_size_sorts_everything(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(csv_ops, "TOP_MAX_ROWS", 1)
    _, rows = await run(
        [{"type": "sort", "by": ["amount"], "descending": True}, {"type": "limit", "count": 3}]
    )
    assert column(rows, "amount") == ["120", "100", "80.5"]


async def test_sort_refuses_more_rows_than_its_limit_naming_the_step(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(csv_ops, "SORT_MAX_ROWS", 3)
    with pytest.raises(PermanentError, match=r"^step 2 \(sort\): more than 3 rows"):
        await run([where("status", "eq", "paid"), {"type": "sort", "by": ["amount"]}])


async def test_dedupe_on_columns_keeps_the_first_row_of_each_key(run: Run) -> None:
    _, rows = await run([{"type": "dedupe", "columns": ["customer"]}])
    assert column(rows, "customer") == [
        "ada@example.com",
        "bob@example.com",
        "cy@example.com",
        "dee@example.com",
        "eve@example.com",
    ]
    assert rows[0]["amount"] == "120"


async def test_dedupe_without_columns_compares_whole_rows(run: Run) -> None:
    data = "a,b\n1,x\n1,y\n1,x\n2,x\n"
    result, rows = await run([{"type": "dedupe"}], csv_data=data)
    assert [(r["a"], r["b"]) for r in rows] == [("1", "x"), ("1", "y"), ("2", "x")]
    assert (result["rows_in"], result["rows_out"]) == (4, 3)


async def test_limit_stops_reading_once_it_has_its_rows(run: Run) -> None:
    result, rows = await run([where("region", "eq", "us"), {"type": "limit", "count": 2}])
    assert column(rows, "customer") == ["bob@example.com", "ada@example.com"]
    assert (result["rows_in"], result["rows_out"]) == (4, 2)


# Aggregate


async def test_aggregate_computes_each_function_per_group(run: Run) -> None:
    result, rows = await run(
        [
            {
                "type": "aggregate",
                "group_by": ["region"],
                "aggregations": [
                    {"function": "count", "as": "orders"},
                    {"column": "amount", "function": "count", "as": "priced"},
                    {"column": "amount", "function": "sum", "as": "revenue"},
                    {"column": "amount", "function": "avg", "as": "average"},
                    {"column": "amount", "function": "min", "as": "smallest"},
                    {"column": "amount", "function": "max"},
                ],
            }
        ]
    )
    assert result["columns"] == [
        "region",
        "orders",
        "priced",
        "revenue",
        "average",
        "smallest",
        "max_amount",
    ]
    assert result["aggregates"] == [
        {
            "region": "eu",
            "orders": 3,
            "priced": 3,
            "revenue": 200.6,
            "average": 66.8666666666667,
            "smallest": 0.1,
            "max_amount": 120,
        },
        {
            "region": "us",
            "orders": 3,
            "priced": 3,
            "revenue": 109.2,
            "average": 36.4,
            "smallest": 0.2,
            "max_amount": 100,
        },
        {
            "region": "apac",
            "orders": 1,
            "priced": 0,
            "revenue": None,
            "average": None,
            "smallest": None,
            "max_amount": None,
        },
    ]
    assert rows[0] == {
        "region": "eu",
        "orders": "3",
        "priced": "3",
        "revenue": "200.6",
        "average": "66.8666666666667",
        "smallest": "0.1",
        "max_amount": "120",
    }


async def test_aggregate_adds_decimals_exactly(run: Run) -> None:
    result, _ = await run(
        [
            where("amount", "lt", 1),
            {"type": "aggregate", "aggregations": [{"column": "amount", "function": "sum"}]},
        ]
    )
    assert result["aggregates"] == [{"sum_amount": 0.3}]


async def test_aggregate_without_group_by_over_no_rows_is_one_row_of_count_zero(run: Run) -> None:
    result, rows = await run(
        [
            where("region", "eq", "mars"),
            {"type": "aggregate", "aggregations": [{"function": "count", "as": "n"}]},
        ]
    )
    assert result["aggregates"] == [{"n": 0}]
    assert rows == [{"n": "0"}]


async def test_rows_after_an_aggregate_are_the_groups(run: Run) -> None:
    result, rows = await run(
        [
            where("status", "eq", "paid"),
            {
                "type": "aggregate",
                "group_by": ["region"],
                "aggregations": [{"column": "amount", "function": "sum", "as": "revenue"}],
            },
            {"type": "sort", "by": ["revenue"], "descending": True},
            {"type": "rename", "columns": {"revenue": "total"}},
            {"type": "limit", "count": 1},
        ]
    )
    assert rows == [{"region": "eu", "total": "120.1"}]
    assert result["aggregates"] == [{"region": "eu", "total": 120.1}]
    assert (result["rows_in"], result["rows_out"]) == (7, 1)


async def test_aggregate_sum_of_text_is_a_permanent_error_naming_the_step(run: Run) -> None:
    with pytest.raises(PermanentError, match=r"^step 1 \(aggregate\): sum of 'region'"):
        await run(
            [{"type": "aggregate", "aggregations": [{"column": "region", "function": "sum"}]}]
        )


async def test_aggregates_are_null_without_an_aggregate_step(run: Run) -> None:
    result, _ = await run([{"type": "limit", "count": 1}])
    assert result["aggregates"] is None


# Order, errors, validation


async def test_steps_apply_in_the_order_given(run: Run) -> None:
    limit_first, _ = await run([{"type": "limit", "count": 2}, where("region", "eq", "us")])
    filter_first, _ = await run([where("region", "eq", "us"), {"type": "limit", "count": 2}])
    assert (limit_first["rows_out"], filter_first["rows_out"]) == (1, 2)


async def test_unknown_column_is_a_permanent_error_naming_the_step(run: Run) -> None:
    with pytest.raises(PermanentError, match=r"^step 2 \(sort\): unknown column 'amount'"):
        await run(
            [{"type": "rename", "columns": {"amount": "total"}}, {"type": "sort", "by": ["amount"]}]
        )


async def test_unknown_column_fails_before_any_output_is_written(run: Run, tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match=r"^step 3 \(select\)"):
        await run(
            [
                {"type": "sort", "by": ["amount"]},
                {"type": "dedupe"},
                {"type": "select", "columns": ["nope"]},
            ]
        )
    assert list((tmp_path / "outputs").iterdir()) == []


async def test_rename_onto_an_existing_column_is_refused(run: Run) -> None:
    with pytest.raises(PermanentError, match=r"^step 1 \(rename\): two columns would be named"):
        await run([{"type": "rename", "columns": {"amount": "region"}}])


@pytest.mark.parametrize(
    ("operation", "field"),
    [
        ({"type": "filter", "column": "a", "op": "between", "value": 1}, "filter.op"),
        ({"type": "filter", "column": "a", "op": "in", "value": 1}, "filter.value"),
        ({"type": "filter", "column": "a", "op": "eq", "value": [1]}, "filter.value"),
        ({"type": "filter", "column": "a", "op": "eq"}, "filter.value"),
        ({"type": "select", "columns": []}, "select.columns"),
        ({"type": "select", "columns": ["a", "a"]}, "select.columns"),
        ({"type": "sort", "by": ["a"], "descending": "sometimes"}, "sort.descending"),
        ({"type": "limit", "count": -1}, "limit.count"),
        ({"type": "aggregate", "aggregations": [{"function": "median"}]}, "aggregate.aggregations"),
        ({"type": "aggregate", "aggregations": [{"function": "sum"}]}, "aggregate.aggregations"),
        ({"type": "dedupe", "colums": ["a"]}, "dedupe.colums"),
        ({"type": "pivot"}, "operations.0"),
    ],
)
def test_invalid_operation_is_refused_naming_the_field(
    operation: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError) as error:
        DataPayload.model_validate({"csv_data": "a\n1\n", "operations": [operation]})
    locations = [".".join(str(p) for p in e["loc"]) for e in error.value.errors()]
    assert any(field in location for location in locations), locations


@pytest.mark.parametrize(
    "payload",
    [
        {"operations": []},
        {"csv_data": "a\n", "csv_url": "https://example.com/a.csv"},
        {"csv_url": "file:///etc/passwd"},
        {"csv_data": "x" * (1024 * 1024 + 1)},
    ],
)
def test_payload_needs_exactly_one_valid_source(payload: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        DataPayload.model_validate(payload)


async def test_a_row_longer_than_the_header_is_refused_naming_the_line(run: Run) -> None:
    with pytest.raises(PermanentError, match=r"^line 3: 3 cells, but the header has 2"):
        await run(csv_data="a,b\n1,2\n1,2,3\n")


async def test_short_rows_are_padded_and_blank_lines_skipped(run: Run) -> None:
    result, rows = await run(csv_data="a,b\n1\n\n2,3\n")
    assert rows == [{"a": "1", "b": ""}, {"a": "2", "b": "3"}]
    assert result["rows_in"] == 2


async def test_a_header_naming_a_column_twice_is_refused(run: Run) -> None:
    with pytest.raises(PermanentError, match="names a column twice: 'a'"):
        await run(csv_data="a,b,a\n1,2,3\n")


async def test_an_empty_csv_is_refused(run: Run) -> None:
    with pytest.raises(PermanentError, match="empty"):
        await run(csv_data="")


# Output


async def test_formula_cells_are_escaped_but_numbers_are_not(run: Run, tmp_path: Path) -> None:
    data = 'name,=value\n=HYPERLINK(1),-12.5\n+SUM(A1),+3\n@cmd,-1+2\n\tx,"\rY"\nsafe,1e3\n'
    result, rows = await run(csv_data=data)
    assert rows == [
        {"name": "'=HYPERLINK(1)", "'=value": "-12.5"},
        {"name": "'+SUM(A1)", "'=value": "+3"},
        {"name": "'@cmd", "'=value": "'-1+2"},
        {"name": "'\tx", "'=value": "'\rY"},
        {"name": "safe", "'=value": "1e3"},
    ]
    assert result["bytes"] == (tmp_path / result["output"]).stat().st_size


async def test_output_is_named_by_the_task_and_leaves_no_temporary_files(
    run: Run, tmp_path: Path
) -> None:
    result, _ = await run()
    task_id = result["output_url"].split("/")[-2]
    assert result["output"] == f"outputs/{task_id}.csv"
    assert result["output_url"] == f"/api/v1/tasks/{task_id}/output"
    assert [p.name for p in (tmp_path / "outputs").iterdir()] == [f"{task_id}.csv"]


async def test_progress_reports_rows_read(run: Run, progress: list[Any]) -> None:
    rows = CHECKPOINT_ROWS + 10
    result, _ = await run([{"type": "limit", "count": 1_000_000}], csv_data="n\n" + "1\n" * rows)
    assert result["rows_in"] == rows
    assert progress == [{"rows_read": CHECKPOINT_ROWS}]


def test_a_checkpoint_that_raises_abandons_the_run_and_leaves_no_file(tmp_path: Path) -> None:
    class Stop(Exception):
        pass

    def checkpoint(rows_read: int) -> None:
        raise Stop

    text = io.StringIO("n\n" + "1\n" * (CHECKPOINT_ROWS + 1))
    with pytest.raises(Stop):
        run_pipeline(text, [], tmp_path / "out.csv", checkpoint)
    assert list(tmp_path.iterdir()) == []


# csv_url, through the SSRF guard


async def test_csv_url_is_downloaded_and_processed(
    run: Run, static_server: tuple[str, Path], tmp_path: Path
) -> None:
    base_url, served = static_server
    (served / "sales.csv").write_text("\ufeff" + SALES, encoding="utf-8")
    result, rows = await run(
        [where("status", "eq", "paid"), {"type": "select", "columns": ["region"]}],
        csv_url=f"{base_url}/sales.csv",
    )
    assert (result["rows_in"], result["rows_out"]) == (7, 6)
    assert column(rows, "region") == ["eu", "us", "us", "eu", "apac", "us"]
    assert list((tmp_path / "tmp").iterdir()) == []  # the download is deleted


async def test_csv_url_that_is_not_utf8_is_a_permanent_error(
    run: Run, static_server: tuple[str, Path]
) -> None:
    base_url, served = static_server
    (served / "latin1.csv").write_bytes("name\nJos\xe9\n".encode("latin-1"))
    with pytest.raises(PermanentError, match="not UTF-8"):
        await run(csv_url=f"{base_url}/latin1.csv")


async def test_csv_url_over_the_size_limit_is_a_permanent_error_and_leaves_no_file(
    run: Run, static_server: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(data, "CSV_MAX_BYTES", 100)  # the real cap is 1 GiB
    base_url, served = static_server
    (served / "big.csv").write_text("n\n" + "12345\n" * 100, encoding="utf-8")
    with pytest.raises(PermanentError, match=r"csv_url: .*over the 100"):
        await run(csv_url=f"{base_url}/big.csv")
    assert list((tmp_path / "tmp").iterdir()) == []


async def test_csv_url_answering_404_is_a_permanent_error(
    run: Run, static_server: tuple[str, Path]
) -> None:
    base_url, _ = static_server
    with pytest.raises(PermanentError, match="answered 404"):
        await run(csv_url=f"{base_url}/missing.csv")


class _Unavailable(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def unavailable_server() -> Iterator[str]:
    """The URL of a real server that answers every request with 503."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def test_csv_url_answering_503_is_retried(run: Run, unavailable_server: str) -> None:
    with pytest.raises(Retry, match="answered 503"):
        await run(csv_url=f"{unavailable_server}/sales.csv")


async def test_csv_url_refusing_connections_is_retried_not_failed(run: Run) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(httpx.ConnectError):
        await run(csv_url=f"http://127.0.0.1:{port}/sales.csv")


async def test_private_csv_url_is_refused_without_allow_private_urls(
    run: Run, static_server: tuple[str, Path]
) -> None:
    base_url, served = static_server
    (served / "sales.csv").write_text(SALES, encoding="utf-8")
    with pytest.raises(UnsafeURL, match="loopback"):
        await run(csv_url=f"{base_url}/sales.csv", allow_private=False)


# Through a real worker pool


@pytest.fixture
async def pool_and_store(
    tmp_path: Path, clock: ManualClock
) -> AsyncIterator[tuple[WorkerPool, MemoryBackend]]:
    store = MemoryBackend(clock=clock)
    await store.open()
    pool = WorkerPool(
        store, default_registry, settings_for(tmp_path), worker_id="test-worker", queues=[]
    )
    running = asyncio.create_task(pool.run())
    yield pool, store
    pool.stop()
    await running
    await pool.abort()
    await pool.close()
    await store.close()


async def test_worker_pool_runs_a_data_processing_task_to_completion(
    pool_and_store: tuple[WorkerPool, MemoryBackend],
    clock: ManualClock,
    static_server: tuple[str, Path],
    tmp_path: Path,
) -> None:
    _, store = pool_and_store
    base_url, served = static_server
    (served / "sales.csv").write_text(SALES, encoding="utf-8")
    payload = {
        "csv_url": f"{base_url}/sales.csv",
        "operations": [
            where("status", "eq", "paid"),
            {
                "type": "aggregate",
                "group_by": ["region"],
                "aggregations": [{"column": "amount", "function": "sum", "as": "revenue"}],
            },
        ],
    }
    task = Task.new("data_processing", payload, now=clock.now())
    await store.enqueue([task])
    done = await eventually(store, task.id, lambda t: t.status.is_final)
    assert done.status is TaskStatus.COMPLETED, done.error
    assert done.result["aggregates"] == [
        {"region": "eu", "revenue": 120.1},
        {"region": "us", "revenue": 109.2},
        {"region": "apac", "revenue": None},
    ]
    assert (tmp_path / done.result["output"]).is_file()


async def test_worker_pool_fails_a_bad_step_at_once_naming_it(
    pool_and_store: tuple[WorkerPool, MemoryBackend], clock: ManualClock
) -> None:
    _, store = pool_and_store
    payload = {"csv_data": SALES, "operations": [{"type": "select", "columns": ["amount", "tax"]}]}
    task = Task.new("data_processing", payload, now=clock.now(), max_retries=3)
    await store.enqueue([task])
    done = await eventually(store, task.id, lambda t: t.status.is_final)
    assert done.status is TaskStatus.FAILED
    assert done.attempts == 1
    assert done.error is not None
    assert "step 1 (select): unknown column 'tax'" in done.error
