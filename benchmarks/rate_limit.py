"""What the rate limit costs HTTP submit: wrk with RATE_LIMIT=0 (off) and RATE_LIMIT=1000000.

    .venv/bin/python -m benchmarks.rate_limit [--rounds 3] [--seconds 10]

At a million requests a second nothing is refused, yet every request pays the
whole cost: the middleware, the bucket (in memory on SQLite; a Lua script on
Redis) and the RateLimit-* headers. The HTTP submit of benchmarks/run.py (one
`task-queue api` process, wrk 50 connections) runs for each backend with the
limit off and on, alternately, round after round, so that a noisy neighbour
slows both sides alike; the table gives every round and the median change.
Redis is a throwaway redis-server on a free port, emptied before each run.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import redis

from benchmarks.redis_throughput import start_redis
from benchmarks.run import http_submit

MODES = {"off": "0", "on": "1000000"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    print(f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"machine: {platform.platform()}, Python {platform.python_version()}")
    server, url = start_redis()
    try:
        rates: dict[tuple[str, str], list[int]] = {}
        for _ in range(args.rounds):
            for backend in ("sqlite", "redis"):
                for mode, limit in MODES.items():
                    env = {"RATE_LIMIT": limit}
                    if backend == "redis":
                        redis.Redis.from_url(url).flushall()
                        env["REDIS_URL"] = url
                    result = http_submit(backend, args.seconds, env)
                    if result["refused"]:
                        raise SystemExit(f"{backend} {mode}: {result['refused']} refused")
                    rate = result["requests_per_second"]
                    assert isinstance(rate, int)
                    rates.setdefault((backend, mode), []).append(rate)
                    print(f"  {backend} RATE_LIMIT={limit}: {rate} req/s", flush=True)
    finally:
        server.terminate()
        server.wait()
    print()
    print("| backend | RATE_LIMIT=0 req/s | RATE_LIMIT=1000000 req/s | change of the medians |")
    print("|---|---|---|---|")
    for backend in ("sqlite", "redis"):
        off, on = rates[(backend, "off")], rates[(backend, "on")]
        change = statistics.median(on) / statistics.median(off) - 1
        print(
            f"| {backend} | {', '.join(map(str, off))} | {', '.join(map(str, on))} "
            f"| {change:+.1%} |"
        )


if __name__ == "__main__":
    main()
