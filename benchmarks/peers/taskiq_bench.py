"""Taskiq: `taskiq worker --workers 1` on taskiq-redis's ListQueueBroker, no result backend."""

from __future__ import annotations

import asyncio
import time

from _common import REDIS_URL, aincr, run_peer
from taskiq_redis import ListQueueBroker

broker = ListQueueBroker(REDIS_URL)


@broker.task(task_name="noop")  # else the name depends on how the module was run
async def noop() -> None:
    await aincr()


async def enqueue_all(n: int) -> float:
    await broker.startup()
    t0 = time.perf_counter()
    for _ in range(n):
        await noop.kiq()
    elapsed = time.perf_counter() - t0
    await broker.shutdown()
    return elapsed


if __name__ == "__main__":
    run_peer(
        "taskiq",
        "taskiq",
        lambda n: asyncio.run(enqueue_all(n)),
        ["taskiq", "worker", "taskiq_bench:broker", "--workers", "1"],
        "1 process, ListQueueBroker, default max async tasks",
    )
