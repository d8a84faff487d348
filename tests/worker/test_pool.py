"""The worker pool runs handlers and turns their outcome into the task's next state."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from pydantic import BaseModel

from task_queue._clock import ManualClock
from task_queue.backends.base import LeaseReport
from task_queue.backends.memory import MemoryBackend
from task_queue.errors import PermanentError, Retry
from task_queue.registry import Registry, TaskContext
from task_queue.task import Task, TaskStatus
from task_queue.worker.pool import WorkerPool
from tests.worker.conftest import eventually


def final(task: Task) -> bool:
    return task.status.is_final


def status_is(status: TaskStatus) -> Any:
    return lambda task: task.status is status


async def submit(store: MemoryBackend, clock: ManualClock, type: str, **options: Any) -> Task:
    payload = options.pop("payload", {})
    task = Task.new(type, payload, now=clock.now(), **options)
    await store.enqueue([task])
    return task


async def test_async_handler_result_is_stored(
    pool: WorkerPool, store: MemoryBackend, registry: Registry, clock: ManualClock
) -> None:
    @registry.task("add")
    async def add(payload: dict[str, int]) -> int:
        return payload["a"] + payload["b"]

    task = await submit(store, clock, "add", payload={"a": 2, "b": 3})
    done = await eventually(store, task.id, final)
    assert done.status is TaskStatus.COMPLETED
    assert done.result == 5
    assert done.attempts == 1


async def test_sync_handler_runs_in_a_thread_without_blocking_the_loop(
    pool: WorkerPool, store: MemoryBackend, registry: Registry, clock: ManualClock
) -> None:
    release = threading.Event()
    ticks = 0

    @registry.task("blocking")
    def blocking(payload: dict[str, Any]) -> str:
        release.wait(5)
        return threading.current_thread().name

    task = await submit(store, clock, "blocking")
    while ticks < 20:
        ticks += 1
        await asyncio.sleep(0.001)
    assert (await store.get(task.id)).status is TaskStatus.RUNNING
    release.set()
    done = await eventually(store, task.id, final)
    assert done.result.startswith("task-queue-handler")


async def test_pool_never_runs_more_than_worker_count_at_once(
    pool: WorkerPool, store: MemoryBackend, registry: Registry, clock: ManualClock
) -> None:
    running = 0
    peak = 0

    @registry.task("count")
    async def count(payload: dict[str, Any]) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1

    tasks = [await submit(store, clock, "count") for _ in range(12)]
    for task in tasks:
        await eventually(store, task.id, final)
    assert peak == pool.capacity == 3


async def test_handler_gets_its_context(
    pool: WorkerPool, store: MemoryBackend, registry: Registry, clock: ManualClock
) -> None:
    @registry.task("whoami")
    async def whoami(payload: dict[str, Any], ctx: TaskContext) -> list[Any]:
        return [ctx.task.id, ctx.task.attempts, str(ctx.data_dir)]

    task = await submit(store, clock, "whoami")
    done = await eventually(store, task.id, final)
    assert done.result[:2] == [task.id, 1]


async def test_failure_is_retried_with_backoff(
    pool: WorkerPool, store: MemoryBackend, registry: Registry, clock: ManualClock
) -> None:
    @registry.task("boom")
    async def boom(payload: dict[str, Any]) -> None:
        raise ValueError("no luck")

    task = await submit(store, clock, "boom", max_retries=2)
    retrying = await eventually(store, task.id, status_is(TaskStatus.RETRYING))
    assert retrying.error == "ValueError: no luck"
    assert retrying.attempts == 1
    # RETRY_BASE_SECONDS=1: the first retry waits between 0.5 and 1 s.
    assert clock.now() + 0.5 <= retrying.run_at <= clock.now() + 1


async def test_retries_exhausted_leave_the_task_failed_with_its_last_error(
    pool: WorkerPool, store: MemoryBackend, registry: Registry, clock: ManualClock
) -> None:
    calls = 0

    @registry.task("boom")
    async def boom(payload: dict[str, Any]) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError(f"failure {calls}")

    task = await submit(store, clock, "boom", max_retries=2)
    for attempt in (1, 2):
        await eventually(store, task.id, lambda t, a=attempt: t.attempts == a and not t.lease_token)
        clock.advance(300)
    done = await eventually(store, task.id, final)
    assert done.status is TaskStatus.FAILED
    assert done.attempts == 3
    assert done.error == "RuntimeError: failure 3"


async def test_permanent_error_fails_at_once(
    pool: WorkerPool, store: MemoryBackend, registry: Registry, clock: ManualClock
) -> None:
    @registry.task("bad")
    async def bad(payload: dict[str, Any]) -> None:
        raise PermanentError("cannot ever work")

    task = await submit(store, clock, "bad", max_retries=5)
    done = await eventually(store, task.id, final)
    assert done.status is TaskStatus.FAILED
    assert done.attempts == 1
    assert done.error == "PermanentError: cannot ever work"


async def test_retry_asked_by_the_handler_uses_its_delay(
    pool: WorkerPool, store: MemoryBackend, registry: Registry, clock: ManualClock
) -> None:
    @registry.task("later")
    async def later(payload: dict[str, Any]) -> None:
        raise Retry("not yet", delay=42)

    task = await submit(store, clock, "later")
    retrying = await eventually(store, task.id, status_is(TaskStatus.RETRYING))
    assert retrying.run_at == clock.now() + 42


async def test_timeout_counts_as_a_failure(
    pool: WorkerPool, store: MemoryBackend, registry: Registry, clock: ManualClock
) -> None:
    @registry.task("stuck")
    async def stuck(payload: dict[str, Any]) -> None:
        await asyncio.Event().wait()

    task = await submit(store, clock, "stuck", timeout_seconds=0.05, max_retries=0)
    done = await eventually(store, task.id, final)
    assert done.status is TaskStatus.FAILED
    assert done.error == "timed out after 0.05 s"


async def test_unknown_type_and_bad_payload_fail_without_retry(
    pool: WorkerPool, store: MemoryBackend, registry: Registry, clock: ManualClock
) -> None:
    class Point(BaseModel):
        x: int

    @registry.task("point", payload=Point)
    async def point(payload: Point) -> int:
        return payload.x

    unknown = await submit(store, clock, "nobody-handles-this")
    malformed = await submit(store, clock, "point", payload={"x": "not a number"})
    assert (await eventually(store, unknown.id, final)).status is TaskStatus.FAILED
    failed = await eventually(store, malformed.id, final)
    assert failed.status is TaskStatus.FAILED
    assert failed.attempts == 1
    assert "invalid payload" in (failed.error or "")


async def test_result_that_is_not_json_fails_the_task(
    pool: WorkerPool, store: MemoryBackend, registry: Registry, clock: ManualClock
) -> None:
    @registry.task("odd")
    async def odd(payload: dict[str, Any]) -> object:
        return object()

    task = await submit(store, clock, "odd")
    done = await eventually(store, task.id, final)
    assert done.status is TaskStatus.FAILED
    assert "not JSON" in (done.error or "")


async def test_cancel_reported_by_heartbeat_stops_the_running_handler(
    pool: WorkerPool, store: MemoryBackend, registry: Registry, clock: ManualClock
) -> None:
    stopped = asyncio.Event()

    @registry.task("long")
    async def long(payload: dict[str, Any]) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()

    task = await submit(store, clock, "long")
    await eventually(store, task.id, status_is(TaskStatus.RUNNING))
    await store.cancel(task.id)
    pool.apply(LeaseReport(cancel_requested=frozenset({task.id})))
    done = await eventually(store, task.id, final)
    assert done.status is TaskStatus.CANCELLED
    assert stopped.is_set()


async def test_lost_lease_drops_the_result_of_the_late_worker(
    pool: WorkerPool, store: MemoryBackend, registry: Registry, clock: ManualClock
) -> None:
    go_on = asyncio.Event()

    @registry.task("slow")
    async def slow(payload: dict[str, Any]) -> str:
        await go_on.wait()
        return "late"

    task = await submit(store, clock, "slow")
    running = await eventually(store, task.id, status_is(TaskStatus.RUNNING))
    clock.advance(31)
    [expired] = await store.expired(10)
    await store.finish(expired.completed("taken over", clock.now()), expired.lease_token or "")
    go_on.set()
    assert await pool.drain(5.0)
    assert pool.leases() == {}
    assert (await store.get(running.id)).result == "taken over"


async def test_abort_hands_running_tasks_back_without_counting_the_attempt(
    store: MemoryBackend, registry: Registry, settings: Any, clock: ManualClock
) -> None:
    @registry.task("forever")
    async def forever(payload: dict[str, Any]) -> None:
        await asyncio.Event().wait()

    workers = WorkerPool(store, registry, settings, worker_id="w", queues=[])
    running = asyncio.create_task(workers.run())
    task = await submit(store, clock, "forever")
    await eventually(store, task.id, status_is(TaskStatus.RUNNING))
    workers.stop()
    await running
    assert not await workers.drain(0.01)
    await workers.abort()
    await workers.close()
    back = await store.get(task.id)
    assert back.status is TaskStatus.PENDING
    assert back.attempts == 0
    assert back.lease_token is None


async def test_stopped_pool_takes_no_new_tasks(
    store: MemoryBackend, registry: Registry, settings: Any, clock: ManualClock
) -> None:
    @registry.task("noop")
    async def noop(payload: dict[str, Any]) -> None:
        return None

    workers = WorkerPool(store, registry, settings, worker_id="w", queues=[])
    running = asyncio.create_task(workers.run())
    workers.stop()
    await running
    task = await submit(store, clock, "noop")
    assert await workers.drain(1.0)
    await workers.close()
    assert (await store.get(task.id)).status is TaskStatus.PENDING


async def test_progress_reported_by_a_handler_is_visible_while_it_runs(
    pool: WorkerPool, store: MemoryBackend, registry: Registry, clock: ManualClock
) -> None:
    finish = asyncio.Event()

    @registry.task("counting")
    async def counting(payload: dict[str, Any], ctx: TaskContext) -> str:
        for n in range(1, 101):
            ctx.report_progress({"rows": n})
        await finish.wait()
        ctx.report_progress({"rows": 100, "done": True})
        return "ok"

    task = await submit(store, clock, "counting")
    running = await eventually(store, task.id, lambda t: t.progress is not None)
    assert running.status is TaskStatus.RUNNING
    assert running.progress == {"rows": 100}
    finish.set()
    done = await eventually(store, task.id, final)
    assert done.progress == {"rows": 100, "done": True}


async def test_sync_handlers_report_progress_from_their_thread(
    pool: WorkerPool, store: MemoryBackend, registry: Registry, clock: ManualClock
) -> None:
    @registry.task("blocking_progress")
    def blocking_progress(payload: dict[str, Any], ctx: TaskContext) -> None:
        ctx.report_progress(0.5)

    task = await submit(store, clock, "blocking_progress")
    done = await eventually(store, task.id, final)
    assert (done.status, done.progress) == (TaskStatus.COMPLETED, 0.5)
