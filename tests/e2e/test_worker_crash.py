"""Processes sharing one SQLite file: an API, two workers, and one of them killed with -9."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.processes import Launcher, TaskQueueProcess, wait_for

LEASE_SECONDS = 2


@dataclass
class Cluster:
    api: TaskQueueProcess
    workers: list[TaskQueueProcess]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    launch = Launcher(tmp_path_factory.mktemp("cluster"))
    settings: dict[str, Any] = {"LEASE_SECONDS": LEASE_SECONDS, "WORKER_COUNT": 2}
    try:
        api = launch.start("api", **settings)
        workers = [launch.start("worker", **settings) for _ in range(2)]
        yield Cluster(api, workers)
    finally:
        launch.stop_all()


def _listed_pids(api: TaskQueueProcess) -> set[int]:
    return {worker["pid"] for worker in api.workers()}


def test_workers_endpoint_lists_the_worker_processes_sharing_the_backend(
    cluster: Cluster,
) -> None:
    expected = {worker.pid for worker in cluster.workers}

    wait_for(lambda: _listed_pids(cluster.api) == expected, 10, f"workers {expected} listed")

    for worker in cluster.api.workers():
        assert worker["state"] in ("idle", "busy")
        assert worker["current_tasks"] == []
        assert str(worker["pid"]) in worker["id"]
    assert cluster.api.http.get("/api/v1/health").json()["workers"] == 2


def test_task_of_a_killed_worker_is_finished_once_by_the_other_after_its_lease_expires(
    cluster: Cluster, tmp_path: Path
) -> None:
    api = cluster.api
    record = tmp_path / "record.txt"
    task = api.submit("record", {"seconds": 3, "path": str(record)})

    def holder() -> TaskQueueProcess | None:
        if api.task(task["id"])["status"] != "running":
            return None
        pids = {w["pid"] for w in api.workers() if task["id"] in w["current_tasks"]}
        return next((p for p in cluster.workers if p.pid in pids), None)

    victim = wait_for(holder, 10, "a worker to report the task among its current tasks")
    [survivor] = [worker for worker in cluster.workers if worker is not victim]
    victim.signal(signal.SIGKILL)
    assert victim.wait_exit(5) == -signal.SIGKILL

    done = api.wait_final(task["id"], seconds=30)

    assert done["status"] == "completed"
    assert done["attempts"] == 2
    assert done["result"] == {"pid": survivor.pid}
    assert record.read_text().splitlines() == [f"{task['id']} {survivor.pid}"]
    [recovered] = survivor.logs("task recovered", task_id=task["id"])
    assert str(victim.pid) in recovered["lost_worker"]
    # A worker that stopped heartbeating drops out of the registry on its own.
    wait_for(lambda: _listed_pids(api) == {survivor.pid}, 10, "the killed worker to drop out")
