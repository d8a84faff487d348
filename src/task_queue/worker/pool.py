"""Runs tasks: up to WORKER_COUNT at once in one event loop.

The pool leases up to WORKER_PREFETCH tasks beyond its free slots and keeps the
unstarted ones in a buffer, in dequeue (priority) order, so a freed slot starts
its next task without a round trip to the backend; the buffer is refilled when
it runs low. Buffered tasks hold a lease like running ones (the heartbeat
extends it), so on stop they are handed back at once rather than left to expire.

Each handler runs under its timeout; its outcome becomes a transition of the
task's state machine, stored with the lease token. A slot is freed as soon as
the handler returns; the acknowledgement is written afterwards, so a SQLite
backend commits the acknowledgements and the next dequeue together.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import math
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import orjson

from task_queue.backends.base import (
    Backend,
    IdleWorker,
    LeaseReport,
    WorkerInfo,
    reconnect_pause,
)
from task_queue.config import Settings
from task_queue.errors import (
    BackendUnavailable,
    LeaseLost,
    PermanentError,
    Retry,
    UnknownTaskType,
)
from task_queue.logs import get_logger
from task_queue.metrics import Metrics
from task_queue.registry import Registry, TaskContext
from task_queue.task import DEFAULT_QUEUE, Task, TaskStatus

log = get_logger("task_queue.worker")

IDLE_POLL_SECONDS = 1.0
HTTP_TIMEOUT_SECONDS = 30.0
PROGRESS_INTERVAL = 0.5
ACK_ATTEMPTS = 8
TIMER_RESOLUTION = 0.001


class Interrupt(enum.Enum):
    """Why a running handler was cancelled: decides what is stored instead of its result."""

    CANCELLED = "cancelled"
    LEASE_LOST = "lease lost"
    SHUTDOWN = "shutdown"
    TIMED_OUT = "timed out"


class WorkerPool:
    def __init__(
        self,
        backend: Backend,
        registry: Registry,
        settings: Settings,
        *,
        worker_id: str,
        queues: Sequence[str],
        metrics: Metrics | None = None,
    ) -> None:
        self.backend = backend
        self.registry = registry
        self.settings = settings
        self.worker_id = worker_id
        self.queues = list(queues)
        self.capacity = settings.worker_count
        self.prefetch = settings.worker_prefetch
        self.lease_seconds = settings.lease_seconds
        self.processed = 0
        self.failed = 0
        self.metrics = metrics or Metrics()
        # Zero series for every known type, so a dashboard's rate() has a line before
        # the first failure rather than no data.
        for name in registry.names():
            for queue in self.queues or [DEFAULT_QUEUE]:
                self.metrics.for_task(name, queue)
        self._clock = backend.clock
        self._threads = ThreadPoolExecutor(self.capacity, thread_name_prefix="task-queue-handler")
        self._held: dict[str, str] = {}  # every task this pool holds a lease on: id -> token
        self._buffer: dict[str, Task] = {}  # leased, not started; insertion = dequeue order
        # When each buffered task's lease runs out at the earliest: the time the pool
        # asked for it (dequeue or heartbeat) plus LEASE_SECONDS.
        self._lease_until: dict[str, float] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._interrupts: dict[str, Interrupt] = {}
        self._progress: dict[str, ProgressReporter] = {}  # running tasks whose handler may report
        # A timeout is one more reason to interrupt a handler.
        self._deadlines = _Deadlines(functools.partial(self._interrupt, reason=Interrupt.TIMED_OUT))
        self._executions: set[asyncio.Task[None]] = set()  # handlers, acks and hand-backs
        self._wake = asyncio.Event()  # a slot or buffer place freed, or stop() was called
        self._waiting = False  # in wait_for_work
        self._ending: asyncio.Task[None] | None = None  # stop()'s end of that wait
        self._stopping = asyncio.Event()
        # Redirects are not followed: a URL checked as public could redirect inward.
        self.http = httpx.AsyncClient(follow_redirects=False, timeout=HTTP_TIMEOUT_SECONDS)

    def leases(self) -> dict[str, str]:
        """Every lease the pool holds, buffered tasks included, for the heartbeat to extend."""
        return dict(self._held)

    def describe(self, info: WorkerInfo) -> None:
        """Fill in the worker record; buffered tasks are not running, so they are not listed."""
        info.current_tasks = list(self._running)
        info.state = "stopping" if self._stopping.is_set() else "busy" if self._running else "idle"
        info.processed = self.processed
        info.failed = self.failed

    async def run(self) -> None:
        """Take and start tasks until stop() is called; then hand back the buffered ones."""
        failures = 0
        # A lone task handed over while idle means the queue is quiet: wait again at
        # once, since a backend that hands tasks over takes what is ready as it waits.
        quiet = False
        while not self._stopping.is_set():
            room = self.capacity + self.prefetch - len(self._running) - len(self._buffer)
            # Refill once the buffer is down to half; with free slots it is empty anyway.
            if room <= 0 or len(self._buffer) > self.prefetch // 2:
                quiet = False
                await self._until(self._wake)
                self._wake.clear()
                continue
            asked_at = self._clock.now()
            try:
                tasks: list[Task] = []
                if not quiet:
                    tasks = await self.backend.dequeue(
                        self.queues,
                        room,
                        worker_id=self.worker_id,
                        lease_seconds=self.lease_seconds,
                        idle=not self._running,
                    )
                quiet = False
                if not tasks:
                    tasks = await self._idle(room)
                    quiet = len(tasks) == 1
            except BackendUnavailable as exc:
                failures += 1
                pause = reconnect_pause(failures)
                log.warning("backend unavailable, will retry", error=str(exc), retry_in=pause)
                await self._until(self._stopping, pause)
                continue
            failures = 0
            self._take(tasks, asked_at)
            if self._start_buffered():
                # Let the handlers just started begin before the next dequeue or park
                # is built and sent: a handed task starts a send's time sooner.
                await asyncio.sleep(0)
        await (self._ending or self._end_waiting())
        await self._hand_back_buffer()

    def _take(self, tasks: Sequence[Task], asked_at: float) -> None:
        """Buffer tasks leased to the pool; their lease runs at least until asked_at + lease."""
        for task in tasks:
            self._held[task.id] = task.lease_token or ""
            self._buffer[task.id] = task
            self._lease_until[task.id] = asked_at + self.lease_seconds

    async def _until(self, event: asyncio.Event, timeout: float | None = None) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    async def _idle(self, room: int) -> list[Task]:
        """Wait for work; the tasks the backend handed over meanwhile (leased to the pool).

        Awaited in place: as a task of its own raced against the stop event, a
        wait cost each handed task two more event-loop turns on its way to its
        handler, about 20 µs of a 0.7 ms submit-to-start on the 2-core VM. stop()
        ends a wait through the backend instead (_end_waiting), so a wait is never
        cut off mid-reply and what it was handed is taken.

        A wait lasts at most half a lease: the pool reckons a handed task's lease
        from before the wait (run()'s asked_at), so a task handed at the end of a
        wait as long as the lease would look expired and be handed back.
        """
        self._waiting = True
        try:
            return await self.backend.wait_for_work(
                min(IDLE_POLL_SECONDS, self.lease_seconds / 2),
                IdleWorker(self.worker_id, self.queues, room, self.lease_seconds),
            )
        finally:
            self._waiting = False

    async def _end_waiting(self) -> None:
        """Tell the backend the pool takes no more tasks, which ends a wait in progress,
        and buffer (to hand them back) those it was handed meanwhile."""
        now = self._clock.now()
        try:
            self._take(await self.backend.stop_waiting(self.worker_id), now)
        except BackendUnavailable as exc:
            log.warning("cannot stop waiting: tasks handed now run after a lease", error=str(exc))

    def stop(self) -> None:
        """Take and start no new tasks; running ones go on, run() hands back the buffered ones."""
        self._stopping.set()
        self._wake.set()  # a pool waiting for a free slot hears it too
        if self._waiting and self._ending is None:
            self._ending = asyncio.create_task(self._end_waiting())

    async def drain(self, timeout: float) -> bool:
        """Wait up to `timeout` for running tasks and their acknowledgements; True if all done."""
        if not self._executions:
            return True
        _, pending = await asyncio.wait(set(self._executions), timeout=timeout)
        return not pending

    async def abort(self) -> None:
        """Stop every running handler and hand its task back to the queue, unfinished."""
        await self._hand_back_buffer()  # run() has done so, unless it was cut short
        for task_id in list(self._running):
            self._interrupt(task_id, Interrupt.SHUTDOWN)
        if self._executions:
            await asyncio.wait(set(self._executions), timeout=5.0)

    async def close(self) -> None:
        """Release what the pool holds for its handlers; after drain() or abort()."""
        await self.http.aclose()
        self._threads.shutdown(wait=False, cancel_futures=True)

    def apply(self, report: LeaseReport, *, renewed_at: float | None = None) -> None:
        """Act on a heartbeat's report: stop tasks whose lease is gone or that were cancelled.

        A buffered task never starts: one whose lease is lost belongs to someone
        else now and is dropped; a cancelled one is stored as cancelled. The
        heartbeat passes `renewed_at`, when it read leases(), so the pool knows
        how long its buffered tasks stay leased.
        """
        for task_id in report.lost:
            if self._unbuffer(task_id) is None:
                self._interrupt(task_id, Interrupt.LEASE_LOST)
            else:
                self._held.pop(task_id, None)
                log.warning("lease lost before the task started: dropped", task_id=task_id)
        for task_id in report.cancel_requested:
            task = self._unbuffer(task_id)
            if task is None:
                self._interrupt(task_id, Interrupt.CANCELLED)
            else:
                self._spawn(self._cancel_unstarted(task))
        if renewed_at is not None:
            for task_id, until in self._lease_until.items():
                self._lease_until[task_id] = max(until, renewed_at + self.lease_seconds)
        self._wake.set()

    def _interrupt(self, task_id: str, reason: Interrupt) -> None:
        execution = self._running.get(task_id)
        if execution is not None and task_id not in self._interrupts:
            self._interrupts[task_id] = reason
            execution.cancel()

    def _unbuffer(self, task_id: str) -> Task | None:
        self._lease_until.pop(task_id, None)
        return self._buffer.pop(task_id, None)

    def _start_buffered(self) -> int:
        """Start buffered tasks, oldest first, while slots are free and the pool is not stopping;
        how many started.

        A task whose lease may have run out (a long pause without heartbeats) is
        not started: another worker may hold it already. It is handed back; if
        it was taken over, the backend refuses that and nothing changes.
        """
        now = self._clock.now()
        started = 0
        while self._buffer and len(self._running) < self.capacity and not self._stopping.is_set():
            task = self._buffer[next(iter(self._buffer))]
            if self._lease_until[task.id] <= now:
                log.warning("lease ran out before the task started: handed back", task_id=task.id)
                self._spawn(self._hand_back(task))
            else:
                self._running[task.id] = self._spawn(self._execute(task.began(now)))
                started += 1
            self._unbuffer(task.id)
        return started

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run `work` as a task that drain() and abort() wait for."""
        execution = asyncio.get_running_loop().create_task(work)  # no Python frame between
        self._executions.add(execution)
        execution.add_done_callback(self._executions.discard)
        return execution

    async def _execute(self, task: Task) -> None:
        # The proxy's bound logger, not the proxy: asked for an attribute, the proxy
        # first fails the ordinary lookup, and CPython formats that AttributeError's
        # message (1.3 against 0.3 µs here).
        logs_info = _logs_info(log.bind())
        # At info every task writes lines anyway, and each attribute of the lazy
        # logger costs the same failed lookup: 1.1 against 0.07 µs a line.
        bound = _task_logger(task) if logs_info else _TaskLog(task)
        if logs_info:
            bound.info("task started", queue=task.queue, priority=task.priority)
        started = time.perf_counter()
        try:
            outcome = await self._outcome(task, bound)
            ran = time.perf_counter() - started
        finally:
            self._running.pop(task.id, None)
            self._interrupts.pop(task.id, None)  # asked as the handler ended by itself
            self._start_buffered()
            self._wake.set()
            progress = self._progress.pop(task.id, None)
            if progress is not None:
                progress.stop()
        if outcome is not None and progress is not None and progress.reported:
            outcome = outcome.with_progress(progress.latest)
        if outcome is None:
            self._held.pop(task.id, None)
            bound.warning("task taken over by another worker: its result is dropped")
            return
        if not await self._acknowledge(outcome, task.lease_token or "", bound):
            return
        self._count(outcome, ran)
        completed = outcome.status is TaskStatus.COMPLETED
        if completed and not logs_info:
            # Not even the line's fields: rounding a float to 3 places goes through
            # a correctly rounded decimal conversion, and they were 6% of what a
            # no-op task costs a worker at LOG_LEVEL=warning
            # (benchmarks/worker_instructions.py).
            return
        fields: dict[str, Any] = {
            "status": outcome.status.value,
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
        }
        if outcome.error is not None:
            fields["error"] = outcome.error
        if outcome.status is TaskStatus.RETRYING:
            fields["retry_in"] = round(outcome.run_at - self._clock.now(), 3)
        level = bound.info if completed else bound.warning
        level(f"task {outcome.status.value}", **fields)

    async def _outcome(self, task: Task, bound: Any) -> Task | None:
        """The transition that the handler's result or error calls for (None: lease lost)."""
        try:
            result = await self._call(task, bound)
        except asyncio.CancelledError:
            reason = self._interrupts.pop(task.id, None)
            current = asyncio.current_task()
            if reason is None or current is None:
                raise
            current.uncancel()
            now = self._clock.now()
            if reason is Interrupt.CANCELLED:
                return task.cancelled(now)
            if reason is Interrupt.SHUTDOWN:
                return task.released(now)
            if reason is Interrupt.TIMED_OUT:
                return self._retry_or_fail(
                    task, f"timed out after {task.timeout_seconds:g} s", None
                )
            return None
        except (PermanentError, UnknownTaskType) as exc:
            return task.failed(_describe(exc), self._clock.now())
        except Retry as exc:
            return self._retry_or_fail(task, _describe(exc), exc.delay)
        except Exception as exc:
            return self._retry_or_fail(task, _describe(exc), None)
        return task.completed(result, self._clock.now())

    def _retry_or_fail(self, task: Task, error: str, delay: float | None) -> Task:
        return task.after_failure(
            error,
            self._clock.now(),
            base=self.settings.retry_base_seconds,
            cap=self.settings.retry_max_seconds,
            delay=delay,
        )

    async def _call(self, task: Task, bound: Any) -> Any:
        kind = self.registry.get(task.type)
        payload = kind.validate(task.payload)
        args: tuple[Any, ...] = (payload,)
        if kind.wants_context:
            # Only a handler that takes a context can report progress: the others
            # are spared the reporter, 1.3 µs a task here.
            progress = self._progress[task.id] = ProgressReporter(self.backend, task, bound)
            context = TaskContext(
                task=task,
                settings=self.settings,
                logger=bound,
                http=self.http,
                report_progress=progress,
            )
            args = (payload, context)
        self._deadlines.start(task.id, task.timeout_seconds)
        try:
            if kind.is_async:
                result = await kind.handler(*args)
            else:
                call = functools.partial(kind.handler, *args)
                result = await asyncio.get_running_loop().run_in_executor(self._threads, call)
        finally:
            self._deadlines.stop(task.id)
        if result is not None:
            try:
                orjson.dumps(result)
            except TypeError as exc:
                raise PermanentError(f"handler returned a result that is not JSON: {exc}") from None
        return result

    async def _acknowledge(self, outcome: Task, token: str, bound: Any) -> bool:
        """Store the outcome, True once stored; while the backend is down keep trying."""
        try:
            for attempt in range(ACK_ATTEMPTS):
                try:
                    await self.backend.finish(outcome, token)
                    return True
                except LeaseLost:
                    bound.warning("lease lost before the result was stored: result dropped")
                    return False
                except BackendUnavailable as exc:
                    pause = min(0.1 * 2**attempt, 5.0)
                    bound.warning("cannot store result yet", error=str(exc), retry_in=pause)
                    await asyncio.sleep(pause)
            bound.error("result not stored: the lease will expire and the task run again")
            return False
        finally:
            self._held.pop(outcome.id, None)

    async def _hand_back(self, task: Task) -> None:
        """Back to pending, the attempt not counted; a lease already lost is no one's loss."""
        try:
            await self.backend.finish(task.released(self._clock.now()), task.lease_token or "")
        except LeaseLost:
            pass
        except BackendUnavailable as exc:
            log.warning(
                "cannot hand the task back: it runs again once its lease expires",
                task_id=task.id,
                error=str(exc),
            )
        finally:
            self._held.pop(task.id, None)

    async def _hand_back_buffer(self) -> None:
        tasks = list(self._buffer.values())
        for task in tasks:
            self._unbuffer(task.id)
        if tasks:
            log.info("handing back prefetched tasks", tasks=[task.id for task in tasks])
        await asyncio.gather(*(self._hand_back(task) for task in tasks))

    async def _cancel_unstarted(self, task: Task) -> None:
        """Store a buffered task as cancelled; it never ran, so the attempt does not count."""
        bound = log.bind(task_id=task.id, type=task.type, request_id=task.request_id)
        now = self._clock.now()
        outcome = task.released(now).cancelled(now)
        if await self._acknowledge(outcome, task.lease_token or "", bound):
            bound.info("task cancelled before it started")

    def _count(self, outcome: Task, seconds: float) -> None:
        """Count a run whose handler ended by itself; cancelled or handed back ones are not."""
        counts = self.metrics.for_task(outcome.type, outcome.queue)
        if outcome.status is TaskStatus.COMPLETED:
            counts.completed.count += 1
        elif outcome.status is TaskStatus.RETRYING:
            counts.retried.count += 1
            self.failed += 1
        elif outcome.status is TaskStatus.FAILED:
            counts.failed.count += 1
            self.failed += 1
        else:
            return
        self.processed += 1
        counts.duration.observe(seconds)


class _Deadlines:
    """When each running handler's timeout ends, watched by one timer for the pool.

    A timer per task (call_later, then cancel) cost about 1 µs of a no-op task,
    asyncio.timeout 8; an entry in a dict costs a tenth of that. The timer is
    set for the earliest end: tasks mostly share a timeout, so one that starts
    later ends later and leaves the timer as it is.
    """

    def __init__(self, expire: Callable[[str], None]) -> None:
        self._expire = expire
        self._ends: dict[str, float] = {}  # task id -> loop time its timeout ends
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def start(self, task_id: str, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        at = loop.time() + seconds
        self._ends[task_id] = at
        if at < self._timer_at:
            self._set(loop, at)

    def stop(self, task_id: str) -> None:
        self._ends.pop(task_id, None)

    def _set(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = loop.call_at(at, self._fire), at

    def _fire(self) -> None:
        self._timer, self._timer_at = None, math.inf
        loop = asyncio.get_running_loop()
        # A timer may fire up to a clock tick early (uvloop counts milliseconds).
        now = loop.time() + TIMER_RESOLUTION
        ended = [task_id for task_id, at in self._ends.items() if at <= now]
        for task_id in ended:
            del self._ends[task_id]
            self._expire(task_id)
        if self._ends:
            self._set(loop, min(self._ends.values()))


def _task_logger(task: Task) -> Any:
    """The worker's logger with one task's fields bound."""
    return log.bind(
        task_id=task.id, type=task.type, attempt=task.attempts, request_id=task.request_id
    )


class _TaskLog:
    """_task_logger(task), bound when first used: for a pool that does not log info.

    structlog's bind copies the context: 3% of what a no-op task costs a worker
    (benchmarks/worker_instructions.py), and at LOG_LEVEL=warning a task that
    completes writes no line. Every line that is written, the handler's through
    its context included, carries the fields as before.
    """

    __slots__ = ("_bound", "_task")

    def __init__(self, task: Task) -> None:
        self._task = task
        self._bound: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._bound is None:
            self._bound = _task_logger(self._task)
        return getattr(self._bound, name)


def _logs_info(logger: Any) -> bool:
    """Whether `logger` writes info lines. structlog's filtering and standard-library
    loggers can tell; an application that embeds the pool with another wrapper
    class is taken to write them, so its lines are never lost."""
    try:
        return bool(logger.is_enabled_for(logging.INFO))
    except AttributeError:  # structlog's generic BoundLogger hands the call on, and fails
        return True


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class ProgressReporter:
    """Takes progress from a handler (any thread) and writes the latest value now and then.

    A handler may report on every row it reads; the backend sees one write per
    PROGRESS_INTERVAL at most, and the last value rides with the task's outcome.
    """

    def __init__(self, backend: Backend, task: Task, bound: Any) -> None:
        self._backend = backend
        self._task = task
        self._log = bound
        self._loop = asyncio.get_running_loop()
        self._flush: asyncio.TimerHandle | None = None
        self._writes: set[asyncio.Task[None]] = set()
        self._stopped = False
        self.reported = False
        self.latest: Any = None

    def __call__(self, progress: Any) -> None:
        orjson.dumps(progress)  # refuse what cannot be stored, in the handler's own call
        self.latest = progress
        self.reported = True
        self._loop.call_soon_threadsafe(self._schedule)

    def _schedule(self) -> None:
        if self._flush is None and not self._stopped:
            self._flush = self._loop.call_later(PROGRESS_INTERVAL, self._write)

    def _write(self) -> None:
        self._flush = None
        write = asyncio.create_task(self._store(self.latest))
        self._writes.add(write)
        write.add_done_callback(self._writes.discard)

    async def _store(self, progress: Any) -> None:
        try:
            await self._backend.report_progress(
                self._task.id, self._task.lease_token or "", progress
            )
        except (LeaseLost, BackendUnavailable) as exc:
            self._log.debug("progress not stored", error=str(exc))

    def stop(self) -> None:
        """No more writes: the outcome carries the last value."""
        self._stopped = True
        if self._flush is not None:
            self._flush.cancel()
