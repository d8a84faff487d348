"""Submitting and steering tasks from Python: what the HTTP API and the CLI call too.

`AsyncClient` talks to a backend directly (in the same process as a worker, or
sharing its SQLite file or Redis); `Client` is its blocking form for scripts.
The HTTP forms with the same methods live in `task_queue.http_client`.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Coroutine, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Protocol, Self, TypedDict, TypeVar, Unpack

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from task_queue import backends
from task_queue._clock import Clock, SystemClock
from task_queue.backends.base import Backend, Page, QueueStats, Submitted, TaskFilter
from task_queue.registry import Registry, default_registry, load_modules
from task_queue.task import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_QUEUE,
    DEFAULT_TIMEOUT_SECONDS,
    Task,
    new_task_ids,
)

if TYPE_CHECKING:
    from task_queue.config import Settings

T = TypeVar("T")

StrictInt = Annotated[int, Field(strict=True)]
QueueName = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")]

MAX_WAIT_SECONDS = 60.0
# wait() reads the task again after a pause that doubles from the first to the
# second, or as soon as the backend hears the task became final.
WAIT_POLL = (0.005, 0.25)
MAX_DELAY_SECONDS = 365 * 24 * 3600.0
# Deeper than this is a mistake or an attack, and orjson cannot encode past 255 levels.
MAX_PAYLOAD_DEPTH = 32


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in a JSON value (a scalar is 0).

    Only containers are queued, each with its own depth: a payload of scalars,
    the common one, is one pass over its values (half the time of queueing
    every value, and every submit checks its payload).
    """
    if not isinstance(value, dict | list):
        return 0
    deepest, todo = 1, [(value, 1)]
    while todo:
        item, depth = todo.pop()
        deepest = max(deepest, depth)
        if depth > MAX_PAYLOAD_DEPTH:
            break
        for child in item.values() if isinstance(item, dict) else item:
            if isinstance(child, dict | list):
                todo.append((child, depth + 1))
    return deepest


class TaskRequest(BaseModel):
    """A submit as the HTTP API and the clients accept it; unset options take type defaults."""

    model_config = ConfigDict(extra="forbid")

    type: Annotated[str, Field(min_length=1, max_length=100)]
    payload: dict[str, Any] = Field(default_factory=dict)
    priority: Annotated[StrictInt | None, Field(ge=0, le=10)] = None
    queue: QueueName | None = None
    max_retries: Annotated[StrictInt | None, Field(ge=0, le=100)] = None
    timeout_seconds: Annotated[float | None, Field(gt=0, le=7 * 24 * 3600)] = None
    delay_seconds: Annotated[float | None, Field(ge=0, le=MAX_DELAY_SECONDS)] = None
    run_at: AwareDatetime | None = None
    idempotency_key: Annotated[str | None, Field(min_length=1, max_length=255)] = None

    @field_validator("payload")
    @classmethod
    def _shallow(cls, payload: dict[str, Any]) -> dict[str, Any]:
        if _depth(payload) > MAX_PAYLOAD_DEPTH:
            raise ValueError(f"payload nests deeper than {MAX_PAYLOAD_DEPTH} levels")
        return payload

    @field_validator("run_at")
    @classmethod
    def _within_a_year(cls, run_at: datetime | None) -> datetime | None:
        if run_at is not None and run_at.timestamp() > time.time() + MAX_DELAY_SECONDS:
            raise ValueError("run_at must be within 365 days from now")
        return run_at

    @model_validator(mode="after")
    def _one_way_to_delay(self) -> Self:
        if self.delay_seconds is not None and self.run_at is not None:
            raise ValueError("give delay_seconds or run_at, not both")
        return self

    def fingerprint(self) -> str:
        """Identifies the request, so a reused idempotency key can be told apart."""
        fields = self.model_dump(mode="json", exclude={"idempotency_key"})
        return hashlib.sha256(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)).hexdigest()


class SubmitOptions(TypedDict, total=False):
    priority: int
    queue: str
    max_retries: int
    timeout_seconds: float
    delay_seconds: float
    run_at: datetime
    idempotency_key: str


class AsyncClient:
    """Submit, read, wait for, cancel and retry tasks through a backend."""

    def __init__(
        self,
        backend: Backend,
        *,
        registry: Registry = default_registry,
        clock: Clock | None = None,
    ) -> None:
        self.backend = backend
        self.registry = registry
        self.clock = clock or SystemClock()
        self._stopping = asyncio.Event()

    @classmethod
    async def connect(cls, settings: Settings, *, registry: Registry = default_registry) -> Self:
        """A client on the backend the settings name, opened and ready.

        Imports TASK_MODULES as the server does, so custom types validate here too.
        """
        load_modules(settings.task_modules)
        backend = backends.create(settings)
        await backend.open()
        return cls(backend, registry=registry)

    async def close(self) -> None:
        await self.backend.close()

    def build(
        self,
        request: TaskRequest,
        *,
        now: float,
        request_id: str | None = None,
        task_id: str | None = None,
    ) -> Task:
        """The task a request describes; UnknownTaskType or PayloadError when it cannot run."""
        kind = self.registry.get(request.type)
        kind.validate(request.payload)
        if request.run_at is not None:
            run_at: float | None = request.run_at.timestamp()
        elif request.delay_seconds is not None:
            run_at = now + request.delay_seconds
        else:
            run_at = None
        return Task.new(
            request.type,
            request.payload,
            now=now,
            run_at=run_at,
            queue=request.queue or kind.queue or DEFAULT_QUEUE,
            priority=_first(request.priority, kind.priority, 0),
            max_retries=_first(request.max_retries, kind.max_retries, DEFAULT_MAX_RETRIES),
            timeout_seconds=float(
                request.timeout_seconds or kind.timeout_seconds or DEFAULT_TIMEOUT_SECONDS
            ),
            idempotency_key=request.idempotency_key,
            request_hash=request.fingerprint() if request.idempotency_key else None,
            request_id=request_id,
            id=task_id,
        )

    async def submit_requests(
        self, requests: Sequence[TaskRequest], *, request_id: str | None = None
    ) -> list[Submitted]:
        """Validate and store a batch, all or none.

        Its tasks are created at one moment, so they share created_at and (unless
        delayed) run_at, and keep their order in the batch among themselves.
        """
        now = self.clock.now()
        if len(requests) == 1:  # a lone submit's id the usual way: no list of them
            tasks = [self.build(requests[0], now=now, request_id=request_id)]
        else:  # a batch's ids from one read of the random source
            ids = iter(new_task_ids(len(requests)))
            tasks = [
                self.build(r, now=now, request_id=request_id, task_id=next(ids)) for r in requests
            ]
        return await self.backend.enqueue(tasks)

    async def submit(
        self, type: str, payload: Mapping[str, Any] | None = None, **options: Unpack[SubmitOptions]
    ) -> Task:
        request = TaskRequest(type=type, payload=dict(payload or {}), **options)
        [submitted] = await self.submit_requests([request])
        return submitted.task

    async def get(self, task_id: str) -> Task:
        return await self.backend.get(task_id)

    async def wait(self, task_id: str, timeout: float = MAX_WAIT_SECONDS) -> Task:
        """The task once final, or as it is when `timeout` seconds have passed.

        Also as it is once `stop_waiting()` was called: a server shutting down
        answers its long-polls instead of cutting them off.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        pause = WAIT_POLL[0]
        while True:
            task = await self.backend.get(task_id)
            left = deadline - loop.time()
            if task.status.is_final or left <= 0 or self._stopping.is_set():
                return task
            # Until the backend hears the task became final (as its own process
            # stored it, or on Redis from any process), the pause ends, or
            # stop_waiting() is called: then read the task again.
            heard = asyncio.ensure_future(self.backend.until_final(task_id, min(pause, left)))
            stopping = asyncio.ensure_future(self._stopping.wait())
            try:
                await asyncio.wait({heard, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:  # also when the caller gave up (an HTTP client went away)
                for waiting in (heard, stopping):
                    waiting.cancel()
            pause = min(pause * 2, WAIT_POLL[1])

    def stop_waiting(self) -> None:
        """End every wait() now and from now on, each with the task as it is."""
        self._stopping.set()

    async def cancel(self, task_id: str) -> Task:
        return await self.backend.cancel(task_id)

    async def retry(self, task_id: str) -> Task:
        return await self.backend.requeue(task_id)

    async def list_tasks(
        self, filter: TaskFilter | None = None, *, limit: int = 50, cursor: str | None = None
    ) -> Page:
        return await self.backend.list_tasks(filter or TaskFilter(), limit, cursor)

    async def stats(self) -> QueueStats:
        return await self.backend.stats()


def _first(given: int | None, default: int | None, fallback: int) -> int:
    """The first that is set: 0 is a value here, unlike for names and timeouts."""
    if given is not None:
        return given
    return fallback if default is None else default


class BlockingRunner:
    """Runs an async client's coroutines on a private event loop thread.

    Lets scripts and synchronous web apps use the async clients without owning a loop.
    """

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="task-queue-client", daemon=True
        )
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


class TaskClient(Protocol):
    """What every client offers, local or over HTTP; the blocking forms wrap one of these."""

    async def submit(
        self, type: str, payload: Mapping[str, Any] | None = None, **options: Unpack[SubmitOptions]
    ) -> Task: ...

    async def get(self, task_id: str) -> Task: ...

    async def wait(self, task_id: str, timeout: float = MAX_WAIT_SECONDS) -> Task: ...

    async def cancel(self, task_id: str) -> Task: ...

    async def retry(self, task_id: str) -> Task: ...

    async def close(self) -> None: ...


class BlockingClient:
    """Any TaskClient's methods as plain blocking calls, run on a private loop thread."""

    def __init__(self, connect: Coroutine[Any, Any, TaskClient]) -> None:
        self._runner = BlockingRunner()
        self._client = self._runner.run(connect)

    def submit(
        self, type: str, payload: Mapping[str, Any] | None = None, **options: Unpack[SubmitOptions]
    ) -> Task:
        return self._runner.run(self._client.submit(type, payload, **options))

    def get(self, task_id: str) -> Task:
        return self._runner.run(self._client.get(task_id))

    def wait(self, task_id: str, timeout: float = MAX_WAIT_SECONDS) -> Task:
        """The task once final, or as it is when `timeout` seconds have passed."""
        return self._runner.run(self._client.wait(task_id, timeout))

    def cancel(self, task_id: str) -> Task:
        return self._runner.run(self._client.cancel(task_id))

    def retry(self, task_id: str) -> Task:
        return self._runner.run(self._client.retry(task_id))

    def close(self) -> None:
        self._runner.run(self._client.close())
        self._runner.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Client(BlockingClient):
    """The blocking form of AsyncClient: `Client().submit("email", {...})`.

    Talks to the backend the settings name (the environment by default), so a
    script on the same machine as a SQLite worker, or anywhere that reaches its
    Redis, submits without an HTTP hop.
    """

    def __init__(self, settings: Settings | None = None, *, registry: Registry = default_registry):
        from task_queue.config import Settings

        super().__init__(AsyncClient.connect(settings or Settings.load(), registry=registry))
