"""The SQLite file's layout: schema, migrations, statements, and rows to tasks.

Columns are named and ordered like the dataclass fields, so a row maps
straight onto a Task; the backend (sqlite.py) only decides when to run what.
"""

from __future__ import annotations

import dataclasses
import operator
import sqlite3
from collections.abc import Sequence
from typing import Any

import orjson

from task_queue.backends.base import WorkerInfo
from task_queue.task import Task, TaskStatus

SCHEMA_VERSION = 2

SCHEMA = f"""
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
FIELDS = tuple(f.name for f in dataclasses.fields(Task))
WORKER_FIELDS = tuple(f.name for f in dataclasses.fields(WorkerInfo))
# What the state machine changes (result first, to encode it by position); the
# other columns are written once, on insert.
MUTABLE = (
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
_ALL, _CHANGES = operator.attrgetter(*FIELDS), operator.attrgetter(*MUTABLE, "id")
_PAYLOAD_AT, _RESULT_AT = FIELDS.index("payload"), FIELDS.index("result")
_PROGRESS_AT, _CHANGED_PROGRESS_AT = FIELDS.index("progress"), MUTABLE.index("progress")
PRIORITY_AT, RUN_AT_AT = 1 + FIELDS.index("priority"), 1 + FIELDS.index("run_at")

COLUMNS = f"seq, {', '.join(FIELDS)}"
BY_ID = f"SELECT {COLUMNS} FROM tasks WHERE id = ?"
LEASED = f"{BY_ID} AND lease_token = ?"
BY_KEY = f"SELECT {COLUMNS} FROM tasks WHERE idempotency_key = ?"
_PENDING = "WHERE status = 'pending'"
_ORDER = "ORDER BY priority DESC, run_at, seq LIMIT ?"
READY = f"SELECT {COLUMNS} FROM tasks {_PENDING} AND queue = ? {_ORDER}"
# Without ANALYZE statistics the planner would rather use tasks_status and scan
# every pending, delayed or running task; INDEXED BY pins the partial indexes.
READY_ANYWHERE = f"SELECT {COLUMNS} FROM tasks INDEXED BY tasks_ready_anywhere {_PENDING} {_ORDER}"
_DELAYED = "tasks INDEXED BY tasks_delayed WHERE status IN ('scheduled', 'retrying')"
DUE = f"SELECT {COLUMNS} FROM {_DELAYED} AND run_at <= ?"
NEXT_DUE = f"SELECT MIN(run_at) FROM {_DELAYED}"
EXPIRED = (
    f"SELECT {COLUMNS} FROM tasks INDEXED BY tasks_leased"
    " WHERE status = 'running' AND lease_expires_at <= ? ORDER BY lease_expires_at LIMIT ?"
)
INSERT = f"INSERT INTO tasks ({', '.join(FIELDS)}) VALUES ({', '.join('?' * len(FIELDS))})"
UPDATE = f"UPDATE tasks SET {', '.join(f'{c} = ?' for c in MUTABLE)} WHERE id = ?"
PROGRESS = "UPDATE tasks SET progress = ?, updated_at = ? WHERE id = ? AND lease_token = ?"
EXTEND = (
    "UPDATE tasks SET lease_expires_at = ? WHERE id = ? AND lease_token = ?"
    " RETURNING cancel_requested"
)
# Kept in step by every write (see _Txn), so the queue bound costs a key lookup, not a
# scan of every waiting task in each group commit.
STORED_WAITING = "SELECT value FROM counters WHERE name = 'waiting'"
ADD_TO_COUNTER = "UPDATE counters SET value = value + ? WHERE name = ?"
# One statement, so one snapshot: the answers agree with each other.
STATS = """
SELECT 'status', status, COUNT(*) FROM tasks GROUP BY status
UNION ALL SELECT 'type', type, COUNT(*) FROM tasks GROUP BY type
UNION ALL SELECT 'queue', queue, COUNT(*) FROM tasks WHERE status = 'pending' GROUP BY queue
UNION ALL SELECT 'counter', name, value FROM counters
UNION ALL SELECT 'counter', 'recent', COUNT(*) FROM tasks
    WHERE status IN ('completed', 'failed') AND completed_at >= ?
"""
UPSERT_WORKER = (
    f"INSERT OR REPLACE INTO workers ({', '.join(WORKER_FIELDS)})"
    f" VALUES ({', '.join('?' * len(WORKER_FIELDS))})"
)


# Each step brings a file of the version before it up by one.
MIGRATIONS = {
    1: "ALTER TABLE tasks ADD COLUMN progress TEXT",
}


def create_schema(conn: sqlite3.Connection) -> None:
    version = scalar(conn, "PRAGMA user_version")
    if version > SCHEMA_VERSION:
        raise sqlite3.DatabaseError(f"schema version {version} is newer than {SCHEMA_VERSION}")
    if version == 0:
        conn.executescript(SCHEMA)
        return
    for step in range(version, SCHEMA_VERSION):
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Another process opening the same file may have taken this step already.
            if scalar(conn, "PRAGMA user_version") == step:
                conn.execute(MIGRATIONS[step])
                conn.execute(f"PRAGMA user_version = {step + 1}")
            conn.execute("COMMIT")
        except sqlite3.Error:
            conn.execute("ROLLBACK")
            raise


def scalar(conn: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> Any:
    return conn.execute(sql, params).fetchone()[0]


def json_text(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def task_row(task: Task) -> list[Any]:
    row = list(_ALL(task))  # status binds as its text, cancel_requested as 0 or 1
    row[_PAYLOAD_AT], row[_RESULT_AT] = json_text(task.payload), json_text(task.result)
    row[_PROGRESS_AT] = json_text(task.progress)
    return row


def task_changes(task: Task) -> list[Any]:
    row = list(_CHANGES(task))
    row[0], row[_CHANGED_PROGRESS_AT] = json_text(task.result), json_text(task.progress)
    return row


def task_from_row(row: Sequence[Any]) -> Task:
    values = dict(zip(FIELDS, row[1:], strict=True))
    values["payload"] = orjson.loads(values["payload"])
    for name in ("result", "progress"):
        values[name] = None if values[name] is None else orjson.loads(values[name])
    values["status"] = TaskStatus(values["status"])
    values["cancel_requested"] = bool(values["cancel_requested"])
    return Task(**values)


def worker_row(worker: WorkerInfo) -> list[Any]:
    values = dict(zip(WORKER_FIELDS, dataclasses.astuple(worker), strict=True))
    values["queues"], values["current_tasks"] = (
        json_text(worker.queues),
        json_text(worker.current_tasks),
    )
    return list(values.values())


def worker_from_row(row: Sequence[Any]) -> WorkerInfo:
    values = dict(zip(WORKER_FIELDS, row, strict=True))
    values["queues"] = orjson.loads(values["queues"])
    values["current_tasks"] = orjson.loads(values["current_tasks"])
    return WorkerInfo(**values)
