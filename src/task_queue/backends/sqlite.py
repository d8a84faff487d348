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
import operator
import random
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any, TypeVar

import orjson

from task_queue._clock import Clock
from task_queue.backends.base import (
    Backend,
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

SCHEMA_VERSION = 2
BUSY_TIMEOUT = 10.0  # seconds a statement waits for another process's write transaction
LOCK_POLL = (0.0005, 0.002)  # first and longest pause between tries for the write lock
LOCK_GAP = 0.0005  # the lock is left free this long between back-to-back groups

_SCHEMA = f"""
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS tasks (
    seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, type TEXT NOT NULL, payload TEXT NOT NULL,
    created_at REAL NOT NULL, run_at REAL NOT NULL, queue TEXT NOT NULL,
    priority INTEGER NOT NULL, status TEXT NOT NULL, attempts INTEGER NOT NULL,
    max_retries INTEGER NOT NULL, timeout_seconds REAL NOT NULL, idempotency_key TEXT,
    request_hash TEXT, result TEXT, error TEXT, started_at REAL, completed_at REAL,
    updated_at REAL NOT NULL, lease_token TEXT, lease_expires_at REAL, worker_id TEXT,
    cancel_requested INTEGER NOT NULL, request_id TEXT, progress TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS tasks_idempotency ON tasks (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_ready ON tasks (queue, priority DESC, run_at)
    WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS tasks_ready_anywhere ON tasks (priority DESC, run_at)
    WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS tasks_delayed ON tasks (run_at)
    WHERE status IN ('scheduled', 'retrying');
CREATE INDEX IF NOT EXISTS tasks_leased ON tasks (lease_expires_at) WHERE status = 'running';
CREATE INDEX IF NOT EXISTS tasks_finished ON tasks (status, completed_at)
    WHERE completed_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS tasks_status ON tasks (status);
CREATE INDEX IF NOT EXISTS tasks_type ON tasks (type);
CREATE INDEX IF NOT EXISTS tasks_queue ON tasks (queue);
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY, hostname TEXT NOT NULL, pid INTEGER NOT NULL, queues TEXT NOT NULL,
    concurrency INTEGER NOT NULL, started_at REAL NOT NULL, heartbeat_interval REAL NOT NULL,
    last_heartbeat REAL NOT NULL, state TEXT NOT NULL, current_tasks TEXT NOT NULL,
    processed INTEGER NOT NULL, failed INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters VALUES ('processed', 0), ('failed', 0);
INSERT OR IGNORE INTO counters
    SELECT 'waiting', COUNT(*) FROM tasks WHERE status IN ('pending', 'scheduled', 'retrying');
PRAGMA user_version = {SCHEMA_VERSION};
COMMIT;
"""

# Columns are named and ordered like the dataclass fields, so rows map straight onto them.
_FIELDS = tuple(f.name for f in dataclasses.fields(Task))
_WORKER_FIELDS = tuple(f.name for f in dataclasses.fields(WorkerInfo))
# What the state machine changes (result first, to encode it by position); the
# other columns are written once, on insert.
_MUTABLE = (
    "result",
    "status",
    "attempts",
    "run_at",
    "error",
    "started_at",
    "completed_at",
    "updated_at",
    "lease_token",
    "lease_expires_at",
    "worker_id",
    "cancel_requested",
    "progress",
)
_ALL, _CHANGES = operator.attrgetter(*_FIELDS), operator.attrgetter(*_MUTABLE, "id")
_PAYLOAD_AT, _RESULT_AT = _FIELDS.index("payload"), _FIELDS.index("result")
_PROGRESS_AT, _CHANGED_PROGRESS_AT = _FIELDS.index("progress"), _MUTABLE.index("progress")
_PRIORITY_AT, _RUN_AT_AT = 1 + _FIELDS.index("priority"), 1 + _FIELDS.index("run_at")

_COLUMNS = f"seq, {', '.join(_FIELDS)}"
_BY_ID = f"SELECT {_COLUMNS} FROM tasks WHERE id = ?"
_LEASED = f"{_BY_ID} AND lease_token = ?"
_BY_KEY = f"SELECT {_COLUMNS} FROM tasks WHERE idempotency_key = ?"
_PENDING = "WHERE status = 'pending'"
_ORDER = "ORDER BY priority DESC, run_at, seq LIMIT ?"
_READY = f"SELECT {_COLUMNS} FROM tasks {_PENDING} AND queue = ? {_ORDER}"
# Without ANALYZE statistics the planner would rather use tasks_status and scan
# every pending, delayed or running task; INDEXED BY pins the partial indexes.
_READY_ANYWHERE = (
    f"SELECT {_COLUMNS} FROM tasks INDEXED BY tasks_ready_anywhere {_PENDING} {_ORDER}"
)
_DELAYED = "tasks INDEXED BY tasks_delayed WHERE status IN ('scheduled', 'retrying')"
_DUE = f"SELECT {_COLUMNS} FROM {_DELAYED} AND run_at <= ?"
_NEXT_DUE = f"SELECT MIN(run_at) FROM {_DELAYED}"
_EXPIRED = (
    f"SELECT {_COLUMNS} FROM tasks INDEXED BY tasks_leased"
    " WHERE status = 'running' AND lease_expires_at <= ? ORDER BY lease_expires_at LIMIT ?"
)
_INSERT = f"INSERT INTO tasks ({', '.join(_FIELDS)}) VALUES ({', '.join('?' * len(_FIELDS))})"
_UPDATE = f"UPDATE tasks SET {', '.join(f'{c} = ?' for c in _MUTABLE)} WHERE id = ?"
_PROGRESS = "UPDATE tasks SET progress = ?, updated_at = ? WHERE id = ? AND lease_token = ?"
_EXTEND = (
    "UPDATE tasks SET lease_expires_at = ? WHERE id = ? AND lease_token = ?"
    " RETURNING cancel_requested"
)
# Kept in step by every write (see _Txn), so the queue bound costs a key lookup, not a
# scan of every waiting task in each group commit.
_STORED_WAITING = "SELECT value FROM counters WHERE name = 'waiting'"
_ADD_TO_COUNTER = "UPDATE counters SET value = value + ? WHERE name = ?"
# One statement, so one snapshot: the answers agree with each other.
_STATS = """
SELECT 'status', status, COUNT(*) FROM tasks GROUP BY status
UNION ALL SELECT 'type', type, COUNT(*) FROM tasks GROUP BY type
UNION ALL SELECT 'counter', name, value FROM counters
UNION ALL SELECT 'counter', 'recent', COUNT(*) FROM tasks
    WHERE status IN ('completed', 'failed') AND completed_at >= ?
"""
_UPSERT_WORKER = (
    f"INSERT OR REPLACE INTO workers ({', '.join(_WORKER_FIELDS)})"
    f" VALUES ({', '.join('?' * len(_WORKER_FIELDS))})"
)


@dataclasses.dataclass
class _Txn:
    """One group commit's transaction, and the counts its writes keep current."""

    conn: sqlite3.Connection
    stored_waiting: int | None = None  # the counter as this group found it, once read
    waiting: int = 0  # how this group changed it
    processed: int = 0
    failed: int = 0
    woke: bool = False

    def make_room(self, adding: int, limit: int) -> None:
        if self.stored_waiting is None:
            self.stored_waiting = int(self.conn.execute(_STORED_WAITING).fetchone()[0])
        now_waiting = self.stored_waiting + self.waiting
        if now_waiting + adding > limit:
            raise QueueFull(f"queue holds {now_waiting} waiting tasks (limit {limit})")

    def insert(self, tasks: Sequence[Task]) -> None:
        self.conn.executemany(_INSERT, [_row(task) for task in tasks])
        self.waiting += len(tasks)
        self.woke |= bool(tasks)

    def store(self, changes: Sequence[tuple[TaskStatus, Task]]) -> None:
        """Write new versions of tasks whose stored status was the paired one."""
        self.conn.executemany(_UPDATE, [_changes(new) for _, new in changes])
        for old, new in changes:
            self.waiting += new.status.is_waiting - old.is_waiting
            if new.status.is_final and not old.is_final and new.status is not TaskStatus.CANCELLED:
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
            self.conn.executemany(_ADD_TO_COUNTER, changed)


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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            if create:
                _create_schema(conn)
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
            txn.woke = False
        else:
            self.commits += 1
        self._settle(outcomes, txn.woke)

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
                "journal_mode": _scalar(conn, "PRAGMA journal_mode"),
                "synchronous": _scalar(conn, "PRAGMA synchronous"),
                "tasks": _scalar(conn, "SELECT COUNT(*) FROM tasks"),
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
        self, queues: Sequence[str], limit: int, *, worker_id: str, lease_seconds: float
    ) -> list[Task]:
        now = self.clock.now()

        def run(txn: _Txn) -> list[Task]:
            _promote(txn, now)
            rows: list[Any] = []
            for name in dict.fromkeys(queues):
                rows += txn.conn.execute(_READY, (name, limit)).fetchall()
            if not queues:
                rows = txn.conn.execute(_READY_ANYWHERE, (limit,)).fetchall()
            rows.sort(key=lambda row: (-row[_PRIORITY_AT], row[_RUN_AT_AT], row[0]))
            taken = [
                _task(row).leased(
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
            rows = txn.conn.execute(_LEASED, (task.id, token)).fetchall()
            if not rows:
                raise LeaseLost(f"task {task.id} is no longer leased with this token")
            stored = _task(rows[0])
            txn.store([(stored.status, task.settled_over(stored))])

        await self._write(run)

    async def report_progress(self, task_id: str, token: str, progress: Any) -> None:
        now, value = self.clock.now(), _json(progress)

        def run(txn: _Txn) -> None:
            cursor = txn.conn.execute(_PROGRESS, (value, now, task_id, token))
            if cursor.rowcount == 0:
                raise LeaseLost(f"task {task_id} is no longer leased with this token")

        await self._write(run)

    async def expired(self, limit: int) -> list[Task]:
        now = self.clock.now()
        rows = await self._read(lambda conn: conn.execute(_EXPIRED, (now, limit)).fetchall())
        return [_task(row) for row in rows]

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
        record = _worker_row(worker)
        held = [(now + lease_seconds, task_id, token) for task_id, token in leases.items()]

        def run(txn: _Txn) -> LeaseReport:
            txn.conn.execute(_UPSERT_WORKER, record)
            lost, cancel = set(), set()
            for params in held:
                rows = txn.conn.execute(_EXTEND, params).fetchall()
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
        sql = f"SELECT {', '.join(_WORKER_FIELDS)} FROM workers"
        rows = await self._read(lambda conn: conn.execute(sql).fetchall())
        now = self.clock.now()
        return [worker for worker in map(_worker, rows) if worker.alive_at(now)]

    async def stats(self) -> QueueStats:
        horizon = self.clock.now() - 60.0
        rows = await self._read(lambda conn: conn.execute(_STATS, (horizon,)).fetchall())
        found: dict[str, dict[str, int]] = {"status": {}, "type": {}, "counter": {}}
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
        )

    async def purge_finished(self, before: float) -> int:
        sql = "DELETE FROM tasks WHERE status IN ('completed', 'cancelled') AND completed_at < ?"
        return await self._write(lambda txn: txn.conn.execute(sql, (before,)).rowcount)

    async def wait_for_work(self, timeout: float) -> None:
        timeout = min(timeout, self.poll_interval)
        next_due = await self._read(lambda conn: _scalar(conn, _NEXT_DUE))
        if next_due is not None:
            timeout = max(0.0, min(timeout, next_due - self.clock.now()))
        with suppress(TimeoutError):
            await asyncio.wait_for(self._work.wait(), timeout)
            self._work.clear()

    async def list_tasks(self, filter: TaskFilter, limit: int, cursor: str | None) -> Page:
        """Last in the class: `list` would otherwise shadow the builtin in later annotations."""
        wanted = {"status": filter.status, "type": filter.type, "queue": filter.queue}
        where = [f"{column} = ?" for column, value in wanted.items() if value is not None]
        params: list[Any] = [str(value) for value in wanted.values() if value is not None]
        if cursor is not None:
            where.append("seq < ?")
            params.append(parse_cursor(cursor))
        condition = f" WHERE {' AND '.join(where)}" if where else ""
        sql = f"SELECT {_COLUMNS} FROM tasks{condition} ORDER BY seq DESC LIMIT ?"
        rows = await self._read(lambda conn: conn.execute(sql, (*params, limit + 1)).fetchall())
        more = len(rows) > limit
        return Page([_task(row) for row in rows[:limit]], str(rows[limit - 1][0]) if more else None)


# Each step brings a file of the version before it up by one.
_MIGRATIONS = {
    1: "ALTER TABLE tasks ADD COLUMN progress TEXT",
}


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
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
        time.sleep(random.uniform(pause / 2, pause))
        pause = min(pause * 2, LOCK_POLL[1])


def _create_schema(conn: sqlite3.Connection) -> None:
    version = _scalar(conn, "PRAGMA user_version")
    if version > SCHEMA_VERSION:
        raise sqlite3.DatabaseError(f"schema version {version} is newer than {SCHEMA_VERSION}")
    if version == 0:
        conn.executescript(_SCHEMA)
        return
    for step in range(version, SCHEMA_VERSION):
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Another process opening the same file may have taken this step already.
            if _scalar(conn, "PRAGMA user_version") == step:
                conn.execute(_MIGRATIONS[step])
                conn.execute(f"PRAGMA user_version = {step + 1}")
            conn.execute("COMMIT")
        except sqlite3.Error:
            conn.execute("ROLLBACK")
            raise


def _promote(txn: _Txn, now: float) -> int:
    due = [_task(row) for row in txn.conn.execute(_DUE, (now,)).fetchall()]
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
        rows = conn.execute(_BY_KEY, (key,)).fetchall()
        if not rows:
            firsts[key] = task
            return None
        first = _task(rows[0])
    if first.request_hash != task.request_hash:
        raise IdempotencyConflict(f"idempotency key {key!r} was used with a different request")
    return Submitted(first, created=False)


def _get(conn: sqlite3.Connection, task_id: str) -> Task:
    rows = conn.execute(_BY_ID, (task_id,)).fetchall()
    if not rows:
        raise TaskNotFound(task_id)
    return _task(rows[0])


def _scalar(conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> Any:
    return conn.execute(sql, params).fetchone()[0]


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def _row(task: Task) -> list[Any]:
    row = list(_ALL(task))  # status binds as its text, cancel_requested as 0 or 1
    row[_PAYLOAD_AT], row[_RESULT_AT] = _json(task.payload), _json(task.result)
    row[_PROGRESS_AT] = _json(task.progress)
    return row


def _changes(task: Task) -> list[Any]:
    row = list(_CHANGES(task))
    row[0], row[_CHANGED_PROGRESS_AT] = _json(task.result), _json(task.progress)
    return row


def _task(row: Sequence[Any]) -> Task:
    values = dict(zip(_FIELDS, row[1:], strict=True))
    values["payload"] = orjson.loads(values["payload"])
    for name in ("result", "progress"):
        values[name] = None if values[name] is None else orjson.loads(values[name])
    values["status"] = TaskStatus(values["status"])
    values["cancel_requested"] = bool(values["cancel_requested"])
    return Task(**values)


def _worker_row(worker: WorkerInfo) -> list[Any]:
    values = dict(zip(_WORKER_FIELDS, dataclasses.astuple(worker), strict=True))
    values["queues"], values["current_tasks"] = _json(worker.queues), _json(worker.current_tasks)
    return list(values.values())


def _worker(row: Sequence[Any]) -> WorkerInfo:
    values = dict(zip(_WORKER_FIELDS, row, strict=True))
    values["queues"] = orjson.loads(values["queues"])
    values["current_tasks"] = orjson.loads(values["current_tasks"])
    return WorkerInfo(**values)
