"""How a Task is kept in Redis: one JSON document, plus the small fields the scripts move.

The whole task is one field `d` that only Python reads and writes, so no
script on a task's way from submit to result reads inside it, and their cost
does not depend on the payload's size (purge.lua decodes it and walk.lua
searches it for a type, both bounded by bytes).
Scripts change what a state change needs without rewriting `d`: the status,
the lease (token, expiry, worker, start), updated_at, progress and the cancel
flag, each a field of its own (lib.lua lists them). `decode` lays those over
`d` to give the task as it is now.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from task_queue.task import Task, TaskStatus


def moment_score(moment: float) -> int:
    """A moment as the zsets scored by time hold it: whole microseconds, an integer,
    which a small zset's listpack reads without a strtod (lib.lua says more).
    lib.lua's lease_until does the same arithmetic, and a moment and `now` that
    are equal give equal scores: a lease that ends at `now` has expired at `now`."""
    return math.floor(moment * 1e6 + 0.5)


def moment_args(moment: float) -> tuple[str, int]:
    """A moment as a script takes it: its text, as a task's fields hold it, and its
    score, as the zsets do (lib.lua's lease_until gives the same two)."""
    return repr(moment), moment_score(moment)


def score_moment(score: str) -> float:
    """The moment a score holds, in seconds."""
    return float(score) / 1e6


# The rank's first two digits by priority, 10 - priority: "10" for 0 ... "00" for 10.
_LEVELS = {priority: f"{10 - priority:02d}" for priority in range(11)}


def ready_rank(priority: int, run_at: float) -> str:
    """The leading part of a task's member in its ready zset (see lib.lua).

    Members all score 0 and sort by bytes: 2 digits of (10 - priority), then
    run_at in whole microseconds (its moment_score) over 16 digits, then (added
    by the scripts) the submit sequence over 16 digits. A double score could not
    hold all three exactly; fixed-width text can, so FIFO within a priority is
    exact even for tasks submitted in the same microsecond.

    Built from a table and zfill: a quarter of an f-string's time with two
    format specs, and every single submit makes one (there was a cache, but
    no two submits share a run_at, so it only missed).
    """
    level = _LEVELS.get(priority) or _LEVELS[max(0, min(10, priority))]
    return level + str(max(0, moment_score(run_at))).zfill(16)


_NULL_BY_DEFAULT = tuple(f.name for f in dataclasses.fields(Task) if f.default is None)


def _plain(value: Any) -> Any:
    """A payload given as another Mapping than dict (orjson takes only dict)."""
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"cannot store {type(value).__name__} in a task")


def document(task: Task) -> bytes:
    """The `d` field: the Task's fields by name; floats round-trip exactly through orjson.

    Fields that are None by default are left out while they are, and Task.restore
    gives them back: 200 bytes of a new no-op task's 450. So is the status, which
    the field `s` always holds and decode always takes from there: 20 bytes more.
    Redis copies a document into Lua at the submit and again at the dequeue, at
    about 12 instructions a byte, and keeps it while the task waits and for days
    after it ends.
    """
    fields = task.__dict__.copy()
    del fields["status"]
    for name in _NULL_BY_DEFAULT:  # half the time of a comprehension over every field
        if fields[name] is None:
            del fields[name]
    return orjson.dumps(fields, default=_plain)


def type_text(type: str) -> str:
    """What the document of a task of this type holds, as orjson writes it: walk.lua
    searches documents for it. A payload may hold the same text, so finding it is no
    match yet (decode, then compare); not finding it rules the task out."""
    return '"type":' + orjson.dumps(type).decode()


def json_or_empty(value: Any) -> bytes:
    return b"" if value is None else orjson.dumps(value)


def score(task: Task) -> str:
    """Where the task sits in its index: completed_at when final, else run_at."""
    moment = task.completed_at if task.status.is_final else task.run_at
    return str(moment_score(moment if moment is not None else task.run_at))


def decode(raw: Mapping[str, str]) -> Task:
    """The task as it is now: `d` with the fields the scripts changed laid over it."""
    updated = raw.get("u")
    token = raw.get("l")
    if token:
        return leased(
            raw["d"],
            raw.get("p"),
            raw.get("c"),
            token=token,
            expires=float(raw["x"]),
            started=float(raw["n"]),
            worker_id=raw["w"],
            updated=float(updated) if updated else None,
        )
    values = orjson.loads(raw["d"])
    values["status"] = TaskStatus(raw["s"])
    progress = raw.get("p")
    values["progress"] = None if progress is None else orjson.loads(progress)
    if updated:
        values["updated_at"] = float(updated)
    return Task.restore(values)


def leased(
    doc: str,
    progress: str | None,
    cancel: str | None,
    *,
    token: str,
    expires: float,
    started: float,
    worker_id: str,
    updated: float | None = None,
) -> Task:
    """A running task: `d` as it was before this lease (Task.leased), with the lease on it.

    The fast path of every dequeue and hand-over, so it builds the Task in one step.
    """
    values = orjson.loads(doc)
    values["attempts"] += 1
    values.update(
        status=TaskStatus.RUNNING,
        progress=None if progress is None else orjson.loads(progress),
        lease_token=token,
        lease_expires_at=expires,
        worker_id=worker_id,
        started_at=started,
        updated_at=started if updated is None else updated,
    )
    if cancel == "1":  # asked while running; a whole write carries it in d
        values["cancel_requested"] = True
    return Task.restore(values)


def decode_handed(item: str, worker_id: str) -> Task:
    """A task handed to a parked worker: an inbox item of lib.lua's feed, leased to it."""
    token, expires, now, cancel, progress, doc = item.split("\n", 5)
    return leased(
        doc,
        progress or None,
        cancel,
        token=token,
        expires=float(expires),
        started=float(now),
        worker_id=worker_id,
    )


def enqueue_args(tasks: Sequence[Task]) -> list[Any]:
    """enqueue.lua's arguments for one submitter's tasks, after the group's 4.

    Tasks in a row that share every stored field but id and JSON go as one run:
    its count and those fields once, then id and JSON for each. A batch of one
    type is one run, so Redis reads 2 arguments a task instead of 9. Whether a
    task joins the run is read off its fields, not off their text: the text (a
    float's repr, the rank) made for every task was a seventh of the client's
    work per batched task (benchmarks/client_instructions.py).
    """
    args: list[Any] = []
    count_at = 0
    last: Task | None = None
    for task in tasks:
        if not (
            last is not None
            and task.run_at == last.run_at
            and task.priority == last.priority
            and task.status is last.status
            and task.queue == last.queue
            and task.type == last.type
            and task.idempotency_key == last.idempotency_key
            and task.request_hash == last.request_hash
        ):
            count_at = len(args)
            args += (
                0,
                task.status.value,
                task.queue,
                ready_rank(task.priority, task.run_at),
                moment_score(task.run_at),
                task.type,
                task.idempotency_key or "",
                task.request_hash or "",
            )
        args[count_at] += 1
        args += (task.id, document(task))
        last = task
    return args


def _placed(task: Task) -> list[str | bytes]:
    """Status, rank, score and document: what a script needs to index a whole write.

    A final task never enters a ready set again without a new write, so it needs no
    rank.
    """
    rank = "" if task.status.is_final else ready_rank(task.priority, task.run_at)
    return [task.status.value, rank, score(task), document(task)]


# A stored task as settled_over sees it when a cancel was asked and no progress is held.
_CANCEL_ASKED = Task.new("-", {}, now=0.0, cancel_requested=True)


def finish_args(task: Task, token: str) -> list[str | bytes]:
    """finish.lua's arguments for one outcome: 7, then its cancelled variant's 4 and
    its progress when it has them (the third argument says which: "v", "p", "vp").

    The variant is `task.settled_over` a stored task whose cancel was asked,
    so the rule stays written once, in task.py; the script picks it when the
    stored task has its cancel flag set. A final outcome has no variant.
    Progress goes separately: the script keeps the stored one when the outcome
    has none. A completed task without progress thus sends 7 arguments, not 11
    with four empty: each argument costs the worker's packing about 1,400
    instructions (benchmarks/worker_instructions.py).
    """
    variant = task.settled_over(_CANCEL_ASKED)
    parts = ("v" if variant is not task else "") + ("p" if task.progress is not None else "")
    args = [task.id, token, parts, *_placed(task)]
    if variant is not task:
        args += _placed(variant)
    if task.progress is not None:
        args.append(orjson.dumps(task.progress))
    return args


def store_args(task: Task, rev: str, new_rev: str, limit: str) -> list[str | bytes]:
    """store.lua's arguments after the prefix, for a whole write of `task`."""
    flag = "1" if task.cancel_requested else ""
    progress = json_or_empty(task.progress)
    return [task.id, rev, new_rev, limit, *_placed(task), flag, progress, repr(task.updated_at)]


def pairs(flat: Sequence[str]) -> dict[str, str]:
    """An HGETALL answer that came back through Lua as a flat list."""
    return dict(zip(flat[::2], flat[1::2], strict=True))
