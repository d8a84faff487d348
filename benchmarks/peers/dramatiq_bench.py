"""Dramatiq: `dramatiq --processes 1 --threads 8` (8 threads is its default) per worker.

Dramatiq's Redis consumer has no blocking wait: after an empty fetch it sleeps an
exponential backoff (5 ms, 10 ms, ...) capped at the worker timeout, 1,000 ms by
default, which put its p99 at ~500 ms at 200 jobs/s. Fast polling here: the cap is
10 ms (env dramatiq_worker_timeout; DRAMATIQ_WORKER_TIMEOUT overrides it).
"""

from __future__ import annotations

import os

import dramatiq
from _common import REDIS_URL, incr, paced, record, run_peer, timed
from dramatiq.brokers.redis import RedisBroker

dramatiq.set_broker(RedisBroker(url=REDIS_URL))
WORKER_TIMEOUT_MS = os.environ.get("DRAMATIQ_WORKER_TIMEOUT", "10")


@dramatiq.actor
def noop() -> None:
    incr()


@dramatiq.actor
def stamp(submitted: float) -> None:
    record(submitted)


if __name__ == "__main__":
    run_peer(
        "dramatiq",
        "dramatiq",
        lambda n: timed(noop.send, n),
        ["dramatiq", "dramatiq_bench", "--processes", "1", "--threads", "8"],
        f"--processes 1 --threads 8, default middleware, idle backoff cap "
        f"{WORKER_TIMEOUT_MS} ms (default 1,000)",
        lambda n, rate: paced(stamp.send, n, rate),
        worker_env={"dramatiq_worker_timeout": WORKER_TIMEOUT_MS},
    )
