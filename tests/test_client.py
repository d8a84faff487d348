"""AsyncClient turns requests into tasks: validation, type defaults, delays, idempotency."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from task_queue._clock import ManualClock
from task_queue.backends.memory import MemoryBackend
from task_queue.client import MAX_PAYLOAD_DEPTH, AsyncClient, TaskRequest, _depth
from task_queue.errors import IdempotencyConflict, PayloadError, UnknownTaskType
from task_queue.registry import Registry
from task_queue.task import TaskStatus


class Greeting(BaseModel):
    name: str


@pytest.fixture
async def client(clock: ManualClock) -> AsyncIterator[AsyncClient]:
    registry = Registry()

    @registry.task("greet", payload=Greeting, max_retries=7, queue="greetings", priority=4)
    async def greet(payload: Greeting) -> str:
        return f"hello {payload.name}"

    @registry.task("plain")
    def plain(payload: dict[str, Any]) -> None:
        return None

    backend = MemoryBackend(clock=clock)
    yield AsyncClient(backend, registry=registry, clock=clock)
    await backend.close()


async def test_unset_options_take_the_type_defaults(client: AsyncClient) -> None:
    task = await client.submit("greet", {"name": "Ada"})
    assert (task.queue, task.priority, task.max_retries) == ("greetings", 4, 7)
    assert task.timeout_seconds == 300


async def test_given_options_beat_the_type_defaults(client: AsyncClient) -> None:
    task = await client.submit("greet", {"name": "Ada"}, priority=9, queue="vip", max_retries=0)
    assert (task.queue, task.priority, task.max_retries) == ("vip", 9, 0)


async def test_unknown_type_is_refused_at_submit(client: AsyncClient) -> None:
    with pytest.raises(UnknownTaskType):
        await client.submit("nope")


async def test_payload_is_validated_against_the_type_model_at_submit(
    client: AsyncClient,
) -> None:
    with pytest.raises(PayloadError) as caught:
        await client.submit("greet", {"name": 42})
    assert caught.value.details[0]["field"] == "payload.name"


async def test_delay_makes_a_scheduled_task(client: AsyncClient, clock: ManualClock) -> None:
    task = await client.submit("plain", delay_seconds=30)
    assert task.status is TaskStatus.SCHEDULED
    assert task.run_at == clock.now() + 30


async def test_run_at_in_the_past_runs_now(client: AsyncClient, clock: ManualClock) -> None:
    past = datetime.fromtimestamp(clock.now(), UTC) - timedelta(hours=1)
    task = await client.submit("plain", run_at=past)
    assert task.status is TaskStatus.PENDING
    assert task.run_at == clock.now()


@pytest.mark.parametrize(
    ("fields", "bad_field"),
    [
        ({"priority": 11}, "priority"),
        ({"priority": -1}, "priority"),
        ({"priority": "5"}, "priority"),
        ({"max_retries": 101}, "max_retries"),
        ({"payload": [1, 2]}, "payload"),
        ({"run_at": "tomorrow"}, "run_at"),
        ({"run_at": "2030-01-01T00:00:00"}, "run_at"),
        ({"queue": "has spaces"}, "queue"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_invalid_requests_name_the_field(fields: dict[str, Any], bad_field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        TaskRequest.model_validate({"type": "plain", **fields})
    assert caught.value.errors()[0]["loc"][0] == bad_field


def test_delay_and_run_at_together_are_refused() -> None:
    with pytest.raises(ValidationError, match="not both"):
        TaskRequest(type="plain", delay_seconds=1, run_at=datetime.now(UTC))


async def test_idempotency_key_returns_the_first_task_for_the_same_request(
    client: AsyncClient,
) -> None:
    first = await client.submit("plain", {"a": 1}, idempotency_key="order-1")
    again = await client.submit("plain", {"a": 1}, idempotency_key="order-1")
    assert again.id == first.id
    with pytest.raises(IdempotencyConflict):
        await client.submit("plain", {"a": 2}, idempotency_key="order-1")


async def test_wait_returns_the_task_as_it_is_when_time_runs_out(client: AsyncClient) -> None:
    task = await client.submit("plain")
    waited = await client.wait(task.id, timeout=0.01)
    assert waited.status is TaskStatus.PENDING


async def test_a_wait_given_up_by_its_caller_leaves_nothing_running(client: AsyncClient) -> None:
    """An HTTP client that goes away cancels its long-poll: nothing of it may linger."""
    task = await client.submit("plain")
    before = asyncio.all_tasks()
    waiting = asyncio.create_task(client.wait(task.id, timeout=30))
    await asyncio.sleep(0.05)  # into its pauses
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    async with asyncio.timeout(5):  # the cancelled helpers end within a few turns
        while True:
            if asyncio.all_tasks() == before:
                break
            await asyncio.sleep(0)


def test_run_at_more_than_a_year_ahead_is_refused() -> None:
    with pytest.raises(ValidationError, match="365 days"):
        TaskRequest(type="plain", run_at=datetime(9999, 12, 31, tzinfo=UTC))


def test_deeply_nested_payload_is_refused() -> None:
    payload: dict[str, Any] = {}
    inner = payload
    for _ in range(40):
        inner["x"] = {}
        inner = inner["x"]
    with pytest.raises(ValidationError, match="nests deeper"):
        TaskRequest(type="plain", payload=payload)


@pytest.mark.parametrize("inner", [{}, [], 7])
def test_a_payload_nested_to_the_limit_passes_and_one_level_more_is_refused(inner: Any) -> None:
    """The payload is the first level; lists count as objects do, scalars not at all."""

    def nested(levels: int) -> dict[str, Any]:
        value: Any = inner
        for level in range(levels - 1 - isinstance(inner, dict | list)):
            value = [value] if level % 2 else {"x": value}
        return {"x": value}

    at_limit = nested(MAX_PAYLOAD_DEPTH)
    assert _depth(at_limit) == MAX_PAYLOAD_DEPTH
    TaskRequest(type="plain", payload=at_limit)
    with pytest.raises(ValidationError, match="nests deeper"):
        TaskRequest(type="plain", payload=nested(MAX_PAYLOAD_DEPTH + 1))
