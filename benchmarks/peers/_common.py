"""Shared plumbing for the peer benchmarks: Redis keys, worker subprocesses, the two modes.

Every `<peer>_bench.py` (and `tq_bench.py` for task-queue) runs one of two modes:

- drain (default): enqueue N no-op jobs that each INCR `COUNTER`, then start
  `--workers` worker processes of the library and poll the counter until all N
  are done. Only the worker processes run jobs; the producer is idle meanwhile.
- latency (`--latency`): start ONE worker process, warm it up, then submit jobs at a
  steady `--rate` per second for `--seconds`; each job carries its submit time
  (time.time(), taken just before the enqueue call) and its handler RPUSHes
  `time.time() - submitted` to `LATENCIES` when it starts. run.py takes percentiles of
  that list (pooled over its rounds).

The Redis URL reaches the worker's import of the module through PEER_REDIS_URL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeVar

import redis
import redis.asyncio as aioredis

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
COUNTER = "peers:done"
LATENCIES = "peers:latency"
REDIS_URL = os.environ.get("PEER_REDIS_URL", "")
T = TypeVar("T")

_sync: redis.Redis | None = None
_async: aioredis.Redis | None = None


def _client() -> redis.Redis:
    global _sync
    if _sync is None:
        _sync = redis.Redis.from_url(REDIS_URL)
    return _sync


def _aclient() -> aioredis.Redis:
    global _async
    if _async is None:
        _async = aioredis.Redis.from_url(REDIS_URL)
    return _async


def incr() -> None:
    """The drain job body of every sync peer: count one completion."""
    _client().incr(COUNTER)


async def aincr() -> None:
    """The drain job body of every asyncio peer: count one completion."""
    await _aclient().incr(COUNTER)


def record(submitted: float) -> None:
    """The latency job body of every sync peer: note how long after its submit it started."""
    started = time.time()
    _client().rpush(LATENCIES, started - submitted)


async def arecord(submitted: float) -> None:
    """The latency job body of every asyncio peer."""
    started = time.time()
    await _aclient().rpush(LATENCIES, started - submitted)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--timeout", type=float, default=120.0, help="drain budget, seconds")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (drain)")
    parser.add_argument("--latency", action="store_true", help="latency mode instead of drain")
    parser.add_argument("--rate", type=float, default=200.0, help="latency: submits per second")
    parser.add_argument("--seconds", type=float, default=5.0, help="latency: seconds of submits")
    args = parser.parse_args()
    if not REDIS_URL:
        parser.error("set PEER_REDIS_URL (run.py does)")
    return args


def start_worker(
    argv: list[str], env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], Path]:
    """Start the library's worker CLI from this venv, in its own process group."""
    log = Path(tempfile.mkstemp(prefix="peer-worker-", suffix=".log")[1])
    # The caller's PYTHONPATH goes after this folder: an A/B run puts a checkout of
    # task-queue there, for its workers as for its producer.
    path = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, **(env or {})}
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


def _exited(procs: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes] | None:
    return next((p for p in procs if p.poll() is not None), None)


def drain(procs: list[subprocess.Popen[bytes]], n: int, timeout: float) -> tuple[float, str]:
    """Poll the counter; rate is measured from the first completion seen (startup excluded).

    On timeout the rate of the completed part is reported, with a note.
    """
    client = _client()
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
        dead = _exited(procs)
        if dead is not None:
            return 0.0, f"worker exited with {dead.returncode} after {done}/{n}"
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


def timed(enqueue_one: Callable[[], object], n: int) -> float:
    """Seconds to call a blocking enqueue N times, one job per call (no batching)."""
    t0 = time.perf_counter()
    for _ in range(n):
        enqueue_one()
    return time.perf_counter() - t0


def paced(send: Callable[[float], object], n: int, rate: float) -> None:
    """Call a blocking `send(time.time())` N times at a steady rate (no catching up in bursts
    beyond what a late schedule forces)."""
    t0 = time.perf_counter()
    for i in range(n):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        send(time.time())


async def apaced(send: Callable[[float], Awaitable[object]], n: int, rate: float) -> None:
    """`paced` for an asyncio enqueue call."""
    t0 = time.perf_counter()
    for i in range(n):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await send(time.time())


def run_async_peer(
    peer: str,
    dist: str,
    session: Callable[[], AbstractAsyncContextManager[T]],
    enqueue: Callable[[T], Awaitable[object]],
    stamp: Callable[[T, float], Awaitable[object]],
    worker_argv: list[str],
    notes: str,
    worker_env: dict[str, str] | None = None,
) -> None:
    """run_peer for a library whose producer is asyncio: `session()` opens and closes
    its client, `enqueue(client)` submits one no-op job, `stamp(client, t)` one job
    that records its start delay."""

    async def enqueue_all(n: int) -> float:
        async with session() as client:
            t0 = time.perf_counter()
            for _ in range(n):
                await enqueue(client)
            return time.perf_counter() - t0

    async def submit_paced(n: int, rate: float) -> None:
        async with session() as client:
            await apaced(lambda t: stamp(client, t), n, rate)

    run_peer(
        peer,
        dist,
        lambda n: asyncio.run(enqueue_all(n)),
        worker_argv,
        notes,
        lambda n, rate: asyncio.run(submit_paced(n, rate)),
        worker_env,
    )


def _wait_latencies(
    procs: list[subprocess.Popen[bytes]], count: int, timeout: float
) -> tuple[int, str]:
    client = _client()
    deadline = time.perf_counter() + timeout
    seen = 0
    while time.perf_counter() < deadline:
        seen = int(client.llen(LATENCIES))
        if seen >= count:
            return seen, ""
        dead = _exited(procs)
        if dead is not None:
            return seen, f"worker exited with {dead.returncode} after {seen}/{count}"
        time.sleep(0.02)
    return seen, f"TIMED OUT: {seen}/{count} started within {timeout:.0f}s"


def latency(
    procs: list[subprocess.Popen[bytes]],
    submit_paced: Callable[[int, float], object],
    rate: float,
    seconds: float,
) -> dict[str, Any]:
    """Warm the worker up, then submit at `rate` for `seconds` and read the start delays."""
    client = _client()
    client.delete(LATENCIES)
    # Warm-up: one job until the worker answers (startup), then half a second of the load.
    submit_paced(1, rate)
    seen, why = _wait_latencies(procs, 1, 60.0)
    if seen < 1:
        return {"error": why or "worker never started a job"}
    submit_paced(int(rate / 2), rate)
    _wait_latencies(procs, 1 + int(rate / 2), 15.0)
    time.sleep(0.5)
    client.delete(LATENCIES)
    count = int(rate * seconds)
    submit_paced(count, rate)
    # A worker that keeps up starts the last job within milliseconds of its submit;
    # one that cannot (RQ) is cut 5 s after the last submit and reported as such.
    seen, why = _wait_latencies(procs, count, 5.0)
    ms = [float(v) * 1000 for v in client.lrange(LATENCIES, 0, -1)]
    if not ms:
        return {"error": why or "no job started"}
    # run.py turns the delays of every round into percentiles
    return {"submitted": count, "started": len(ms), "samples_ms": ms, "error": why}


def run_peer(
    peer: str,
    dist: str,
    enqueue_all: Callable[[int], float],
    worker_argv: list[str],
    notes: str,
    submit_paced: Callable[[int, float], object],
    worker_env: dict[str, str] | None = None,
) -> None:
    """Run the mode the arguments ask for and print one JSON line with the result.

    `worker_argv` may contain "{i}", replaced by the worker's index (unique node names).
    """
    args = parse_args()
    client = _client()
    client.delete(COUNTER, LATENCIES)
    workers = 1 if args.latency else args.workers
    enqueue_s = None if args.latency else enqueue_all(args.tasks)
    started = [
        start_worker([a.replace("{i}", str(i)) for a in worker_argv], worker_env)
        for i in range(workers)
    ]
    procs = [proc for proc, _ in started]
    try:
        if args.latency:
            lat = latency(procs, submit_paced, args.rate, args.seconds)
            failed = bool(lat.get("error")) and "started" not in lat
        else:
            rate, drain_note = drain(procs, args.tasks, args.timeout)
            failed = rate == 0.0
    finally:
        for proc in procs:
            stop_worker(proc)
    logs = [log for _, log in started]
    if failed:
        note = f" (worker log: {', '.join(map(str, logs))})"
    else:
        note = ""
        for log in logs:
            log.unlink(missing_ok=True)
    result: dict[str, Any] = {"peer": peer, "version": version(dist), "workers": workers}
    if args.latency:
        result.update(lat)
        result["notes"] = notes + (f"; {lat['error']}" if lat.get("error") else "") + note
    else:
        assert enqueue_s is not None
        result["enqueue_per_second"] = round(args.tasks / enqueue_s)
        result["drain_per_second"] = round(rate) if rate else None
        result["notes"] = f"{notes}; {drain_note}{note}"
    print(json.dumps(result))
