"""SAQ: `saq --workers 1` with concurrency 10 (its default) per worker process."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from _common import REDIS_URL, aincr, arecord, run_async_peer
from saq import Queue

queue = Queue.from_url(REDIS_URL)


async def noop(ctx: dict[str, Any]) -> None:
    await aincr()


async def stamp(ctx: dict[str, Any], *, submitted: float) -> None:
    await arecord(submitted)


settings = {"queue": queue, "functions": [noop, stamp], "concurrency": 10}


@contextlib.asynccontextmanager
async def session() -> AsyncIterator[Queue]:
    await queue.connect()
    yield queue
    await queue.disconnect()


if __name__ == "__main__":
    run_async_peer(
        "saq",
        "saq",
        session,
        lambda queue: queue.enqueue("noop"),
        lambda queue, t: queue.enqueue("stamp", submitted=t),
        ["saq", "saq_bench.settings", "--workers", "1"],
        "--workers 1, concurrency 10",
    )
