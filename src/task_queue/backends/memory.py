"""An in-process backend: heaps in memory, fast, and gone when the process exits.

For tests, benchmarks and single-process use where losing queued work on a
restart is acceptable. All state lives in one event loop; methods never await
in the middle of a change, so each is atomic without locks.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from typing import Any

from task_queue.backends.base import (
    Backend,
    IdleWorker,
    LeaseReport,
    Page,
    QueueStats,
    Submitted,
    TaskFilter,
    WorkerInfo,
    parse_cursor,
)
from task_queue.errors import (
    IdempotencyConflict,
    InvalidTransition,
    LeaseLost,
    QueueFull,
    TaskNotFound,
)
from task_queue.task import DELAYED_STATUSES, Task, TaskStatus, new_lease_token


class MemoryBackend(Backend):
    name = "memory"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._tasks: dict[str, Task] = {}
        self._seq: dict[str, int] = {}
        self._counter = itertools.count()
        # Per queue: (-priority, run_at, seq, id) of pending tasks. Entries of tasks
        # that left `pending` stay until popped and are skipped then (lazy deletion).
        self._ready: dict[str, list[tuple[int, float, int, str]]] = {}
        self._delayed: list[tuple[float, int, str]] = []
        self._idempotency: dict[str, str] = {}
        self._waiting = 0
        self._processed = 0
        self._failed = 0
        self._finished_at: deque[float] = deque()
        self._workers: dict[str, WorkerInfo] = {}
        self._work = asyncio.Event()

    async def close(self) -> None:
        self._work.set()

    async def ping(self) -> dict[str, Any]:
        return {"type": self.name, "tasks": len(self._tasks)}

    async def enqueue(self, tasks: Sequence[Task]) -> list[Submitted]:
        planned: list[Submitted] = []
        earlier: dict[str, Task] = {}  # keys seen in this batch count like stored ones
        for task in tasks:
            key = task.idempotency_key
            first = None if key is None else earlier.get(key) or self._by_key(key)
            if first is None:
                planned.append(Submitted(task, created=True))
                if key is not None:
                    earlier[key] = task
            elif first.request_hash != task.request_hash:
                raise IdempotencyConflict(
                    f"idempotency key {key!r} was used with a different request"
                )
            else:
                planned.append(Submitted(first, created=False))
        fresh = sum(item.created for item in planned)
        if self._waiting + fresh > self.max_waiting:
            raise QueueFull(f"queue holds {self._waiting} waiting tasks (limit {self.max_waiting})")
        for item in planned:
            if item.created:
                self._insert(item.task)
        self._work.set()
        return planned

    def _by_key(self, key: str) -> Task | None:
        task_id = self._idempotency.get(key)
        return None if task_id is None else self._tasks[task_id]

    def _insert(self, task: Task) -> None:
        seq = next(self._counter)
        self._tasks[task.id] = task
        self._seq[task.id] = seq
        if task.idempotency_key is not None:
            self._idempotency[task.idempotency_key] = task.id
        self._waiting += 1
        self._index(task)

    def _index(self, task: Task) -> None:
        seq = self._seq[task.id]
        if task.status is TaskStatus.PENDING:
            heap = self._ready.setdefault(task.queue, [])
            heapq.heappush(heap, (-task.priority, task.run_at, seq, task.id))
        elif task.status in DELAYED_STATUSES:
            heapq.heappush(self._delayed, (task.run_at, seq, task.id))

    def _store(self, old: Task, new: Task) -> None:
        """Replace a task, keeping the waiting count and indexes in step."""
        self._tasks[new.id] = new
        self._waiting += new.status.is_waiting - old.status.is_waiting
        if new.status.is_final and not old.status.is_final:
            self._count_finished(new)
            self._made_final([new.id])
        if new.status is not old.status or new.run_at != old.run_at:
            self._index(new)
            if new.status.is_waiting:
                self._work.set()

    def _count_finished(self, task: Task) -> None:
        if task.status is TaskStatus.CANCELLED:
            return
        self._processed += 1
        self._failed += task.status is TaskStatus.FAILED
        assert task.completed_at is not None
        self._finished_at.append(task.completed_at)

    async def promote_due(self) -> int:
        now = self.clock.now()
        promoted = 0
        while self._delayed and self._delayed[0][0] <= now:
            run_at, _, task_id = heapq.heappop(self._delayed)
            task = self._tasks.get(task_id)
            if task is None or task.status not in DELAYED_STATUSES or task.run_at != run_at:
                continue
            self._store(task, task.promoted(now))
            promoted += 1
        return promoted

    async def dequeue(
        self,
        queues: Sequence[str],
        limit: int,
        *,
        worker_id: str,
        lease_seconds: float,
        idle: bool = False,
    ) -> list[Task]:
        await self.promote_due()
        now = self.clock.now()
        heaps = [h for q, h in self._ready.items() if not queues or q in queues]
        taken: list[Task] = []
        while len(taken) < limit:
            best = min((h for h in heaps if h), key=lambda h: h[0], default=None)
            if best is None:
                break
            task_id = heapq.heappop(best)[3]
            task = self._tasks.get(task_id)
            if task is None or task.status is not TaskStatus.PENDING:
                continue
            leased = task.leased(
                worker_id=worker_id, token=new_lease_token(), now=now, lease_seconds=lease_seconds
            )
            self._store(task, leased)
            taken.append(leased)
        return taken

    def _leased(self, task_id: str, token: str) -> Task:
        current = self._tasks.get(task_id)
        if current is None or current.lease_token != token:
            raise LeaseLost(f"task {task_id} is no longer leased with this token")
        return current

    async def finish(self, task: Task, token: str) -> None:
        current = self._leased(task.id, token)
        self._store(current, task.settled_over(current))

    async def report_progress(self, task_id: str, token: str, progress: Any) -> None:
        current = self._leased(task_id, token)
        self._tasks[task_id] = current._with(progress=progress, updated_at=self.clock.now())

    async def expired(self, limit: int) -> list[Task]:
        now = self.clock.now()
        found = [
            t
            for t in self._tasks.values()
            if t.status is TaskStatus.RUNNING
            and t.lease_expires_at is not None
            and t.lease_expires_at <= now
        ]
        found.sort(key=lambda t: t.lease_expires_at or 0.0)
        return found[:limit]

    async def get(self, task_id: str) -> Task:
        try:
            return self._tasks[task_id]
        except KeyError:
            raise TaskNotFound(task_id) from None

    async def list_tasks(self, filter: TaskFilter, limit: int, cursor: str | None) -> Page:
        start = None if cursor is None else parse_cursor(cursor)
        matches: list[Task] = []
        last_seq = 0
        for task_id in reversed(self._tasks):
            seq = self._seq[task_id]
            if start is not None and seq >= start:
                continue
            task = self._tasks[task_id]
            if _matches(task, filter):
                if len(matches) == limit:
                    return Page(matches, str(last_seq))
                matches.append(task)
                last_seq = seq
        return Page(matches, None)

    async def cancel(self, task_id: str) -> Task:
        task = await self.get(task_id)
        now = self.clock.now()
        if task.status.is_final:
            raise InvalidTransition(f"task {task_id} is {task.status} already")
        new = task.cancel_request(now) if task.status is TaskStatus.RUNNING else task.cancelled(now)
        self._store(task, new)
        return new

    async def requeue(self, task_id: str) -> Task:
        task = await self.get(task_id)
        if task.status not in (TaskStatus.FAILED, TaskStatus.CANCELLED):
            raise InvalidTransition(f"only failed or cancelled tasks can be retried: {task.status}")
        if self._waiting + 1 > self.max_waiting:
            raise QueueFull(f"queue holds {self._waiting} waiting tasks (limit {self.max_waiting})")
        new = task.requeued(self.clock.now())
        self._store(task, new)
        return new

    async def heartbeat(
        self, worker: WorkerInfo, leases: Mapping[str, str], lease_seconds: float
    ) -> LeaseReport:
        now = self.clock.now()
        worker.last_heartbeat = now
        self._workers[worker.id] = worker
        lost, cancel = set(), set()
        for task_id, token in leases.items():
            task = self._tasks.get(task_id)
            if task is None or task.lease_token != token:
                lost.add(task_id)
                continue
            self._tasks[task_id] = task._with(lease_expires_at=now + lease_seconds)
            if task.cancel_requested:
                cancel.add(task_id)
        return LeaseReport(frozenset(lost), frozenset(cancel))

    async def remove_worker(self, worker_id: str) -> None:
        self._workers.pop(worker_id, None)

    async def workers(self) -> list[WorkerInfo]:
        now = self.clock.now()
        return [w for w in self._workers.values() if w.alive_at(now)]

    async def purge_workers(self) -> int:
        now = self.clock.now()
        dead = [w.id for w in self._workers.values() if not w.alive_at(now)]
        for worker_id in dead:
            del self._workers[worker_id]
        return len(dead)

    async def stats(self) -> QueueStats:
        horizon = self.clock.now() - 60.0
        while self._finished_at and self._finished_at[0] < horizon:
            self._finished_at.popleft()
        by_status = Counter(t.status.value for t in self._tasks.values())
        by_type = Counter(t.type for t in self._tasks.values())
        pending = Counter(t.queue for t in self._tasks.values() if t.status is TaskStatus.PENDING)
        return QueueStats(
            waiting=self._waiting,
            by_status=dict(by_status),
            by_type=dict(by_type),
            processed=self._processed,
            failed=self._failed,
            finished_last_minute=len(self._finished_at),
            pending_by_queue=dict(pending),
        )

    async def purge_finished(self, before: float) -> int:
        doomed = [
            t
            for t in self._tasks.values()
            if t.status in (TaskStatus.COMPLETED, TaskStatus.CANCELLED)
            and (t.completed_at or 0.0) < before
        ]
        for task in doomed:
            del self._tasks[task.id], self._seq[task.id]
            if task.idempotency_key is not None:
                self._idempotency.pop(task.idempotency_key, None)
        return len(doomed)

    async def wait_for_work(self, timeout: float, worker: IdleWorker) -> list[Task]:
        if self._delayed:
            timeout = max(0.0, min(timeout, self._delayed[0][0] - self.clock.now()))
        try:
            await asyncio.wait_for(self._work.wait(), timeout)
        except TimeoutError:
            return []
        self._work.clear()
        return []

    async def stop_waiting(self, worker_id: str) -> list[Task]:
        self._work.set()  # a wake-up for nothing: the waiter returns, the pool stops
        return []


def _matches(task: Task, filter: TaskFilter) -> bool:
    return (
        (filter.status is None or task.status is filter.status)
        and (filter.type is None or task.type == filter.type)
        and (filter.queue is None or task.queue == filter.queue)
    )
