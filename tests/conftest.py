"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from task_queue._clock import ManualClock
from task_queue.backends.base import Backend
from task_queue.backends.memory import MemoryBackend
from task_queue.backends.redis import RedisBackend
from task_queue.backends.sqlite import SQLiteBackend
from tests.backends.redis_server import redis_server
from tests.backends.redis_topologies import redis_cluster, redis_sentinel

# Fixtures, imported so every test can use them.
__all__ = ["redis_cluster", "redis_sentinel", "redis_server"]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def store(clock: ManualClock) -> AsyncIterator[MemoryBackend]:
    """A memory backend on the manual clock, for tests of what runs above the backend."""
    backend = MemoryBackend(clock=clock)
    await backend.open()
    yield backend
    await backend.close()


@pytest.fixture(params=["memory", "sqlite", "redis", "redis-cluster", "redis-sentinel"])
async def backend(
    request: pytest.FixtureRequest, clock: ManualClock, tmp_path: Path
) -> AsyncIterator[Backend]:
    """Each backend in turn, fresh and empty, on the test's manual clock."""
    store: Backend
    if request.param == "memory":
        store = MemoryBackend(clock=clock)
    elif request.param == "sqlite":
        store = SQLiteBackend(tmp_path / "task-queue.db", clock=clock)
    else:
        # Each Redis topology is a session fixture with a `url`: server, cluster, sentinel.
        fixture = "redis_server" if request.param == "redis" else request.param.replace("-", "_")
        url: str = request.getfixturevalue(fixture).url
        # A fresh key prefix per test: empty, without flushing what other tests hold.
        store = RedisBackend(url, clock=clock, prefix=f"t-{uuid.uuid4().hex}")
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Soak tests marked `slow` run only when RUN_SLOW=1, so `make test` stays bounded."""
    if os.environ.get("RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow soak test: set RUN_SLOW=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
