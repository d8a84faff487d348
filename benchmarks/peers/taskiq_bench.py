"""Taskiq: `taskiq worker --workers 1` per worker on taskiq-redis's ListQueueBroker.

No result backend; ListQueueBroker waits on BRPOP, so an idle worker does not poll.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from _common import REDIS_URL, aincr, arecord, run_async_peer
from taskiq_redis import ListQueueBroker

broker = ListQueueBroker(REDIS_URL)


@broker.task(task_name="noop")  # else the name depends on how the module was run
async def noop() -> None:
    await aincr()


@broker.task(task_name="stamp")
async def stamp(submitted: float) -> None:
    await arecord(submitted)


@contextlib.asynccontextmanager
async def session() -> AsyncIterator[ListQueueBroker]:
    await broker.startup()
    yield broker
    await broker.shutdown()


if __name__ == "__main__":
    run_async_peer(
        "taskiq",
        "taskiq",
        session,
        lambda _: noop.kiq(),
        lambda _, t: stamp.kiq(t),
        ["taskiq", "worker", "taskiq_bench:broker", "--workers", "1"],
        "--workers 1, ListQueueBroker, default max async tasks",
    )
