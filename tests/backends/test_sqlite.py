"""What only the SQLite backend promises: a real file, shared by real processes.

No mocks: every test opens a database file under tmp_path, and the
multi-process test starts a second Python interpreter on the same file.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from task_queue._clock import ManualClock
from task_queue.backends import sqlite as sqlite_backend
from task_queue.backends.base import IdleWorker
from task_queue.backends.sqlite import SQLiteBackend
from task_queue.backends.sqlite_schema import SCHEMA_VERSION
from task_queue.errors import BackendUnavailable, IdempotencyConflict
from task_queue.task import Task, TaskStatus

LEASE = 30.0

# Drains the queue from a second process, after saying it has started taking tasks.
CHILD = """
import asyncio, json, sys
from pathlib import Path
from typing import Any
from task_queue.backends.sqlite import SQLiteBackend

async def main():
    backend = SQLiteBackend(Path(sys.argv[1]), max_waiting=10_000)
    await backend.open()
    taken, announced = [], False
    while batch := await backend.dequeue(["default"], 3, worker_id="child", lease_seconds=30):
        if not announced:
            print("started", flush=True)
            announced = True
        for task in batch:
            await backend.finish(task.completed("child", backend.clock.now()), task.lease_token)
            taken.append(task.id)
    await backend.close()
    print(json.dumps(taken), flush=True)

asyncio.run(main())
"""


def make(clock: ManualClock, **options: Any) -> Task:
    return Task.new("noop", {"n": 1}, now=clock.now(), **options)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "data" / "task-queue.db"


@pytest.fixture
async def sqlite(db: Path, clock: ManualClock) -> AsyncIterator[SQLiteBackend]:
    backend = SQLiteBackend(db, clock=clock, max_waiting=10_000)
    await backend.open()
    try:
        yield backend
    finally:
        await backend.close()


async def drain(backend: SQLiteBackend, worker: str) -> list[str]:
    """Take and complete tasks three at a time until none is left; the ids taken."""
    taken: list[str] = []
    while batch := await backend.dequeue(["default"], 3, worker_id=worker, lease_seconds=LEASE):
        for task in batch:
            done = task.completed(worker, backend.clock.now())
            await backend.finish(done, task.lease_token or "")
            taken.append(task.id)
    return taken


async def test_open_creates_the_directory_and_the_schema(sqlite: SQLiteBackend, db: Path) -> None:
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


async def test_enqueued_task_survives_closing_and_reopening(db: Path, clock: ManualClock) -> None:
    task = make(clock, idempotency_key="k", request_hash="h")
    first = SQLiteBackend(db, clock=clock)
    await first.open()
    await first.enqueue([task])
    await first.close()
    again = SQLiteBackend(db, clock=clock)
    await again.open()
    try:
        assert await again.get(task.id) == task
    finally:
        await again.close()


async def test_file_is_in_wal_mode_with_full_synchronous_writes(
    sqlite: SQLiteBackend, db: Path
) -> None:
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    details = await sqlite.ping()
    assert details["journal_mode"] == "wal"
    assert details["synchronous"] == 2  # FULL: a commit returns once it is on disk


async def test_two_backends_on_one_file_never_share_a_task(
    sqlite: SQLiteBackend, db: Path, clock: ManualClock
) -> None:
    tasks = [make(clock) for _ in range(300)]
    await sqlite.enqueue(tasks)
    other = SQLiteBackend(db, clock=clock)
    await other.open()
    try:
        mine, theirs = await asyncio.gather(drain(sqlite, "a"), drain(other, "b"))
    finally:
        await other.close()
    assert mine
    assert theirs
    assert not set(mine) & set(theirs)
    assert sorted(mine + theirs) == sorted(t.id for t in tasks)


async def test_a_second_process_dequeuing_concurrently_never_shares_a_task(
    sqlite: SQLiteBackend, db: Path, clock: ManualClock
) -> None:
    tasks = [make(clock) for _ in range(600)]
    await sqlite.enqueue(tasks)
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, str(db), stdout=asyncio.subprocess.PIPE
    )
    assert child.stdout is not None
    assert await child.stdout.readline() == b"started\n"
    other = SQLiteBackend(db, clock=clock)
    await other.open()
    try:
        mine, theirs = await asyncio.gather(drain(sqlite, "a"), drain(other, "b"))
    finally:
        await other.close()
    out, _ = await child.communicate()
    assert child.returncode == 0
    children = json.loads(out)
    here = mine + theirs
    assert children
    assert here
    assert not set(here) & set(children)
    assert sorted(here + children) == sorted(t.id for t in tasks)
    stats = await sqlite.stats()
    assert stats.by_status == {TaskStatus.COMPLETED.value: len(tasks)}
    assert stats.processed == len(tasks)


async def test_concurrent_enqueues_share_commits(sqlite: SQLiteBackend, clock: ManualClock) -> None:
    before = sqlite.commits
    calls = 200
    await asyncio.gather(*(sqlite.enqueue([make(clock)]) for _ in range(calls)))
    assert (await sqlite.stats()).waiting == calls
    assert sqlite.commits - before < calls / 2


async def test_a_failing_caller_does_not_undo_the_others_in_its_group(
    sqlite: SQLiteBackend, clock: ManualClock
) -> None:
    await sqlite.enqueue([make(clock, idempotency_key="taken", request_hash="first")])
    good = [make(clock) for _ in range(20)]
    conflicting = make(clock, idempotency_key="taken", request_hash="second")
    batches = [[task] for task in good]
    batches.insert(10, [make(clock), conflicting])
    before = sqlite.commits
    outcomes = await asyncio.gather(*(sqlite.enqueue(b) for b in batches), return_exceptions=True)
    # At most two groups for 21 callers: the failing one in the middle shared its group.
    assert sqlite.commits - before <= 2
    assert isinstance(outcomes.pop(10), IdempotencyConflict)
    assert all(not isinstance(o, BaseException) and o[0].created for o in outcomes)
    for task in good:
        assert (await sqlite.get(task.id)).status is TaskStatus.PENDING
    assert (await sqlite.stats()).waiting == 1 + len(good)


async def test_open_fails_clearly_when_the_file_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    backend = SQLiteBackend(blocker / "task-queue.db")
    with pytest.raises(BackendUnavailable, match="cannot open SQLite database"):
        await backend.open()


async def test_a_write_locked_out_too_long_is_unavailable_and_the_next_one_works(
    db: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_backend, "BUSY_TIMEOUT", 0.05)
    backend = SQLiteBackend(db, clock=clock)
    await backend.open()
    try:
        with closing(sqlite3.connect(db, isolation_level=None)) as intruder:
            intruder.execute("BEGIN IMMEDIATE")  # another process holding the write lock
            with pytest.raises(BackendUnavailable, match="locked"):
                await backend.enqueue([make(clock)])
            intruder.execute("ROLLBACK")
        [submitted] = await backend.enqueue([make(clock)])
        assert (await backend.get(submitted.task.id)).status is TaskStatus.PENDING
    finally:
        await backend.close()


async def test_closed_backend_refuses_writes_and_closes_twice(
    sqlite: SQLiteBackend, clock: ManualClock
) -> None:
    await sqlite.close()
    await sqlite.close()
    with pytest.raises(BackendUnavailable):
        await sqlite.enqueue([make(clock)])


async def test_idle_wait_is_capped_by_the_poll_interval(db: Path, clock: ManualClock) -> None:
    backend = SQLiteBackend(db, clock=clock, poll_interval=0.01)
    await backend.open()
    try:
        # Submits from other processes set no event here; only polling notices them.
        waiting = backend.wait_for_work(3600, IdleWorker("w", [], 1, 30))
        assert await asyncio.wait_for(waiting, timeout=5) == []
    finally:
        await backend.close()


async def test_a_version_1_file_is_migrated_and_keeps_its_tasks(
    db: Path, clock: ManualClock
) -> None:
    old = SQLiteBackend(db, clock=clock)
    await old.open()
    task = make(clock)
    await old.enqueue([task])
    await old.close()
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("ALTER TABLE tasks DROP COLUMN progress")
        conn.execute("PRAGMA user_version = 1")
        conn.commit()

    migrated = SQLiteBackend(db, clock=clock)
    await migrated.open()
    try:
        assert (await migrated.get(task.id)).progress is None
        [leased] = await migrated.dequeue([], 1, worker_id="w", lease_seconds=30)
        await migrated.report_progress(leased.id, leased.lease_token or "", [1, 2])
        assert (await migrated.get(task.id)).progress == [1, 2]
    finally:
        await migrated.close()
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def _open_and_close(path: str, start: Any) -> None:
    start.wait()  # every opener at the same moment

    async def once() -> None:
        backend = SQLiteBackend(Path(path))
        await backend.open()
        await backend.close()

    asyncio.run(once())


def test_processes_opening_a_new_file_at_once_all_succeed(tmp_path: Path) -> None:
    # Creating the schema and switching to WAL need the file to themselves: openers
    # that meet at that moment must wait their turn, not fail ("database is locked").
    context = multiprocessing.get_context("fork")
    for round in range(10):
        path = str(tmp_path / f"new-{round}.db")
        start = context.Barrier(6)
        openers = [context.Process(target=_open_and_close, args=(path, start)) for _ in range(6)]
        for opener in openers:
            opener.start()
        for opener in openers:
            opener.join(30)
        assert [opener.exitcode for opener in openers] == [0] * 6
