"""Dramatiq: `dramatiq --processes 1 --threads 8` (8 threads is its default) per worker."""

from __future__ import annotations

import dramatiq
from _common import REDIS_URL, incr, paced, record, run_peer, timed
from dramatiq.brokers.redis import RedisBroker

dramatiq.set_broker(RedisBroker(url=REDIS_URL))


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
        "--processes 1 --threads 8, default middleware",
        lambda n, rate: paced(stamp.send, n, rate),
    )
