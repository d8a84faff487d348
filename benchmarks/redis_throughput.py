"""Redis backend throughput: submits through the Python API, and drain by worker processes.

    .venv/bin/python -m benchmarks.redis_throughput [--tasks 20000] [--workers 1,2]
        [--worker-count 10] [--prefetch 0] [--callers 1,2,4]

Starts a throwaway `redis-server --save "" --appendonly no` on a free port
(never the shared 6379) and measures, each on an empty prefix:

1. single submits: 50 coroutines of one AsyncClient, one task per call;
2. batched submits: calls of 500 tasks, one after the other from one coroutine,
   then from two, then four (`--callers`; a big call is a script call of its
   own, so while Redis stores one caller's batch another builds its next: the
   two cores overlap, and with more callers neither side waits for the other);
3. drain: `--tasks` no-op tasks queued first, then N `task-queue worker`
   processes (WORKER_COUNT and WORKER_PREFETCH from the flags, LOG_LEVEL
   warning) run them. As for the peers
   (benchmarks/peers), the rate runs from the first completion to the last,
   so process start-up is left out; the processed counter is polled every 5 ms.

Each row also gives the CPU time of the processes at work (from /proc, so on
Linux), per task and as a share of one core: a process far below 100% spends
the rest waiting on another.

PYTHONPATH=<worktree>/src measures another commit, in the worker processes
too. The VM's speed swings from one minute to the next, so compare commits in
runs that alternate.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import redis

import benchmarks.noop_tasks  # noqa: F401 - registers `noop`
from benchmarks import ROOT, child_pythonpath
from benchmarks.peers.run import start_redis
from task_queue.backends.redis import RedisBackend
from task_queue.client import AsyncClient, TaskRequest
from task_queue.logs import configure

SUBMITTERS = 50
BATCH = 500


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Span:
    """From now on: the rate of tasks done, and the CPU time groups of processes spend."""

    def __init__(self, **groups: list[int]) -> None:
        self._groups = groups
        self._start = {name: self._used(pids) for name, pids in groups.items()}
        self._at = time.perf_counter()

    @staticmethod
    def _used(pids: list[int]) -> float:
        return sum(cpu_seconds(pid) for pid in pids)

    def report(self, tasks: int) -> tuple[float, str]:
        """Tasks per second, and each group's CPU per task and share of one core
        (e.g. `redis 12 µs (80%)`)."""
        elapsed = time.perf_counter() - self._at
        parts = []
        for name, pids in self._groups.items():
            used = self._used(pids) - self._start[name]
            parts.append(f"{name} {used / tasks * 1e6:.0f} µs ({used / elapsed:.0%})")
        return tasks / elapsed, ", ".join(parts)


async def submit_rate(
    url: str, redis_pid: int, prefix: str, tasks: int, *, batch: int, callers: int
) -> tuple[float, str]:
    """`callers` coroutines of one AsyncClient submit `tasks` in calls of `batch` tasks."""
    backend = RedisBackend(url, max_waiting=tasks, prefix=prefix)
    await backend.open()
    client = AsyncClient(backend)
    request = TaskRequest(type="noop")

    async def submitter(share: int) -> None:
        for first in range(0, share, batch):
            await client.submit_requests([request] * min(batch, share - first))

    shares = [tasks // callers + (i < tasks % callers) for i in range(callers)]
    span = Span(client=[os.getpid()], redis=[redis_pid])
    await asyncio.gather(*(submitter(n) for n in shares))
    measured = span.report(tasks)
    await backend.close()
    return measured


async def drain_rate(
    url: str, redis_pid: int, tasks: int, workers: int, args: argparse.Namespace
) -> tuple[float, str]:
    redis.Redis.from_url(url).flushall()  # workers use the default prefix
    backend = RedisBackend(url, max_waiting=tasks)
    await backend.open()
    client = AsyncClient(backend)
    request = TaskRequest(type="noop")
    for first in range(0, tasks, BATCH):
        await client.submit_requests([request] * min(BATCH, tasks - first))
    env = {
        **os.environ,
        "REDIS_URL": url,
        "QUEUE_BACKEND": "redis",
        "TASK_MODULES": "benchmarks.noop_tasks",
        "WORKER_COUNT": str(args.worker_count),
        "WORKER_PREFETCH": str(args.prefetch),
        "QUEUE_SIZE": str(tasks),
        "LOG_LEVEL": "warning",
        "LOG_FILE": "",
        "PYTHONPATH": child_pythonpath(),
    }
    binary = Path(sys.executable).with_name("task-queue")
    procs = [
        await asyncio.create_subprocess_exec(
            str(binary), "worker", env=env, cwd=ROOT, stdout=subprocess.DEVNULL
        )
        for _ in range(workers)
    ]
    try:
        first_count, span = 0, None
        while True:
            done = (await backend.stats()).processed
            if done and span is None:
                first_count = done
                span = Span(workers=[proc.pid for proc in procs], redis=[redis_pid])
            if done >= tasks and span is not None:
                return span.report(done - first_count)
            if any(proc.returncode is not None for proc in procs):
                raise SystemExit("a worker process exited during the drain")
            await asyncio.sleep(0.005)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            await asyncio.wait_for(proc.wait(), 30)
        await backend.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--workers", default="1,2", help="worker process counts to drain with")
    parser.add_argument("--worker-count", type=int, default=10, help="WORKER_COUNT per process")
    parser.add_argument("--prefetch", type=int, default=0, help="WORKER_PREFETCH per process")
    parser.add_argument("--callers", default="1,2,4", help="coroutines submitting batches at once")
    args = parser.parse_args()
    configure("warning", "text", None)
    server, url = start_redis()
    rows: list[tuple[str, tuple[float, str]]] = []
    try:
        single = await submit_rate(
            url, server.pid, "single", args.tasks, batch=1, callers=SUBMITTERS
        )
        rows.append((f"single submits, {SUBMITTERS} coroutines", single))
        for callers in (int(n) for n in args.callers.split(",")):
            batched = await submit_rate(
                url, server.pid, f"batched{callers}", args.tasks, batch=BATCH, callers=callers
            )
            rows.append((f"batched submits, {BATCH} per call, {callers} caller(s)", batched))
        for count in (int(n) for n in args.workers.split(",")):
            drained = await drain_rate(url, server.pid, args.tasks, count, args)
            config = f"WORKER_COUNT {args.worker_count}, WORKER_PREFETCH {args.prefetch}"
            rows.append((f"drain, {count} worker process(es), {config}", drained))
    finally:
        server.terminate()
        server.wait()
    print(
        f"| measurement ({args.tasks:,} no-op tasks) | tasks/s | CPU per task (share of a core) |"
    )
    print("|---|---:|---|")
    for name, (rate, usage) in rows:
        print(f"| {name} | {rate:,.0f} | {usage} |")


if __name__ == "__main__":
    asyncio.run(main())
