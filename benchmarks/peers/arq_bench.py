"""arq: one `arq` worker with its defaults (max_jobs=10, poll_delay=0.5s)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from _common import REDIS_URL, aincr, run_peer
from arq import create_pool
from arq.connections import RedisSettings


async def noop(ctx: dict[str, Any]) -> None:
    await aincr()


class WorkerSettings:
    functions = [noop]
    redis_settings = RedisSettings.from_dsn(REDIS_URL)


async def enqueue_all(n: int) -> float:
    pool = await create_pool(WorkerSettings.redis_settings)
    t0 = time.perf_counter()
    for _ in range(n):
        await pool.enqueue_job("noop")
    elapsed = time.perf_counter() - t0
    await pool.aclose()
    return elapsed


if __name__ == "__main__":
    run_peer(
        "arq",
        "arq",
        lambda n: asyncio.run(enqueue_all(n)),
        ["arq", "arq_bench.WorkerSettings"],
        "1 process, defaults (max_jobs=10, poll_delay=0.5s)",
    )
