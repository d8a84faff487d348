"""How soon a wait for a task answers once the task has ended, on Redis.

    .venv/bin/python -m benchmarks.redis_wait [--tasks 20] [--seconds 0.3]

Starts a throwaway `redis-server` on a free port and one `task-queue worker`
process on it, then, one at a time, submits a `nap` task of `--seconds`
(benchmarks/noop_tasks.py) and waits for it with `AsyncClient.wait`, as `GET
/api/v1/tasks/{id}?wait=S` does. The lateness is the time from the task's
`completed_at` (the worker's clock, the same machine) to the wait's answer:
the median and the worst are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

import benchmarks.noop_tasks  # noqa: F401 - registers `nap`
from benchmarks import ROOT, child_pythonpath
from benchmarks.scratch_redis import scratch_backend
from task_queue.client import AsyncClient, TaskRequest


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=0.3, help="each task's sleep")
    args = parser.parse_args()
    async with scratch_backend(1000) as backend:
        env = {**os.environ, "QUEUE_BACKEND": "redis", "REDIS_URL": backend.url}
        env |= {"LOG_LEVEL": "warning", "LOG_FILE": "", "TASK_MODULES": "benchmarks.noop_tasks"}
        env["PYTHONPATH"] = child_pythonpath()
        binary = Path(sys.executable).with_name("task-queue")
        worker = await asyncio.create_subprocess_exec(str(binary), "worker", env=env, cwd=ROOT)
        client = AsyncClient(backend)
        request = TaskRequest(type="nap", payload={"seconds": args.seconds})
        late: list[float] = []
        try:
            for _ in range(args.tasks):
                [submitted] = await client.submit_requests([request])
                task = await client.wait(submitted.task.id, 30)
                answered = time.time()
                if task.completed_at is None:
                    raise SystemExit(f"task {task.id} is {task.status.value} after 30 s")
                late.append((answered - task.completed_at) * 1000)
        finally:
            worker.terminate()
            await worker.wait()
    print(f"| {args.tasks} tasks of {args.seconds} s | median ms | worst ms |")
    print("|---|---:|---:|")
    median, worst = statistics.median(late), max(late)
    print(f"| wait answered after the task ended | {median:.1f} | {worst:.1f} |")


if __name__ == "__main__":
    asyncio.run(main())
