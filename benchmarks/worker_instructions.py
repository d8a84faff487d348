"""A worker's work per task drained, counted rather than timed: instructions under callgrind.

    .venv/bin/python -m benchmarks.worker_instructions [--tasks 4000]

The third count beside benchmarks/redis_instructions.py (Redis's work) and
benchmarks/client_instructions.py (a batched submitter's). A worker pool is
bound by its process's CPU, and in the peers' drain the peers wait on a round
trip per job where ours pipelines: on a slow VM the CPU a task costs our worker
decides how far ahead we are. Timed on this shared VM, that cost swings by tens
of per cent; counted, it repeats to a few instructions in 300,000.

A process submits tasks in calls of 500 no-op tasks through AsyncClient, then
runs a WorkerServer (WORKER_COUNT 10, LOG_LEVEL warning, uvloop as `task-queue
worker` runs) in the same process until every task ran, against a throwaway
redis-server (not under valgrind). It runs under callgrind for BASE tasks and
BASE + `--tasks`, each once with the drain and once without: the drain's
difference less the submits' is the worker's work for `--tasks` tasks, with
the interpreter's start, the imports and the connection cancelled out. It
leaves out the kernel. About 3 minutes; PYTHONPATH=<checkout>/src counts
another commit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import uvloop

from benchmarks.peers.run import start_redis
from benchmarks.redis_instructions import count_module
from benchmarks.scratch_redis import BATCH
from task_queue.backends.redis import RedisBackend
from task_queue.bench import counting_noop
from task_queue.client import AsyncClient, TaskRequest
from task_queue.config import Settings
from task_queue.logs import configure
from task_queue.worker.server import WorkerServer

BASE = 1000
WORKER_COUNT = 10


async def run(url: str, tasks: int, drain: bool) -> None:
    """Submit `tasks` no-op tasks; with `drain`, then run them all in a worker pool."""
    configure("warning", "text", None)
    registry, done = counting_noop(tasks)
    backend = RedisBackend(url, max_waiting=10**9, prefix=os.urandom(8).hex())
    await backend.open()
    client = AsyncClient(backend, registry=registry)
    request = TaskRequest(type="noop")
    for first in range(0, tasks, BATCH):
        await client.submit_requests([request] * min(BATCH, tasks - first))
    if drain:
        overrides = {"worker_count": WORKER_COUNT, "log_level": "warning"}
        server = WorkerServer(backend, registry, Settings.load(overrides=overrides))
        stop, force = asyncio.Event(), asyncio.Event()
        worker = asyncio.create_task(server.run(stop, force))
        await done.wait()
        stop.set()
        await worker
    await backend.close()


def total(url: str, tasks: int, drain: bool) -> int:
    """Instructions of a process submitting `tasks` (and draining them), start to exit."""
    mode = "drain" if drain else "submit"
    return count_module("benchmarks.worker_instructions", "--process", url, str(tasks), mode)


def main() -> None:
    if sys.argv[1:2] == ["--process"]:
        uvloop.run(run(sys.argv[2], int(sys.argv[3]), sys.argv[4] == "drain"))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=4000)
    args = parser.parse_args()
    server, url = start_redis()
    try:
        more = BASE + args.tasks
        drained = total(url, more, True) - total(url, BASE, True)
        submitted = total(url, more, False) - total(url, BASE, False)
    finally:
        server.kill()
    per_task = (drained - submitted) / args.tasks
    print(
        f"worker instructions per task drained (callgrind; WORKER_COUNT {WORKER_COUNT}, "
        f"no-op async handler): {per_task:,.0f}"
    )


if __name__ == "__main__":
    main()
