"""Listing tasks by status on Redis, among many finished tasks kept for their retention.

    .venv/bin/python -m benchmarks.redis_listing [--kept 200000] [--failed 5]

Starts a throwaway `redis-server` on a free port, stores `--kept` completed
tasks and `--failed` failed ones (the newest), then times a page of 50 (the
dashboard's) with no filter, with status `failed` and with status `running`
(none): three tries each, the median printed. A rare status is read from its
own index; a common one, or none, walks every task newest first.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from benchmarks.scratch_redis import scratch_backend
from task_queue.backends.base import TaskFilter
from task_queue.backends.redis import RedisBackend
from task_queue.task import Task, TaskStatus

BATCH = 500


async def finished(backend: RedisBackend, count: int, *, failed: bool) -> None:
    """Store `count` tasks and take each through a lease to completed (or failed)."""
    for first in range(0, count, BATCH):
        now = time.time()
        size = min(BATCH, count - first)
        await backend.enqueue([Task.new("noop", {}, now=now) for _ in range(size)])
        leased = await backend.dequeue([], size, worker_id="bench", lease_seconds=30)
        outcomes = [t.failed("boom", now) if failed else t.completed(None, now) for t in leased]
        await asyncio.gather(
            *(backend.finish(o, t.lease_token or "") for t, o in zip(leased, outcomes, strict=True))
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kept", type=int, default=200_000, help="completed tasks")
    parser.add_argument("--failed", type=int, default=5, help="failed tasks, the newest")
    args = parser.parse_args()
    async with scratch_backend(args.kept + args.failed) as backend:
        await finished(backend, args.kept, failed=False)
        await finished(backend, args.failed, failed=True)
        print(f"| page of 50 among {args.kept:,} completed tasks | found | median ms |")
        print("|---|---:|---:|")
        for status in (None, TaskStatus.FAILED, TaskStatus.RUNNING):
            took, found = [], 0
            for _ in range(3):
                start = time.perf_counter()
                page = await backend.list_tasks(TaskFilter(status=status), 50, None)
                took.append((time.perf_counter() - start) * 1000)
                found = len(page.tasks)
            name = f"status {status}" if status else "no filter"
            print(f"| {name} | {found} | {statistics.median(took):,.1f} |")


if __name__ == "__main__":
    asyncio.run(main())
