"""arq: one `arq` worker process per worker, max_jobs=10 (default), poll_delay=5 ms.

arq has no blocking wait: a worker polls the queue's sorted set every `poll_delay`
(default 0.5 s, which caps a drain at about max_jobs / 0.5 s and adds up to 500 ms
of latency). "arq with fast polling": 5 ms, ARQ_POLL_DELAY overrides it.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from _common import REDIS_URL, aincr, apaced, arecord, run_peer
from arq import create_pool
from arq.connections import RedisSettings

POLL_DELAY = float(os.environ.get("ARQ_POLL_DELAY", "0.005"))


async def noop(ctx: dict[str, Any]) -> None:
    await aincr()


async def stamp(ctx: dict[str, Any], submitted: float) -> None:
    await arecord(submitted)


class WorkerSettings:
    functions = [noop, stamp]
    redis_settings = RedisSettings.from_dsn(REDIS_URL)
    poll_delay = POLL_DELAY


async def enqueue_all(n: int) -> float:
    pool = await create_pool(WorkerSettings.redis_settings)
    t0 = time.perf_counter()
    for _ in range(n):
        await pool.enqueue_job("noop")
    elapsed = time.perf_counter() - t0
    await pool.aclose()
    return elapsed


async def submit_paced(n: int, rate: float) -> None:
    pool = await create_pool(WorkerSettings.redis_settings)
    await apaced(lambda t: pool.enqueue_job("stamp", t), n, rate)
    await pool.aclose()


if __name__ == "__main__":
    run_peer(
        "arq",
        "arq",
        lambda n: asyncio.run(enqueue_all(n)),
        ["arq", "arq_bench.WorkerSettings"],
        f"max_jobs=10, poll_delay={POLL_DELAY * 1000:g} ms (default 500 ms)",
        lambda n, rate: asyncio.run(submit_paced(n, rate)),
    )
