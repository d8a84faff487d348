"""How a Task is kept in a Redis hash, and the order key of the ready sets.

Every field is one hash field (absent means None); floats are written with
repr so they read back exactly, JSON fields through orjson.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

from task_queue.task import Task, TaskStatus

FIELDS = tuple(f.name for f in dataclasses.fields(Task))
JSON_FIELDS = frozenset({"payload", "result", "progress"})
FLOAT_FIELDS = frozenset(
    ("created_at", "run_at", "timeout_seconds", "started_at", "completed_at", "updated_at")
) | {"lease_expires_at"}
INT_FIELDS = frozenset({"priority", "attempts", "max_retries"})


def ready_rank(priority: int, run_at: float) -> str:
    """The leading part of a task's member in its ready zset (see lib.lua).

    Members all score 0 and sort by bytes: 2 digits of (10 - priority), then
    run_at in whole microseconds over 16 digits, then (added by the scripts)
    the submit sequence over 16 digits. A double score could not hold all
    three exactly; fixed-width text can, so FIFO within a priority is exact
    even for tasks submitted in the same microsecond.
    """
    level = 10 - max(0, min(10, priority))
    return f"{level:02d}{max(0, round(run_at * 1_000_000)):016d}"


def json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


def _encoder(name: str) -> Callable[[Any], str]:
    """How one Task field becomes hash text: JSON, a 0/1 flag, the status name, or repr
    for numbers (floats by repr are exact), str for the rest. Chosen once per field."""
    if name in JSON_FIELDS:
        return json_text
    if name == "cancel_requested":
        return lambda value: "1" if value else "0"
    if name == "status":
        return lambda value: str(value.value)
    return repr if name in FLOAT_FIELDS or name in INT_FIELDS else str


_ENCODERS = {name: _encoder(name) for name in FIELDS}


def encode(task: Task) -> tuple[dict[str, str], list[str]]:
    """The task as hash fields (strings) and the fields that are None."""
    fields: dict[str, str] = {}
    deletes: list[str] = []
    for name, encode in _ENCODERS.items():
        value = getattr(task, name)
        if value is None:
            deletes.append(name)
        else:
            fields[name] = encode(value)
    fields["rank"] = ready_rank(task.priority, task.run_at)
    return fields, deletes


def decode(raw: Mapping[str, str]) -> Task:
    values: dict[str, Any] = {}
    for name in FIELDS:
        text = raw.get(name)
        if text is None:
            continue
        if name in JSON_FIELDS:
            values[name] = orjson.loads(text)
        elif name in FLOAT_FIELDS:
            values[name] = float(text)
        elif name in INT_FIELDS:
            values[name] = int(text)
        elif name == "status":
            values[name] = TaskStatus(text)
        elif name == "cancel_requested":
            values[name] = text == "1"
        else:
            values[name] = text
    return Task(**values)


# A stored task as settled_over sees it when a cancel was asked and no progress is held.
_CANCEL_ASKED = dataclasses.replace(Task.new("-", {}, now=0.0), cancel_requested=True)


def finish_args(task: Task, token: str) -> list[str | bytes]:
    """finish.lua's arguments after the prefix: the outcome and its cancelled variant.

    The variant is `task.settled_over` a stored task whose cancel was asked and
    that holds no progress, so the rule stays written once, in task.py; the
    script picks it when the stored task has cancel_requested set. `progress`
    is never deleted: a stored progress stays unless the outcome carries one.
    """
    args: list[str | bytes] = [task.id, token]
    variant = task.settled_over(_CANCEL_ASKED)
    for shape in (task, variant) if variant is not task else (task,):
        fields, deletes = encode(shape)
        args += [orjson.dumps(fields), orjson.dumps([f for f in deletes if f != "progress"])]
    return args if len(args) == 6 else [*args, "", ""]


def pairs(flat: Sequence[str]) -> dict[str, str]:
    """An HGETALL answer that came back through Lua as a flat list."""
    return dict(zip(flat[::2], flat[1::2], strict=True))
