"""Graceful shutdown with real signals: drain, hand back, and nothing lost across a restart.

Every scenario runs `serve` on SQLite, signals it, then looks at the same
DATA_DIR through an `api`-only process (no worker, so a task handed back is
seen waiting) before a `worker` process picks the work up again.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.processes import (
    TASK_QUEUE,
    Launcher,
    RawRequest,
    TaskQueueProcess,
    free_port,
    process_env,
    wait_for,
)

MARGIN_SECONDS = 10.0  # start-up of the exit path, handing back, closing SQLite
DRAIN_SECONDS = 15  # SHUTDOWN_TIMEOUT where the running task must be let finish

# Whether the pool has a free slot when the signal comes decides which wait it is
# in; both must stop.
POOL_STATES = [pytest.param(1, id="every-slot-busy"), pytest.param(2, id="a-slot-free")]


def _sigterm_after_the_first_was_heard(server: TaskQueueProcess) -> None:
    """Two signals sent back to back could be seen as one; wait for the first to land."""
    server.signal(signal.SIGTERM)
    wait_for(lambda: server.logs("shutting down"), 5, "the first SIGTERM to be logged")
    server.signal(signal.SIGTERM)


def _assert_handed_back_then_completed(launch: Launcher, task_id: str) -> None:
    """After a restart the task waits unstarted, its interrupted attempt uncounted, then runs."""
    api = launch.start("api")
    waiting = api.task(task_id)
    assert waiting["status"] == "pending"
    assert waiting["attempts"] == 0
    assert waiting["started_at"] is None

    launch.start("worker")
    done = api.wait_final(task_id)

    assert done["status"] == "completed"
    assert done["attempts"] == 1


@dataclass
class Drained:
    """What a SIGTERM during a 5 s task did, and an API process on the same DATA_DIR."""

    exit_code: int
    seconds_to_exit: float
    running: dict[str, Any]
    waiting: list[dict[str, Any]]
    server: TaskQueueProcess
    api: TaskQueueProcess
    launch: Launcher


@pytest.fixture(scope="module")
def drained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Drained]:
    launch = Launcher(tmp_path_factory.mktemp("drained"))
    try:
        server = launch.start("serve", WORKER_COUNT=1, SHUTDOWN_TIMEOUT=DRAIN_SECONDS)
        running = server.submit("sleep", {"seconds": 5})
        server.wait_status(running["id"], "running")
        waiting = [server.submit("sleep", {"seconds": 0}) for _ in range(3)]

        began = time.monotonic()
        server.signal(signal.SIGTERM)
        exit_code = server.wait_exit(DRAIN_SECONDS + MARGIN_SECONDS)
        seconds = time.monotonic() - began

        api = launch.start("api")
        yield Drained(exit_code, seconds, running, waiting, server, api, launch)
    finally:
        launch.stop_all()


def test_sigterm_lets_the_running_task_finish_and_exits_zero(drained: Drained) -> None:
    assert drained.exit_code == 0
    assert drained.seconds_to_exit < DRAIN_SECONDS + MARGIN_SECONDS
    task = drained.api.task(drained.running["id"])
    assert task["status"] == "completed"
    assert task["attempts"] == 1
    assert drained.server.logs("worker stopped")[-1]["clean"] is True


def test_tasks_pending_at_sigterm_survive_a_restart_and_then_complete(drained: Drained) -> None:
    ids = [task["id"] for task in drained.waiting]
    assert [drained.api.task(i)["status"] for i in ids] == ["pending"] * 3

    drained.launch.start("worker")

    assert [drained.api.wait_final(i)["status"] for i in ids] == ["completed"] * 3


@pytest.mark.parametrize("worker_count", POOL_STATES)
def test_second_sigterm_exits_at_once_and_the_interrupted_task_is_requeued(
    launch: Launcher, worker_count: int
) -> None:
    server = launch.start("serve", WORKER_COUNT=worker_count, SHUTDOWN_TIMEOUT=60)
    task = server.submit("sleep", {"seconds": 60, "once": True})
    server.wait_status(task["id"], "running")

    _sigterm_after_the_first_was_heard(server)

    # "At once": far sooner than the 60 s task or the 60 s drain would allow.
    assert server.wait_exit(MARGIN_SECONDS) == 1
    _assert_handed_back_then_completed(launch, task["id"])


@pytest.mark.parametrize("worker_count", POOL_STATES)
def test_sigterm_hands_back_a_task_that_outlasts_shutdown_timeout_and_exits_zero(
    launch: Launcher, worker_count: int
) -> None:
    server = launch.start("serve", WORKER_COUNT=worker_count, SHUTDOWN_TIMEOUT=1)
    # A sync handler: its thread cannot be interrupted, yet must not hold the exit.
    task = server.submit("sleep_sync", {"seconds": 30, "once": True})
    server.wait_status(task["id"], "running")

    server.signal(signal.SIGTERM)

    assert server.wait_exit(1 + MARGIN_SECONDS) == 0
    _assert_handed_back_then_completed(launch, task["id"])


@pytest.mark.parametrize(
    "shutdown_timeout",
    [
        0.5,
        2,
    ],
)
def test_sigterm_answers_an_open_long_poll_and_exits_within_shutdown_timeout(
    launch: Launcher, shutdown_timeout: float
) -> None:
    server = launch.start("serve", QUEUE_BACKEND="memory", SHUTDOWN_TIMEOUT=shutdown_timeout)
    task = server.submit("sleep", delay_seconds=3600)
    with RawRequest(server.port, "GET", f"/api/v1/tasks/{task['id']}?wait=30") as long_poll:
        long_poll.wait_until_read_by_server()

        server.signal(signal.SIGTERM)

        assert server.wait_exit(shutdown_timeout + MARGIN_SECONDS) == 0
        status, headers, body = long_poll.response()
    # Either the task as it stands, or an error in the contract's shape: never a bare 500.
    assert headers["content-type"] == "application/json"
    assert status in (200, 503)
    assert ("id" if status == 200 else "error") in json.loads(body)


def test_sigterm_stops_the_process_even_when_its_stderr_is_gone(tmp_path: Path) -> None:
    port = free_port()
    env = process_env({"QUEUE_BACKEND": "memory", "PORT": port, "DATA_DIR": tmp_path})
    server = subprocess.Popen([TASK_QUEUE, "serve"], env=env, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: _live(port), 15, "the server to answer")
        assert server.stderr is not None
        server.stderr.close()  # every log line from now on hits a broken pipe

        server.send_signal(signal.SIGTERM)

        assert server.wait(MARGIN_SECONDS) == 0
    finally:
        server.kill()
        server.wait()


def _live(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/api/v1/health/live").status_code == 200
    except httpx.TransportError:
        return False
