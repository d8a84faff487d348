"""Property-based fuzzing of the real HTTP server from its own OpenAPI spec (schemathesis).

Every operation gets requests generated from the spec, sent over real HTTP to
`task-queue api` on SQLite. The spec is built in-process at collection
(schemathesis's lazy fixture loader does not run on pytest 9.2), and a first
test checks the server serves that very spec. Real tasks are in the answers
through the spec's submit examples and the list endpoint. There is no
stateful (chained) run: its steps depend on what the server answered before,
which Hypothesis cannot replay, and it ended in FlakyStrategyDefinition about
one run in five. Every answer must be declared:
no 5xx, and a status code, content type, headers and body the spec lists for
that operation. Bounded so the whole run stays well under a minute; set
FUZZ_EXAMPLES for a longer hunt (docs/api.md).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from task_queue.api.app import create_app
from task_queue.backends.memory import MemoryBackend
from task_queue.client import AsyncClient
from task_queue.config import Settings
from task_queue.metrics import Metrics
from tests.e2e.processes import Launcher, TaskQueueProcess

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # a real server's latency is not the property under test
    database=None,  # no replay of old failures: each run is a fresh, bounded sample
    # Health checks judge generation speed against in-process functions; HTTP
    # round trips and 1000-task batches trip them without anything being wrong.
    suppress_health_check=list(HealthCheck),
)
# A backstop per test: each operation takes a few seconds.
TIME_BUDGET = pytest.mark.timeout(20 + EXAMPLES)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


SPEC = create_app(AsyncClient(MemoryBackend()), Settings(), Metrics()).openapi()
schema = schemathesis.openapi.from_dict(SPEC)
SHORTEST_WAIT = 0.2  # seconds


@schema.hook
def map_query(context: Any, query: dict[str, Any] | None) -> dict[str, Any] | None:
    """Long-polls cut short: the fuzzed API has no worker, so a `?wait=` on a task
    waits its whole length (up to 60 s) and would outlast the client's timeout.
    The spec's bound (422 above 60) is still probed by the values the fuzz draws
    outside it; a valid wait is sent shorter."""
    if query and isinstance(query.get("wait"), int | float) and 0 <= query["wait"] <= 60:
        query["wait"] = min(query["wait"], SHORTEST_WAIT)
    return query


@pytest.fixture(scope="module")
def fuzzed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TaskQueueProcess]:
    """A server of its own: the fuzz fills its queue with odd tasks.

    Room for a million, so a declared 503 queue_full (which not_a_server_error
    counts as a failure) can only come from a real fault. An API without a
    worker: the fuzz's tasks only change through its own calls.
    """
    launcher = Launcher(Path(tmp_path_factory.mktemp("fuzz-server")))
    try:
        yield launcher.start("api", QUEUE_SIZE=1_000_000)
    finally:
        launcher.stop_all()


def test_the_server_serves_the_spec_being_fuzzed(fuzzed_server: TaskQueueProcess) -> None:
    assert fuzzed_server.http.get("/openapi.json").json() == SPEC


@schema.parametrize()
@FUZZ
@TIME_BUDGET
def test_every_answer_is_declared_in_the_spec(
    fuzzed_server: TaskQueueProcess, case: schemathesis.Case
) -> None:
    case.call_and_validate(base_url=fuzzed_server.url, checks=CHECKS, timeout=10)
