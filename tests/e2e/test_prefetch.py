"""SIGTERM a worker that prefetches: running tasks finish, prefetched ones go back at once.

A real `task-queue worker` with WORKER_COUNT=2 and WORKER_PREFETCH=3 holds five
tasks: two running, three leased but not started. The lease is 60 s, so a
prefetched task that is `pending` again within seconds of SIGTERM was handed
back, not recovered after its lease. A task counts as started once the worker
logs "task started" for it; it is held by the worker when the store says
`running` (the only worker) and no such line exists.
"""

from __future__ import annotations

import collections
import signal
import time
from pathlib import Path

import pytest

from tests.backends.redis_server import RedisServer
from tests.e2e.processes import Launcher, TaskQueueProcess, wait_for

HANDLER_SECONDS = 3.0
HAND_BACK_SECONDS = 2.0  # far under LEASE_SECONDS, and under HANDLER_SECONDS


@pytest.fixture(params=["sqlite", "redis"])
def backend_env(request: pytest.FixtureRequest) -> dict[str, object]:
    """The settings of a shared backend: SQLite in DATA_DIR, or a redis-server of this test."""
    if request.param == "sqlite":
        return {}
    server: RedisServer = request.getfixturevalue("own_redis")
    return {"QUEUE_BACKEND": "redis", "REDIS_URL": server.url}


def started_by(worker: TaskQueueProcess) -> set[str]:
    return {str(line["task_id"]) for line in worker.logs("task started")}


def statuses(api: TaskQueueProcess, ids: list[str]) -> dict[str, str]:
    return {task_id: api.task(task_id)["status"] for task_id in ids}


def test_sigterm_finishes_running_tasks_and_hands_prefetched_ones_back_at_once(
    launch: Launcher, backend_env: dict[str, object], tmp_path: Path
) -> None:
    env = {**backend_env, "WORKER_COUNT": 2, "WORKER_PREFETCH": 3, "LEASE_SECONDS": 60}
    api = launch.start("api", **env)
    worker = launch.start("worker", **env)
    assert worker.logs("worker started")[0]["prefetch"] == 3
    record = tmp_path / "record.txt"
    body = {"type": "record", "payload": {"path": str(record), "seconds": HANDLER_SECONDS}}
    response = api.http.post("/api/v1/tasks/batch", json={"tasks": [body] * 7})
    assert response.status_code == 201, response.text
    ids = [task["id"] for task in response.json()["tasks"]]

    def two_running_three_held() -> tuple[set[str], set[str]] | None:
        started = started_by(worker)
        running = {i for i, status in statuses(api, ids).items() if status == "running"}
        if len(started) == 2 and len(running) == 5 and started <= running:
            return started, running - started
        return None

    running, prefetched = wait_for(two_running_three_held, 10, "2 tasks started and 3 held")
    untouched = set(ids) - running - prefetched
    assert all(api.task(i)["attempts"] == 1 for i in prefetched)  # a lease counts one

    worker.signal(signal.SIGTERM)
    signalled = time.monotonic()

    def prefetched_pending() -> dict[str, str] | None:
        now = statuses(api, ids)
        return now if all(now[i] == "pending" for i in prefetched) else None

    seen = wait_for(prefetched_pending, HAND_BACK_SECONDS, "the prefetched tasks to be pending")
    assert time.monotonic() - signalled < HAND_BACK_SECONDS
    # Handed back while the running ones still ran: at once, not after the drain.
    assert {seen[i] for i in running} == {"running"}, seen
    for task_id in prefetched | untouched:
        task = api.task(task_id)
        assert (task["status"], task["attempts"], task["started_at"]) == ("pending", 0, None)

    assert worker.wait_exit(15) == 0, worker.stderr()
    for task_id in running:
        task = api.task(task_id)
        assert (task["status"], task["attempts"]) == ("completed", 1)
        assert task["result"] == {"pid": worker.pid}
    assert not started_by(worker) - running  # nothing prefetched was started after all

    successor = launch.start("worker", **{**env, "WORKER_COUNT": 5})
    for task_id in prefetched | untouched:
        task = api.wait_final(task_id, seconds=30)
        assert (task["status"], task["attempts"]) == ("completed", 1)
        assert task["result"] == {"pid": successor.pid}
    runs = collections.Counter(line.split()[0] for line in record.read_text().splitlines())
    assert runs == collections.Counter(ids)
