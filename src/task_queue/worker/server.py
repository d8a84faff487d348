"""One worker process's parts, composed: pool, heartbeat, recoverer, scheduler, janitor."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid

from task_queue.backends.base import Backend, WorkerInfo
from task_queue.config import Settings
from task_queue.errors import BackendUnavailable
from task_queue.logs import get_logger
from task_queue.metrics import Metrics
from task_queue.registry import Registry
from task_queue.worker.heartbeat import Heartbeat
from task_queue.worker.loops import PeriodicLoop
from task_queue.worker.maintenance import Janitor, Recoverer, Scheduler
from task_queue.worker.pool import WorkerPool

log = get_logger("task_queue.worker")


class WorkerServer:
    """Runs the pool and its loops until `stop` is set, then drains as the contract says.

    On stop: take no new work, let running tasks finish for up to
    SHUTDOWN_TIMEOUT, then hand back whatever still runs. Setting `force` at any
    point hands back the running tasks at once.
    """

    def __init__(
        self,
        backend: Backend,
        registry: Registry,
        settings: Settings,
        metrics: Metrics | None = None,
    ) -> None:
        self.backend = backend
        self.settings = settings
        hostname = socket.gethostname()
        self.info = WorkerInfo(
            id=f"{hostname}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
            hostname=hostname,
            pid=os.getpid(),
            queues=settings.queues,
            concurrency=settings.worker_count,
            started_at=backend.clock.now(),
            heartbeat_interval=settings.lease_seconds / 3,
        )
        self.pool = WorkerPool(
            backend,
            registry,
            settings,
            worker_id=self.info.id,
            queues=settings.queues,
            metrics=metrics,
        )
        self.heartbeat = Heartbeat(backend, self.pool, self.info)
        self.loops: list[PeriodicLoop] = [
            self.heartbeat,
            Recoverer(backend, settings),
            Scheduler(backend),
            Janitor(backend, settings),
        ]

    async def run(self, stop: asyncio.Event, force: asyncio.Event) -> bool:
        """Work until stopped; True when every task finished or was handed back cleanly."""
        halt_loops = asyncio.Event()
        loops = [asyncio.create_task(loop.run(halt_loops)) for loop in self.loops]
        pool = asyncio.create_task(self.pool.run())
        log.info(
            "worker started",
            worker_id=self.info.id,
            concurrency=self.info.concurrency,
            prefetch=self.pool.prefetch,
            queues=self.info.queues or "all",
            backend=self.backend.name,
        )
        await stop.wait()
        self.pool.stop()
        await pool
        log.info("worker draining", timeout=self.settings.shutdown_timeout)
        drain = asyncio.create_task(self.pool.drain(self.settings.shutdown_timeout))
        forced = asyncio.create_task(force.wait())
        await asyncio.wait({drain, forced}, return_when=asyncio.FIRST_COMPLETED)
        forced.cancel()
        clean = drain.done() and drain.result()
        if not clean:
            drain.cancel()
            log.warning("handing back unfinished tasks", tasks=list(self.pool.leases()))
            await self.pool.abort()
        halt_loops.set()
        await asyncio.gather(*loops)
        await self.pool.close()
        with contextlib.suppress(BackendUnavailable):
            await self.backend.remove_worker(self.info.id)
        log.info("worker stopped", worker_id=self.info.id, clean=clean)
        return clean
