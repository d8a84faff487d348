"""Real `task-queue` processes sharing one real redis-server: no task lost, none run twice.

Every test starts its own redis-server on a free loopback port (never 6379),
because some of them stop, pause or restart it. Waits poll with deadlines.
"""

from __future__ import annotations

import collections
import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.backends.redis_server import RedisServer
from tests.e2e.processes import Launcher, TaskQueueProcess, wait_for

BATCH = 1000  # the most POST /api/v1/tasks/batch takes


def settings(server: RedisServer, **extra: object) -> dict[str, object]:
    return {
        "QUEUE_BACKEND": "redis",
        "REDIS_URL": server.url,
        "QUEUE_SIZE": 20_000,
        "RETRY_BASE_SECONDS": 0.2,
        "RETRY_MAX_SECONDS": 1,
        "SHUTDOWN_TIMEOUT": 10,
        **extra,
    }


def record_lines(path: Path) -> list[tuple[str, int]]:
    if not path.exists():
        return []
    lines = []
    for line in path.read_text().splitlines():
        task_id, pid = line.split()
        lines.append((task_id, int(pid)))
    return lines


def submit_batch(api: TaskQueueProcess, bodies: list[dict[str, Any]]) -> list[str]:
    ids: list[str] = []
    for start in range(0, len(bodies), BATCH):
        chunk = bodies[start : start + BATCH]
        response = api.http.post("/api/v1/tasks/batch", json={"tasks": chunk}, timeout=60)
        assert response.status_code == 201, response.text
        ids += [task["id"] for task in response.json()["tasks"]]
    return ids


def stats(api: TaskQueueProcess) -> dict[str, Any]:
    response = api.http.get("/api/v1/stats")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def wait_all_completed(api: TaskQueueProcess, count: int, seconds: float) -> None:
    def done() -> bool:
        try:
            return stats(api)["by_status"]["completed"] >= count
        except (httpx.TransportError, AssertionError):
            return False  # the backend may be down or paused in some tests

    try:
        wait_for(done, seconds, f"{count} tasks completed")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; stats now: {stats(api)}") from None


def running_on(api: TaskQueueProcess, task_id: str, worker: TaskQueueProcess) -> bool:
    """The task reads running and `worker` logged that it started it."""
    if api.task(task_id)["status"] != "running":
        return False
    return bool(worker.logs("task started", task_id=task_id))


def one_task_running(
    launch: Launcher, env: dict[str, object], record: Path, *, seconds: float
) -> tuple[TaskQueueProcess, TaskQueueProcess, str]:
    """An API and one worker, and a `record` task of `seconds` already running on that worker."""
    api = launch.start("api", **env)
    worker = launch.start("worker", **env)
    task_id = api.submit("record", {"path": str(record), "seconds": seconds})["id"]
    wait_for(lambda: running_on(api, task_id, worker), 10, "the task running on its worker")
    return api, worker, task_id


# 1. Many APIs and workers on one queue ------------------------------------------------


@pytest.mark.parametrize(
    "count",
    [5000, pytest.param(50_000, marks=[pytest.mark.slow, pytest.mark.timeout(900)], id="50000")],
    ids=str,
)
def test_two_apis_and_three_workers_complete_every_task_exactly_once(
    launch: Launcher, own_redis: RedisServer, tmp_path: Path, count: int
) -> None:
    env = settings(own_redis, WORKER_COUNT=8, LEASE_SECONDS=10, QUEUE_SIZE=count)
    apis = [launch.start("api", **env) for _ in range(2)]
    workers = [launch.start("worker", **env) for _ in range(3)]
    record = tmp_path / "record.txt"
    body = {"type": "record", "payload": {"path": str(record)}}

    # Both APIs at once, half each.
    with ThreadPoolExecutor(2) as pool:
        halves = list(pool.map(lambda api: submit_batch(api, [body] * (count // 2)), apis))
    ids = halves[0] + halves[1]
    assert len(ids) == count
    assert len(set(ids)) == count

    # Readable on the other API than the one that took it.
    for first, other in ((0, 1), (1, 0)):
        task = apis[other].task(halves[first][0])
        assert task["id"] == halves[first][0]
        assert task["type"] == "record"

    wait_all_completed(apis[0], count, seconds=60 if count <= 5000 else 600)

    lines = record_lines(record)
    seen = collections.Counter(task_id for task_id, _ in lines)
    assert set(seen) == set(ids), "some tasks never ran, or unknown ids ran"
    assert [i for i, n in seen.items() if n > 1] == [], "tasks ran more than once"
    assert {pid for _, pid in lines} <= {w.pid for w in workers}
    final = stats(apis[1])
    assert final["by_status"]["completed"] == count
    assert final["by_status"]["running"] == 0
    assert final["queue_size"] == 0
    for task_id in (ids[0], ids[-1], ids[count // 2]):
        task = apis[1].task(task_id)
        assert task["status"] == "completed"
        assert task["attempts"] == 1


# 2. A paused worker's late result is refused ---------------------------------------


def test_worker_stopped_past_its_lease_has_its_late_result_refused(
    launch: Launcher, own_redis: RedisServer, tmp_path: Path
) -> None:
    env = settings(own_redis, WORKER_COUNT=1, LEASE_SECONDS=2)
    record = tmp_path / "record.txt"
    api, worker_a, task_id = one_task_running(launch, env, record, seconds=1)
    worker_a.signal(signal.SIGSTOP)
    try:
        worker_b = launch.start("worker", **env)
        done = api.wait_final(task_id, seconds=20)
        assert done["status"] == "completed"
        assert done["result"] == {"pid": worker_b.pid}
        assert done["attempts"] == 2
    finally:
        worker_a.signal(signal.SIGCONT)

    refusals = (
        "lease lost before the result was stored: result dropped",
        "task taken over by another worker: its result is dropped",
    )

    def refused() -> bool:
        return any(worker_a.logs(event, task_id=task_id) for event in refusals)

    wait_for(refused, 10, f"worker A to log that its result was dropped:\n{worker_a.stderr()}")
    # One stored result: B's, whatever A did after it woke.
    again = api.task(task_id)
    assert again["status"] == "completed"
    assert again["result"] == {"pid": worker_b.pid}
    assert again["attempts"] == 2
    # B ran it once; A's handler may have appended its line before its finish was refused.
    lines = record_lines(record)
    assert lines.count((task_id, worker_b.pid)) == 1
    assert lines.count((task_id, worker_a.pid)) <= 1
    assert len(lines) == 1 + lines.count((task_id, worker_a.pid))


def test_worker_whose_late_finish_is_refused_does_not_report_the_task_completed(
    launch: Launcher, own_redis: RedisServer, tmp_path: Path
) -> None:
    """The refusal path at finish time, made deterministic.

    A long lease keeps A's next heartbeat (every lease/3 = 10 s) far off, so when
    A wakes its handler finishes before any heartbeat can notice the lost lease:
    the refusal comes from the fencing check of finish itself. The lease is made
    to expire early, as after a long pause, by moving its expiry in Redis.
    """
    env = settings(own_redis, WORKER_COUNT=1, LEASE_SECONDS=30)
    record = tmp_path / "record.txt"
    api, worker_a, task_id = one_task_running(launch, env, record, seconds=1)
    worker_a.signal(signal.SIGSTOP)
    try:
        with redis.Redis.from_url(own_redis.url) as client:
            client.zadd("{tq}:leased", {task_id: 0})  # the lease ran out long ago
        worker_b = launch.start("worker", **env)
        done = api.wait_final(task_id, seconds=20)
        assert done["status"] == "completed"
        assert done["result"] == {"pid": worker_b.pid}
    finally:
        worker_a.signal(signal.SIGCONT)

    dropped = "lease lost before the result was stored: result dropped"
    wait_for(
        lambda: worker_a.logs(dropped, task_id=task_id), 10, f"A's refusal:\n{worker_a.stderr()}"
    )
    # The contract holds: B's result is the one stored; A's handler did run to its end.
    assert api.task(task_id)["result"] == {"pid": worker_b.pid}
    lines = record_lines(record)
    assert sorted(lines) == sorted([(task_id, worker_a.pid), (task_id, worker_b.pid)])
    # The bug: A then logs the task as completed anyway (and counts it processed).
    assert not worker_a.logs("task completed", task_id=task_id)


# 3. A killed worker's task is finished by another -----------------------------------


def test_task_of_a_killed_worker_is_completed_once_by_another_after_the_lease(
    launch: Launcher, own_redis: RedisServer, tmp_path: Path
) -> None:
    env = settings(own_redis, WORKER_COUNT=1, LEASE_SECONDS=2)
    record = tmp_path / "record.txt"
    api, victim, task_id = one_task_running(launch, env, record, seconds=3)
    survivor = launch.start("worker", **env)
    victim.signal(signal.SIGKILL)
    assert victim.wait_exit(5) == -signal.SIGKILL

    done = api.wait_final(task_id, seconds=30)

    assert done["status"] == "completed"
    assert done["attempts"] == 2
    assert done["result"] == {"pid": survivor.pid}
    assert record_lines(record) == [(task_id, survivor.pid)]
    [recovered] = survivor.logs("task recovered", task_id=task_id)
    assert str(victim.pid) in recovered["lost_worker"]


# 4. SIGTERM: the running task finishes, nothing stays taken ------------------------


def test_sigterm_finishes_the_running_task_and_leaves_nothing_running(
    launch: Launcher, own_redis: RedisServer, tmp_path: Path
) -> None:
    env = settings(own_redis, WORKER_COUNT=1, LEASE_SECONDS=30)
    record = tmp_path / "record.txt"
    api, worker, long_id = one_task_running(launch, env, record, seconds=2)
    waiting = [api.submit("record", {"path": str(record)})["id"] for _ in range(5)]

    worker.signal(signal.SIGTERM)
    assert worker.wait_exit(15) == 0, worker.stderr()

    assert api.task(long_id)["status"] == "completed"
    assert api.task(long_id)["result"] == {"pid": worker.pid}
    # With a 30 s lease, anything the worker had taken and not handed back would
    # still read "running" here.
    for task_id in waiting:
        assert api.task(task_id)["status"] in ("pending", "completed")
    assert stats(api)["by_status"]["running"] == 0

    # The rest are taken by a new worker at once, not after a lease.
    launch.start("worker", **env)
    for task_id in waiting:
        assert api.wait_final(task_id, seconds=10)["status"] == "completed"
    seen = collections.Counter(task_id for task_id, _ in record_lines(record))
    assert seen == collections.Counter([long_id, *waiting])


def parked_workers(server: RedisServer) -> int:
    """Workers parked now: those whose park has not run out."""
    with redis.Redis(port=server.port) as client:
        parks = client.hvals("{tq}:parks")  # each 'parked until\n...' (lib.lua)
    return sum(float(park.split(b"\n", 1)[0]) >= time.time() for park in parks)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_an_idle_worker_that_stops_is_handed_nothing_more(
    launch: Launcher, own_redis: RedisServer, tmp_path: Path, sig: signal.Signals
) -> None:
    """An idle worker is parked: submits hand it tasks directly. Once it stops
    (SIGTERM takes it off; after kill -9 its park runs out), a submit stays pending
    for the next worker instead of waiting 30 s for a dead worker's lease."""
    env = settings(own_redis, LEASE_SECONDS=30)
    record = tmp_path / "record.txt"
    api = launch.start("api", **env)
    worker = launch.start("worker", **env)
    wait_for(lambda: parked_workers(own_redis) == 1, 10, "the idle worker parked")
    first = api.submit("record", {"path": str(record)})["id"]
    assert api.wait_final(first, seconds=10)["status"] == "completed"

    worker.signal(sig)
    worker.wait_exit(15)
    if sig is signal.SIGKILL:
        wait_for(lambda: parked_workers(own_redis) == 0, 10, "the killed worker's park to end")
    assert parked_workers(own_redis) == 0
    later = api.submit("record", {"path": str(record)})["id"]
    assert api.task(later)["status"] == "pending"

    survivor = launch.start("worker", **env)
    assert api.wait_final(later, seconds=10)["status"] == "completed"
    assert record_lines(record) == [(first, worker.pid), (later, survivor.pid)]


# 5 and 6. Redis restarted or paused under load --------------------------------------


class Submitter(threading.Thread):
    """Submits `record` tasks one by one until stopped; keeps the ids Redis acknowledged (201)."""

    def __init__(self, api: TaskQueueProcess, record: Path) -> None:
        super().__init__(daemon=True)
        self.api = api
        self.record = record
        self.acknowledged: list[str] = []
        self.refused = 0
        self.unexpected: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        body = {"type": "record", "payload": {"path": str(self.record), "seconds": 0.02}}
        with httpx.Client(base_url=self.api.url, timeout=15) as http:
            while not self.halt.is_set():
                try:
                    response = http.post("/api/v1/tasks", json=body)
                except httpx.TransportError:
                    self.refused += 1
                    continue
                if response.status_code == 201:
                    self.acknowledged.append(response.json()["id"])
                else:
                    if response.status_code != 503:
                        self.unexpected.append(f"{response.status_code} {response.text}")
                    self.refused += 1
                    self.halt.wait(0.05)  # pacing a retry loop, not waiting for a state

    def stop(self) -> None:
        self.halt.set()
        self.join(30)
        assert not self.is_alive(), "the submitter did not stop"
        # Redis down or paused: 503 (or no answer) is fine, anything else is not.
        assert self.unexpected == []


def wait_acknowledged(submitter: Submitter, count: int, seconds: float) -> None:
    wait_for(lambda: len(submitter.acknowledged) >= count, seconds, f"{count} submits")


def check_all_completed(api: TaskQueueProcess, ids: list[str], record: Path) -> None:
    """Every id in `ids` completed and recorded: none lost."""

    def drained() -> bool:
        try:
            now = stats(api)
        except (httpx.TransportError, AssertionError):
            return False
        idle = now["queue_size"] == 0 and now["by_status"]["running"] == 0
        return idle and now["by_status"]["completed"] >= len(ids)

    wait_for(drained, 60, f"{len(ids)} acknowledged tasks to complete")
    statuses = collections.Counter(api.task(task_id)["status"] for task_id in ids)
    assert statuses == {"completed": len(ids)}, statuses
    missing = set(ids) - {task_id for task_id, _ in record_lines(record)}
    assert missing == set(), f"{len(missing)} acknowledged tasks never ran"


@dataclass
class Load:
    api: TaskQueueProcess
    submitter: Submitter


@contextlib.contextmanager
def under_load(
    launch: Launcher, own_redis: RedisServer, tmp_path: Path, lease_seconds: float
) -> Iterator[Load]:
    """An API and two workers on Redis, a stream of submits and a backlog: the body is the outage.

    After it, every acknowledged task completes exactly once, and the workers,
    still alive, stop cleanly when told. Leases outlast the outage, so the
    workers keep what they hold and nothing runs twice.
    """
    env = settings(own_redis, WORKER_COUNT=4, LEASE_SECONDS=lease_seconds)
    api = launch.start("api", **env)
    workers = [launch.start("worker", **env) for _ in range(2)]
    record = tmp_path / "record.txt"
    submitter = Submitter(api, record)
    submitter.start()
    try:
        wait_acknowledged(submitter, 100, 30)
        # A backlog, so tasks are pending, running and finishing when Redis goes away.
        backlog_body = {"type": "record", "payload": {"path": str(record), "seconds": 0.05}}
        backlog = submit_batch(api, [backlog_body] * 400)
        yield Load(api, submitter)
        wait_acknowledged(submitter, len(submitter.acknowledged) + 100, 30)
    finally:
        submitter.stop()

    check_all_completed(api, backlog + submitter.acknowledged, record)
    seen = collections.Counter(task_id for task_id, _ in record_lines(record))
    assert [i for i, n in seen.items() if n > 1] == [], "tasks ran more than once"
    for worker in workers:
        assert worker.popen.poll() is None, worker.stderr()
        worker.signal(signal.SIGTERM)
    for worker in workers:
        assert worker.wait_exit(15) == 0, worker.stderr()


def test_redis_restart_with_aof_always_loses_no_acknowledged_task(
    launch: Launcher, own_redis: RedisServer, tmp_path: Path
) -> None:
    with redis.Redis.from_url(own_redis.url) as client:
        client.config_set("appendfsync", "always")
        client.config_set("appendonly", "yes")

        def aof_ready() -> bool:
            info = client.info("persistence")
            return bool(info["aof_enabled"]) and not info["aof_rewrite_in_progress"]

        wait_for(aof_ready, 10, "the append-only file to be written")
    with under_load(launch, own_redis, tmp_path, lease_seconds=5) as load:
        assert stats(load.api)["by_status"]["pending"] > 0  # tasks wait in Redis across it
        # The hardest restart: no chance to flush anything on the way down.
        own_redis.process.kill()
        own_redis.process.wait(5)
        own_redis.start("--appendonly", "yes", "--appendfsync", "always")


def test_redis_paused_for_three_seconds_under_load_recovers_by_itself(
    launch: Launcher, own_redis: RedisServer, tmp_path: Path
) -> None:
    with under_load(launch, own_redis, tmp_path, lease_seconds=10) as load:
        own_redis.process.send_signal(signal.SIGSTOP)
        try:
            during = len(load.submitter.acknowledged)
            time.sleep(3)  # the pause under test, not a wait for a state
            # Nothing can be acknowledged while Redis is stopped.
            assert len(load.submitter.acknowledged) <= during + 1
        finally:
            own_redis.process.send_signal(signal.SIGCONT)


# 7. Redis gone for a while -----------------------------------------------------------


def test_redis_down_gives_503s_and_workers_wait_for_it_without_crashing(
    launch: Launcher, own_redis: RedisServer, tmp_path: Path
) -> None:
    env = settings(own_redis)
    api = launch.start("api", **env)
    worker = launch.start("worker", **env)
    record = tmp_path / "record.txt"
    body = {"type": "record", "payload": {"path": str(record)}}
    own_redis.process.kill()
    own_redis.process.wait(5)

    health = api.http.get("/api/v1/health")
    assert health.status_code == 503
    assert health.json()["status"] == "unhealthy"
    refused = api.http.post("/api/v1/tasks", json=body)
    assert refused.status_code == 503
    assert refused.headers["Retry-After"]
    error = refused.json()["error"]
    assert error["code"] == "backend_unavailable"
    assert "Redis" in error["message"]

    # The worker stays up and retries with growing pauses, capped (pool.py).
    def retried_a_few_times() -> bool:
        return len(worker.logs("backend unavailable, will retry")) >= 4

    wait_for(retried_a_few_times, 30, "the worker to retry the connection")
    pauses = [line["retry_in"] for line in worker.logs("backend unavailable, will retry")]
    assert pauses == sorted(pauses)
    assert max(pauses) <= 10.0
    assert worker.popen.poll() is None, worker.stderr()

    own_redis.start()
    wait_for(lambda: api.http.get("/api/v1/health").status_code == 200, 15, "health again")
    task_id = api.submit("record", {"path": str(record)})["id"]
    assert api.wait_final(task_id, seconds=30)["status"] == "completed"
    assert [ran for ran, _ in record_lines(record)] == [task_id]
    worker.signal(signal.SIGTERM)
    assert worker.wait_exit(15) == 0, worker.stderr()


# 8. A task that kills every worker that runs it ----------------------------------------


def test_a_task_that_kills_its_worker_every_time_ends_failed(
    launch: Launcher, own_redis: RedisServer
) -> None:
    env = settings(own_redis, WORKER_COUNT=1, LEASE_SECONDS=1)
    api = launch.start("api", **env)
    task_id = api.submit("kills_its_worker")["id"]  # max_retries=1: two attempts
    for attempt in (1, 2):
        victim = launch.start("worker", **env)
        assert victim.wait_exit(30) == 3, victim.stderr()
        assert api.task(task_id)["attempts"] == attempt

    # The next worker's recoverer finds the lease expired and no attempt left.
    survivor = launch.start("worker", **env)
    done = api.wait_final(task_id, seconds=30)
    assert done["status"] == "failed"
    assert done["attempts"] == 2
    assert "lease expired" in done["error"]
    assert survivor.popen.poll() is None, survivor.stderr()
