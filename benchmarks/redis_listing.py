"""Listing tasks with filters on Redis, among many finished tasks kept for their retention.

    .venv/bin/python -m benchmarks.redis_listing [--kept 200000] [--failed 5] [--rare 5]

Starts a throwaway `redis-server` on a free port and stores, oldest first,
`--rare` completed tasks of type `rare` in queue `rare`, `--kept` completed
`noop` tasks, and `--failed` failed ones (the newest). Then, for each filter,
times the first page of 50 (the dashboard's) and the whole listing, following
`next_cursor` until it is null: three tries each, the median printed. A rare
status is read from its own index; anything else walks the tasks newest first,
so the rare type and queue, being the oldest, are the worst case of a walk.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from benchmarks.scratch_redis import finished, scratch_backend
from task_queue.backends.base import TaskFilter
from task_queue.backends.redis import RedisBackend
from task_queue.task import TaskStatus

PAGE = 50


async def timed(backend: RedisBackend, filter: TaskFilter) -> tuple[float, float, int, int]:
    """Milliseconds for the first page and for every page; tasks on the first and on all."""
    start = time.perf_counter()
    page = await backend.list_tasks(filter, PAGE, None)
    first_ms = (time.perf_counter() - start) * 1000
    first, found = len(page.tasks), len(page.tasks)
    while page.next_cursor is not None:
        page = await backend.list_tasks(filter, PAGE, page.next_cursor)
        found += len(page.tasks)
    return first_ms, (time.perf_counter() - start) * 1000, first, found


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kept", type=int, default=200_000, help="completed noop tasks")
    parser.add_argument("--failed", type=int, default=5, help="failed tasks, the newest")
    parser.add_argument("--rare", type=int, default=5, help="tasks of type and queue rare, oldest")
    args = parser.parse_args()
    async with scratch_backend(args.kept + args.failed + args.rare) as backend:
        await finished(backend, args.rare, kind="rare")
        await finished(backend, args.kept)
        await finished(backend, args.failed, failed=True)
        filters = {
            "no filter": TaskFilter(),
            "status failed": TaskFilter(status=TaskStatus.FAILED),
            "status running": TaskFilter(status=TaskStatus.RUNNING),
            "queue rare": TaskFilter(queue="rare"),
            "type rare": TaskFilter(type="rare"),
            "status completed, queue rare": TaskFilter(status=TaskStatus.COMPLETED, queue="rare"),
        }
        print(
            f"| among {args.kept:,} completed tasks | first page ms | tasks on it"
            " | every page ms | tasks on them |"
        )
        print("|---|---:|---:|---:|---:|")
        for name, filter in filters.items():
            tries = [await timed(backend, filter) for _ in range(3)]
            first_ms = statistics.median(t[0] for t in tries)
            every_ms = statistics.median(t[1] for t in tries)
            _, _, first, found = tries[0]
            print(f"| {name} | {first_ms:,.1f} | {first} | {every_ms:,.1f} | {found:,} |")


if __name__ == "__main__":
    asyncio.run(main())
