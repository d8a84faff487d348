"""The client's work per batched submit, counted rather than timed: instructions under callgrind.

    .venv/bin/python -m benchmarks.client_instructions [--batches 20] [--lone 1000]

The other side of benchmarks/redis_instructions.py: there Redis's work per
script call, here the Python process that submits. A batched submit from one
process is bound by that process's CPU once Redis is fast enough, and its time
on this shared VM swings by tens of per cent. This runs a submitter, calls of
500 no-op tasks through AsyncClient against a throwaway redis-server (not under
valgrind), under `valgrind --tool=callgrind` twice: BASE calls, then BASE +
`--batches`. The difference over the extra tasks is one task's work, with the
interpreter's start, the imports and the connection cancelled out. Counts
repeat to about 1%. They leave out the kernel (system calls, page faults), so a
change that trades Python for a system call is not seen whole here. About 2
minutes; PYTHONPATH=<checkout>/src counts another commit.

`--lone N` counts a lone `AsyncClient.submit` instead, the call a quiet queue's
latency starts with: LONE_BASE submits, then LONE_BASE + N, one at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import benchmarks.noop_tasks  # noqa: F401 - registers `noop`
from benchmarks.peers.run import start_redis
from benchmarks.redis_instructions import count_module
from benchmarks.scratch_redis import BATCH
from task_queue.backends.redis import RedisBackend
from task_queue.client import AsyncClient, TaskRequest
from task_queue.logs import configure

BASE = 4
LONE_BASE = 1500


async def submit(url: str, calls: int, lone: bool) -> None:
    configure("warning", "text", None)
    backend = RedisBackend(url, max_waiting=10**9, prefix=os.urandom(8).hex())
    await backend.open()
    client = AsyncClient(backend)
    request = TaskRequest(type="noop")
    for _ in range(calls):
        if lone:
            await client.submit("noop", {"n": 1})
        else:
            await client.submit_requests([request] * BATCH)
    await backend.close()


def total(url: str, calls: int, lone: bool) -> int:
    """Instructions of a submitter process making `calls` calls, from start to exit."""
    mode = "lone" if lone else "batched"
    return count_module("benchmarks.client_instructions", "--submitter", url, str(calls), mode)


def main() -> None:
    if sys.argv[1:2] == ["--submitter"]:
        asyncio.run(submit(sys.argv[2], int(sys.argv[3]), sys.argv[4] == "lone"))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--lone", type=int, default=0, help="count N lone submits instead")
    args = parser.parse_args()
    server, url = start_redis()
    lone = args.lone > 0
    base, calls = (LONE_BASE, args.lone) if lone else (BASE, args.batches)
    try:
        before, more = total(url, base, lone), total(url, base + calls, lone)
    finally:
        server.kill()
    what = "lone submit (callgrind)" if lone else f"batched task (callgrind; calls of {BATCH})"
    per = (more - before) / (calls if lone else calls * BATCH)
    print(f"client instructions per {what}: {per:,.0f}")


if __name__ == "__main__":
    main()
