"""`task-queue bench`: end-to-end throughput of one process through a no-op handler.

Submitters and the worker pool run together in one event loop on the chosen
backend; the clock runs from the first submit to the last acknowledgement.
On redis (REDIS_URL) the run uses a key prefix of its own, deleted afterwards,
so it never takes tasks from, or leaves tasks in, a real queue on that server.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from task_queue import backends
from task_queue.backends.base import Backend
from task_queue.client import AsyncClient, TaskRequest
from task_queue.config import Settings
from task_queue.errors import ConfigError
from task_queue.registry import Registry
from task_queue.worker.server import WorkerServer

SUBMITTERS = 50


async def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="task-queue-bench-") as scratch:
        data_dir = Path(args.data_dir) if args.data_dir else Path(scratch)
        bench_settings = settings.model_copy(
            update={
                "queue_backend": args.backend,
                "worker_count": args.concurrency,
                "queue_size": args.tasks,
                "data_dir": data_dir,
            }
        )
        return await _measure(bench_settings, args.tasks)


def counting_noop(count: int) -> tuple[Registry, asyncio.Event]:
    """A registry of one no-op type, `noop`, and an event set once it ran `count` times:
    the end of a drain, known without polling the backend."""
    registry, ran, all_ran = Registry(), 0, asyncio.Event()

    @registry.task("noop")
    async def noop(payload: dict[str, Any]) -> None:
        nonlocal ran
        ran += 1
        if ran == count:
            all_ran.set()

    return registry, all_ran


async def _measure(settings: Settings, count: int) -> dict[str, Any]:
    registry, all_ran = counting_noop(count)
    backend = _backend(settings)
    await backend.open()
    client = AsyncClient(backend, registry=registry)
    server = WorkerServer(backend, registry, settings)
    stop, force = asyncio.Event(), asyncio.Event()
    worker = asyncio.create_task(server.run(stop, force))
    request = TaskRequest(type="noop")
    started = time.perf_counter()

    async def submitter(share: int) -> None:
        for _ in range(share):
            await client.submit_requests([request])

    shares = [count // SUBMITTERS + (i < count % SUBMITTERS) for i in range(SUBMITTERS)]
    await asyncio.gather(*(submitter(n) for n in shares))
    submitted = time.perf_counter() - started
    await all_ran.wait()
    # Stopping drains the acknowledgements still in flight: they count in the time.
    stop.set()
    await worker
    elapsed = time.perf_counter() - started
    await backend.close()
    await _drop_bench_keys(backend)
    return {
        "backend": settings.backend,
        "tasks": count,
        "worker_count": settings.worker_count,
        "submitters": SUBMITTERS,
        "seconds": round(elapsed, 3),
        "submit_per_second": round(count / submitted),
        "end_to_end_per_second": round(count / elapsed),
    }


def _backend(settings: Settings) -> Backend:
    if settings.backend != "redis":
        return backends.create(settings)
    from task_queue.backends.redis import RedisBackend

    if not settings.redis_url:
        raise ConfigError("bench --backend redis needs REDIS_URL, e.g. redis://localhost:6379/0")
    prefix = f"tq-bench-{uuid.uuid4().hex[:12]}"
    return RedisBackend(settings.redis_url, max_waiting=settings.queue_size, prefix=prefix)


async def _drop_bench_keys(backend: Backend) -> None:
    """Delete every key of the bench's own redis prefix (all of them share its hash tag)."""
    from task_queue.backends.redis import RedisBackend

    if not isinstance(backend, RedisBackend):
        return
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(backend.url)
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=f"{{{backend.prefix}}}:*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                await client.unlink(*batch)
                batch.clear()
        if batch:
            await client.unlink(*batch)
    finally:
        await client.aclose()
