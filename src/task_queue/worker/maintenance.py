"""The loops that move tasks no worker is holding: recover, promote, purge.

Each is safe to run in every worker process at once: they act through the
backend's atomic primitives, and a lost race is a LeaseLost, not a double move.
"""

from __future__ import annotations

import asyncio

from task_queue.backends.base import Backend
from task_queue.config import Settings
from task_queue.errors import LeaseLost
from task_queue.logs import get_logger
from task_queue.task import Task
from task_queue.worker.loops import PeriodicLoop

log = get_logger("task_queue.worker")

RECOVER_BATCH = 100


class Recoverer(PeriodicLoop):
    """Gives the tasks of dead workers (expired leases) another attempt, or fails them.

    A task that kills its worker every time still counts an attempt per lease,
    so it ends `failed` after max_retries instead of looping forever.
    """

    def __init__(self, backend: Backend, settings: Settings) -> None:
        self.backend = backend
        self.settings = settings
        self.interval = min(settings.lease_seconds / 2, 5.0)

    async def run_once(self) -> int:
        """Every expired lease, a batch at a time.

        A host that dies with hundreds of tasks leased gets them all back one
        lease later, not a batch per interval: every process's recoverer reads
        the same oldest batch, so batches per interval would not add up.
        A full batch that another process recovered first ends the run. A batch's
        finishes go together, so a backend can store them in one call (Redis's
        batcher, SQLite's group commit) rather than a round trip each.
        """
        recovered = 0
        while True:
            batch = await self.backend.expired(RECOVER_BATCH)
            taken = sum(await asyncio.gather(*(self._recover(task) for task in batch)))
            recovered += taken
            if len(batch) < RECOVER_BATCH or not taken:
                return recovered

    async def _recover(self, task: Task) -> bool:
        error = f"lease expired: worker {task.worker_id} stopped without finishing the task"
        outcome = task.after_failure(
            error,
            self.backend.clock.now(),
            base=self.settings.retry_base_seconds,
            cap=self.settings.retry_max_seconds,
            delay=0.0,
        )
        try:
            await self.backend.finish(outcome, task.lease_token or "")
        except LeaseLost:
            return False
        log.warning(
            "task recovered",
            task_id=task.id,
            type=task.type,
            status=outcome.status.value,
            attempts=outcome.attempts,
            lost_worker=task.worker_id,
        )
        return True


class Scheduler(PeriodicLoop):
    """Turns due scheduled and retrying tasks into pending ones, so their status reads true."""

    interval = 1.0

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    async def run_once(self) -> int:
        return await self.backend.promote_due()


class Janitor(PeriodicLoop):
    """Deletes completed and cancelled tasks older than RESULT_TTL_SECONDS (failed ones
    stay), and the records of workers that died without stopping cleanly."""

    interval = 60.0

    def __init__(self, backend: Backend, settings: Settings) -> None:
        self.backend = backend
        self.ttl = settings.result_ttl_seconds

    async def run_once(self) -> int:
        """How many it deleted: tasks and worker records."""
        purged = await self.backend.purge_finished(self.backend.clock.now() - self.ttl)
        return purged + await self.backend.purge_workers()
