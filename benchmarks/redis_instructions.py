"""Redis's work per script call, counted rather than timed: instructions under callgrind.

    .venv/bin/python -m benchmarks.redis_instructions [--calls 1000] [--only submit,park]

A script's time on this shared 2-core VM swings by tens of per cent from run to
run; the instructions redis-server executes for it repeat to about 1%. For each
workload this starts `valgrind --tool=callgrind redis-server` on a free port,
makes BASE calls, or BASE + `--calls`, through RedisBackend, shuts the server
down and reads its total: the difference over `--calls` is one call's work, with
start-up, script loading and the workload's set-up cancelled out. Needs valgrind
(Debian's package). The seven workloads take about 30 s.

- submit: a lone submit handed to a parked worker, the path that decides how
  soon a quiet queue starts a task;
- park: dequeue.lua finding nothing and parking the worker, once per idle wait;
- ratelimit: the HTTP rate-limit check, once per request when RATE_LIMIT is set;
- heartbeat: a worker's heartbeat holding no lease;
- batch: per task, submits of 500 at a time (a batched submit);
- drain: per task, submits of 500 at a time, dequeues of 10, and each ten's
  finishes gathered in one tick, as a busy worker sends them;
- crowd: the drain's calls with IN_FLIGHT leases held throughout, as several
  busy workers hold them: what a lease and a finish cost grows with the leases
  in flight while P..leased is small enough to be a listpack (128).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import benchmarks.noop_tasks  # noqa: F401 - registers `noop`
from benchmarks.peers.run import start_redis
from benchmarks.scratch_redis import BATCH
from task_queue.backends.base import WorkerInfo
from task_queue.backends.redis import RedisBackend
from task_queue.logs import configure
from task_queue.task import Task

BASE = 200
LEASE = 30.0
# The submit workload's one park takes this many tasks in every run, so that its
# cost cancels out like the rest of the set-up.
PARK_SLOTS = 20_000
# The crowd workload's leases in flight: five workers of WORKER_COUNT 10, busy.
IN_FLIGHT = 50


async def submit(backend: RedisBackend, calls: int) -> None:
    # One park with a slot for every task, so that each submit is handed over.
    until = repr(time.time() + 3600)
    lease = backend._lease(["default"], PARK_SLOTS, "w", LEASE, parked_until=until)
    await backend._script("dequeue", *lease.args)
    for _ in range(calls):
        await backend.enqueue([Task.new("noop", {"n": 1}, now=time.time())])


async def park(backend: RedisBackend, calls: int) -> None:
    for _ in range(calls):
        lease = backend._lease(["default"], 10, "w", LEASE, parked_until=repr(time.time() + 3))
        await backend._script("dequeue", *lease.args)


async def ratelimit(backend: RedisBackend, calls: int) -> None:
    for i in range(calls):
        await backend.take_token(f"client-{i % 50}", 1000.0, 2000.0)


async def heartbeat(backend: RedisBackend, calls: int) -> None:
    worker = WorkerInfo(
        id="w", hostname="h", pid=1, queues=[], concurrency=10, started_at=time.time()
    )
    for _ in range(calls):
        await backend.heartbeat(worker, {}, LEASE)


async def batch(backend: RedisBackend, tasks: int) -> None:
    for first in range(0, tasks, BATCH):
        now = time.time()
        await backend.enqueue(
            [Task.new("noop", {}, now=now) for _ in range(min(BATCH, tasks - first))]
        )


async def drain(backend: RedisBackend, tasks: int) -> None:
    await batch(backend, tasks)
    for _ in range(0, tasks, 10):
        leased = await backend.dequeue(["default"], 10, worker_id="w", lease_seconds=LEASE)
        now = time.time()
        await asyncio.gather(
            *(backend.finish(t.completed(None, now), t.lease_token or "") for t in leased)
        )


async def crowd(backend: RedisBackend, tasks: int) -> None:
    await batch(backend, tasks + IN_FLIGHT)
    held: list[Task] = []
    for _ in range(0, tasks + IN_FLIGHT, 10):
        held += await backend.dequeue(["default"], 10, worker_id="w", lease_seconds=LEASE)
        if len(held) > IN_FLIGHT:
            done, held = held[:10], held[10:]
            now = time.time()
            await asyncio.gather(
                *(backend.finish(t.completed(None, now), t.lease_token or "") for t in done)
            )


WORKLOADS: dict[str, Callable[[RedisBackend, int], Awaitable[None]]] = {
    "submit": submit,
    "park": park,
    "ratelimit": ratelimit,
    "heartbeat": heartbeat,
    "batch": batch,
    "drain": drain,
    "crowd": crowd,
}


def callgrind(out: Path) -> list[str]:
    """The command that runs a program under callgrind, its counts written to `out`."""
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]


def counted(out: Path) -> int:
    """The instructions a callgrind run wrote to `out`: its program's whole run."""
    found = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.MULTILINE)
    if found is None:
        raise SystemExit(f"no totals in {out}")
    return int(found[1])


def count_module(module: str, *args: str) -> int:
    """Instructions of `python -m module args` under callgrind, from start to exit.

    PYTHONHASHSEED is fixed so that the runs a count subtracts from one another
    lay out their dicts alike.
    """
    with tempfile.TemporaryDirectory(prefix="callgrind-") as scratch:
        out = Path(scratch) / "callgrind.out"
        argv = [*callgrind(out), sys.executable, "-m", module, *args]
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        subprocess.run(argv, check=True, capture_output=True, env=env)
        return counted(out)


async def total(workload: Callable[[RedisBackend, int], Awaitable[None]], calls: int) -> int:
    """Instructions redis-server executed, from start to shutdown, around `calls` calls."""
    with tempfile.TemporaryDirectory(prefix="callgrind-") as scratch:
        out = Path(scratch) / "callgrind.out"
        server, url = start_redis(callgrind(out))
        backend = RedisBackend(url, max_waiting=10**9)
        await backend.open()
        try:
            await workload(backend, calls)
            await backend._client.shutdown(nosave=True)  # callgrind writes its counts
        except BaseException:
            server.kill()  # a workload that failed leaves no count to wait for
            raise
        finally:
            await backend.close()
            server.wait()
        return counted(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--only", default=",".join(WORKLOADS), help="a subset of the workloads")
    args = parser.parse_args()
    if BASE + args.calls > PARK_SLOTS:
        parser.error(f"--calls is at most {PARK_SLOTS - BASE}")
    configure("warning", "text", None)
    print(f"Redis instructions per call (callgrind; {BASE} + {args.calls} calls against {BASE})\n")
    print("| workload | instructions per call |")
    print("|---|---:|")
    for name in args.only.split(","):
        workload = WORKLOADS[name]
        base = asyncio.run(total(workload, BASE))
        more = asyncio.run(total(workload, BASE + args.calls))
        print(f"| {name} | {(more - base) / args.calls:,.0f} |", flush=True)
    version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True)
    print(f"\n{version.stdout.strip()}")


if __name__ == "__main__":
    main()
