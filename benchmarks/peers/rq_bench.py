"""RQ: one `rq worker` per worker process (the default Worker forks a child per job).

`rq worker -w rq.worker.SimpleWorker` runs jobs in-process and is much faster, but
the forking worker is RQ's default and documented mode, so that is what is timed.
"""

from __future__ import annotations

from _common import REDIS_URL, incr, paced, record, run_peer, timed
from redis import Redis
from rq import Queue


def noop() -> None:
    incr()


def stamp(submitted: float) -> None:
    record(submitted)


if __name__ == "__main__":
    queue = Queue("bench", connection=Redis.from_url(REDIS_URL))
    run_peer(
        "rq",
        "rq",
        lambda n: timed(lambda: queue.enqueue("rq_bench.noop"), n),
        ["rq", "worker", "--url", REDIS_URL, "--quiet", "bench"],
        "forking per job (SimpleWorker not used)",
        lambda n, rate: paced(lambda t: queue.enqueue("rq_bench.stamp", t), n, rate),
    )
