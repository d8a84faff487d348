"""Celery: one `celery worker` process per worker with the threads pool, 8 threads.

Prefork (Celery's default) would fork child processes; threads keeps it to ONE
process like the other peers. No result backend, results ignored. The Redis
transport waits on BRPOP, so an idle worker takes a new job without polling.
"""

from __future__ import annotations

from _common import REDIS_URL, incr, paced, record, run_peer, timed
from celery import Celery

app = Celery("celery_bench", broker=REDIS_URL)
app.conf.worker_hijack_root_logger = False


@app.task(ignore_result=True)
def noop() -> None:
    incr()


@app.task(ignore_result=True)
def stamp(submitted: float) -> None:
    record(submitted)


WORKER = [
    "celery", "-A", "celery_bench", "worker", "--pool", "threads", "--concurrency", "8",
    "--loglevel", "warning", "--without-gossip", "--without-mingle", "--without-heartbeat",
    "-n", "bench{i}@%h",
]  # fmt: skip

if __name__ == "__main__":
    run_peer(
        "celery",
        "celery",
        lambda n: timed(noop.delay, n),
        WORKER,
        "--pool threads -c 8, no result backend",
        lambda n, rate: paced(stamp.delay, n, rate),
    )
