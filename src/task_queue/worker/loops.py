"""Background loops with one shape: `run_once()` for tests, `run()` for processes."""

from __future__ import annotations

import abc
import asyncio
import contextlib

from task_queue.logs import get_logger

log = get_logger("task_queue.worker")


class PeriodicLoop(abc.ABC):
    """Calls run_once() every `interval` seconds until stopped; an error is logged, not fatal."""

    interval: float

    @abc.abstractmethod
    async def run_once(self) -> object: ...

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.run_once()
            except Exception:
                log.exception("background loop failed", loop=type(self).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)
