"""A throwaway redis-server on a free port with a RedisBackend on it, for the Redis benchmarks,
and finished tasks to fill it with."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from benchmarks.peers.run import start_redis
from task_queue.backends.redis import RedisBackend
from task_queue.logs import configure
from task_queue.task import Task

BATCH = 500


@contextlib.asynccontextmanager
async def scratch_backend(max_waiting: int) -> AsyncIterator[RedisBackend]:
    configure("warning", "text", None)
    server, url = start_redis()
    backend = RedisBackend(url, max_waiting=max_waiting)
    await backend.open()
    try:
        yield backend
    finally:
        await backend.close()
        server.terminate()
        server.wait()


async def finished(
    backend: RedisBackend,
    count: int,
    *,
    failed: bool = False,
    kind: str = "noop",
    payload: dict[str, Any] | None = None,
) -> None:
    """Store `count` tasks of type and queue `kind` and take each through a lease to
    completed (or failed)."""
    for first in range(0, count, BATCH):
        now = time.time()
        size = min(BATCH, count - first)
        await backend.enqueue(
            [Task.new(kind, payload or {}, now=now, queue=kind) for _ in range(size)]
        )
        leased = await backend.dequeue([kind], size, worker_id="bench", lease_seconds=30)
        outcomes = [t.failed("boom", now) if failed else t.completed(None, now) for t in leased]
        await asyncio.gather(
            *(backend.finish(o, t.lease_token or "") for t, o in zip(leased, outcomes, strict=True))
        )
