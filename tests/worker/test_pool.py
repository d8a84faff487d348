"""The worker pool runs handlers and turns their outcome into the task's next state."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
import structlog
from pydantic import BaseModel
from structlog import PrintLogger

from task_queue._clock import ManualClock
from task_queue.backends.base import IdleWorker, LeaseReport, WorkerInfo
from task_queue.backends.memory import MemoryBackend
from task_queue.config import Settings
from task_queue.errors import PermanentError, Retry
from task_queue.registry import Registry, TaskContext
from task_queue.task import Task, TaskStatus
from task_queue.worker.heartbeat import Heartbeat
from task_queue.worker.pool import WorkerPool, _logs_info
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


async def error_of_failed(
    store: MemoryBackend, clock: ManualClock, type: str, **options: Any
) -> str:
    """The error stored with a task of one attempt, which must end failed."""
    task = await submit(store, clock, type, max_retries=0, **options)
    done = await eventually(store, task.id, final)
    assert done.status is TaskStatus.FAILED
    return done.error or ""


async def test_timeout_counts_as_a_failure(
    pool: WorkerPool, store: MemoryBackend, registry: Registry, clock: ManualClock
) -> None:
    @registry.task("stuck")
    async def stuck(payload: dict[str, Any]) -> None:
        await asyncio.Event().wait()

    error = await error_of_failed(store, clock, "stuck", timeout_seconds=0.05)
    assert error == "timed out after 0.05 s"


async def test_timeouts_of_tasks_started_at_other_times_each_end_on_time(
    pool: WorkerPool, store: MemoryBackend, registry: Registry, clock: ManualClock
) -> None:
    """One timer watches every running handler's timeout, set for the earliest end:
    a task that starts later with a shorter timeout brings it forward, and once
    it fires, the next end is watched."""

    @registry.task("stuck")
    async def stuck(payload: dict[str, Any]) -> None:
        await asyncio.Event().wait()

    patient = await submit(store, clock, "stuck", max_retries=0, timeout_seconds=60)
    await eventually(store, patient.id, status_is(TaskStatus.RUNNING))
    short = await submit(store, clock, "stuck", max_retries=0, timeout_seconds=0.05)
    longer = await submit(store, clock, "stuck", max_retries=0, timeout_seconds=0.3)
    for task in (short, longer):
        done = await eventually(store, task.id, final)
        assert done.error == f"timed out after {task.timeout_seconds:g} s"
    assert (await store.get(patient.id)).status is TaskStatus.RUNNING


async def test_a_sync_handler_past_its_timeout_is_recorded_as_timed_out(
    pool: WorkerPool, store: MemoryBackend, registry: Registry, clock: ManualClock
) -> None:
    release = threading.Event()

    @registry.task("blocking")
    def blocking(payload: dict[str, Any]) -> None:
        release.wait(5)

    try:
        error = await error_of_failed(store, clock, "blocking", timeout_seconds=0.05)
    finally:
        release.set()  # the thread cannot be interrupted; let it end
    assert error == "timed out after 0.05 s"


async def test_a_timeout_error_the_handler_raises_is_not_the_task_timing_out(
    pool: WorkerPool, store: MemoryBackend, registry: Registry, clock: ManualClock
) -> None:
    @registry.task("impatient")
    async def impatient(payload: dict[str, Any]) -> None:
        await asyncio.wait_for(asyncio.Event().wait(), 0.01)

    assert await error_of_failed(store, clock, "impatient", timeout_seconds=30) == "TimeoutError"


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


# Prefetch: leased tasks held beyond the slots, started without another dequeue --------


@contextlib.asynccontextmanager
async def pool_with(
    store: MemoryBackend, registry: Registry, settings: Settings, **overrides: Any
) -> AsyncIterator[WorkerPool]:
    """A running pool with these settings changed; stopped and drained at the end."""
    workers = WorkerPool(
        store, registry, settings.model_copy(update=overrides), worker_id="w", queues=[]
    )
    runner = asyncio.create_task(workers.run())
    try:
        yield workers
    finally:
        workers.stop()
        await runner
        await workers.abort()
        await workers.close()


@dataclasses.dataclass
class Dequeue:
    """One dequeue the pool made: what it asked for and the ids it got."""

    limit: int
    idle: bool
    taken: list[str] = dataclasses.field(default_factory=list)


def record_dequeues(monkeypatch: pytest.MonkeyPatch, store: MemoryBackend) -> list[Dequeue]:
    """Every dequeue the pool makes, in order."""
    made: list[Dequeue] = []
    dequeue = store.dequeue

    async def recorded(queues: Sequence[str], limit: int, **options: Any) -> list[Task]:
        made.append(record := Dequeue(limit, options["idle"]))
        tasks = await dequeue(queues, limit, **options)
        record.taken = [task.id for task in tasks]
        return tasks

    monkeypatch.setattr(store, "dequeue", recorded)
    return made


def limits(dequeues: list[Dequeue]) -> list[int]:
    return [dequeue.limit for dequeue in dequeues]


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            if condition():
                return
            await asyncio.sleep(0.002)


class Held:
    """A task type whose runs wait until the test lets each one go; records which started."""

    def __init__(self, registry: Registry) -> None:
        self.started: list[str] = []
        self.tokens: dict[str, str | None] = {}
        self.go: dict[str, asyncio.Event] = collections.defaultdict(asyncio.Event)

        @registry.task("held")
        async def held(payload: dict[str, Any], ctx: TaskContext) -> str:
            self.started.append(ctx.task.id)
            self.tokens[ctx.task.id] = ctx.task.lease_token
            await self.go[ctx.task.id].wait()
            return "done"


async def statuses(store: MemoryBackend, tasks: list[Task]) -> list[TaskStatus]:
    return [(await store.get(task.id)).status for task in tasks]


async def test_pool_leases_its_slots_plus_prefetch_and_starts_only_its_slots(
    store: MemoryBackend,
    registry: Registry,
    settings: Settings,
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    held = Held(registry)
    tasks = [await submit(store, clock, "held") for _ in range(7)]
    dequeues = record_dequeues(monkeypatch, store)
    async with pool_with(store, registry, settings, worker_count=2, worker_prefetch=3) as workers:
        await until(lambda: len(held.started) == 2)
        await eventually(store, tasks[4].id, status_is(TaskStatus.RUNNING))
        assert dequeues[0].limit == 5
        assert held.started == [tasks[0].id, tasks[1].id]
        assert await statuses(store, tasks) == [TaskStatus.RUNNING] * 5 + [TaskStatus.PENDING] * 2
        assert set(workers.leases()) == {task.id for task in tasks[:5]}
        info = WorkerInfo(id="w", hostname="h", pid=1, queues=[], concurrency=2, started_at=0)
        workers.describe(info)
        assert (info.current_tasks, info.state) == ([tasks[0].id, tasks[1].id], "busy")
        for task in tasks:
            held.go[task.id].set()


async def test_buffered_tasks_start_in_order_as_slots_free_while_the_backend_is_stalled(
    store: MemoryBackend,
    registry: Registry,
    settings: Settings,
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    held = Held(registry)
    first = await submit(store, clock, "held")
    async with pool_with(store, registry, settings, worker_count=1, worker_prefetch=2):
        await until(lambda: held.started == [first.id])
        low, high, middle = (Task.new("held", {}, now=clock.now(), priority=p) for p in (0, 9, 5))
        await store.enqueue([low, high, middle])  # at once: dequeued in priority order
        await eventually(store, middle.id, status_is(TaskStatus.RUNNING))
        # From now on every dequeue hangs until the backend resumes.
        resume = asyncio.Event()
        dequeue = store.dequeue

        async def stalled(*args: Any, **options: Any) -> list[Task]:
            await resume.wait()
            return await dequeue(*args, **options)

        monkeypatch.setattr(store, "dequeue", stalled)
        for task in (first, high, middle, low):
            held.go[task.id].set()
        await eventually(store, middle.id, final)
        assert held.started == [first.id, high.id, middle.id]
        assert (await store.get(low.id)).status is TaskStatus.PENDING  # beyond 1 slot + 2
        resume.set()
        assert (await eventually(store, low.id, final)).status is TaskStatus.COMPLETED


async def test_stop_hands_buffered_tasks_back_to_pending_at_once_without_counting_an_attempt(
    store: MemoryBackend, registry: Registry, settings: Settings, clock: ManualClock
) -> None:
    held = Held(registry)
    first, *buffered = [await submit(store, clock, "held") for _ in range(3)]
    changed = settings.model_copy(update={"worker_count": 1, "worker_prefetch": 2})
    workers = WorkerPool(store, registry, changed, worker_id="w", queues=[])
    runner = asyncio.create_task(workers.run())
    await until(lambda: held.started == [first.id])
    await eventually(store, buffered[-1].id, status_is(TaskStatus.RUNNING))

    workers.stop()
    await runner  # the clock has not moved: no lease expired, nothing waited for one

    for task in buffered:
        back = await store.get(task.id)
        assert (back.status, back.attempts, back.lease_token) == (TaskStatus.PENDING, 0, None)
        assert back.started_at is None
    assert workers.leases().keys() == {first.id}
    assert (await store.get(first.id)).status is TaskStatus.RUNNING
    held.go[first.id].set()
    assert await workers.drain(5.0)
    await workers.close()
    assert (await store.get(first.id)).status is TaskStatus.COMPLETED
    assert held.started == [first.id]


async def test_cancel_of_a_buffered_task_stores_it_cancelled_without_running_it(
    store: MemoryBackend, registry: Registry, settings: Settings, clock: ManualClock
) -> None:
    held = Held(registry)
    first, second = [await submit(store, clock, "held") for _ in range(2)]
    async with pool_with(store, registry, settings, worker_count=1, worker_prefetch=1) as workers:
        await until(lambda: held.started == [first.id])
        await eventually(store, second.id, status_is(TaskStatus.RUNNING))
        await store.cancel(second.id)
        info = WorkerInfo(id="w", hostname="h", pid=1, queues=[], concurrency=1, started_at=0)
        await Heartbeat(store, workers, info).run_once()

        cancelled = await eventually(store, second.id, final)
        assert (cancelled.status, cancelled.attempts) == (TaskStatus.CANCELLED, 0)
        assert second.id not in workers.leases()
        held.go[first.id].set()
        assert (await eventually(store, first.id, final)).status is TaskStatus.COMPLETED
        assert held.started == [first.id]


async def test_buffered_task_whose_lease_is_lost_is_dropped_without_running(
    store: MemoryBackend, registry: Registry, settings: Settings, clock: ManualClock
) -> None:
    held = Held(registry)
    first, second = [await submit(store, clock, "held") for _ in range(2)]
    async with pool_with(store, registry, settings, worker_count=1, worker_prefetch=1) as workers:
        await until(lambda: held.started == [first.id])
        taken = await eventually(store, second.id, status_is(TaskStatus.RUNNING))
        # Someone else finishes it with the current token: this pool's lease is gone.
        await store.finish(taken.completed("elsewhere", clock.now()), taken.lease_token or "")
        info = WorkerInfo(id="w", hostname="h", pid=1, queues=[], concurrency=1, started_at=0)
        await Heartbeat(store, workers, info).run_once()

        assert second.id not in workers.leases()
        held.go[first.id].set()
        assert (await eventually(store, first.id, final)).status is TaskStatus.COMPLETED
        assert await workers.drain(5.0)
        assert held.started == [first.id]
        assert (await store.get(second.id)).result == "elsewhere"


async def test_buffered_task_whose_lease_ran_out_is_handed_back_instead_of_started(
    store: MemoryBackend, registry: Registry, settings: Settings, clock: ManualClock
) -> None:
    held = Held(registry)
    first, second = [await submit(store, clock, "held") for _ in range(2)]
    async with pool_with(store, registry, settings, worker_count=1, worker_prefetch=1):
        await until(lambda: held.started == [first.id])
        stale = await eventually(store, second.id, status_is(TaskStatus.RUNNING))
        clock.advance(31)  # past LEASE_SECONDS with no heartbeat: a long pause
        held.go[first.id].set()
        await until(lambda: second.id in held.started)  # again, under a new lease

        assert held.tokens[second.id] != stale.lease_token
        held.go[second.id].set()
        done = await eventually(store, second.id, final)
        assert (done.status, done.attempts) == (TaskStatus.COMPLETED, 1)


async def test_a_dequeue_tells_the_backend_whether_the_pool_has_nothing_running(
    store: MemoryBackend,
    registry: Registry,
    settings: Settings,
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An idle pool waits on the answer alone (Redis sends it ahead); a busy one does not."""
    held = Held(registry)
    dequeues = record_dequeues(monkeypatch, store)
    first = await submit(store, clock, "held")
    async with pool_with(store, registry, settings, worker_count=2):
        await until(lambda: held.started == [first.id])
        second = await submit(store, clock, "held")
        await until(lambda: second.id in held.started)
        for task in (first, second):
            held.go[task.id].set()
    idle_when_taken = {task_id: d.idle for d in dequeues for task_id in d.taken}
    assert idle_when_taken == {first.id: True, second.id: False}


def record_waits(store: MemoryBackend, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The timeout of every wait_for_work the pool makes, in order, from now on."""
    timeouts: list[float] = []
    wait_for_work = store.wait_for_work

    async def recorded(timeout: float, worker: IdleWorker) -> list[Task]:
        timeouts.append(timeout)
        return await wait_for_work(timeout, worker)

    monkeypatch.setattr(store, "wait_for_work", recorded)
    return timeouts


async def test_an_idle_wait_lasts_at_most_half_a_lease(
    store: MemoryBackend,
    registry: Registry,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A task handed at the end of the wait still has half its lease by the pool's
    reckoning (from before the wait), so it is started, not handed back."""
    timeouts = record_waits(store, monkeypatch)
    async with pool_with(store, registry, settings, lease_seconds=1):
        await until(lambda: len(timeouts) >= 2)
    assert max(timeouts) == 0.5


async def test_stop_ends_a_wait_for_work_in_progress(
    store: MemoryBackend,
    registry: Registry,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The pool awaits its wait in place, so only stop() asking the backend to end
    it lets run() return: here the wait would otherwise last half an hour."""
    monkeypatch.setattr("task_queue.worker.pool.IDLE_POLL_SECONDS", 3600.0)
    waits = record_waits(store, monkeypatch)
    workers = WorkerPool(
        store,
        registry,
        settings.model_copy(update={"lease_seconds": 3600}),
        worker_id="w",
        queues=[],
    )
    running = asyncio.create_task(workers.run())
    await until(lambda: waits == [1800.0])
    workers.stop()
    await asyncio.wait_for(running, 60)  # a guard against a hang, not a measure
    assert waits == [1800.0]
    await workers.close()


async def test_heartbeat_keeps_a_buffered_task_startable_past_its_first_lease(
    store: MemoryBackend, registry: Registry, settings: Settings, clock: ManualClock
) -> None:
    held = Held(registry)
    first, second = [await submit(store, clock, "held") for _ in range(2)]
    async with pool_with(store, registry, settings, worker_count=1, worker_prefetch=1) as workers:
        await until(lambda: held.started == [first.id])
        buffered = await eventually(store, second.id, status_is(TaskStatus.RUNNING))
        info = WorkerInfo(id="w", hostname="h", pid=1, queues=[], concurrency=1, started_at=0)
        for _ in range(3):  # 60 s in all, a heartbeat every 20
            clock.advance(20)
            await Heartbeat(store, workers, info).run_once()
        held.go[first.id].set()
        await until(lambda: second.id in held.started)

        assert held.tokens[second.id] == buffered.lease_token
        held.go[second.id].set()
        assert (await eventually(store, second.id, final)).attempts == 1


async def test_prefetch_zero_leases_only_as_many_tasks_as_free_slots(
    store: MemoryBackend,
    registry: Registry,
    settings: Settings,
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    held = Held(registry)
    tasks = [await submit(store, clock, "held") for _ in range(4)]
    dequeues = record_dequeues(monkeypatch, store)
    async with pool_with(store, registry, settings, worker_count=2, worker_prefetch=0):
        await until(lambda: len(held.started) == 2)
        assert limits(dequeues) == [2]
        assert await statuses(store, tasks) == [TaskStatus.RUNNING] * 2 + [TaskStatus.PENDING] * 2
        held.go[tasks[0].id].set()
        await until(lambda: len(held.started) == 3)
        assert limits(dequeues) == [2, 1]
        for task in tasks:
            held.go[task.id].set()
        for task in tasks:
            assert (await eventually(store, task.id, final)).status is TaskStatus.COMPLETED


async def test_a_prefetched_task_records_when_its_handler_started_not_when_it_was_leased(
    store: MemoryBackend, registry: Registry, settings: Settings, clock: ManualClock
) -> None:
    held = Held(registry)
    first, second = [await submit(store, clock, "held") for _ in range(2)]
    async with pool_with(store, registry, settings, worker_count=1, worker_prefetch=1):
        await until(lambda: held.started == [first.id])
        leased = await eventually(store, second.id, status_is(TaskStatus.RUNNING))
        clock.advance(5)
        held.go[first.id].set()
        held.go[second.id].set()
        done = await eventually(store, second.id, final)
        assert leased.started_at == clock.now() - 5
        assert done.started_at == clock.now()


async def test_abort_hands_back_running_and_prefetched_tasks_without_counting_attempts(
    store: MemoryBackend, registry: Registry, settings: Settings, clock: ManualClock
) -> None:
    held = Held(registry)
    first, second = [await submit(store, clock, "held") for _ in range(2)]
    changed = settings.model_copy(update={"worker_count": 1, "worker_prefetch": 1})
    workers = WorkerPool(store, registry, changed, worker_id="w", queues=[])
    runner = asyncio.create_task(workers.run())
    await until(lambda: held.started == [first.id])
    await eventually(store, second.id, status_is(TaskStatus.RUNNING))

    workers.stop()
    await runner
    await workers.abort()  # the second signal
    await workers.close()

    for task in (first, second):
        back = await store.get(task.id)
        assert (back.status, back.attempts, back.lease_token) == (TaskStatus.PENDING, 0, None)
    assert workers.leases() == {}
    assert held.started == [first.id]


def test_a_logger_is_taken_to_write_info_lines_unless_it_says_it_drops_them() -> None:
    """What decides whether the pool builds a "task completed" line: a logger that
    drops info lines (LOG_LEVEL=warning) gets none; one that cannot say, as an
    embedding application may configure, is taken to write them."""
    at_warning = structlog.make_filtering_bound_logger(logging.WARNING)(PrintLogger(), [], {})
    at_info = structlog.make_filtering_bound_logger(logging.INFO)(PrintLogger(), [], {})
    generic = structlog.BoundLogger(PrintLogger(), [], {})
    assert [_logs_info(at_warning), _logs_info(at_info), _logs_info(generic)] == [
        False,
        True,
        True,
    ]
