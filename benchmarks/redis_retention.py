"""What finished tasks kept for their retention cost Redis: memory, and the purge.

    .venv/bin/python -m benchmarks.redis_retention [--tasks 20000] [--big 200] [--big-kb 500]

Starts a throwaway `redis-server` on a free port. Stores `--tasks` completed
no-op tasks, then `--big` completed tasks whose payload is a `--big-kb` KB
string (a CSV, say), and for each set prints the memory a task takes (INFO
memory's used_memory, before and after) and what purging them all cost: the
time, the script calls, and the longest call as Redis's SLOWLOG saw it (its
threshold set to 1 ms for the run: 0.0 means none took longer). A long call
holds every other client of that Redis: workers, API processes, the dashboard.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import redis

from benchmarks.scratch_redis import finished, scratch_backend
from task_queue.backends.redis import RedisBackend


async def measure(
    backend: RedisBackend, raw: redis.Redis, count: int, payload: dict[str, Any]
) -> str:
    before = int(raw.info("memory")["used_memory"])
    await finished(backend, count, payload=payload)
    per_task = (int(raw.info("memory")["used_memory"]) - before) / count
    raw.config_resetstat()
    raw.slowlog_reset()
    start = time.perf_counter()
    purged = await backend.purge_finished(time.time() + 1)
    took = time.perf_counter() - start
    calls = raw.info("commandstats")["cmdstat_evalsha"]["calls"]
    # Commands a script runs are logged too, each on its own: keep the scripts'.
    logged = [e for e in raw.slowlog_get(-1) if e["command"].startswith(b"EVALSHA")]
    longest = max((e["duration"] / 1000 for e in logged), default=0.0)
    return f"{per_task:,.0f} B | {purged:,} in {took * 1000:,.0f} ms | {calls} | {longest:,.1f} ms"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20_000, help="no-op tasks")
    parser.add_argument("--big", type=int, default=200, help="tasks with a big payload")
    parser.add_argument("--big-kb", type=int, default=500, help="their payload's size")
    args = parser.parse_args()
    async with scratch_backend(args.tasks + args.big) as backend:
        raw = redis.Redis.from_url(backend.url)
        raw.config_set("slowlog-log-slower-than", 1000)  # µs: the calls worth seeing
        raw.config_set("slowlog-max-len", 100_000)
        print("| completed tasks | memory a task | purge | script calls | longest call |")
        print("|---|---:|---:|---:|---:|")
        small = await measure(backend, raw, args.tasks, {})
        print(f"| {args.tasks:,} no-op | {small} |")
        big = await measure(backend, raw, args.big, {"csv": "x" * (args.big_kb * 1000)})
        print(f"| {args.big:,} of {args.big_kb} KB | {big} |")


if __name__ == "__main__":
    asyncio.run(main())
