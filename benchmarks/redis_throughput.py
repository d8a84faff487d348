"""Redis backend throughput: submits through the Python API, and drain by worker processes.

    .venv/bin/python -m benchmarks.redis_throughput [--tasks 20000] [--workers 1,2]
        [--worker-count 10] [--prefetch 0]

Starts a throwaway `redis-server --save "" --appendonly no` on a free port
(never the shared 6379) and measures, each on an empty prefix:

1. single submits: 50 coroutines of one AsyncClient, one task per call;
2. batched submits: calls of 500 tasks, one after the other from one coroutine,
   then from two (a big call is a script call of its own, so while Redis
   stores one caller's batch the other builds its next: the two cores overlap);
3. drain: `--tasks` no-op tasks queued first, then N `task-queue worker`
   processes (WORKER_COUNT and WORKER_PREFETCH from the flags, LOG_LEVEL
   warning) run them. As for the peers
   (benchmarks/peers), the rate runs from the first completion to the last,
   so process start-up is left out; the processed counter is polled every 5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import redis

import benchmarks.noop_tasks  # noqa: F401 - registers `noop`
from benchmarks.peers.run import start_redis
from task_queue.backends.redis import RedisBackend
from task_queue.client import AsyncClient, TaskRequest
from task_queue.logs import configure

ROOT = Path(__file__).resolve().parents[1]
SUBMITTERS = 50
BATCH = 500


async def submit_rate(url: str, prefix: str, tasks: int, *, batch: int, callers: int) -> float:
    """`callers` coroutines of one AsyncClient submit `tasks` in calls of `batch` tasks."""
    backend = RedisBackend(url, max_waiting=tasks, prefix=prefix)
    await backend.open()
    client = AsyncClient(backend)
    request = TaskRequest(type="noop")

    async def submitter(share: int) -> None:
        for first in range(0, share, batch):
            await client.submit_requests([request] * min(batch, share - first))

    shares = [tasks // callers + (i < tasks % callers) for i in range(callers)]
    started = time.perf_counter()
    await asyncio.gather(*(submitter(n) for n in shares))
    elapsed = time.perf_counter() - started
    await backend.close()
    return tasks / elapsed


async def drain_rate(url: str, tasks: int, workers: int, args: argparse.Namespace) -> float:
    redis.Redis.from_url(url).flushall()  # workers use the default prefix
    backend = RedisBackend(url, max_waiting=tasks)
    await backend.open()
    client = AsyncClient(backend)
    request = TaskRequest(type="noop")
    for first in range(0, tasks, BATCH):
        await client.submit_requests([request] * min(BATCH, tasks - first))
    env = {
        **os.environ,
        "REDIS_URL": url,
        "QUEUE_BACKEND": "redis",
        "TASK_MODULES": "benchmarks.noop_tasks",
        "WORKER_COUNT": str(args.worker_count),
        "WORKER_PREFETCH": str(args.prefetch),
        "QUEUE_SIZE": str(tasks),
        "LOG_LEVEL": "warning",
        "LOG_FILE": "",
        "PYTHONPATH": str(ROOT),
    }
    binary = Path(sys.executable).with_name("task-queue")
    procs = [
        await asyncio.create_subprocess_exec(
            str(binary), "worker", env=env, cwd=ROOT, stdout=subprocess.DEVNULL
        )
        for _ in range(workers)
    ]
    try:
        first_at, first_count = 0.0, 0
        while True:
            done = (await backend.stats()).processed
            if done and not first_at:
                first_at, first_count = time.perf_counter(), done
            if done >= tasks:
                return (done - first_count) / (time.perf_counter() - first_at)
            if any(proc.returncode is not None for proc in procs):
                raise SystemExit("a worker process exited during the drain")
            await asyncio.sleep(0.005)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            await asyncio.wait_for(proc.wait(), 30)
        await backend.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--workers", default="1,2", help="worker process counts to drain with")
    parser.add_argument("--worker-count", type=int, default=10, help="WORKER_COUNT per process")
    parser.add_argument("--prefetch", type=int, default=0, help="WORKER_PREFETCH per process")
    args = parser.parse_args()
    configure("warning", "text", None)
    server, url = start_redis()
    rows: list[tuple[str, float]] = []
    try:
        single = await submit_rate(url, "single", args.tasks, batch=1, callers=SUBMITTERS)
        rows.append((f"single submits, {SUBMITTERS} coroutines", single))
        for callers in (1, 2):
            rate = await submit_rate(
                url, f"batched{callers}", args.tasks, batch=BATCH, callers=callers
            )
            rows.append((f"batched submits, {BATCH} per call, {callers} caller(s)", rate))
        for count in (int(n) for n in args.workers.split(",")):
            rate = await drain_rate(url, args.tasks, count, args)
            config = f"WORKER_COUNT {args.worker_count}, WORKER_PREFETCH {args.prefetch}"
            rows.append((f"drain, {count} worker process(es), {config}", rate))
    finally:
        server.terminate()
        server.wait()
    print(f"| measurement ({args.tasks:,} no-op tasks) | tasks/s |\n|---|---:|")
    for name, rate in rows:
        print(f"| {name} | {rate:,.0f} |")


if __name__ == "__main__":
    asyncio.run(main())
