"""Huey: one `huey_consumer -k thread -w 8` per worker process, RedisHuey, results off.

RedisHuey's storage is blocking by default (BRPOP, 1 s read timeout), so the
consumer's polling delay (-d) only applies after an empty read: no polling sleep
while jobs keep arriving.
"""

from __future__ import annotations

from _common import REDIS_URL, incr, paced, record, run_peer, timed
from huey import RedisHuey

huey = RedisHuey("bench", url=REDIS_URL, results=False)


@huey.task()
def noop() -> None:
    incr()


@huey.task()
def stamp(submitted: float) -> None:
    record(submitted)


if __name__ == "__main__":
    # Huey names a task after its module: enqueue through `huey_bench`, not `__main__`.
    import huey_bench

    run_peer(
        "huey",
        "huey",
        lambda n: timed(huey_bench.noop, n),
        ["huey_consumer", "huey_bench.huey", "-k", "thread", "-w", "8", "-q", "-C"],
        "-k thread -w 8, blocking RedisHuey, results off",
        lambda n, rate: paced(huey_bench.stamp, n, rate),
    )
