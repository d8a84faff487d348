"""What the rate limit costs HTTP submit: wrk with RATE_LIMIT=0 (off) and RATE_LIMIT=1000000.

    .venv/bin/python -m benchmarks.rate_limit [--rounds 3] [--seconds 10]
    .venv/bin/python -m benchmarks.rate_limit --in-process [--rounds 30]

At a million requests a second nothing is refused, yet every request pays the
whole cost: the middleware, the bucket (in memory on SQLite; a Lua script on
Redis) and the RateLimit-* headers. The HTTP submit of benchmarks/run.py (one
`task-queue api` process, wrk 50 connections) runs for each backend with the
limit off and on, alternately, round after round, so that a noisy neighbour
slows both sides alike; the table gives every round and the median change,
of requests a second and of the API process's CPU time per request (steadier
than req/s on a shared machine; Redis's own CPU is not in it).
Redis is a throwaway redis-server on a free port, emptied before each run.

`--in-process` leaves uvicorn, wrk and the other processes on the machine out:
the app itself (memory backend) answers 1,000 submits per round, called as
ASGI, the limit off and on alternately; the fastest round of each is the
least disturbed, so the difference of the fastest rounds is the cost.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import time

import redis
from starlette.types import Message

import benchmarks.noop_tasks  # noqa: F401 - registers `noop`
from benchmarks.peers.run import start_redis
from benchmarks.run import http_submit
from task_queue.api.app import create_app
from task_queue.backends.memory import MemoryBackend
from task_queue.client import AsyncClient
from task_queue.config import Settings
from task_queue.logs import configure
from task_queue.metrics import Metrics

MODES = {"off": "0", "on": "1000000"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--in-process", action="store_true", help="the ASGI app alone")
    args = parser.parse_args()
    print(f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"machine: {platform.platform()}, Python {platform.python_version()}")
    if args.in_process:
        asyncio.run(in_process(args.rounds))
        return
    server, url = start_redis()
    try:
        rates: dict[tuple[str, str], list[int]] = {}
        cpus: dict[tuple[str, str], list[int]] = {}
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
                    rate, cpu = result["requests_per_second"], result["cpu_us_per_request"]
                    assert isinstance(rate, int)
                    assert isinstance(cpu, int)
                    rates.setdefault((backend, mode), []).append(rate)
                    cpus.setdefault((backend, mode), []).append(cpu)
                    line = f"{backend} RATE_LIMIT={limit}: {rate} req/s, {cpu} µs CPU/req"
                    print(f"  {line}", flush=True)
    finally:
        server.terminate()
        server.wait()
    print()
    print("| backend | measure | RATE_LIMIT=0 | RATE_LIMIT=1000000 | change of the medians |")
    print("|---|---|---|---|---|")
    for backend in ("sqlite", "redis"):
        for measure, values in (("req/s", rates), ("API CPU µs/request", cpus)):
            off, on = values[(backend, "off")], values[(backend, "on")]
            change = statistics.median(on) / statistics.median(off) - 1
            print(
                f"| {backend} | {measure} | {', '.join(map(str, off))} "
                f"| {', '.join(map(str, on))} | {change:+.1%} |"
            )


async def in_process(rounds: int, submits: int = 1000) -> None:
    configure("warning", "json", None)
    body = b'{"type": "noop", "payload": {"n": 1}}'
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/v1/tasks",
        "raw_path": b"/api/v1/tasks",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8080),
    }

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        # A refused or failed submit would be timed as if it were one.
        if message["type"] == "http.response.start" and message["status"] != 201:
            raise RuntimeError(f"submit answered {message['status']}")

    apps = {}
    for mode, limit in MODES.items():
        backend = MemoryBackend(max_waiting=10**9)
        await backend.open()
        settings = Settings(rate_limit=float(limit))
        apps[mode] = create_app(AsyncClient(backend), settings, Metrics())
    took: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(rounds):
        for mode, app in apps.items():
            started = time.perf_counter()
            for _ in range(submits):
                await app(dict(scope), receive, send)
            took[mode].append((time.perf_counter() - started) / submits * 1e6)
    off, on = min(took["off"]), min(took["on"])
    print(f"fastest round, µs per submit: RATE_LIMIT=0 {off:.1f}, RATE_LIMIT=1000000 {on:.1f}")
    medians = [statistics.median(took[mode]) for mode in MODES]
    print(f"median round: {medians[0]:.1f} and {medians[1]:.1f}")
    print(f"cost: {on - off:.1f} µs per request ({on / off - 1:+.1%})")


if __name__ == "__main__":
    main()
