"""arq: one `arq` worker process per worker, max_jobs=10 (default), poll_delay=5 ms.

arq has no blocking wait: a worker polls the queue's sorted set every `poll_delay`
(default 0.5 s, which caps a drain at about max_jobs / 0.5 s and adds up to 500 ms
of latency). "arq with fast polling": 5 ms, ARQ_POLL_DELAY overrides it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

from _common import REDIS_URL, aincr, arecord, run_async_peer
from arq import ArqRedis, create_pool
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


@contextlib.asynccontextmanager
async def session() -> AsyncIterator[ArqRedis]:
    pool = await create_pool(WorkerSettings.redis_settings)
    yield pool
    await pool.aclose()


if __name__ == "__main__":
    run_async_peer(
        "arq",
        "arq",
        session,
        lambda pool: pool.enqueue_job("noop"),
        lambda pool, t: pool.enqueue_job("stamp", t),
        ["arq", "arq_bench.WorkerSettings"],
        f"max_jobs=10, poll_delay={POLL_DELAY * 1000:g} ms (default 500 ms)",
    )
