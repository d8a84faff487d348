"""A real worker pool over the memory backend, on a manual clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from task_queue.backends.memory import MemoryBackend
from task_queue.config import Settings
from task_queue.registry import Registry
from task_queue.task import Task
from task_queue.worker.pool import WorkerPool


@pytest.fixture
def registry() -> Registry:
    return Registry()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.load(
        environ={},
        overrides={"worker_count": 3, "data_dir": tmp_path, "lease_seconds": 30, "log_file": ""},
    )


@pytest.fixture
async def pool(
    store: MemoryBackend, registry: Registry, settings: Settings
) -> AsyncIterator[WorkerPool]:
    """A running pool; stopped and drained at the end of the test."""
    workers = WorkerPool(store, registry, settings, worker_id="test-worker", queues=[])
    running = asyncio.create_task(workers.run())
    yield workers
    workers.stop()
    await running
    await workers.abort()
    await workers.close()


async def eventually(
    store: MemoryBackend, task_id: str, done: Callable[[Task], bool], timeout: float = 5.0
) -> Task:
    """The task once `done` holds; polls the backend, fails the test after `timeout`."""
    async with asyncio.timeout(timeout):
        while True:
            task = await store.get(task_id)
            if done(task):
                return task
            await asyncio.sleep(0.002)
