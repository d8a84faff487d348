"""What task.py builds by hand for speed matches what the standard library would build."""

from __future__ import annotations

import uuid

import pytest

from task_queue.task import Task, new_task_id, new_task_ids


@pytest.mark.parametrize("make", ["one by one", "as a batch"])
def test_task_ids_are_random_uuid4_in_canonical_text(make: str) -> None:
    ids = [new_task_id() for _ in range(2000)] if make == "one by one" else new_task_ids(2000)
    for text in ids:
        parsed = uuid.UUID(text)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text
    assert len(set(ids)) == len(ids) == 2000
    # The variant digit keeps its two random bits: all four values turn up.
    assert {text[19] for text in ids} == set("89ab")


def test_restore_gives_the_task_its_fields_describe() -> None:
    task = Task.new("email", {"to": "a@b.c"}, now=10.0, priority=3, request_id="r1")
    assert Task.restore(task.__dict__) == task
    required = {"id": "i", "type": "t", "payload": {}, "created_at": 1.0, "run_at": 2.0}
    assert Task.restore(required) == Task(**required)  # the rest take their defaults
