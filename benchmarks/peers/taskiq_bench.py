"""Taskiq: `taskiq worker --workers 1` per worker on taskiq-redis's ListQueueBroker.

No result backend; ListQueueBroker waits on BRPOP, so an idle worker does not poll.
"""

from __future__ import annotations

import asyncio
import time

from _common import REDIS_URL, aincr, apaced, arecord, run_peer
from taskiq_redis import ListQueueBroker

broker = ListQueueBroker(REDIS_URL)


@broker.task(task_name="noop")  # else the name depends on how the module was run
async def noop() -> None:
    await aincr()


@broker.task(task_name="stamp")
async def stamp(submitted: float) -> None:
    await arecord(submitted)


async def enqueue_all(n: int) -> float:
    await broker.startup()
    t0 = time.perf_counter()
    for _ in range(n):
        await noop.kiq()
    elapsed = time.perf_counter() - t0
    await broker.shutdown()
    return elapsed


async def submit_paced(n: int, rate: float) -> None:
    await broker.startup()
    await apaced(stamp.kiq, n, rate)
    await broker.shutdown()


if __name__ == "__main__":
    run_peer(
        "taskiq",
        "taskiq",
        lambda n: asyncio.run(enqueue_all(n)),
        ["taskiq", "worker", "taskiq_bench:broker", "--workers", "1"],
        "--workers 1, ListQueueBroker, default max async tasks",
        lambda n, rate: asyncio.run(submit_paced(n, rate)),
    )
