"""Single submits on Redis after many queue names were used and emptied (per-tenant queues).

    .venv/bin/python -m benchmarks.redis_queue_names [--submits 2000]

Starts a throwaway `redis-server` on a free port and times `--submits` submits
of one task each, one after another: first with one queue ever used, then
after 100, 1,000 and 5,000 more queue names each got a task that a worker then
took. Every submit checks QUEUE_SIZE, which counts the pending tasks of the
queues Redis lists as holding some.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from benchmarks.scratch_redis import BATCH, scratch_backend
from task_queue.backends.redis import RedisBackend
from task_queue.task import Task


async def submits_per_second(backend: RedisBackend, submits: int) -> float:
    start = time.perf_counter()
    for _ in range(submits):
        await backend.enqueue([Task.new("noop", {}, now=time.time())])
    return submits / (time.perf_counter() - start)


async def use_and_empty(backend: RedisBackend, names: list[str]) -> None:
    await backend.enqueue([Task.new("noop", {}, now=time.time(), queue=name) for name in names])
    for first in range(0, len(names), BATCH):
        chunk = names[first : first + BATCH]
        await backend.dequeue(chunk, len(chunk), worker_id="bench", lease_seconds=30)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submits", type=int, default=2000)
    args = parser.parse_args()
    async with scratch_backend(10**9) as backend:
        print("| queue names used before, now empty | submits/s |")
        print("|---:|---:|")
        print(f"| 0 | {await submits_per_second(backend, args.submits):,.0f} |")
        used = 0
        for total in (100, 1000, 5000):
            await use_and_empty(backend, [f"tenant-{i}" for i in range(used, total)])
            used = total
            print(f"| {total:,} | {await submits_per_second(backend, args.submits):,.0f} |")


if __name__ == "__main__":
    asyncio.run(main())
