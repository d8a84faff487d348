"""SAQ: `saq --workers 1` with concurrency 10 (its default) per worker process."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from _common import REDIS_URL, aincr, apaced, arecord, run_peer
from saq import Queue

queue = Queue.from_url(REDIS_URL)


async def noop(ctx: dict[str, Any]) -> None:
    await aincr()


async def stamp(ctx: dict[str, Any], *, submitted: float) -> None:
    await arecord(submitted)


settings = {"queue": queue, "functions": [noop, stamp], "concurrency": 10}


async def enqueue_all(n: int) -> float:
    await queue.connect()
    t0 = time.perf_counter()
    for _ in range(n):
        await queue.enqueue("noop")
    elapsed = time.perf_counter() - t0
    await queue.disconnect()
    return elapsed


async def submit_paced(n: int, rate: float) -> None:
    await queue.connect()
    await apaced(lambda t: queue.enqueue("stamp", submitted=t), n, rate)
    await queue.disconnect()


if __name__ == "__main__":
    run_peer(
        "saq",
        "saq",
        lambda n: asyncio.run(enqueue_all(n)),
        ["saq", "saq_bench.settings", "--workers", "1"],
        "--workers 1, concurrency 10",
        lambda n, rate: asyncio.run(submit_paced(n, rate)),
    )
