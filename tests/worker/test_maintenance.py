"""Recoverer, scheduler and janitor move tasks that no live worker holds."""

from __future__ import annotations

from task_queue._clock import ManualClock
from task_queue.backends.base import Backend, WorkerInfo
from task_queue.backends.memory import MemoryBackend
from task_queue.config import Settings
from task_queue.task import Task, TaskStatus
from task_queue.worker.maintenance import RECOVER_BATCH, Janitor, Recoverer, Scheduler


async def lease_one(store: MemoryBackend, clock: ManualClock, **options: object) -> Task:
    await store.enqueue([Task.new("noop", {}, now=clock.now(), **options)])
    [task] = await store.dequeue([], 1, worker_id="dead-worker", lease_seconds=30)
    return task


async def test_recoverer_requeues_task_whose_lease_expired(
    store: MemoryBackend, clock: ManualClock, settings: Settings
) -> None:
    task = await lease_one(store, clock)
    recoverer = Recoverer(store, settings)
    assert await recoverer.run_once() == 0
    clock.advance(31)
    assert await recoverer.run_once() == 1
    back = await store.get(task.id)
    assert back.status is TaskStatus.RETRYING
    assert back.attempts == 1
    assert "dead-worker" in (back.error or "")
    [again] = await store.dequeue([], 1, worker_id="alive", lease_seconds=30)
    assert again.id == task.id
    assert again.attempts == 2


async def test_recoverer_gives_back_every_expired_lease_in_one_run(
    backend: Backend, clock: ManualClock, settings: Settings
) -> None:
    """A host that died holding more tasks than a batch: all of them come back one
    lease later, on every backend (Redis reads its batch from the leased index)."""
    count = RECOVER_BATCH * 2 + 50
    await backend.enqueue([Task.new("noop", {}, now=clock.now()) for _ in range(count)])
    leased = await backend.dequeue([], count, worker_id="dead-host", lease_seconds=30)
    assert len(leased) == count
    clock.advance(31)
    assert await Recoverer(backend, settings).run_once() == count
    for task in leased:
        assert (await backend.get(task.id)).status is TaskStatus.RETRYING
    assert await backend.expired(RECOVER_BATCH) == []


async def test_recoverer_fails_a_task_that_kills_its_worker_every_time(
    store: MemoryBackend, clock: ManualClock, settings: Settings
) -> None:
    task = await lease_one(store, clock, max_retries=1)
    recoverer = Recoverer(store, settings)
    clock.advance(31)
    await recoverer.run_once()
    await store.dequeue([], 1, worker_id="dead-again", lease_seconds=30)
    clock.advance(31)
    await recoverer.run_once()
    dead = await store.get(task.id)
    assert dead.status is TaskStatus.FAILED
    assert dead.attempts == 2


async def test_scheduler_promotes_due_tasks(store: MemoryBackend, clock: ManualClock) -> None:
    task = Task.new("noop", {}, now=clock.now(), run_at=clock.now() + 10)
    await store.enqueue([task])
    scheduler = Scheduler(store)
    assert await scheduler.run_once() == 0
    clock.advance(10)
    assert await scheduler.run_once() == 1
    assert (await store.get(task.id)).status is TaskStatus.PENDING


async def test_janitor_purges_old_results_only(
    store: MemoryBackend, clock: ManualClock, settings: Settings
) -> None:
    task = await lease_one(store, clock)
    await store.finish(task.completed("done", clock.now()), task.lease_token or "")
    janitor = Janitor(store, settings)
    assert await janitor.run_once() == 0
    clock.advance(settings.result_ttl_seconds + 1)
    assert await janitor.run_once() == 1


async def test_janitor_forgets_workers_that_died_without_stopping(
    store: MemoryBackend, clock: ManualClock, settings: Settings
) -> None:
    killed = WorkerInfo("killed", "host", 41, ["default"], 5, clock.now(), heartbeat_interval=10)
    await store.heartbeat(killed, {}, 30)
    janitor = Janitor(store, settings)
    assert await janitor.run_once() == 0
    clock.advance(31)
    assert await janitor.run_once() == 1
    assert await store.purge_workers() == 0
