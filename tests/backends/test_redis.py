"""What only the Redis backend has: Lua files, EVALSHA, many connections, the order encoding."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from importlib import resources
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from task_queue import client as client_module
from task_queue._clock import ManualClock
from task_queue.backends import redis as redis_backend_module
from task_queue.backends import redis_codec as codec
from task_queue.backends.base import Page, TaskFilter, WorkerInfo
from task_queue.backends.redis import (
    OWN_CALL_TASKS,
    PARK_SECONDS,
    SCRIPTS,
    RedisBackend,
    load_script,
)
from task_queue.backends.redis_codec import ready_rank
from task_queue.backends.redis_connect import connect
from task_queue.client import AsyncClient
from task_queue.config import Settings
from task_queue.errors import BackendUnavailable, LeaseLost
from task_queue.task import Task, TaskStatus
from task_queue.worker.maintenance import Recoverer
from tests.backends.parking import park
from tests.backends.redis_server import RedisServer
from tests.local import wait_for

LEASE = 30.0


def make(clock: ManualClock, priority: int = 0, **options: object) -> Task:
    return Task.new("noop", {}, now=clock.now(), priority=priority, **options)


@pytest.fixture
def prefix() -> str:
    return f"t-{uuid.uuid4().hex}"


@pytest.fixture
async def redis_backend(
    redis_server: RedisServer, clock: ManualClock, prefix: str
) -> AsyncIterator[RedisBackend]:
    backend = RedisBackend(redis_server.url, clock=clock, max_waiting=10_000, prefix=prefix)
    await backend.open()
    yield backend
    await backend.close()


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


async def calls(raw: aioredis.Redis, command: str = "evalsha") -> int:
    stats = await raw.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def test_every_script_lives_in_a_lua_file_that_documents_the_key_layout() -> None:
    folder = resources.files("task_queue.backends") / "redis_scripts"
    assert "Key layout" in (folder / "lib.lua").read_text()
    for name in SCRIPTS:
        assert (folder / f"{name}.lua").is_file()
        assert load_script(name).endswith((folder / f"{name}.lua").read_text())


def test_a_script_carries_the_helpers_it_reaches_and_no_others() -> None:
    """Redis runs the whole source on every call: a helper carried for nothing is a
    closure made and collected for nothing."""
    lib = (resources.files("task_queue.backends") / "redis_scripts" / "lib.lua").read_text()
    declared = set(re.findall(r"^local function ([a-z_0-9]+)\(", lib, re.MULTILINE))
    for name in SCRIPTS:
        source = load_script(name)
        carried = set(re.findall(r"^local function ([a-z_0-9]+)\(", source, re.MULTILINE))
        code = re.sub(r"--.*", "", source)
        # every helper it names is defined, above the script, once
        named = {n for n in declared if re.search(rf"\b{n}\(", code)}
        assert named <= carried, name
        assert all(source.count(f"local function {n}(") == 1 for n in carried)
    heartbeat, enqueue = load_script("heartbeat"), load_script("enqueue")
    assert "local function feed(" not in heartbeat
    assert "local function feed(" in enqueue  # through wake()
    assert "local function rewrite(" not in enqueue


async def test_scripts_are_loaded_and_reloaded_after_a_script_flush(
    redis_backend: RedisBackend, raw: aioredis.Redis, clock: ManualClock
) -> None:
    await redis_backend.enqueue([make(clock)])
    shas = [redis_backend._scripts[name].sha for name in SCRIPTS]
    assert all(await raw.script_exists(*shas))
    await raw.script_flush()
    # EVALSHA answers NOSCRIPT now; redis-py loads the script again and retries.
    [task] = await redis_backend.dequeue(["default"], 1, worker_id="w", lease_seconds=LEASE)
    assert task.status is TaskStatus.RUNNING
    assert await raw.script_exists(redis_backend._scripts["dequeue"].sha) == [True]


async def test_dequeuers_on_two_connections_never_share_a_task(
    redis_server: RedisServer, redis_backend: RedisBackend, clock: ManualClock, prefix: str
) -> None:
    other = RedisBackend(redis_server.url, clock=clock, max_waiting=10_000, prefix=prefix)
    await other.open()
    try:
        await redis_backend.enqueue([make(clock, i % 11) for i in range(500)])
        batches = await asyncio.gather(
            *(
                backend.dequeue([], 7, worker_id=f"w{i}", lease_seconds=LEASE)
                for i in range(40)
                for backend in (redis_backend, other)
            )
        )
    finally:
        await other.close()
    ids = [task.id for batch in batches for task in batch]
    assert len(ids) == 500
    assert len(set(ids)) == 500


async def test_tasks_submitted_in_the_same_microsecond_keep_their_order(
    redis_backend: RedisBackend, clock: ManualClock
) -> None:
    same_instant = [make(clock, 4) for _ in range(30)]  # the clock does not move
    for task in same_instant:
        await redis_backend.enqueue([task])
    taken = await redis_backend.dequeue(["default"], 30, worker_id="w", lease_seconds=LEASE)
    assert [t.id for t in taken] == [t.id for t in same_instant]


async def test_run_at_orders_within_a_millisecond_and_priority_before_it(
    redis_backend: RedisBackend, clock: ManualClock
) -> None:
    early = make(clock, 2)
    clock.advance(0.0003)
    later = make(clock, 2)
    clock.advance(0.0003)
    urgent = make(clock, 9)
    await redis_backend.enqueue([later, urgent, early])
    taken = await redis_backend.dequeue(["default"], 3, worker_id="w", lease_seconds=LEASE)
    assert [t.id for t in taken] == [urgent.id, early.id, later.id]


async def test_a_batch_is_stored_task_by_task_whatever_runs_it_is_sent_in(
    redis_backend: RedisBackend, raw: aioredis.Redis, clock: ManualClock, prefix: str
) -> None:
    """enqueue.lua takes tasks in a row that share every field but id and JSON as one
    run: here runs of one and of several, each broken by one field alone (type,
    priority, queue, key, run_at)."""

    def other(priority: int, **options: object) -> Task:
        return Task.new("other", {}, now=clock.now(), priority=priority, **options)

    batch = [
        make(clock),
        make(clock),
        other(0),
        other(5),
        other(5),
        other(5, queue="q2"),
        other(5, queue="q2", idempotency_key="k", request_hash="h"),
        other(5, queue="q2", idempotency_key="k2", request_hash="h"),
        other(5, queue="q2", run_at=clock.now() + 60),
        other(5, queue="q2", run_at=clock.now() + 120),
        other(5, queue="q2"),
    ]
    await redis_backend.enqueue(batch)
    assert [await redis_backend.get(t.id) for t in batch] == batch
    # whole as read, though no document holds a null: Task.restore gives them back
    docs = [await raw.hget(f"{{{prefix}}}:task:{t.id}", "d") for t in batch]
    assert not [doc for doc in docs if ":null" in doc]
    delayed = await raw.zrange(f"{{{prefix}}}:delayed", 0, -1, withscores=True)
    assert delayed == [(t.id, codec.moment_score(t.run_at)) for t in batch[8:10]]
    stats = await redis_backend.stats()
    assert stats.by_type == {"noop": 2, "other": 9}
    assert stats.pending_by_queue == {"default": 5, "q2": 4}
    taken = await redis_backend.dequeue(["default", "q2"], 11, worker_id="w", lease_seconds=LEASE)
    assert [t.id for t in taken] == [t.id for t in [*batch[3:8], batch[10], *batch[:3]]]
    [again] = await redis_backend.enqueue([other(5, idempotency_key="k", request_hash="h")])
    assert again.task.id == batch[6].id


async def test_a_task_stored_with_a_bare_seq_by_an_older_version_leaves_its_ready_set(
    redis_backend: RedisBackend, raw: aioredis.Redis, clock: ManualClock, prefix: str
) -> None:
    older, newer = make(clock), make(clock)
    await redis_backend.enqueue([older, newer])
    key = f"{{{prefix}}}:task:{older.id}"
    padded = await raw.hget(key, "seq")
    assert padded == "1".zfill(16)  # the first task stored under this prefix
    await raw.hset(key, "seq", str(int(padded)))  # as enqueue.lua wrote it before padding
    await redis_backend.cancel(older.id)
    assert await raw.zcard(f"{{{prefix}}}:ready:default") == 1
    taken = await redis_backend.dequeue(["default"], 2, worker_id="w", lease_seconds=LEASE)
    assert [t.id for t in taken] == [newer.id]


def test_rank_sorts_as_text_like_priority_then_run_at() -> None:
    ranks = [ready_rank(10, 5.0), ready_rank(3, 1.0), ready_rank(3, 1.000001), ready_rank(0, 0.5)]
    assert ranks == sorted(ranks)
    assert len({len(rank) for rank in ranks}) == 1


async def test_leased_task_returned_is_the_one_stored(
    redis_backend: RedisBackend, clock: ManualClock
) -> None:
    task = make(clock, 1, idempotency_key="k", request_hash="h")
    await redis_backend.enqueue([task])
    [leased] = await redis_backend.dequeue(["default"], 1, worker_id="w", lease_seconds=LEASE)
    expected = task.leased(
        worker_id="w", token=leased.lease_token or "", now=clock.now(), lease_seconds=LEASE
    )
    assert leased == expected
    assert await redis_backend.get(task.id) == expected


async def test_start_up_warns_that_a_redis_without_persistence_loses_the_queue(
    redis_server: RedisServer, clock: ManualClock, prefix: str
) -> None:
    backend = RedisBackend(redis_server.url, clock=clock, prefix=prefix)
    with capture_logs() as logs:
        await backend.open()
    await backend.close()
    assert any("appendonly" in entry["event"] for entry in logs)


async def test_a_transition_computed_from_an_old_read_is_refused_as_stale(
    redis_backend: RedisBackend, clock: ManualClock
) -> None:
    task = make(clock)
    await redis_backend.enqueue([task])
    [leased] = await redis_backend.dequeue([], 1, worker_id="w", lease_seconds=LEASE)
    found = await redis_backend._load(task.id)
    assert found is not None
    await redis_backend.cancel(task.id)  # a write after that read: the rev it carries is old
    done = leased.completed("ok", clock.now())
    assert await redis_backend._store(done, found[1]) == "stale"
    await redis_backend.finish(done, leased.lease_token or "")  # checks the token, not rev
    assert (await redis_backend.get(task.id)).status is TaskStatus.COMPLETED


async def test_a_task_no_one_changed_since_its_submit_is_compared_as_rev_0(
    redis_backend: RedisBackend, raw: aioredis.Redis, clock: ManualClock, prefix: str
) -> None:
    """enqueue.lua stores no rev (one field fewer per submit): the first write made
    from a read of it goes in, a second one made from the same read is stale."""
    task = make(clock)
    await redis_backend.enqueue([task])
    assert not await raw.hexists(f"{{{prefix}}}:task:{task.id}", "rev")
    found = await redis_backend._load(task.id)
    assert found is not None
    stored, rev = found
    assert await redis_backend._store(stored.cancelled(clock.now()), rev) == "ok"
    assert await redis_backend._store(stored.requeued(clock.now()), rev) == "stale"
    assert (await redis_backend.get(task.id)).status is TaskStatus.CANCELLED


OUTCOMES = {
    "completed": lambda task, now: task.completed({"ok": True}, now),
    "failed": lambda task, now: task.failed("boom", now),
    "retrying": lambda task, now: task.retrying("flaky", now, 5.0),
    "released": lambda task, now: task.released(now),
    "completed with progress": lambda task, now: task.completed(1, now).with_progress(99),
    "retrying with progress": lambda task, now: task.retrying("x", now, 5.0).with_progress(99),
}


@pytest.mark.parametrize(
    ("cancel_asked", "outcome", "progress_stored"),
    list(itertools.product([False, True], OUTCOMES, [False, True])),
)
async def test_finish_in_lua_stores_what_task_settled_over_computes(
    redis_backend: RedisBackend,
    raw: aioredis.Redis,
    clock: ManualClock,
    cancel_asked: bool,
    outcome: str,
    progress_stored: bool,
) -> None:
    await redis_backend.enqueue([make(clock)])
    [leased] = await redis_backend.dequeue([], 1, worker_id="w", lease_seconds=LEASE)
    token = leased.lease_token or ""
    clock.advance(1.0)
    if progress_stored:
        await redis_backend.report_progress(leased.id, token, {"done": 3})
    if cancel_asked:
        await redis_backend.cancel(leased.id)
    stored = await redis_backend.get(leased.id)
    clock.advance(1.0)
    finished = OUTCOMES[outcome](leased, clock.now())
    await redis_backend.finish(finished, token)
    settled = finished.settled_over(stored)
    assert await redis_backend.get(leased.id) == settled
    # Nothing of the lease is kept, and the document no null field and no status (s
    # holds it): a finished task stays for days (memory); what get() gave back
    # above is whole all the same.
    stored_fields = await raw.hgetall(f"{{{redis_backend.prefix}}}:task:{leased.id}")
    assert set(stored_fields) - {"p"} == {"d", "s", "q", "r", "seq", "rev"}
    assert ":null" not in stored_fields["d"]
    assert '"status"' not in stored_fields["d"]


async def test_finishes_of_one_tick_go_as_one_script_call_and_each_gets_its_own_answer(
    redis_backend: RedisBackend,
    raw: aioredis.Redis,
    clock: ManualClock,
) -> None:
    await redis_backend.enqueue([make(clock) for _ in range(6)])
    leased = await redis_backend.dequeue([], 6, worker_id="w", lease_seconds=LEASE)
    tokens = [task.lease_token or "" for task in leased]
    tokens[2] = "stolen"  # this one caller lost its lease; the others did not
    before = await calls(raw)
    answers = await asyncio.gather(
        *(
            redis_backend.finish(task.completed(None, clock.now()), token)
            for task, token in zip(leased, tokens, strict=True)
        ),
        return_exceptions=True,
    )
    assert await calls(raw) == before + 1
    assert [type(a) for a in answers] == [type(None)] * 2 + [LeaseLost] + [type(None)] * 3
    statuses = [(await redis_backend.get(task.id)).status for task in leased]
    assert statuses.count(TaskStatus.COMPLETED) == 5
    assert statuses[2] is TaskStatus.RUNNING


async def test_the_recoverer_stores_a_batch_of_expired_leases_in_one_script_call(
    redis_backend: RedisBackend, raw: aioredis.Redis, clock: ManualClock
) -> None:
    """A host that died holding 50 tasks: their outcomes go together, not a round trip each."""
    await redis_backend.enqueue([make(clock) for _ in range(50)])
    await redis_backend.dequeue([], 50, worker_id="dead-host", lease_seconds=LEASE)
    clock.advance(LEASE + 1)
    before = await calls(raw)
    assert await Recoverer(redis_backend, Settings.load({})).run_once() == 50
    assert await calls(raw) - before == 1


async def test_a_rare_status_is_listed_from_its_own_index_not_by_walking_every_task(
    redis_backend: RedisBackend,
    raw: aioredis.Redis,
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await redis_backend.enqueue([make(clock) for _ in range(1000)])
    leased = await redis_backend.dequeue([], 1000, worker_id="w", lease_seconds=LEASE)
    outcomes = [task.failed("boom", clock.now()) for task in leased[:3]]
    outcomes += [task.completed(None, clock.now()) for task in leased[3:]]
    await asyncio.gather(
        *(
            redis_backend.finish(outcome, task.lease_token or "")
            for task, outcome in zip(leased, outcomes, strict=True)
        )
    )
    failed = TaskFilter(status=TaskStatus.FAILED)
    before = await calls(raw, "hgetall")
    page = await redis_backend.list_tasks(failed, 50, None)
    assert [t.id for t in page.tasks] == [t.id for t in reversed(leased[:3])]
    assert await calls(raw, "hgetall") == before + 3
    # A status with more tasks than LIST_BY_STATUS: the same page, from a walk over
    # every task that matches the status in Redis, so again only the page loads.
    monkeypatch.setattr(redis_backend_module, "LIST_BY_STATUS", 2)
    before, walked = await calls(raw, "hgetall"), await calls(raw, "hmget")
    assert await redis_backend.list_tasks(failed, 50, None) == page
    assert await calls(raw, "hgetall") == before + 3
    assert await calls(raw, "hmget") == walked + 1000


async def test_a_walk_loads_only_the_tasks_of_the_queue_asked_for(
    redis_backend: RedisBackend, raw: aioredis.Redis, clock: ManualClock
) -> None:
    rare = [make(clock, queue="rare") for _ in range(2)]
    await redis_backend.enqueue([rare[0], *(make(clock) for _ in range(1000)), rare[1]])
    before = await calls(raw, "hgetall")
    page = await redis_backend.list_tasks(TaskFilter(queue="rare"), 50, None)
    assert [t.id for t in page.tasks] == [rare[1].id, rare[0].id]
    assert page.next_cursor is None
    assert await calls(raw, "hgetall") == before + 2


async def test_a_walk_by_type_decodes_only_documents_that_name_it(
    redis_backend: RedisBackend, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The type lives only in the document: a document without the type's text is
    left undecoded, one whose payload holds it too is decoded and then left out."""
    rare = Task.new("rare", {}, now=clock.now())
    lookalike = Task.new("noop", {"type": "rare"}, now=clock.now())
    await redis_backend.enqueue([rare, lookalike, *(make(clock) for _ in range(300))])
    decoded, decode = [], codec.decode

    def counted(raw: Mapping[str, str]) -> Task:
        task = decode(raw)
        decoded.append(task.id)
        return task

    monkeypatch.setattr(codec, "decode", counted)
    page = await redis_backend.list_tasks(TaskFilter(type="rare"), 50, None)
    assert [t.id for t in page.tasks] == [rare.id]
    assert sorted(decoded) == sorted([rare.id, lookalike.id])


async def test_a_walk_by_type_searches_a_bounded_size_of_documents_per_call(
    redis_backend: RedisBackend,
    raw: aioredis.Redis,
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Big payloads must not hold Redis for long: past WALK_BYTES a call ends early."""
    rare = Task.new("rare", {}, now=clock.now())
    await redis_backend.enqueue([rare, *(make(clock) for _ in range(4))])
    monkeypatch.setattr(redis_backend_module, "WALK_BYTES", 1)
    before = await calls(raw)
    page = await redis_backend.list_tasks(TaskFilter(type="rare"), 50, None)
    assert ([t.id for t in page.tasks], page.next_cursor) == ([rare.id], None)
    assert await calls(raw) - before == 5  # a document each


async def test_a_walk_by_a_type_no_kept_task_has_ends_at_once(
    redis_backend: RedisBackend,
    raw: aioredis.Redis,
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A mistyped type in the dashboard's filter: no walk of the budget and no "more"."""
    await redis_backend.enqueue([make(clock) for _ in range(20)])
    monkeypatch.setattr(redis_backend_module, "WALK_CALL", 4)
    monkeypatch.setattr(redis_backend_module, "WALK_BUDGET", 8)
    before = await calls(raw)
    assert await redis_backend.list_tasks(TaskFilter(type="nope"), 50, None) == Page([], None)
    assert await calls(raw) - before == 1
    # A type that is kept walks as before, here up to the budget.
    assert (await redis_backend.list_tasks(TaskFilter(type="noop"), 50, None)).next_cursor


@pytest.mark.parametrize("name", ["rare", 'quo"te', "back\\slash", "ünï", "tab\tbed"])
def test_a_document_holds_its_type_text_and_no_other_types(name: str) -> None:
    doc = codec.document(Task.new(name, {"note": name}, now=0.0))
    assert codec.type_text(name) in doc.decode()
    assert codec.type_text(name + "x") not in doc.decode()


async def test_a_walk_stops_at_its_budget_and_its_cursor_goes_on_from_there(
    redis_backend: RedisBackend, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rare queue under a long history costs each request a bounded walk: pages
    come short, or empty, but following next_cursor gives every match in order."""
    monkeypatch.setattr(redis_backend_module, "WALK_CALL", 4)
    monkeypatch.setattr(redis_backend_module, "WALK_BUDGET", 10)
    tasks = [make(clock, queue="rare" if i in (0, 3, 4, 5) else "default") for i in range(20)]
    await redis_backend.enqueue(tasks)
    rare = TaskFilter(queue="rare")
    pages, cursor = [], None
    while True:
        page = await redis_backend.list_tasks(rare, 2, cursor)
        pages.append([t.id for t in page.tasks])
        if (cursor := page.next_cursor) is None:
            break
    # The 12 newest hold no match, so the first request answers none; the next gives
    # two and goes on below the second; the last reaches the oldest task.
    assert pages == [[], [tasks[5].id, tasks[4].id], [tasks[3].id, tasks[0].id]]


async def test_a_purge_decodes_a_bounded_size_of_documents_per_call(
    redis_backend: RedisBackend,
    raw: aioredis.Redis,
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Purge decodes each document in Lua: big payloads must cost more calls, not a
    call that holds Redis for seconds."""
    tasks = [Task.new("noop", {"csv": "x" * 1000}, now=clock.now()) for _ in range(4)]
    await redis_backend.enqueue(tasks)
    for task in await redis_backend.dequeue([], 4, worker_id="w", lease_seconds=LEASE):
        await redis_backend.finish(task.completed(None, clock.now()), task.lease_token or "")
    clock.advance(100)
    monkeypatch.setattr(redis_backend_module, "PURGE_BYTES", 2000)  # over 1 document, under 2
    before = await calls(raw)
    assert await redis_backend.purge_finished(clock.now()) == 4
    assert await calls(raw) - before == 3  # two documents a call, and one call finds none
    assert (await redis_backend.stats()).by_type == {}
    assert await raw.zcard(f"{{{redis_backend.prefix}}}:all") == 0


@pytest.mark.parametrize("ending", ["finished", "cancelled"])
async def test_a_wait_hears_the_task_became_final_rather_than_waiting_out_its_pause(
    redis_backend: RedisBackend,
    redis_server: RedisServer,
    raw: aioredis.Redis,
    clock: ManualClock,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    ending: str,
) -> None:
    """The waiter has a connection of its own, as an API process would: with a pause
    of a minute between reads, only the notice of the final state can end its wait."""
    monkeypatch.setattr(client_module, "WAIT_POLL", (60.0, 60.0))
    waiter = RedisBackend(redis_server.url, clock=clock, prefix=prefix)
    await waiter.open()
    task = make(clock)
    await redis_backend.enqueue([task])
    waiting = asyncio.create_task(AsyncClient(waiter).wait(task.id, 50))
    async with asyncio.timeout(10):  # until the waiter's subscription is on
        while True:
            if (await raw.pubsub_numsub(f"{{{prefix}}}:finals"))[0][1]:
                break
            await asyncio.sleep(0.01)
    if ending == "finished":
        [leased] = await redis_backend.dequeue([], 1, worker_id="w", lease_seconds=LEASE)
        await redis_backend.finish(leased.completed(7, clock.now()), leased.lease_token or "")
    else:
        await redis_backend.cancel(task.id)
    waited = await asyncio.wait_for(waiting, 30)
    assert waited.status is (TaskStatus.COMPLETED if ending == "finished" else TaskStatus.CANCELLED)
    await waiter.close()


async def test_waits_hear_of_final_tasks_again_once_redis_is_back(
    tmp_path: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The subscription is lost with the connection; the process subscribes again."""
    monkeypatch.setattr(client_module, "WAIT_POLL", (60.0, 60.0))
    server = RedisServer(tmp_path)
    server.stop()
    server.start("--appendonly", "yes")  # the task outlives the restart
    waiter, worker = (RedisBackend(server.url, clock=clock) for _ in range(2))
    try:
        await waiter.open()
        await worker.open()
        task = make(clock)
        await worker.enqueue([task])
        waiting = asyncio.create_task(AsyncClient(waiter).wait(task.id, 50))
        watcher = aioredis.from_url(server.url)

        async def subscribed() -> None:
            async with asyncio.timeout(30):
                while True:
                    with contextlib.suppress(redis.ConnectionError):
                        if (await watcher.pubsub_numsub("{tq}:finals"))[0][1]:
                            return
                    await asyncio.sleep(0.05)

        await subscribed()
        server.stop()
        server.start("--appendonly", "yes")
        await subscribed()
        [leased] = await worker.dequeue([], 1, worker_id="w", lease_seconds=LEASE)
        await worker.finish(leased.completed(None, clock.now()), leased.lease_token or "")
        assert (await asyncio.wait_for(waiting, 30)).status is TaskStatus.COMPLETED
        await watcher.aclose()
    finally:
        await waiter.close()
        await worker.close()
        server.stop()


async def test_a_submit_counts_only_the_queues_with_tasks_ready_not_every_name_ever_used(
    redis_backend: RedisBackend, raw: aioredis.Redis, clock: ManualClock
) -> None:
    """Per-tenant queue names must not slow every submit down (its QUEUE_SIZE check
    took a ZCARD per name ever used: 1,000 names cut serial submits to a fifth)."""
    names = [f"tenant-{i}" for i in range(200)]
    await redis_backend.enqueue([make(clock, queue=name) for name in names])
    assert len(await redis_backend.dequeue(names, 200, worker_id="w", lease_seconds=LEASE)) == 200
    await redis_backend.enqueue([make(clock, queue="tenant-7")])  # finds the 199 others empty
    before = await calls(raw, "zcard")
    await redis_backend.enqueue([make(clock, queue="tenant-8")])
    assert await calls(raw, "zcard") - before <= 2  # the delayed set and tenant-7
    [first, second] = await redis_backend.dequeue([], 2, worker_id="w", lease_seconds=LEASE)
    assert (first.queue, second.queue) == ("tenant-7", "tenant-8")
    assert (await redis_backend.stats()).pending_by_queue == {}


async def test_single_submits_of_one_tick_go_in_two_halves_unless_another_tick_is_on_its_way(
    redis_backend: RedisBackend, raw: aioredis.Redis, clock: ManualClock
) -> None:
    """Redis stores one half while this process takes the other's answers and its
    callers build their next submits, so the two cohorts take turns with Redis
    rather than wait on it together. A tick made while another's calls are on their
    way goes whole, so the cohorts split no further. Each caller keeps its answer."""
    first = make(clock, idempotency_key="same", request_hash="a")
    await redis_backend.enqueue([first])
    fresh = [make(clock) for _ in range(9)]
    conflicting = make(clock, idempotency_key="same", request_hash="b")
    before = await calls(raw)
    await raw.client_pause(10_000, all=False)  # no script runs until both ticks are sent
    try:
        one = asyncio.gather(
            *(redis_backend.enqueue([task]) for task in [*fresh[:6], conflicting]),
            return_exceptions=True,
        )
        await asyncio.sleep(0.2)
        two = asyncio.gather(*(redis_backend.enqueue([task]) for task in fresh[6:]))
        await asyncio.sleep(0.2)
    finally:
        await raw.client_unpause()
    answers = [*await one, *await two]
    # the tick's first call is sent at once, alone; its other six in two halves;
    # the second tick whole
    assert await calls(raw) == before + 1 + 2 + 1
    assert type(answers[6]).__name__ == "IdempotencyConflict"
    created = [a for i, a in enumerate(answers) if i != 6]
    assert [a[0].task.id for a in created] == [task.id for task in fresh]  # type: ignore[index]
    assert all(a[0].created for a in created)  # type: ignore[index]
    assert (await redis_backend.stats()).by_status == {"pending": 10}


async def test_a_call_made_while_nothing_is_on_its_way_is_sent_at_once(
    redis_backend: RedisBackend, redis_server: RedisServer, clock: ManualClock, prefix: str
) -> None:
    """Not when its tick ends: a lone submit saves an event-loop turn on its way."""
    task = make(clock)
    sending = asyncio.ensure_future(redis_backend.enqueue([task]))
    await asyncio.sleep(0)  # the submit's first step runs; then the loop is held below
    with redis.Redis.from_url(redis_server.url) as held_loop:
        wait_for(lambda: held_loop.exists(f"{{{prefix}}}:task:{task.id}"), 5, "the task stored")
    assert (await sending)[0].created


@pytest.mark.parametrize("idle", [True, False])
async def test_an_idle_workers_dequeue_goes_ahead_of_the_finishes_gathered_in_its_tick(
    redis_backend: RedisBackend,
    redis_server: RedisServer,
    clock: ManualClock,
    prefix: str,
    idle: bool,
) -> None:
    """An idle worker waits on its answer alone; the finishes that freed its slots
    need not run in Redis first. A busy worker's dequeue gathers with them."""
    done, waiting = make(clock), make(clock)
    await redis_backend.enqueue([done])
    [leased] = await redis_backend.dequeue([], 1, worker_id="w", lease_seconds=LEASE)
    await redis_backend.enqueue([waiting])
    finishing = asyncio.ensure_future(
        redis_backend.finish(leased.completed(None, clock.now()), leased.lease_token or "")
    )
    dequeuing = asyncio.ensure_future(
        redis_backend.dequeue([], 1, worker_id="w", lease_seconds=LEASE, idle=idle)
    )
    await asyncio.sleep(0)  # both first steps run; then the loop is held below
    with redis.Redis.from_url(redis_server.url, decode_responses=True) as held_loop:

        def status(task: Task) -> str | None:
            return held_loop.hget(f"{{{prefix}}}:task:{task.id}", "s")  # type: ignore[return-value]

        if idle:
            wait_for(lambda: status(waiting) == "running", 5, "the waiting task leased")
        else:
            time.sleep(0.2)  # noqa: ASYNC251 - holds the loop; a dequeue sent at once would run
            assert status(waiting) == "pending"
        assert status(done) == "running"
    await finishing
    assert [task.id for task in await dequeuing] == [waiting.id]
    assert (await redis_backend.get(done.id)).status is TaskStatus.COMPLETED


async def test_big_submits_of_one_tick_are_script_calls_of_their_own(
    redis_backend: RedisBackend, raw: aioredis.Redis, clock: ManualClock
) -> None:
    """So that concurrent big submitters overlap: while Redis stores one batch, the
    next caller's is built and sent rather than held for the same call."""
    batches = [[make(clock) for _ in range(OWN_CALL_TASKS)] for _ in range(2)]
    before = await calls(raw)
    answers = await asyncio.gather(*(redis_backend.enqueue(batch) for batch in batches))
    assert await calls(raw) == before + 2
    assert [[s.task.id for s in answer] for answer in answers] == [
        [task.id for task in batch] for batch in batches
    ]
    assert (await redis_backend.stats()).by_status == {"pending": 2 * OWN_CALL_TASKS}


async def test_submits_merged_into_one_call_meet_the_waiting_bound_one_by_one(
    redis_server: RedisServer, raw: aioredis.Redis, clock: ManualClock, prefix: str
) -> None:
    backend = RedisBackend(redis_server.url, clock=clock, max_waiting=5, prefix=prefix)
    await backend.open()
    try:
        await raw.client_pause(10_000, all=False)  # no script runs until all are sent
        try:
            # the batcher is idle: the first is sent at once, the second alone in its tick
            on_their_way = asyncio.gather(
                backend.enqueue([make(clock)]), backend.enqueue([make(clock)])
            )
            await asyncio.sleep(0.2)
            before = await calls(raw)
            merged = asyncio.gather(  # sent whole, one call: the others are on their way
                backend.enqueue([make(clock), make(clock)]),
                backend.enqueue([make(clock), make(clock)]),  # would make 6: refused whole
                backend.enqueue([make(clock)]),
                return_exceptions=True,
            )
            await asyncio.sleep(0.2)
        finally:
            await raw.client_unpause()
        await on_their_way
        answers = await merged
        assert await calls(raw) == before + 2 + 1  # the two on their way, the merged one
        assert [type(a).__name__ for a in answers] == ["list", "QueueFull", "list"]
        assert (await backend.stats()).by_status == {"pending": 5}
    finally:
        await backend.close()


async def test_batched_calls_are_sent_again_after_a_script_flush(
    redis_backend: RedisBackend, raw: aioredis.Redis, clock: ManualClock
) -> None:
    await raw.script_flush()
    submitted = await asyncio.gather(*(redis_backend.enqueue([make(clock)]) for _ in range(3)))
    assert all(s[0].created for s in submitted)
    assert (await redis_backend.stats()).by_status == {"pending": 3}


async def test_bench_on_redis_runs_under_a_prefix_of_its_own_and_leaves_no_keys(
    redis_server: RedisServer, raw: aioredis.Redis
) -> None:
    from task_queue import bench
    from task_queue.config import Settings

    settings = Settings(
        queue_backend="redis", redis_url=redis_server.url, worker_count=4, queue_size=200
    )
    await raw.set("not-the-bench", "1")
    report = await bench._measure(settings, 200)
    assert report["backend"] == "redis"
    assert report["tasks"] == 200
    assert await raw.keys("*tq-bench-*") == []  # the server is shared with other tests
    assert await raw.get("not-the-bench") == "1"


async def test_a_redis_password_never_reaches_an_error_message(clock: ManualClock) -> None:
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    backend = RedisBackend(f"redis://:s3cret-pw@127.0.0.1:{port}/0", clock=clock)
    with pytest.raises(BackendUnavailable) as not_open:
        await backend.get("any")
    with pytest.raises(BackendUnavailable) as unreachable:
        await backend.open()
    for raised in (not_open, unreachable):
        assert "s3cret-pw" not in str(raised.value)
        assert f"127.0.0.1:{port}" in str(raised.value)


async def test_a_pooled_connection_the_server_closed_is_opened_again(
    redis_server: RedisServer, raw: aioredis.Redis
) -> None:
    """Nothing sends a command twice (retries are off): the pool itself must see
    the closed connection before it hands it to the next command."""
    connection = connect(redis_server.url)
    client = connection.client
    try:
        await client.set("closed-under-it", "v")
        await raw.client_kill_filter(_id=await client.client_id())
        await raw.ping()  # by its answer, the server's close reached this process too
        assert await client.get("closed-under-it") == "v"
    finally:
        await connection.aclose()


async def test_a_pooled_connection_with_an_unread_answer_is_not_used_again(
    redis_server: RedisServer, raw: aioredis.Redis
) -> None:
    connection = connect(redis_server.url)
    client = connection.client
    try:
        await client.set("stale-answer", "v")
        pool = client.connection_pool
        pooled = await pool.get_connection()
        await pooled.send_command("PING")  # its PONG is never read
        await pool.release(pooled)
        await raw.ping()  # by its answer, the PONG reached this process too
        assert await client.get("stale-answer") == "v"
    finally:
        await connection.aclose()


# -- parked workers: a task handed over in the submit's own script ---------------------


async def test_a_parked_worker_is_handed_the_best_task_and_only_one_per_free_slot(
    redis_backend: RedisBackend, clock: ManualClock
) -> None:
    waiting = await park(redis_backend, "w", limit=2)
    low, high, middle = make(clock, 0), make(clock, 9), make(clock, 5)
    await redis_backend.enqueue([low, high, middle])
    first = await asyncio.wait_for(waiting, 5)
    # One task comes with the wait; the second handed waits in the inbox for the next dequeue.
    rest = await redis_backend.dequeue(["default"], 1, worker_id="w", lease_seconds=LEASE)
    assert [t.id for t in first + rest] == [high.id, middle.id]
    assert (await redis_backend.get(low.id)).status is TaskStatus.PENDING


async def test_a_worker_parked_on_one_queue_is_not_handed_another_queues_task(
    redis_backend: RedisBackend, clock: ManualClock
) -> None:
    waiting = await park(redis_backend, "w", queues=["mail"], timeout=0.3)
    other = make(clock, queue="images")
    await redis_backend.enqueue([other])
    assert await asyncio.wait_for(waiting, 5) == []
    assert (await redis_backend.get(other.id)).status is TaskStatus.PENDING


async def test_a_worker_parked_on_every_queue_takes_a_queue_new_since_it_parked(
    redis_backend: RedisBackend, clock: ManualClock
) -> None:
    waiting = await park(redis_backend, "w", queues=[])
    fresh = make(clock, queue="brand-new")
    await redis_backend.enqueue([fresh])
    assert [t.id for t in await asyncio.wait_for(waiting, 5)] == [fresh.id]


async def test_a_park_that_expired_is_handed_nothing(
    redis_backend: RedisBackend, clock: ManualClock
) -> None:
    """A worker that died parked stops taking tasks once its park runs out."""
    waiting = await park(redis_backend, "w", timeout=0.3)
    clock.advance(PARK_SECONDS + 1)
    task = make(clock)
    await redis_backend.enqueue([task])
    assert await asyncio.wait_for(waiting, 5) == []
    [taken] = await redis_backend.dequeue(["default"], 1, worker_id="v", lease_seconds=LEASE)
    assert taken.id == task.id


async def test_promoted_tasks_go_to_a_parked_worker_and_a_handed_back_one_wakes_it(
    redis_backend: RedisBackend, clock: ManualClock
) -> None:
    later = make(clock, run_at=clock.now() + 1)
    await redis_backend.enqueue([later])
    waiting = await park(redis_backend, "w")  # parked for PARK_SECONDS of this clock
    clock.advance(1)
    assert await redis_backend.promote_due() == 1
    [handed] = await asyncio.wait_for(waiting, 5)
    assert handed.id == later.id
    # A hand-back (finish, which has no time to lease by) ends the wait instead.
    waiting = await park(redis_backend, "v")
    await redis_backend.finish(handed.released(clock.now()), handed.lease_token or "")
    assert await asyncio.wait_for(waiting, 5) == []
    [again] = await redis_backend.dequeue(["default"], 1, worker_id="v", lease_seconds=LEASE)
    assert again.id == later.id


async def test_stop_waiting_ends_the_wait_and_returns_what_was_handed_but_not_taken(
    redis_backend: RedisBackend, clock: ManualClock
) -> None:
    waiting = await park(redis_backend, "w", limit=3)
    tasks = [make(clock) for _ in range(2)]
    await redis_backend.enqueue(tasks)
    first = await asyncio.wait_for(waiting, 5)
    left = await redis_backend.stop_waiting("w")
    assert [t.id for t in first + left] == [t.id for t in tasks]
    assert left[0].lease_token
    assert left[0].status is TaskStatus.RUNNING
    # Stopped: a later submit stays pending, and a wait still blocked ends at once.
    later = make(clock)
    await redis_backend.enqueue([later])
    assert (await redis_backend.get(later.id)).status is TaskStatus.PENDING
    await redis_backend.dequeue(["default"], 1, worker_id="y", lease_seconds=LEASE)
    waiting = await park(redis_backend, "x", limit=1)
    assert await redis_backend.stop_waiting("x") == []
    assert await asyncio.wait_for(waiting, 5) == []


@pytest.mark.parametrize(
    ("tasks", "reads", "pops"),
    [
        (1, 0, 0),  # enqueue's hand_over: the new task is in the call already
        (2, 2, 1),  # feed: one pop of the queue, one read of each leased task
    ],
)
async def test_a_submit_to_many_parked_workers_stops_once_its_tasks_are_handed(
    redis_backend: RedisBackend,
    raw: aioredis.Redis,
    clock: ManualClock,
    tasks: int,
    reads: int,
    pops: int,
) -> None:
    """Walking every idle worker on every submit would cost Redis calls per worker."""
    waits = [await park(redis_backend, f"w{i}", queues=[], limit=5) for i in range(20)]
    try:
        before = [await calls(raw, c) for c in ("hgetall", "hmget", "zpopmin")]
        submitted = [make(clock) for _ in range(tasks)]
        await redis_backend.enqueue(submitted)
        after = [await calls(raw, c) for c in ("hgetall", "hmget", "zpopmin")]
        done, _ = await asyncio.wait(waits, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        handed = done.pop().result()
        handed += await redis_backend.dequeue(
            [], 5, worker_id=handed[0].worker_id or "", lease_seconds=LEASE
        )
        assert [t.id for t in handed] == [t.id for t in submitted]
        # every park read in one call; the other 19 workers were not fed
        assert [a - b for a, b in zip(after, before, strict=True)] == [1, reads, pops]
    finally:
        for waiting in waits:
            waiting.cancel()
        await asyncio.gather(*waits, return_exceptions=True)


async def test_a_lone_task_handed_over_is_stored_leased_like_one_dequeued(
    redis_backend: RedisBackend, raw: aioredis.Redis, clock: ManualClock, prefix: str
) -> None:
    waiting = await park(redis_backend, "w")
    task = make(clock, 1, idempotency_key="k", request_hash="h")
    await redis_backend.enqueue([task])
    [handed] = await asyncio.wait_for(waiting, 5)
    expected = task.leased(
        worker_id="w", token=handed.lease_token or "", now=clock.now(), lease_seconds=LEASE
    )
    assert handed == expected
    assert await redis_backend.get(task.id) == expected
    # Written once, leased, yet the same fields as a task stored pending, then dequeued.
    other = make(clock, 1, idempotency_key="k2", request_hash="h")
    await redis_backend.enqueue([other])
    assert len(await redis_backend.dequeue(["default"], 1, worker_id="w", lease_seconds=LEASE)) == 1
    stored = await raw.hgetall(f"{{{prefix}}}:task:{task.id}")
    assert stored.keys() == (await raw.hgetall(f"{{{prefix}}}:task:{other.id}")).keys()
    assert stored["rev"] == stored["l"] == handed.lease_token
    assert stored["seq"] == "1".zfill(16)
    assert (await redis_backend.stats()).by_status == {"running": 2}
    await redis_backend.finish(handed.completed(None, clock.now()), handed.lease_token or "")
    assert (await redis_backend.get(task.id)).status is TaskStatus.COMPLETED


async def test_every_moment_a_zset_holds_is_a_whole_microsecond_however_it_got_there(
    redis_backend: RedisBackend, raw: aioredis.Redis, clock: ManualClock, prefix: str
) -> None:
    """Integer scores keep a small zset, a listpack, from parsing a decimal per member
    on every ZADD (lib.lua says more): leases by a dequeue, a hand-over, a feed and a
    heartbeat; run_at by a submit and a retry; completed_at by a finish."""

    async def scores(index: str) -> dict[str, float]:
        return dict(await raw.zrange(f"{{{prefix}}}:{index}", 0, -1, withscores=True))

    handing = await park(redis_backend, "handed")
    await redis_backend.enqueue([make(clock)])  # alone: handed over by the submit
    [handed] = await asyncio.wait_for(handing, 5)
    clock.advance(0.25)
    feeding = await park(redis_backend, "fed")
    await redis_backend.enqueue([make(clock), make(clock)])  # two: fed, one stays pending
    [fed] = await asyncio.wait_for(feeding, 5)
    clock.advance(0.25)
    [taken] = await redis_backend.dequeue(["default"], 1, worker_id="taker", lease_seconds=LEASE)
    leases = {t.id: t.lease_expires_at or 0.0 for t in (handed, fed, taken)}
    assert len(set(leases.values())) == 3
    assert await scores("leased") == {id: codec.moment_score(end) for id, end in leases.items()}
    clock.advance(0.25)
    worker = WorkerInfo("taker", "host", 1, ["default"], 1, clock.now())
    await redis_backend.heartbeat(worker, {taken.id: taken.lease_token or ""}, LEASE)
    assert (await scores("leased"))[taken.id] == codec.moment_score(clock.now() + LEASE)
    later = make(clock, run_at=clock.now() + 60.5)
    await redis_backend.enqueue([later])
    retry = fed.retrying("boom", clock.now(), 7.25)
    await redis_backend.finish(retry, fed.lease_token or "")
    done = taken.completed(None, clock.now())
    await redis_backend.finish(done, taken.lease_token or "")
    assert await scores("delayed") == {
        later.id: codec.moment_score(later.run_at),
        fed.id: codec.moment_score(retry.run_at),
    }
    assert await scores("final:completed") == {taken.id: codec.moment_score(clock.now())}


async def test_a_lone_task_is_not_handed_over_ahead_of_a_pending_one_no_submit_fed(
    redis_backend: RedisBackend, raw: aioredis.Redis, clock: ManualClock, prefix: str
) -> None:
    """A task an older process left pending without feeding the parked workers
    (a rolling upgrade) is still the first one taken from its queue."""
    ready = f"{{{prefix}}}:ready:default"
    high = make(clock, 9)
    await redis_backend.enqueue([high])
    [member] = await raw.zrange(ready, 0, -1)
    await raw.zrem(ready, member)
    waiting = await park(redis_backend, "w")
    await raw.zadd(ready, {member: 0})  # pending, and no submit fed it to "w"
    low = make(clock, 0)
    await redis_backend.enqueue([low])
    assert [t.id for t in await asyncio.wait_for(waiting, 5)] == [high.id]
    assert (await redis_backend.get(low.id)).status is TaskStatus.PENDING


async def test_a_worker_with_more_free_slots_than_lua_can_unpack_parks_and_is_fed(
    redis_backend: RedisBackend, clock: ManualClock
) -> None:
    """WORKER_COUNT and WORKER_PREFETCH go to 10,000 each: a dequeue and a hand-over
    of 20,000 must not pass Lua's unpack bound (about 8,000 values)."""
    waiting = await park(redis_backend, "w", limit=20_000)
    tasks = [make(clock) for _ in range(9_000)]
    await redis_backend.enqueue(tasks)
    first = await asyncio.wait_for(waiting, 10)
    rest = await redis_backend.dequeue(["default"], 20_000, worker_id="w", lease_seconds=LEASE)
    assert len(first) + len(rest) == 9_000
