"""A throwaway redis-server on a free port with a RedisBackend on it, for the Redis benchmarks."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from benchmarks.peers.run import start_redis
from task_queue.backends.redis import RedisBackend
from task_queue.logs import configure


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
