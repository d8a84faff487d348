"""task-queue: `task-queue worker` processes on QUEUE_BACKEND=redis, WORKER_COUNT=10.

TQ_WORKER_COUNT in the environment sets another WORKER_COUNT (e.g. 50: an async
no-op with one Redis call lets one process run many at once, as Taskiq's default
of 100 concurrent tasks does); the tables name the value used.

Run with the project venv's python (run.py does): the producer submits through
AsyncClient straight to Redis, one task per call, like the peers' producers; the
jobs run only in the separate `task-queue worker` processes. Idle workers wait on
the backend (a BLPOP on their inbox, filled by the submit itself), not on a
polling sleep. LOG_LEVEL=warning, as the peers run with their logging turned down.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import AsyncIterator

import tq_tasks  # noqa: F401  (registers peer_noop and peer_stamp for the client)
from _common import REDIS_URL, run_async_peer

from task_queue.client import AsyncClient
from task_queue.config import Settings

QUEUE_SIZE = 100_000_000
WORKER_COUNT = int(os.environ.get("TQ_WORKER_COUNT", "10"))


def settings() -> Settings:
    return Settings.load(
        overrides={
            "queue_backend": "redis",
            "redis_url": REDIS_URL,
            "queue_size": QUEUE_SIZE,
            "log_file": "",
        }
    )


@contextlib.asynccontextmanager
async def session() -> AsyncIterator[AsyncClient]:
    client = await AsyncClient.connect(settings())
    yield client
    await client.close()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="peer-tq-") as scratch:
        run_async_peer(
            "task-queue",
            "task-queue",
            session,
            lambda client: client.submit("peer_noop"),
            lambda client, t: client.submit("peer_stamp", {"t": t}),
            ["task-queue", "worker"],
            f"`task-queue worker`, WORKER_COUNT={WORKER_COUNT}, LOG_LEVEL=warning",
            worker_env={
                "QUEUE_BACKEND": "redis",
                "REDIS_URL": REDIS_URL,
                "QUEUE_SIZE": str(QUEUE_SIZE),
                "WORKER_COUNT": str(WORKER_COUNT),
                "LOG_LEVEL": "warning",
                "LOG_FILE": "",
                "DATA_DIR": scratch,
                "TASK_MODULES": "tq_tasks",
            },
        )
