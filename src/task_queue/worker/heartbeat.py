"""Tells the backend this worker lives, and keeps the leases of its tasks fresh."""

from __future__ import annotations

from task_queue.backends.base import Backend, WorkerInfo
from task_queue.worker.loops import PeriodicLoop
from task_queue.worker.pool import WorkerPool


class Heartbeat(PeriodicLoop):
    """Every lease/3 seconds: refresh the worker record and extend every lease it holds.

    A long task is never handed out twice while its worker lives; the report
    says which leases were lost (the pool stops those tasks) and which tasks
    were cancelled from outside.
    """

    def __init__(self, backend: Backend, pool: WorkerPool, info: WorkerInfo) -> None:
        self.backend = backend
        self.pool = pool
        self.info = info
        self.interval = info.heartbeat_interval

    async def run_once(self) -> None:
        self.pool.describe(self.info)
        # Taken before the backend stamps the new expiry, so the pool's estimate errs early.
        renewed_at = self.backend.clock.now()
        report = await self.backend.heartbeat(
            self.info, self.pool.leases(), self.pool.lease_seconds
        )
        self.pool.apply(report, renewed_at=renewed_at)
