"""Dramatiq: `dramatiq --processes 1 --threads 8` (8 threads is its default)."""

from __future__ import annotations

import dramatiq
from _common import REDIS_URL, incr, run_peer, timed
from dramatiq.brokers.redis import RedisBroker

dramatiq.set_broker(RedisBroker(url=REDIS_URL))


@dramatiq.actor
def noop() -> None:
    incr()


if __name__ == "__main__":
    run_peer(
        "dramatiq",
        "dramatiq",
        lambda n: timed(noop.send, n),
        ["dramatiq", "dramatiq_bench", "--processes", "1", "--threads", "8"],
        "1 process, 8 threads, default middleware",
    )
