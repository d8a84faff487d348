"""A durable backend in one SQLite file, shared by every process on the machine.

sqlite3 blocks, so nothing runs on the event loop. One writer thread owns the
write connection and commits all the writes queued meanwhile in one transaction
(group commit): with synchronous=FULL each commit waits for an fsync, and
sharing it among concurrent callers is what makes durable throughput possible.
Each write runs in its own savepoint, so one caller's error never undoes
another's, and callers hear back only after COMMIT, once their rows are on
disk. Reads use a second connection on a second thread; under WAL they never
wait for the writer. Submits from other processes reach idle workers here by
polling every `poll_interval` seconds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import random
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any, TypeVar

from task_queue._clock import Clock
from task_queue.backends import sqlite_schema as schema
from task_queue.backends.base import (
    WORKER_EXPIRY_HEARTBEATS,
    Backend,
    IdleWorker,
    LeaseReport,
    Page,
    QueueStats,
    Submitted,
    TaskFilter,
    WorkerInfo,
    parse_cursor,
)
from task_queue.errors import (
    BackendUnavailable,
    IdempotencyConflict,
    InvalidTransition,
    LeaseLost,
    QueueFull,
    TaskNotFound,
)
from task_queue.task import Task, TaskStatus, new_lease_token

T = TypeVar("T")

BUSY_TIMEOUT = 10.0  # seconds a statement waits for another process's write transaction
LOCK_POLL = (0.0005, 0.002)  # first and longest pause between tries for the write lock
LOCK_GAP = 0.0005  # the lock is left free this long between back-to-back groups


@dataclasses.dataclass
class _Txn:
    """One group commit's transaction, and the counts its writes keep current."""

    conn: sqlite3.Connection
    stored_waiting: int | None = None  # the counter as this group found it, once read
    waiting: int = 0  # how this group changed it
    processed: int = 0
    failed: int = 0
    woke: bool = False
    # Tasks made final, whose waits wake once committed; a tuple, so that a failed
    # op's rollback of vars(txn) takes back its own.
    finals: tuple[str, ...] = ()

    def make_room(self, adding: int, limit: int) -> None:
        if self.stored_waiting is None:
            self.stored_waiting = int(self.conn.execute(schema.STORED_WAITING).fetchone()[0])
        now_waiting = self.stored_waiting + self.waiting
        if now_waiting + adding > limit:
            raise QueueFull(f"queue holds {now_waiting} waiting tasks (limit {limit})")

    def insert(self, tasks: Sequence[Task]) -> None:
        self.conn.executemany(schema.INSERT, [schema.task_row(task) for task in tasks])
        self.waiting += len(tasks)
        self.woke |= bool(tasks)

    def store(self, changes: Sequence[tuple[TaskStatus, Task]]) -> None:
        """Write new versions of tasks whose stored status was the paired one."""
        self.conn.executemany(schema.UPDATE, [schema.task_changes(new) for _, new in changes])
        for old, new in changes:
            self.waiting += new.status.is_waiting - old.is_waiting
            if new.status.is_final and not old.is_final:
                self.finals = (*self.finals, new.id)
                if new.status is not TaskStatus.CANCELLED:
                    self.processed += 1
                    self.failed += new.status is TaskStatus.FAILED
            self.woke |= new.status.is_waiting

    def flush_counters(self) -> None:
        changed = [
            (change, name)
            for change, name in (
                (self.processed, "processed"),
                (self.failed, "failed"),
                (self.waiting, "waiting"),
            )
            if change
        ]
        if changed:
            self.conn.executemany(schema.ADD_TO_COUNTER, changed)


_Op = tuple[Callable[[_Txn], Any], "asyncio.Future[Any]"]
_Outcome = tuple["asyncio.Future[Any]", Any, BaseException | None]


class SQLiteBackend(Backend):
    """Tasks in a WAL-mode SQLite file, durable and shared by the API and worker processes.

    Bound to the event loop that opened it. `commits` counts the write
    transactions committed, which shows how well concurrent writes are grouped.
    """

    name = "sqlite"

    def __init__(
        self,
        path: Path,
        *,
        clock: Clock | None = None,
        max_waiting: int = 1000,
        poll_interval: float = 0.1,
    ) -> None:
        super().__init__(clock=clock, max_waiting=max_waiting)
        self.path = Path(path)
        self.poll_interval = poll_interval
        self.commits = 0
        self._pending: list[_Op] = []
        self._committer: asyncio.Task[None] | None = None
        self._write_conn: sqlite3.Connection | None = None
        self._read_conn: sqlite3.Connection | None = None
        # One thread each, so a connection is only ever used by one thread at a time.
        self._writer: concurrent.futures.ThreadPoolExecutor | None = None
        self._reader: concurrent.futures.ThreadPoolExecutor | None = None
        self._work = asyncio.Event()

    async def open(self) -> None:
        if self._write_conn is not None:
            return
        loop = asyncio.get_running_loop()
        self._writer = concurrent.futures.ThreadPoolExecutor(1, "sqlite-writer")
        self._reader = concurrent.futures.ThreadPoolExecutor(1, "sqlite-reader")
        try:
            self._write_conn = await loop.run_in_executor(
                self._writer, functools.partial(self._connect, create=True)
            )
            # The write lock is polled by _take_write_lock instead of SQLite's handler.
            self._write_conn.execute("PRAGMA busy_timeout = 0")
            self._read_conn = await loop.run_in_executor(self._reader, self._connect)
        except (OSError, sqlite3.Error) as exc:
            await self.close()
            raise self._cannot_open(exc) from exc

    async def close(self) -> None:
        if self._committer is not None:
            await self._committer  # every accepted write commits first
        loop = asyncio.get_running_loop()
        for pool, conn in ((self._writer, self._write_conn), (self._reader, self._read_conn)):
            if pool is not None:
                if conn is not None:
                    await loop.run_in_executor(pool, conn.close)
                pool.shutdown(wait=False)
        self._writer = self._reader = None
        self._write_conn = self._read_conn = None
        self._work.set()

    def _connect(self, *, create: bool = False) -> sqlite3.Connection:
        """A connection in WAL mode (the schema made or migrated if `create`).

        Two processes opening a new file at once can meet SQLITE_BUSY where the
        busy handler does not wait (switching to WAL needs the file to itself),
        so the whole opening is tried again until BUSY_TIMEOUT.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + BUSY_TIMEOUT
        while True:
            conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = FULL")
                if create:
                    schema.create_schema(conn)
            except sqlite3.OperationalError as exc:
                conn.close()
                if not _busy(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(random.uniform(LOCK_POLL[0], LOCK_POLL[1]))
                continue
            except sqlite3.Error:
                conn.close()
                raise
            return conn

    def _cannot_open(self, exc: Exception) -> BackendUnavailable:
        return BackendUnavailable(f"cannot open SQLite database {self.path}: {exc}")

    def _unavailable(self, exc: sqlite3.Error) -> BackendUnavailable:
        error = BackendUnavailable(f"SQLite database {self.path} is unavailable: {exc}")
        error.__cause__ = exc
        return error

    async def _write(self, run: Callable[[_Txn], T]) -> T:
        if self._write_conn is None:
            raise BackendUnavailable(f"SQLite backend {self.path} is not open")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((run, future))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_groups())
        return await future

    async def _commit_groups(self) -> None:
        """Commit what is pending, a group at a time, until nothing is."""
        while self._pending:
            await self._commit_group()
            if self._pending:
                # Back to back: leave the lock free a moment, so a writer in another
                # process (polling every LOCK_POLL) gets its turn instead of starving.
                await asyncio.sleep(LOCK_GAP)

    async def _commit_group(self) -> None:
        """Run every pending write in one transaction and answer each caller after COMMIT.

        Only BEGIN IMMEDIATE (which waits for other processes' writes) and COMMIT
        (the fsync) leave the event loop: the statements in between are page-cache
        work of microseconds. Run from a thread instead, each statement would
        wait for the busy loop to hand back the GIL, about one loop iteration per
        statement, which made a group of 25 submits take 10 ms instead of 1.
        """
        conn = self._write_conn
        assert conn is not None
        loop = asyncio.get_running_loop()
        txn = _Txn(conn)
        ops: list[_Op] = []
        outcomes: list[_Outcome] = []
        try:
            await loop.run_in_executor(self._writer, _take_write_lock, conn)
            # Writes that arrived while the lock was taken join this group.
            ops, self._pending = self._pending, []
            for run, future in ops:
                counts = dict(vars(txn))
                conn.execute("SAVEPOINT op")
                try:
                    outcomes.append((future, run(txn), None))
                except sqlite3.OperationalError:
                    raise  # the transaction itself is in doubt: fail the whole group
                except Exception as exc:
                    conn.execute("ROLLBACK TO op")
                    vars(txn).update(counts)
                    outcomes.append((future, None, exc))
                conn.execute("RELEASE op")
            txn.flush_counters()
            await loop.run_in_executor(self._writer, conn.execute, "COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            if not ops:
                ops, self._pending = self._pending, []
            outcomes = [(future, None, self._unavailable(exc)) for _, future in ops]
            txn.woke, txn.finals = False, ()
        else:
            self.commits += 1
        self._settle(outcomes, txn.woke)
        self._made_final(txn.finals)

    def _settle(self, outcomes: list[_Outcome], woke: bool) -> None:
        for future, result, error in outcomes:
            if future.done():
                continue
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)
        if woke:
            self._work.set()

    async def _read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        if self._read_conn is None:
            raise BackendUnavailable(f"SQLite backend {self.path} is not open")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._reader, query, self._read_conn)
        except sqlite3.OperationalError as exc:
            raise self._unavailable(exc) from exc

    async def ping(self) -> dict[str, Any]:
        def query(conn: sqlite3.Connection) -> dict[str, Any]:
            return {
                "type": self.name,
                "path": str(self.path),
                "journal_mode": schema.scalar(conn, "PRAGMA journal_mode"),
                "synchronous": schema.scalar(conn, "PRAGMA synchronous"),
                "tasks": schema.scalar(conn, "SELECT COUNT(*) FROM tasks"),
            }

        return await self._read(query)

    async def enqueue(self, tasks: Sequence[Task]) -> list[Submitted]:
        def run(txn: _Txn) -> list[Submitted]:
            firsts: dict[str, Task] = {}
            found = [_already_submitted(txn.conn, task, firsts) for task in tasks]
            fresh = [task for task, existing in zip(tasks, found, strict=True) if existing is None]
            txn.make_room(len(fresh), self.max_waiting)
            txn.insert(fresh)
            return [
                existing or Submitted(task, created=True)
                for task, existing in zip(tasks, found, strict=True)
            ]

        return await self._write(run)

    async def dequeue(
        self,
        queues: Sequence[str],
        limit: int,
        *,
        worker_id: str,
        lease_seconds: float,
        idle: bool = False,
    ) -> list[Task]:
        now = self.clock.now()

        def run(txn: _Txn) -> list[Task]:
            _promote(txn, now)
            rows: list[Any] = []
            for name in dict.fromkeys(queues):
                rows += txn.conn.execute(schema.READY, (name, limit)).fetchall()
            if not queues:
                rows = txn.conn.execute(schema.READY_ANYWHERE, (limit,)).fetchall()
            rows.sort(key=lambda row: (-row[schema.PRIORITY_AT], row[schema.RUN_AT_AT], row[0]))
            taken = [
                schema.task_from_row(row).leased(
                    worker_id=worker_id,
                    token=new_lease_token(),
                    now=now,
                    lease_seconds=lease_seconds,
                )
                for row in rows[:limit]
            ]
            txn.store([(TaskStatus.PENDING, task) for task in taken])
            return taken

        return await self._write(run)

    async def finish(self, task: Task, token: str) -> None:
        def run(txn: _Txn) -> None:
            rows = txn.conn.execute(schema.LEASED, (task.id, token)).fetchall()
            if not rows:
                raise LeaseLost(f"task {task.id} is no longer leased with this token")
            stored = schema.task_from_row(rows[0])
            txn.store([(stored.status, task.settled_over(stored))])

        await self._write(run)

    async def report_progress(self, task_id: str, token: str, progress: Any) -> None:
        now, value = self.clock.now(), schema.json_text(progress)

        def run(txn: _Txn) -> None:
            cursor = txn.conn.execute(schema.PROGRESS, (value, now, task_id, token))
            if cursor.rowcount == 0:
                raise LeaseLost(f"task {task_id} is no longer leased with this token")

        await self._write(run)

    async def expired(self, limit: int) -> list[Task]:
        now = self.clock.now()
        rows = await self._read(lambda conn: conn.execute(schema.EXPIRED, (now, limit)).fetchall())
        return [schema.task_from_row(row) for row in rows]

    async def promote_due(self) -> int:
        now = self.clock.now()
        return await self._write(lambda txn: _promote(txn, now))

    async def get(self, task_id: str) -> Task:
        return await self._read(lambda conn: _get(conn, task_id))

    async def cancel(self, task_id: str) -> Task:
        now = self.clock.now()

        def run(txn: _Txn) -> Task:
            task = _get(txn.conn, task_id)
            if task.status.is_final:
                raise InvalidTransition(f"task {task_id} is {task.status} already")
            running = task.status is TaskStatus.RUNNING
            new = task.cancel_request(now) if running else task.cancelled(now)
            txn.store([(task.status, new)])
            return new

        return await self._write(run)

    async def requeue(self, task_id: str) -> Task:
        now = self.clock.now()

        def run(txn: _Txn) -> Task:
            task = _get(txn.conn, task_id)
            if task.status not in (TaskStatus.FAILED, TaskStatus.CANCELLED):
                raise InvalidTransition(
                    f"only failed or cancelled tasks can be retried: {task.status}"
                )
            txn.make_room(1, self.max_waiting)
            new = task.requeued(now)
            txn.store([(task.status, new)])
            return new

        return await self._write(run)

    async def heartbeat(
        self, worker: WorkerInfo, leases: Mapping[str, str], lease_seconds: float
    ) -> LeaseReport:
        now = self.clock.now()
        worker.last_heartbeat = now
        record = schema.worker_row(worker)
        held = [(now + lease_seconds, task_id, token) for task_id, token in leases.items()]

        def run(txn: _Txn) -> LeaseReport:
            txn.conn.execute(schema.UPSERT_WORKER, record)
            lost, cancel = set(), set()
            for params in held:
                rows = txn.conn.execute(schema.EXTEND, params).fetchall()
                if not rows:
                    lost.add(params[1])
                elif rows[0][0]:
                    cancel.add(params[1])
            return LeaseReport(frozenset(lost), frozenset(cancel))

        return await self._write(run)

    async def remove_worker(self, worker_id: str) -> None:
        def run(txn: _Txn) -> None:
            txn.conn.execute("DELETE FROM workers WHERE id = ?", (worker_id,))

        await self._write(run)

    async def workers(self) -> list[WorkerInfo]:
        sql = f"SELECT {', '.join(schema.WORKER_FIELDS)} FROM workers"
        rows = await self._read(lambda conn: conn.execute(sql).fetchall())
        now = self.clock.now()
        return [worker for worker in map(schema.worker_from_row, rows) if worker.alive_at(now)]

    async def purge_workers(self) -> int:
        now = self.clock.now()

        def run(txn: _Txn) -> int:
            # WorkerInfo.alive_at, negated, in SQL
            sql = "DELETE FROM workers WHERE last_heartbeat < ? - ? * heartbeat_interval"
            return txn.conn.execute(sql, (now, WORKER_EXPIRY_HEARTBEATS)).rowcount

        return await self._write(run)

    async def stats(self) -> QueueStats:
        horizon = self.clock.now() - 60.0
        rows = await self._read(lambda conn: conn.execute(schema.STATS, (horizon,)).fetchall())
        found: dict[str, dict[str, int]] = {"status": {}, "type": {}, "counter": {}, "queue": {}}
        for group, key, count in rows:
            found[group][key] = count
        by_status, counters = found["status"], found["counter"]
        return QueueStats(
            waiting=counters["waiting"],
            by_status=by_status,
            by_type=found["type"],
            processed=counters["processed"],
            failed=counters["failed"],
            finished_last_minute=counters["recent"],
            pending_by_queue=found["queue"],
        )

    async def purge_finished(self, before: float) -> int:
        sql = "DELETE FROM tasks WHERE status IN ('completed', 'cancelled') AND completed_at < ?"
        return await self._write(lambda txn: txn.conn.execute(sql, (before,)).rowcount)

    async def wait_for_work(self, timeout: float, worker: IdleWorker) -> list[Task]:
        timeout = min(timeout, self.poll_interval)
        next_due = await self._read(lambda conn: schema.scalar(conn, schema.NEXT_DUE))
        if next_due is not None:
            timeout = max(0.0, min(timeout, next_due - self.clock.now()))
        with suppress(TimeoutError):
            await asyncio.wait_for(self._work.wait(), timeout)
            self._work.clear()
        return []

    async def stop_waiting(self, worker_id: str) -> list[Task]:
        self._work.set()  # a wake-up for nothing: the waiter returns, the pool stops
        return []

    async def list_tasks(self, filter: TaskFilter, limit: int, cursor: str | None) -> Page:
        """Last in the class: `list` would otherwise shadow the builtin in later annotations."""
        wanted = {"status": filter.status, "type": filter.type, "queue": filter.queue}
        where = [f"{column} = ?" for column, value in wanted.items() if value is not None]
        params: list[Any] = [str(value) for value in wanted.values() if value is not None]
        if cursor is not None:
            where.append("seq < ?")
            params.append(parse_cursor(cursor))
        condition = f" WHERE {' AND '.join(where)}" if where else ""
        sql = f"SELECT {schema.COLUMNS} FROM tasks{condition} ORDER BY seq DESC LIMIT ?"
        rows = await self._read(lambda conn: conn.execute(sql, (*params, limit + 1)).fetchall())
        more = len(rows) > limit
        return Page(
            [schema.task_from_row(row) for row in rows[:limit]],
            str(rows[limit - 1][0]) if more else None,
        )


def _take_write_lock(conn: sqlite3.Connection) -> None:
    """BEGIN IMMEDIATE, tried every millisecond or two until BUSY_TIMEOUT.

    SQLite's own busy handler sleeps longer and longer (up to 100 ms) between
    tries, while a busy writer in another process takes the lock again within
    microseconds of its COMMIT: the waiting process could starve until its
    timeout. Short tries, with the holder's LOCK_GAP, give each process a turn.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT
    pause = LOCK_POLL[0]
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if not _busy(exc) or time.monotonic() > deadline:
                raise
        time.sleep(random.uniform(pause / 2, pause))
        pause = min(pause * 2, LOCK_POLL[1])


def _promote(txn: _Txn, now: float) -> int:
    due = [schema.task_from_row(row) for row in txn.conn.execute(schema.DUE, (now,)).fetchall()]
    txn.store([(task.status, task.promoted(now)) for task in due])
    return len(due)


def _already_submitted(
    conn: sqlite3.Connection, task: Task, firsts: dict[str, Task]
) -> Submitted | None:
    """The task stored (or earlier in this batch) under the same idempotency key, if any."""
    key = task.idempotency_key
    if key is None:
        return None
    first = firsts.get(key)
    if first is None:
        rows = conn.execute(schema.BY_KEY, (key,)).fetchall()
        if not rows:
            firsts[key] = task
            return None
        first = schema.task_from_row(rows[0])
    if first.request_hash != task.request_hash:
        raise IdempotencyConflict(f"idempotency key {key!r} was used with a different request")
    return Submitted(first, created=False)


def _get(conn: sqlite3.Connection, task_id: str) -> Task:
    rows = conn.execute(schema.BY_ID, (task_id,)).fetchall()
    if not rows:
        raise TaskNotFound(task_id)
    return schema.task_from_row(rows[0])


def _busy(exc: sqlite3.OperationalError) -> bool:
    """SQLITE_BUSY, or one of its extended codes (BUSY_RECOVERY, BUSY_SNAPSHOT...)."""
    return exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
