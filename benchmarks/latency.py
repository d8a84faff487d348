"""Latency from submit to start, at a steady submit rate, in one process.

    .venv/bin/python benchmarks/latency.py --backend redis --rate 200 --seconds 10
    (redis: REDIS_URL names the server; never point it at a Redis holding real work)

Tasks are submitted through AsyncClient at `--rate` per second while a
WorkerServer runs them; each handler notes how long after its submit it
started. Idle workers block on the backend (an event in process; on Redis a
BLPOP on the worker's inbox, where the submit's script hands it the task), so
this measures that path, not a polling interval.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

from task_queue import backends
from task_queue.client import AsyncClient, TaskRequest
from task_queue.config import Settings
from task_queue.logs import configure
from task_queue.registry import Registry, TaskContext
from task_queue.worker.server import WorkerServer


async def measure(settings: Settings, rate: float, seconds: float) -> dict[str, Any]:
    registry = Registry()
    delays: list[float] = []
    count = int(rate * seconds)
    all_started = asyncio.Event()

    @registry.task("stamp")
    async def stamp(payload: dict[str, Any], ctx: TaskContext) -> None:
        delays.append(time.time() - ctx.task.created_at)
        if len(delays) == count:
            all_started.set()

    backend = backends.create(settings)
    await backend.open()
    client = AsyncClient(backend, registry=registry)
    server = WorkerServer(backend, registry, settings)
    stop, force = asyncio.Event(), asyncio.Event()
    worker = asyncio.create_task(server.run(stop, force))
    await asyncio.sleep(0.5)  # let the worker reach its idle wait before the clock starts
    request = TaskRequest(type="stamp")
    loop = asyncio.get_running_loop()
    start = loop.time()
    for n in range(count):
        await asyncio.sleep(max(0.0, start + n / rate - loop.time()))
        await client.submit_requests([request])
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_started.wait(), 30)
    stop.set()
    await worker
    await backend.close()
    ms = sorted(d * 1000 for d in delays)
    return {
        "backend": settings.backend,
        "rate_per_second": rate,
        "tasks": count,
        "started": len(ms),
        "p50_ms": round(statistics.median(ms), 2),
        "p90_ms": round(ms[int(len(ms) * 0.90) - 1], 2),
        "p99_ms": round(ms[int(len(ms) * 0.99) - 1], 2),
        "max_ms": round(ms[-1], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=["memory", "sqlite", "redis"], default="redis")
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    configure("warning", "json", None)
    with tempfile.TemporaryDirectory(prefix="task-queue-latency-") as scratch:
        settings = Settings.load(
            overrides={
                "queue_backend": args.backend,
                "data_dir": Path(scratch),
                "worker_count": 10,
                "queue_size": 1_000_000,
                "log_file": "",
            }
        )
        if args.backend == "redis" and not os.environ.get("REDIS_URL"):
            raise SystemExit("set REDIS_URL to a throwaway redis-server")
        print(uvloop.run(measure(settings, args.rate, args.seconds)))


if __name__ == "__main__":
    main()
