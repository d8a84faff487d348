"""Tasks through a real server: priorities, retries with backoff, failures, long-polling."""

from __future__ import annotations

import itertools
import time
from datetime import datetime

from tests.e2e.processes import Launcher, TaskQueueProcess


def _moment(value: str) -> datetime:
    return datetime.fromisoformat(value)


def test_higher_priority_tasks_run_first_when_the_only_worker_frees_up(launch: Launcher) -> None:
    # Strict order needs no prefetch: a prefetched task was leased before the later,
    # higher-priority ones arrived (docs/configuration.md, WORKER_PREFETCH).
    server = launch.start("serve", QUEUE_BACKEND="memory", WORKER_COUNT=1, WORKER_PREFETCH=0)
    blocker = server.submit("sleep", {"seconds": 2})
    server.wait_status(blocker["id"], "running")

    # Each runs long enough that their millisecond timestamps cannot tie.
    waiting = [server.submit("sleep", {"seconds": 0.1}, priority=p) for p in (0, 10, 5)]

    finished = [server.wait_final(task["id"]) for task in waiting]
    assert all(task["status"] == "completed" for task in finished)
    by_start = sorted(finished, key=lambda task: _moment(task["started_at"]))
    assert [task["priority"] for task in by_start] == [10, 5, 0]
    by_end = sorted(finished, key=lambda task: _moment(task["completed_at"]))
    assert [task["priority"] for task in by_end] == [10, 5, 0]
    assert min(_moment(t["started_at"]) for t in finished) >= _moment(
        server.task(blocker["id"])["completed_at"]
    )


def test_flaky_task_is_retried_with_growing_backoff_until_it_succeeds(
    memory_server: TaskQueueProcess,
) -> None:
    task = memory_server.submit("flaky", {"failures": 2}, max_retries=3)

    done = memory_server.wait_final(task["id"])

    assert done["status"] == "completed"
    assert done["attempts"] == 3
    assert done["result"] == {"succeeded_on_attempt": 3}
    assert done["error"] is None
    delays = [line["retry_in"] for line in memory_server.logs("task retrying", task_id=task["id"])]
    # Equal jitter: retry n waits in [step/2, step], step = 0.2 * 2^(n-1); so 1st <= 0.2 <= 2nd.
    assert len(delays) == 2
    assert 0 < delays[0] < delays[1] <= 0.4
    started = memory_server.logs("task started", task_id=task["id"])
    assert [line["attempt"] for line in started] == [1, 2, 3]
    starts = [_moment(line["timestamp"]) for line in started]
    gaps = [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(starts)]
    # The worker waited out each backoff before it started the next attempt.
    assert gaps[0] >= delays[0]
    assert gaps[1] >= delays[1]


def test_permanent_error_fails_the_task_after_one_attempt(
    memory_server: TaskQueueProcess,
) -> None:
    task = memory_server.submit("permanent", max_retries=5)

    done = memory_server.wait_final(task["id"])

    assert done["status"] == "failed"
    assert done["attempts"] == 1
    assert "this task can never succeed" in done["error"]


def test_task_that_keeps_failing_ends_failed_with_its_last_error(
    memory_server: TaskQueueProcess,
) -> None:
    task = memory_server.submit("always_fails", max_retries=1)

    done = memory_server.wait_final(task["id"])

    assert done["status"] == "failed"
    assert done["attempts"] == 2
    assert "failure on attempt 2" in done["error"]
    failed = memory_server.http.get("/api/v1/tasks", params={"status": "failed", "limit": 500})
    assert task["id"] in [t["id"] for t in failed.json()["tasks"]]


def test_long_poll_answers_as_soon_as_the_task_is_final(
    memory_server: TaskQueueProcess,
) -> None:
    wait = 5.0
    task = memory_server.submit("sleep", {"seconds": 1})

    began = time.monotonic()
    response = memory_server.http.get(
        f"/api/v1/tasks/{task['id']}", params={"wait": wait}, timeout=wait + 10
    )
    waited = time.monotonic() - began

    assert response.status_code == 200
    assert response.json()["status"] == "completed"
    # The task takes 1 s of the 5 s allowed: the answer comes with it, not at the end.
    assert waited / wait < 0.6


def test_long_poll_longer_than_sixty_seconds_is_refused(
    memory_server: TaskQueueProcess,
) -> None:
    task = memory_server.submit("sleep", {"seconds": 0})

    response = memory_server.http.get(f"/api/v1/tasks/{task['id']}", params={"wait": 61})

    assert response.status_code == 422
    error = response.json()["error"]
    assert [d["field"] for d in error["details"]] == ["query.wait"]


def test_sync_and_async_handlers_run_side_by_side(memory_server: TaskQueueProcess) -> None:
    tasks = [memory_server.submit("sleep_sync", {"seconds": 0.5}) for _ in range(2)]
    tasks.append(memory_server.submit("sleep", {"seconds": 0.5}))

    finished = [memory_server.wait_final(task["id"]) for task in tasks]

    assert [task["status"] for task in finished] == ["completed"] * 3
    assert [task["result"] for task in finished] == [{"slept": 0.5}] * 3
    # WORKER_COUNT=4: a sync handler blocks its thread, never the loop or the other slots.
    last_start = max(_moment(task["started_at"]) for task in finished)
    first_end = min(_moment(task["completed_at"]) for task in finished)
    assert last_start < first_end
