"""`task-queue bench`: end-to-end throughput of one process through a no-op handler.

Submitters and the worker pool run together in one event loop on the chosen
backend; the clock runs from the first submit to the last acknowledgement.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from task_queue import backends
from task_queue.client import AsyncClient, TaskRequest
from task_queue.config import Settings
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


async def _measure(settings: Settings, count: int) -> dict[str, Any]:
    registry = Registry()
    ran = 0
    all_ran = asyncio.Event()

    @registry.task("noop")
    async def noop(payload: dict[str, Any]) -> None:
        nonlocal ran
        ran += 1
        if ran == count:
            all_ran.set()

    backend = backends.create(settings)
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
    return {
        "backend": settings.backend,
        "tasks": count,
        "worker_count": settings.worker_count,
        "submitters": SUBMITTERS,
        "seconds": round(elapsed, 3),
        "submit_per_second": round(count / submitted),
        "end_to_end_per_second": round(count / elapsed),
    }
