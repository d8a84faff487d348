"""Prometheus metrics: what the processes count, and what /metrics reads from the backend.

Counters and histograms live in the process that sees the event: submissions and
HTTP requests in API processes, task outcomes in worker processes. When several
processes share a machine (HTTP_WORKERS, `serve`), prometheus-client's
multiprocess mode keeps each process's values in a file under
PROMETHEUS_MULTIPROC_DIR and a scrape sums them; `multiprocess_dir()` sets that
up before any process forks. Queue depth and worker gauges are not counted
here at all: every scrape asks the backend, so they are global, and summing
them over processes would be wrong.

Counting is on the worker's hot path, where a no-op task costs about 50 µs of
Python: a prometheus-client counter plus histogram update costs 5 µs, or 15 µs
in multiprocess mode (a lock and a memory-mapped write per value). So events
are tallied in plain integers and published into prometheus-client once a
second (`publish()`), and on every scrape of the process itself; a scrape of a
sibling process may lag by that second.

prometheus-client picks its value store (in memory or in files) when it is
first imported, from PROMETHEUS_MULTIPROC_DIR; so it is imported only when the
first `Metrics` is built, after `multiprocess_dir()` has run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from bisect import bisect_left
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from task_queue.errors import BackendUnavailable

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Histogram

    from task_queue.backends.base import Backend, QueueStats, WorkerInfo

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
PUBLISH_SECONDS = 1.0
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SCRAPE_TIMEOUT_SECONDS = 2.0
UNMATCHED_ROUTE = "unmatched"  # every path no route serves: 404s must not add label values

# From a no-op task (a millisecond) to a long image or CSV job (ten minutes).
TASK_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
# An API call: sub-millisecond reads up to a 60 s long-poll.
HTTP_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


@contextlib.contextmanager
def multiprocess_dir() -> Iterator[None]:
    """PROMETHEUS_MULTIPROC_DIR for this run and the processes it forks.

    A directory the operator set is used as it is (they wipe it between runs,
    and may share it between an `api` and a `worker` on one machine). Otherwise
    a fresh one is made for this run and removed when it ends, so counters
    never carry over from an earlier run.
    """
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        yield
        return
    made = tempfile.mkdtemp(prefix="task-queue-metrics-")
    os.environ[MULTIPROC_ENV] = made
    creator = os.getpid()
    try:
        yield
    finally:
        # A forked copy leaves through here too, while its siblings still count.
        if os.getpid() == creator:
            del os.environ[MULTIPROC_ENV]
            shutil.rmtree(made, ignore_errors=True)


def process_ended(pid: int) -> None:
    """Drop a finished process's live gauges; its counters stay in the sums."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


class Tally:
    """Events counted in a plain integer until publish() adds them to a counter."""

    __slots__ = ("_child", "count")

    def __init__(self, child: Any) -> None:
        self._child = child
        self.count = 0

    def publish(self) -> None:
        if self.count:
            self._child.inc(self.count)
            self.count = 0


class DurationTally:
    """Observations bucketed in plain integers until publish() adds them to a histogram."""

    __slots__ = ("_bounds", "_child", "buckets", "total")

    def __init__(self, child: Any, bounds: tuple[float, ...]) -> None:
        self._child = child
        self._bounds = bounds
        self.buckets = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        # bisect_left: the first bound >= seconds, as Histogram.observe picks it.
        self.buckets[bisect_left(self._bounds, seconds)] += 1
        self.total += seconds

    def publish(self) -> None:
        # Histogram has no public call to add many observations at once; its
        # per-bucket values (_buckets, non-cumulative, and _sum) are what its
        # observe() adds to, unchanged since prometheus-client 0.4.
        for index, count in enumerate(self.buckets):
            if count:
                self._child._buckets[index].inc(count)
                self.buckets[index] = 0
        if self.total:
            self._child._sum.inc(self.total)
            self.total = 0.0


class TaskCounts:
    """One (type, queue)'s tallies, looked up once per task."""

    __slots__ = ("completed", "duration", "failed", "retried")

    def __init__(self, metrics: Metrics, type: str, queue: str) -> None:
        self.completed = metrics.tally(metrics.tasks_completed.labels(type, queue))
        self.failed = metrics.tally(metrics.tasks_failed.labels(type, queue))
        self.retried = metrics.tally(metrics.tasks_retried.labels(type, queue))
        self.duration = metrics.duration_tally(metrics.task_duration.labels(type), TASK_BUCKETS)


class Metrics:
    """Every family this process writes, and the /metrics text of the whole machine.

    Built once per process (by `service.run`) and handed to the app and the
    worker pool; tests build their own, which then count in memory.
    """

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        # Multiprocess values are read back from the files at scrape time, so
        # the families are registered nowhere; alone, this registry holds them.
        self.registry: CollectorRegistry | None = (
            None if MULTIPROC_ENV in os.environ else CollectorRegistry(auto_describe=True)
        )
        task_labels = ("type", "queue")
        self.tasks_submitted: Counter = Counter(
            "task_queue_tasks_submitted",
            "Tasks created through the HTTP API (an idempotent repeat is not counted).",
            task_labels,
            registry=self.registry,
        )
        self.tasks_completed: Counter = Counter(
            "task_queue_tasks_completed",
            "Task runs that completed.",
            task_labels,
            registry=self.registry,
        )
        self.tasks_failed: Counter = Counter(
            "task_queue_tasks_failed",
            "Tasks that failed for good: retries exhausted or a permanent error.",
            task_labels,
            registry=self.registry,
        )
        self.tasks_retried: Counter = Counter(
            "task_queue_tasks_retried",
            "Task runs that failed and were scheduled to run again.",
            task_labels,
            registry=self.registry,
        )
        self.task_duration: Histogram = Histogram(
            "task_queue_task_duration_seconds",
            "How long a handler ran, for runs that completed, failed or will retry.",
            ("type",),
            buckets=TASK_BUCKETS,
            registry=self.registry,
        )
        self.http_requests: Counter = Counter(
            "task_queue_http_requests",
            "HTTP requests answered, by route template.",
            ("method", "route", "status"),
            registry=self.registry,
        )
        self.http_duration: Histogram = Histogram(
            "task_queue_http_request_duration_seconds",
            "Time from a request's arrival to the end of its response.",
            ("method", "route"),
            buckets=HTTP_BUCKETS,
            registry=self.registry,
        )
        self._tallies: list[Tally | DurationTally] = []
        self._tasks: dict[tuple[str, str], TaskCounts] = {}
        self._submitted: dict[tuple[str, str], Tally] = {}
        self._requests: dict[tuple[str, str, int], tuple[Tally, DurationTally]] = {}

    def tally(self, child: Any) -> Tally:
        tally = Tally(child)
        self._tallies.append(tally)
        return tally

    def duration_tally(self, child: Any, bounds: tuple[float, ...]) -> DurationTally:
        tally = DurationTally(child, bounds)
        self._tallies.append(tally)
        return tally

    def publish(self) -> None:
        """Add what was tallied since the last call to the prometheus-client values."""
        for tally in self._tallies:
            tally.publish()

    async def publish_until(self, stop: asyncio.Event) -> None:
        """Publish every PUBLISH_SECONDS until `stop` is set; the caller publishes once more."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PUBLISH_SECONDS)
            self.publish()

    def for_task(self, type: str, queue: str) -> TaskCounts:
        """The counters of tasks of this type on this queue."""
        key = (type, queue)
        counts = self._tasks.get(key)
        if counts is None:
            counts = self._tasks[key] = TaskCounts(self, type, queue)
        return counts

    def submitted(self, type: str, queue: str) -> None:
        key = (type, queue)
        tally = self._submitted.get(key)
        if tally is None:
            tally = self._submitted[key] = self.tally(self.tasks_submitted.labels(type, queue))
        tally.count += 1

    def request_done(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        tallies = self._requests.get(key)
        if tallies is None:
            tallies = self._requests[key] = (
                self.tally(self.http_requests.labels(method, route, str(status))),
                self.duration_tally(self.http_duration.labels(method, route), HTTP_BUCKETS),
            )
        tallies[0].count += 1
        tallies[1].observe(seconds)

    async def render(self, backend: Backend) -> bytes:
        """The exposition text: this machine's counters, then the backend's gauges."""
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        self.publish()
        if self.registry is None:
            counted = CollectorRegistry()
            MultiProcessCollector(counted)  # type: ignore[no-untyped-call]
        else:
            counted = self.registry
        gauges = CollectorRegistry()
        gauges.register(_BackendGauges(*await _read_backend(backend)))
        # Counting files in the multiprocess directory is disk work: off the event loop.
        text = await asyncio.to_thread(generate_latest, counted)
        return text + generate_latest(gauges)


async def _read_backend(backend: Backend) -> tuple[QueueStats | None, list[WorkerInfo]]:
    """Stats and live workers, or (None, []) when the backend does not answer in time."""
    try:
        async with asyncio.timeout(SCRAPE_TIMEOUT_SECONDS):
            return await backend.stats(), await backend.workers()
    except (TimeoutError, BackendUnavailable):
        return None, []


class _BackendGauges:
    """Gauges read from the backend at scrape time; only backend_up (0) when it is down."""

    def __init__(self, stats: QueueStats | None, workers: list[WorkerInfo]) -> None:
        self.stats = stats
        self.workers = workers

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        from task_queue.task import TaskStatus

        up = GaugeMetricFamily(
            "task_queue_backend_up", "1 when the backend answered this scrape in time, else 0."
        )
        up.add_metric([], 0.0 if self.stats is None else 1.0)
        yield up
        if self.stats is None:
            return
        depth = GaugeMetricFamily(
            "task_queue_queue_depth",
            "Tasks the backend holds, by status (finished ones until the janitor purges them).",
            labels=["status"],
        )
        for status in TaskStatus:
            depth.add_metric([status.value], float(self.stats.by_status.get(status.value, 0)))
        yield depth
        pending = GaugeMetricFamily(
            "task_queue_queue_pending",
            "Pending tasks (ready to run now) per queue, for scaling each queue's workers.",
            labels=["queue"],
        )
        for queue, count in sorted(self.stats.pending_by_queue.items()):
            pending.add_metric([queue], float(count))
        yield pending
        total = GaugeMetricFamily(
            "task_queue_workers", "Live worker processes of every instance sharing the backend."
        )
        total.add_metric([], float(len(self.workers)))
        yield total
        busy = GaugeMetricFamily(
            "task_queue_workers_busy", "Live worker processes running at least one task."
        )
        busy.add_metric([], float(sum(1 for worker in self.workers if worker.current_tasks)))
        yield busy
