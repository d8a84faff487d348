"""Shared plumbing for the peer benchmarks: one Redis counter, one worker subprocess.

Every peer module enqueues N no-op jobs that each INCR `COUNTER`, starts ONE worker
process of its library, and lets `drain` poll the counter until all N are done.
The Redis URL reaches the worker's import of the module through PEER_REDIS_URL.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
COUNTER = "peers:done"
REDIS_URL = os.environ.get("PEER_REDIS_URL", "")

_sync: redis.Redis | None = None
_async: aioredis.Redis | None = None


def incr() -> None:
    """The job body of every sync peer: count one completion."""
    global _sync
    if _sync is None:
        _sync = redis.Redis.from_url(REDIS_URL)
    _sync.incr(COUNTER)


async def aincr() -> None:
    """The job body of every asyncio peer: count one completion."""
    global _async
    if _async is None:
        _async = aioredis.Redis.from_url(REDIS_URL)
    await _async.incr(COUNTER)


def parse_args() -> tuple[int, float]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--timeout", type=float, default=120.0, help="drain budget, seconds")
    args = parser.parse_args()
    if not REDIS_URL:
        parser.error("set PEER_REDIS_URL (run.py does)")
    return args.tasks, args.timeout


def start_worker(argv: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
    """Start the library's worker CLI from .venv-peers, in its own process group."""
    log = Path(tempfile.mkstemp(prefix="peer-worker-", suffix=".log")[1])
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    cmd = [str(BIN / argv[0]), *argv[1:]]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=HERE, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return proc, log


def stop_worker(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Stop the worker we started (and only its process group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def drain(proc: subprocess.Popen[bytes], n: int, timeout: float) -> tuple[float, str]:
    """Poll the counter; rate is measured from the first completion seen (startup excluded).

    On timeout the rate of the completed part is reported, with a note.
    """
    client = redis.Redis.from_url(REDIS_URL)
    started = time.perf_counter()
    deadline = started + timeout
    first: tuple[float, int] | None = None
    done = 0
    while time.perf_counter() < deadline:
        done = int(client.get(COUNTER) or 0)
        now = time.perf_counter()
        if done and first is None:
            first = (now, done)
        if done >= n:
            break
        if proc.poll() is not None:
            return 0.0, f"worker exited with {proc.returncode} after {done}/{n}"
        time.sleep(0.005)
    now = time.perf_counter()
    if first is None:
        return 0.0, f"no job completed within {timeout:.0f}s"
    startup = first[0] - started
    rate = (done - first[1]) / (now - first[0]) if now > first[0] else 0.0
    note = f"worker startup {startup:.1f}s"
    if done < n:
        note += f"; TIMED OUT after {timeout:.0f}s with {done}/{n} done (rate of that part)"
    return rate, note


def report(peer: str, dist: str, n: int, enqueue_s: float, drain_rate: float, notes: str) -> None:
    result: dict[str, Any] = {
        "peer": peer,
        "version": version(dist),
        "enqueue_per_second": round(n / enqueue_s),
        "drain_per_second": round(drain_rate) if drain_rate else None,
        "notes": notes,
    }
    print(json.dumps(result))


def timed(enqueue_one: Callable[[], object], n: int) -> float:
    """Seconds to call a blocking enqueue N times, one job per call (no batching)."""
    t0 = time.perf_counter()
    for _ in range(n):
        enqueue_one()
    return time.perf_counter() - t0


def run_peer(
    peer: str,
    dist: str,
    enqueue_all: Callable[[int], float],
    worker_argv: list[str],
    notes: str,
) -> None:
    """Enqueue N (timed by `enqueue_all`), then start one worker and time the drain."""
    n, timeout = parse_args()
    redis.Redis.from_url(REDIS_URL).delete(COUNTER)
    enqueue_s = enqueue_all(n)
    proc, log = start_worker(worker_argv)
    try:
        rate, drain_note = drain(proc, n, timeout)
    finally:
        stop_worker(proc)
    if rate == 0.0:
        drain_note += f" (worker log: {log})"
    else:
        log.unlink(missing_ok=True)
    report(peer, dist, n, enqueue_s, rate, f"{notes}; {drain_note}")
