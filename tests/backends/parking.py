"""A Redis worker's idle wait, parked, for the tests of the hand-over (lib.lua's feed)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from task_queue.backends.base import IdleWorker
from task_queue.backends.redis import RedisBackend
from task_queue.task import Task

LEASE = 30.0


async def park(
    backend: RedisBackend,
    worker: str,
    *,
    queues: Sequence[str] = ("default",),
    limit: int = 1,
    timeout: float = 30.0,
) -> asyncio.Task[list[Task]]:
    """A worker's idle wait, started once nothing was there to dequeue, and parked."""
    assert await backend.dequeue(queues, limit, worker_id=worker, lease_seconds=LEASE) == []
    idle = IdleWorker(worker, queues, limit, LEASE)
    waiting = asyncio.create_task(backend.wait_for_work(timeout, idle))
    for _ in range(200):  # the park rides in the wait's own pipeline
        if await backend._client.hexists(f"{backend._p}parks", worker):
            return waiting
        await asyncio.sleep(0.01)
    raise AssertionError(f"{worker} never parked")
