"""The behaviour every backend must share, run against each of them.

Time is a ManualClock: leases expire and delays pass by moving it, not by sleeping.
"""

from __future__ import annotations

import asyncio

import pytest

from task_queue import client as client_module
from task_queue._clock import ManualClock
from task_queue.backends.base import Backend, TaskFilter, WorkerInfo
from task_queue.client import AsyncClient
from task_queue.errors import (
    IdempotencyConflict,
    InvalidTransition,
    LeaseLost,
    QueueFull,
    TaskNotFound,
)
from task_queue.task import Task, TaskStatus

LEASE = 30.0


def make(clock: ManualClock, priority: int = 0, **options: object) -> Task:
    return Task.new("noop", {"n": priority}, now=clock.now(), priority=priority, **options)


async def take(backend: Backend, limit: int = 1, worker: str = "w1") -> list[Task]:
    return await backend.dequeue(["default"], limit, worker_id=worker, lease_seconds=LEASE)


async def test_enqueued_task_can_be_read_back(backend: Backend, clock: ManualClock) -> None:
    task = make(clock)
    [submitted] = await backend.enqueue([task])
    assert submitted.created
    stored = await backend.get(task.id)
    assert stored.id == task.id
    assert stored.status is TaskStatus.PENDING
    assert dict(stored.payload) == {"n": 0}


async def test_unknown_id_is_not_found(backend: Backend) -> None:
    with pytest.raises(TaskNotFound):
        await backend.get("no-such-task")


async def test_higher_priority_is_dequeued_first(backend: Backend, clock: ManualClock) -> None:
    tasks = [make(clock, p) for p in (0, 10, 5)]
    await backend.enqueue(tasks)
    order = [t.priority for t in await take(backend, 3)]
    assert order == [10, 5, 0]


async def test_same_priority_is_first_in_first_out(backend: Backend, clock: ManualClock) -> None:
    tasks = []
    for _ in range(5):
        tasks.append(make(clock, 3))
        clock.advance(0.001)
    for task in tasks:
        await backend.enqueue([task])
    taken = [t.id for t in await take(backend, 5)]
    assert taken == [t.id for t in tasks]


async def test_dequeue_leases_the_task(backend: Backend, clock: ManualClock) -> None:
    await backend.enqueue([make(clock)])
    [task] = await take(backend)
    assert task.status is TaskStatus.RUNNING
    assert task.attempts == 1
    assert task.lease_token
    assert task.lease_expires_at == clock.now() + LEASE
    stored = await backend.get(task.id)
    assert stored.status is TaskStatus.RUNNING
    assert await take(backend) == []


async def test_dequeue_only_takes_from_the_named_queues(
    backend: Backend, clock: ManualClock
) -> None:
    await backend.enqueue([make(clock, queue="emails"), make(clock, 1, queue="reports")])
    taken = await backend.dequeue(["emails"], 5, worker_id="w", lease_seconds=LEASE)
    assert [t.queue for t in taken] == ["emails"]
    both = await backend.dequeue(["emails", "reports"], 5, worker_id="w", lease_seconds=LEASE)
    assert [t.queue for t in both] == ["reports"]


async def test_delayed_task_waits_for_its_time(backend: Backend, clock: ManualClock) -> None:
    task = make(clock, run_at=clock.now() + 60)
    await backend.enqueue([task])
    assert (await backend.get(task.id)).status is TaskStatus.SCHEDULED
    assert await take(backend) == []
    clock.advance(61)
    [taken] = await take(backend)
    assert taken.id == task.id


async def test_promote_due_makes_delayed_tasks_pending(
    backend: Backend, clock: ManualClock
) -> None:
    task = make(clock, run_at=clock.now() + 5)
    await backend.enqueue([task])
    assert await backend.promote_due() == 0
    clock.advance(5)
    assert await backend.promote_due() == 1
    assert (await backend.get(task.id)).status is TaskStatus.PENDING


async def test_complete_stores_the_result(backend: Backend, clock: ManualClock) -> None:
    await backend.enqueue([make(clock)])
    [task] = await take(backend)
    clock.advance(1)
    await backend.finish(task.completed({"ok": True}, clock.now()), task.lease_token or "")
    stored = await backend.get(task.id)
    assert stored.status is TaskStatus.COMPLETED
    assert stored.result == {"ok": True}
    assert stored.completed_at == clock.now()
    assert stored.lease_token is None


async def test_retrying_task_waits_out_its_backoff(backend: Backend, clock: ManualClock) -> None:
    await backend.enqueue([make(clock)])
    [task] = await take(backend)
    await backend.finish(task.retrying("boom", clock.now(), 10), task.lease_token or "")
    stored = await backend.get(task.id)
    assert stored.status is TaskStatus.RETRYING
    assert stored.error == "boom"
    assert stored.run_at == clock.now() + 10
    assert await take(backend) == []
    clock.advance(10)
    [again] = await take(backend)
    assert again.attempts == 2


async def test_expired_lease_is_found_and_recovered(backend: Backend, clock: ManualClock) -> None:
    await backend.enqueue([make(clock)])
    [task] = await take(backend, worker="dead")
    assert await backend.expired(10) == []
    clock.advance(LEASE + 1)
    [expired] = await backend.expired(10)
    assert expired.id == task.id
    await backend.finish(expired.released(clock.now()), expired.lease_token or "")
    [again] = await take(backend, worker="alive")
    assert again.id == task.id
    assert again.worker_id == "alive"


async def test_a_lease_reads_as_expired_from_the_moment_it_ends_and_not_before(
    backend: Backend, clock: ManualClock
) -> None:
    """To the microsecond, as Redis keeps the ends of leases."""
    await backend.enqueue([make(clock)])
    [task] = await take(backend)
    tick = 2.0**-20  # under a microsecond, and exact in a float at the clock's times
    clock.advance(LEASE - tick)
    assert await backend.expired(10) == []
    clock.advance(tick)
    assert clock.now() == task.lease_expires_at
    assert [t.id for t in await backend.expired(10)] == [task.id]


async def test_stale_lease_cannot_overwrite_the_new_owner(
    backend: Backend, clock: ManualClock
) -> None:
    await backend.enqueue([make(clock)])
    [first] = await take(backend, worker="slow")
    clock.advance(LEASE + 1)
    [expired] = await backend.expired(10)
    await backend.finish(expired.released(clock.now()), expired.lease_token or "")
    [second] = await take(backend, worker="fast")
    await backend.finish(second.completed("fast", clock.now()), second.lease_token or "")
    with pytest.raises(LeaseLost):
        await backend.finish(first.completed("slow", clock.now()), first.lease_token or "")
    assert (await backend.get(first.id)).result == "fast"


async def test_heartbeat_extends_leases_and_reports_lost_ones(
    backend: Backend, clock: ManualClock
) -> None:
    await backend.enqueue([make(clock), make(clock)])
    kept, lost = await take(backend, 2)
    worker = WorkerInfo("w1", "host", 1, ["default"], 2, clock.now(), heartbeat_interval=10)
    clock.advance(LEASE - 1)
    await backend.finish(lost.released(clock.now()), lost.lease_token or "")
    report = await backend.heartbeat(
        worker, {kept.id: kept.lease_token or "", lost.id: lost.lease_token or ""}, LEASE
    )
    assert report.lost == {lost.id}
    clock.advance(2)
    assert await backend.expired(10) == []


async def test_cancel_waiting_task(backend: Backend, clock: ManualClock) -> None:
    task = make(clock)
    await backend.enqueue([task])
    cancelled = await backend.cancel(task.id)
    assert cancelled.status is TaskStatus.CANCELLED
    assert await take(backend) == []
    with pytest.raises(InvalidTransition):
        await backend.cancel(task.id)


async def test_cancel_running_task_asks_its_worker(backend: Backend, clock: ManualClock) -> None:
    await backend.enqueue([make(clock)])
    [task] = await take(backend)
    flagged = await backend.cancel(task.id)
    assert flagged.status is TaskStatus.RUNNING
    worker = WorkerInfo("w1", "host", 1, ["default"], 1, clock.now())
    report = await backend.heartbeat(worker, {task.id: task.lease_token or ""}, LEASE)
    assert report.cancel_requested == {task.id}


async def test_cancel_unknown_task(backend: Backend) -> None:
    with pytest.raises(TaskNotFound):
        await backend.cancel("missing")


async def test_requeue_failed_task_resets_attempts(backend: Backend, clock: ManualClock) -> None:
    await backend.enqueue([make(clock)])
    [task] = await take(backend)
    await backend.finish(task.failed("bad", clock.now()), task.lease_token or "")
    again = await backend.requeue(task.id)
    assert again.status is TaskStatus.PENDING
    assert again.attempts == 0
    assert again.error is None
    [taken] = await take(backend)
    assert taken.id == task.id
    with pytest.raises(InvalidTransition):
        await backend.requeue(task.id)


async def test_same_idempotency_key_and_request_returns_the_first_task(
    backend: Backend, clock: ManualClock
) -> None:
    first = make(clock, idempotency_key="k1", request_hash="h1")
    [a] = await backend.enqueue([first])
    [b] = await backend.enqueue([make(clock, idempotency_key="k1", request_hash="h1")])
    assert a.created
    assert not b.created
    assert b.task.id == first.id
    assert (await backend.stats()).waiting == 1


async def test_same_idempotency_key_with_another_request_conflicts(
    backend: Backend, clock: ManualClock
) -> None:
    await backend.enqueue([make(clock, idempotency_key="k1", request_hash="h1")])
    with pytest.raises(IdempotencyConflict):
        await backend.enqueue([make(clock, idempotency_key="k1", request_hash="h2")])


async def test_queue_is_bounded(backend: Backend, clock: ManualClock) -> None:
    backend.max_waiting = 3
    await backend.enqueue([make(clock) for _ in range(3)])
    with pytest.raises(QueueFull):
        await backend.enqueue([make(clock)])
    await take(backend)
    await backend.enqueue([make(clock)])


async def test_batch_is_all_or_none(backend: Backend, clock: ManualClock) -> None:
    backend.max_waiting = 3
    await backend.enqueue([make(clock)])
    with pytest.raises(QueueFull):
        await backend.enqueue([make(clock) for _ in range(3)])
    await backend.enqueue([make(clock, idempotency_key="k", request_hash="h")])
    batch = [make(clock), make(clock, idempotency_key="k", request_hash="other")]
    with pytest.raises(IdempotencyConflict):
        await backend.enqueue(batch)
    with pytest.raises(TaskNotFound):
        await backend.get(batch[0].id)


async def test_a_large_batch_keeps_the_rules_of_a_small_one(
    backend: Backend, clock: ManualClock
) -> None:
    """Redis sends a batch this large as a script call of its own rather than merged
    with its tick's: the answers, the bound and all-or-none must not change."""
    backend.max_waiting = 150
    first = make(clock, idempotency_key="k", request_hash="h")
    await backend.enqueue([first])
    batch = [make(clock) for _ in range(99)] + [make(clock, idempotency_key="k", request_hash="h")]
    results = await backend.enqueue(batch)
    assert [r.created for r in results] == [True] * 99 + [False]
    assert results[-1].task.id == first.id
    assert [r.task.id for r in results[:99]] == [t.id for t in batch[:99]]
    conflicting = [make(clock) for _ in range(99)]
    conflicting.append(make(clock, idempotency_key="k", request_hash="other"))
    with pytest.raises(IdempotencyConflict):
        await backend.enqueue(conflicting)
    with pytest.raises(QueueFull):
        await backend.enqueue([make(clock) for _ in range(100)])
    assert (await backend.stats()).waiting == 100
    with pytest.raises(TaskNotFound):
        await backend.get(conflicting[0].id)


async def test_concurrent_dequeuers_never_share_a_task(
    backend: Backend, clock: ManualClock
) -> None:
    backend.max_waiting = 100
    await backend.enqueue([make(clock, i % 11) for i in range(60)])
    batches = await asyncio.gather(*(take(backend, 4, worker=f"w{i}") for i in range(20)))
    ids = [t.id for batch in batches for t in batch]
    assert len(ids) == 60
    assert len(set(ids)) == 60


async def test_list_pages_newest_first_with_filters(backend: Backend, clock: ManualClock) -> None:
    tasks = []
    for i in range(5):
        tasks.append(make(clock, queue="a" if i % 2 else "b"))
        clock.advance(1)
    await backend.enqueue(tasks)
    first = await backend.list_tasks(TaskFilter(), 2, None)
    assert [t.id for t in first.tasks] == [tasks[4].id, tasks[3].id]
    assert first.next_cursor
    second = await backend.list_tasks(TaskFilter(), 2, first.next_cursor)
    assert [t.id for t in second.tasks] == [tasks[2].id, tasks[1].id]
    rest = await backend.list_tasks(TaskFilter(), 2, second.next_cursor)
    assert [t.id for t in rest.tasks] == [tasks[0].id]
    assert rest.next_cursor is None
    only_a = await backend.list_tasks(TaskFilter(queue="a"), 10, None)
    assert {t.id for t in only_a.tasks} == {tasks[1].id, tasks[3].id}
    pending = await backend.list_tasks(TaskFilter(status=TaskStatus.PENDING, type="noop"), 10, None)
    assert len(pending.tasks) == 5


async def test_records_of_dead_workers_are_purged_and_live_ones_kept(
    backend: Backend, clock: ManualClock
) -> None:
    killed = WorkerInfo("killed", "host", 41, ["default"], 5, clock.now(), heartbeat_interval=10)
    alive = WorkerInfo("alive", "host", 42, ["default"], 5, clock.now(), heartbeat_interval=10)
    await backend.heartbeat(killed, {}, LEASE)
    await backend.heartbeat(alive, {}, LEASE)
    assert await backend.purge_workers() == 0
    clock.advance(31)
    await backend.heartbeat(alive, {}, LEASE)
    assert await backend.purge_workers() == 1
    assert await backend.purge_workers() == 0  # its record is gone, not only hidden
    assert [w.id for w in await backend.workers()] == ["alive"]
    await backend.heartbeat(killed, {}, LEASE)  # it was only stalled: it is back
    assert {w.id for w in await backend.workers()} == {"alive", "killed"}


async def test_list_by_status_pages_in_the_order_of_the_whole_list(
    backend: Backend, clock: ManualClock
) -> None:
    """Whichever index a backend reads a status from, its pages follow the submit order."""
    await backend.enqueue([make(clock, queue="a" if i % 3 else "b") for i in range(20)])
    await backend.enqueue([make(clock, queue="a", run_at=clock.now() + 60) for _ in range(3)])
    running = await backend.dequeue(["a", "b"], 12, worker_id="w", lease_seconds=LEASE)
    outcomes = [task.completed(None, clock.now()) for task in running[:3]]
    outcomes += [task.failed("boom", clock.now()) for task in running[3:6]]
    outcomes += [
        task.after_failure("again", clock.now(), base=1.0, cap=10.0, delay=30.0)
        for task in running[6:8]
    ]
    for task, outcome in zip(running, outcomes, strict=False):
        await backend.finish(outcome, task.lease_token or "")
    whole = await backend.list_tasks(TaskFilter(), 100, None)
    for pending in [t for t in whole.tasks if t.status is TaskStatus.PENDING][:2]:
        await backend.cancel(pending.id)
    whole = await backend.list_tasks(TaskFilter(), 100, None)
    assert {t.status for t in whole.tasks} == set(TaskStatus)
    for status in TaskStatus:
        for queue in (None, "a"):
            expected = [
                t.id for t in whole.tasks if t.status is status and queue in (None, t.queue)
            ]
            listed: list[str] = []
            cursor = None
            while True:
                page = await backend.list_tasks(TaskFilter(status=status, queue=queue), 2, cursor)
                listed += [t.id for t in page.tasks]
                cursor = page.next_cursor
                if cursor is None:
                    break
            assert listed == expected, (status, queue)


async def test_list_rejects_a_foreign_cursor(backend: Backend) -> None:
    with pytest.raises(ValueError, match="cursor"):
        await backend.list_tasks(TaskFilter(), 10, "not-a-cursor")


async def test_stats_count_by_status_and_type(backend: Backend, clock: ManualClock) -> None:
    await backend.enqueue([make(clock), make(clock), make(clock, run_at=clock.now() + 9)])
    [task] = await take(backend)
    await backend.finish(task.completed(None, clock.now()), task.lease_token or "")
    stats = await backend.stats()
    assert stats.waiting == 2
    assert stats.by_status == {"completed": 1, "pending": 1, "scheduled": 1}
    assert stats.by_type == {"noop": 3}
    assert stats.processed == 1
    assert stats.failed == 0
    assert stats.finished_last_minute == 1
    assert stats.pending_by_queue == {"default": 1}


async def test_pending_is_counted_per_queue(backend: Backend, clock: ManualClock) -> None:
    await backend.enqueue(
        [
            make(clock, queue="mail"),
            make(clock, queue="mail"),
            make(clock, queue="images"),
            make(clock, queue="later", run_at=clock.now() + 9),  # scheduled: not pending
        ]
    )
    await backend.dequeue(["images"], 1, worker_id="w", lease_seconds=LEASE)
    assert (await backend.stats()).pending_by_queue == {"mail": 2}


async def test_workers_are_listed_until_their_heartbeats_stop(
    backend: Backend, clock: ManualClock
) -> None:
    worker = WorkerInfo("w1", "host", 42, ["default"], 5, clock.now(), heartbeat_interval=10)
    await backend.heartbeat(worker, {}, LEASE)
    [listed] = await backend.workers()
    assert (listed.id, listed.pid, listed.concurrency) == ("w1", 42, 5)
    clock.advance(31)
    assert await backend.workers() == []
    await backend.heartbeat(worker, {}, LEASE)
    await backend.remove_worker("w1")
    assert await backend.workers() == []


async def test_purge_removes_old_finished_tasks_but_keeps_failed(
    backend: Backend, clock: ManualClock
) -> None:
    await backend.enqueue([make(clock), make(clock)])
    done, dead = await take(backend, 2)
    await backend.finish(done.completed(1, clock.now()), done.lease_token or "")
    await backend.finish(dead.failed("x", clock.now()), dead.lease_token or "")
    clock.advance(100)
    assert await backend.purge_finished(clock.now() - 50) == 1
    with pytest.raises(TaskNotFound):
        await backend.get(done.id)
    assert (await backend.get(dead.id)).status is TaskStatus.FAILED


async def test_no_queue_names_means_every_queue(backend: Backend, clock: ManualClock) -> None:
    await backend.enqueue([make(clock, queue="emails"), make(clock, 1, queue="reports")])
    taken = await backend.dequeue([], 5, worker_id="w", lease_seconds=LEASE)
    assert [t.queue for t in taken] == ["reports", "emails"]


async def test_cancel_asked_while_running_wins_over_a_retry(
    backend: Backend, clock: ManualClock
) -> None:
    await backend.enqueue([make(clock)])
    [task] = await take(backend)
    await backend.cancel(task.id)
    await backend.finish(task.retrying("boom", clock.now(), 5), task.lease_token or "")
    stored = await backend.get(task.id)
    assert stored.status is TaskStatus.CANCELLED
    assert await backend.expired(10) == []


async def test_a_key_repeated_within_one_batch_is_one_task(
    backend: Backend, clock: ManualClock
) -> None:
    first, again = (
        make(clock, idempotency_key="k", request_hash="h"),
        make(clock, idempotency_key="k", request_hash="h"),
    )
    results = await backend.enqueue([first, again])
    assert [(r.task.id, r.created) for r in results] == [(first.id, True), (first.id, False)]
    with pytest.raises(IdempotencyConflict):
        await backend.enqueue(
            [
                make(clock, idempotency_key="j", request_hash="h1"),
                make(clock, idempotency_key="j", request_hash="h2"),
            ]
        )


async def test_a_batch_of_keyed_and_plain_tasks_answers_each_in_place(
    backend: Backend, clock: ManualClock
) -> None:
    """Redis stores a batch in runs of like tasks: keys repeated or stored before,
    inside and between runs, must not shift an answer or the queue's order."""
    stored = make(clock, idempotency_key="s", request_hash="h")
    await backend.enqueue([stored])
    plain = [make(clock) for _ in range(5)]
    keyed, again, old = (make(clock, idempotency_key=k, request_hash="h") for k in "kks")
    batch = [plain[0], plain[1], keyed, again, plain[2], old, plain[3], plain[4]]
    results = await backend.enqueue(batch)
    assert [(r.task.id, r.created) for r in results] == [
        (plain[0].id, True), (plain[1].id, True), (keyed.id, True), (keyed.id, False),
        (plain[2].id, True), (stored.id, False), (plain[3].id, True), (plain[4].id, True),
    ]  # fmt: skip
    taken = [t.id for t in await take(backend, 10)]
    assert taken == [stored.id, plain[0].id, plain[1].id, keyed.id, *(t.id for t in plain[2:])]


async def test_a_cursor_too_long_to_be_ours_is_refused(backend: Backend) -> None:
    with pytest.raises(ValueError, match="cursor"):
        await backend.list_tasks(TaskFilter(), 10, "9" * 30)


async def test_waiting_count_follows_every_kind_of_change(
    backend: Backend, clock: ManualClock
) -> None:
    backend.max_waiting = 100
    later = make(clock, run_at=clock.now() + 5)
    await backend.enqueue([make(clock) for _ in range(6)] + [later])
    a, b, c, d = await take(backend, 4)
    await backend.finish(a.completed(None, clock.now()), a.lease_token or "")
    await backend.finish(b.retrying("x", clock.now(), 1), b.lease_token or "")
    await backend.finish(c.failed("x", clock.now()), c.lease_token or "")
    await backend.finish(d.released(clock.now()), d.lease_token or "")
    await backend.cancel(later.id)
    await backend.requeue(c.id)
    clock.advance(2)
    await backend.promote_due()
    stats = await backend.stats()
    counted = sum(stats.by_status.get(s, 0) for s in ("pending", "scheduled", "retrying"))
    assert stats.waiting == counted == 5


async def test_progress_is_stored_for_the_lease_holder_and_kept_by_the_outcome(
    backend: Backend, clock: ManualClock
) -> None:
    await backend.enqueue([make(clock)])
    [task] = await take(backend)
    await backend.report_progress(task.id, task.lease_token or "", {"done": 3, "total": 10})
    assert (await backend.get(task.id)).progress == {"done": 3, "total": 10}
    with pytest.raises(LeaseLost):
        await backend.report_progress(task.id, "stale-token", {"done": 4})
    await backend.finish(task.failed("x", clock.now()), task.lease_token or "")
    assert (await backend.get(task.id)).progress == {"done": 3, "total": 10}
    assert (await backend.requeue(task.id)).progress is None


@pytest.mark.parametrize("ending", ["finished", "cancelled"])
async def test_a_wait_is_woken_by_the_final_state_its_own_backend_stores(
    backend: Backend, clock: ManualClock, monkeypatch: pytest.MonkeyPatch, ending: str
) -> None:
    """A `serve` process's worker ends the task its API waits on: with a minute between
    the wait's reads, only the backend's own wake-up can answer it in time."""
    monkeypatch.setattr(client_module, "WAIT_POLL", (60.0, 60.0))
    task = make(clock)
    await backend.enqueue([task])
    waiting = asyncio.create_task(AsyncClient(backend).wait(task.id, 50))
    async with asyncio.timeout(10):  # until the wait is in its pause
        while True:
            if task.id in backend._final_waits:
                break
            await asyncio.sleep(0.001)
    if ending == "finished":
        [leased] = await take(backend)
        await backend.finish(leased.completed(1, clock.now()), leased.lease_token or "")
    else:
        await backend.cancel(task.id)
    assert (await asyncio.wait_for(waiting, 30)).status.is_final
