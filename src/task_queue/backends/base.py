"""The contract every queue backend fulfils.

Backends store state; they never decide it. Status changes are computed by the
methods of `Task` (the state machine lives in one place), then handed to the
backend, which applies them atomically and guards them with the lease token.
Every method is a coroutine; every method that writes is atomic: it either
happens whole or raises and changes nothing.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from task_queue._clock import Clock, SystemClock
from task_queue.task import Task, TaskStatus, rfc3339


class Submitted(NamedTuple):
    """The outcome of one enqueue: the stored task, and whether this call created it.

    A tuple: a batch of 500 submits makes 500, and a frozen dataclass is half again
    as slow to build.
    """

    task: Task
    created: bool


@dataclass(slots=True, frozen=True)
class TaskFilter:
    status: TaskStatus | None = None
    type: str | None = None
    queue: str | None = None


@dataclass(slots=True, frozen=True)
class Page:
    tasks: list[Task]
    next_cursor: str | None


# Cursors are submit sequence numbers; more digits than a 64-bit integer has is no cursor.
_CURSOR_DIGITS = 18


def parse_cursor(cursor: str) -> int:
    """The sequence number in a cursor that list_tasks issued; ValueError for anything else."""
    if not (cursor.isascii() and cursor.isdigit() and len(cursor) <= _CURSOR_DIGITS):
        raise ValueError(f"invalid cursor {cursor[:40]!r}")
    return int(cursor)


def reconnect_pause(failures: int) -> float:
    """Seconds to wait after `failures` tries in a row could not reach the backend:
    0.2 doubling up to 10, so an outage costs no busy loop and a return is seen soon."""
    return min(0.1 * 2.0**failures, 10.0)


# A worker that has not sent a heartbeat for this many of its intervals is gone.
WORKER_EXPIRY_HEARTBEATS = 3


@dataclass(slots=True)
class WorkerInfo:
    """What a worker process reports about itself on every heartbeat."""

    id: str
    hostname: str
    pid: int
    queues: list[str]
    concurrency: int
    started_at: float
    heartbeat_interval: float = 10.0
    last_heartbeat: float = 0.0
    state: str = "idle"
    current_tasks: list[str] = field(default_factory=list)
    processed: int = 0
    failed: int = 0

    def alive_at(self, now: float) -> bool:
        return self.last_heartbeat >= now - WORKER_EXPIRY_HEARTBEATS * self.heartbeat_interval

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "hostname": self.hostname,
            "pid": self.pid,
            "queues": self.queues,
            "concurrency": self.concurrency,
            "state": self.state,
            "current_tasks": self.current_tasks,
            "processed": self.processed,
            "failed": self.failed,
            "started_at": rfc3339(self.started_at),
            "last_heartbeat": rfc3339(self.last_heartbeat),
        }


@dataclass(slots=True, frozen=True)
class IdleWorker:
    """A worker pool waiting for work: what a backend needs to hand it tasks directly."""

    worker_id: str
    queues: Sequence[str]  # empty: every queue
    free_slots: int
    lease_seconds: float


@dataclass(slots=True, frozen=True)
class LeaseReport:
    """The answer to a heartbeat: leases the worker no longer holds, cancels asked of it."""

    lost: frozenset[str] = frozenset()
    cancel_requested: frozenset[str] = frozenset()


@dataclass(slots=True, frozen=True)
class QueueStats:
    waiting: int
    by_status: dict[str, int]
    by_type: dict[str, int]
    processed: int
    failed: int
    finished_last_minute: int
    # Pending (ready to run now) per queue: what a per-queue autoscaler watches.
    pending_by_queue: dict[str, int]


class Backend(abc.ABC):
    """Durable (or not) storage of tasks with leases, priorities and delays.

    Ordering: among tasks due to run, higher `priority` first, then earlier
    `run_at` (a task's submit time unless it was delayed), then submit order.
    """

    name: str

    def __init__(self, *, clock: Clock | None = None, max_waiting: int = 1000) -> None:
        self.clock = clock or SystemClock()
        self.max_waiting = max_waiting
        self._final_waits: dict[str, set[asyncio.Future[None]]] = {}

    async def open(self) -> None:  # noqa: B027 - most backends have nothing to open
        """Connect and create what is missing; raises BackendUnavailable."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections; waits for acknowledged writes to be durable."""

    @abc.abstractmethod
    async def ping(self) -> dict[str, Any]:
        """Details for the health endpoint; raises BackendUnavailable when unreachable."""

    @abc.abstractmethod
    async def enqueue(self, tasks: Sequence[Task]) -> list[Submitted]:
        """Store new tasks, all or none.

        A task whose idempotency_key is already stored is not stored again: the
        existing task comes back with created=False when its request_hash is the
        same, IdempotencyConflict is raised when it differs. QueueFull when the
        new tasks would take the waiting count past max_waiting. Returns only
        once the tasks are as durable as the backend makes anything.
        """

    @abc.abstractmethod
    async def dequeue(
        self,
        queues: Sequence[str],
        limit: int,
        *,
        worker_id: str,
        lease_seconds: float,
        idle: bool = False,
    ) -> list[Task]:
        """Atomically take up to `limit` due tasks from `queues` and lease them to the worker.

        An empty `queues` means every queue.
        Due scheduled and retrying tasks are promoted first. Each returned task is
        `Task.leased(...)`: running, attempts counted, a fresh lease token. Two
        concurrent callers never receive the same task. `idle` says the worker
        has nothing running, so it waits on this answer alone: a hint that a
        backend may act on (Redis sends the call ahead of others).
        """

    @abc.abstractmethod
    async def finish(self, task: Task, token: str) -> None:
        """Store `task` (a transition of a leased task) if `token` still holds the lease.

        What is stored is `task.settled_over(stored)`, so a cancel asked meanwhile
        is not undone by a retry. Raises LeaseLost, changing nothing, when the
        lease was taken over, handed back or the task was deleted; a second
        finish with the same token is a LeaseLost too (the first one cleared it).
        """

    @abc.abstractmethod
    async def report_progress(self, task_id: str, token: str, progress: Any) -> None:
        """Store how far a running task got (JSON), if `token` still holds its lease.

        LeaseLost otherwise. Only `progress` (and `updated_at`) change.
        """

    @abc.abstractmethod
    async def expired(self, limit: int) -> list[Task]:
        """Running tasks whose lease has expired, oldest expiry first (read only).

        The recoverer decides their fate and stores it with finish() and the
        stale token, so a worker that comes back late loses the race cleanly.
        """

    @abc.abstractmethod
    async def promote_due(self) -> int:
        """Make scheduled and retrying tasks whose run_at has come pending; returns how many."""

    @abc.abstractmethod
    async def get(self, task_id: str) -> Task:
        """The task, or TaskNotFound."""

    @abc.abstractmethod
    async def list_tasks(self, filter: TaskFilter, limit: int, cursor: str | None) -> Page:
        """Newest first, with an opaque cursor; ValueError for a cursor it did not issue."""

    @abc.abstractmethod
    async def cancel(self, task_id: str) -> Task:
        """Cancel a waiting task, or flag a running one for its worker to stop.

        TaskNotFound, or InvalidTransition when the task is final already.
        """

    @abc.abstractmethod
    async def requeue(self, task_id: str) -> Task:
        """Put a failed or cancelled task back to pending with attempts reset.

        TaskNotFound, InvalidTransition for any other status, QueueFull.
        """

    @abc.abstractmethod
    async def heartbeat(
        self, worker: WorkerInfo, leases: Mapping[str, str], lease_seconds: float
    ) -> LeaseReport:
        """Record the worker as alive and extend the leases it holds (task id -> token)."""

    @abc.abstractmethod
    async def remove_worker(self, worker_id: str) -> None:
        """Forget a worker that stopped cleanly."""

    @abc.abstractmethod
    async def workers(self) -> list[WorkerInfo]:
        """Every worker whose last heartbeat is recent, from every process sharing the backend."""

    @abc.abstractmethod
    async def purge_workers(self) -> int:
        """Delete the records of workers no longer alive; how many.

        A worker that stops cleanly removes its own; one killed (OOM, kill -9, a
        lost host) leaves it behind, and a fleet restarted often would pile them up.
        A worker that was only stalled registers again with its next heartbeat.
        """

    @abc.abstractmethod
    async def stats(self) -> QueueStats: ...

    @abc.abstractmethod
    async def purge_finished(self, before: float) -> int:
        """Delete completed and cancelled tasks that finished before `before`."""

    @abc.abstractmethod
    async def wait_for_work(self, timeout: float, worker: IdleWorker) -> list[Task]:
        """Return when tasks may have become due, or after `timeout` seconds.

        An idle worker calls it after a dequeue that found nothing. A backend may
        hand the worker up to `free_slots` tasks from its queues while it waits,
        leased as dequeue() leases them, and return them (Redis does: it saves
        the worker a round trip). Else it returns none: a hint, never a
        guarantee, and the caller dequeues afterwards.
        """

    async def until_final(self, task_id: str, timeout: float) -> None:
        """Return once `task_id` may have reached a final state, or after `timeout` seconds.

        A client's wait() reads the task again after each call. Every backend hears
        of the final states that this object stores (a `serve` process's worker
        ending what its API waits on), through _made_final(); Redis hears of other
        processes' too. Of the rest a wait learns at its next read.
        """
        heard: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waits = self._final_waits.setdefault(task_id, set())
        waits.add(heard)
        try:
            await asyncio.wait_for(heard, timeout)
        except TimeoutError:
            pass
        finally:
            waits.discard(heard)
            if not waits:
                self._final_waits.pop(task_id, None)

    def _made_final(self, task_ids: Iterable[str]) -> None:
        """Wake the waits on these tasks: each became final, or may have."""
        for task_id in task_ids:
            for heard in self._final_waits.get(task_id, ()):
                if not heard.done():
                    heard.set_result(None)

    @abc.abstractmethod
    async def stop_waiting(self, worker_id: str) -> list[Task]:
        """The worker stops for good: end its wait_for_work soon and hand it nothing more.

        Returns tasks handed to it that it has not received; they are leased to
        it, and the caller hands them back.
        """
