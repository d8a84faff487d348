"""Task types: a name routed to a handler, with the defaults of that type.

Built-in and custom types register the same way, through `Registry.task`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from task_queue.errors import ConfigError, PayloadError, UnknownTaskType
from task_queue.processors import BUILT_IN_TYPES

if TYPE_CHECKING:
    from task_queue.config import Settings
    from task_queue.task import Task

Handler = Callable[..., Any]
F = TypeVar("F", bound=Handler)


@dataclass(slots=True, frozen=True)
class TaskContext:
    """What a handler may need besides its payload.

    `http` is one httpx client per worker process, shared by every task it runs,
    so connections to the same hosts are pooled and reused.
    """

    task: Task
    settings: Settings
    logger: Any
    http: httpx.AsyncClient
    report_progress: Callable[[Any], None]
    """Record how far the task got (any JSON), shown as `progress` when the task is read.

    A plain call from async and sync handlers alike; cheap enough to call per
    row: only the latest value is written, at most every half second.
    """

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir


@dataclass(slots=True, frozen=True)
class TaskType:
    """A registered type: its handler and the defaults a submit may override."""

    name: str
    handler: Handler
    is_async: bool
    wants_context: bool
    payload_model: type[BaseModel] | None = None
    max_retries: int | None = None
    timeout_seconds: float | None = None
    queue: str | None = None
    priority: int | None = None

    def validate(self, payload: Mapping[str, Any]) -> Any:
        """The payload as the handler receives it; PayloadError names the bad fields."""
        if self.payload_model is None:
            return payload
        try:
            return self.payload_model.model_validate(payload)
        except ValidationError as exc:
            details = [
                {"field": ".".join(["payload", *(str(p) for p in e["loc"])]), "message": e["msg"]}
                for e in exc.errors(include_url=False)
            ]
            raise PayloadError(f"invalid payload for task type {self.name!r}", details) from None


class Registry:
    """Maps type names to handlers; the worker routes every task through one of these.

    A `deferred` type is known by name (names(), `in`) before its module is
    imported; the first get() imports the module, whose decorator registers it.
    The built-in types' modules bring Pillow, aiosmtplib and their pydantic
    models: 0.07 s and 4 MB of every start of a process that may never run them.
    """

    def __init__(self, deferred: Mapping[str, str] | None = None) -> None:
        self._types: dict[str, TaskType] = {}
        self._deferred = dict(deferred or {})  # type name -> module that registers it

    def task(
        self,
        name: str | None = None,
        *,
        payload: type[BaseModel] | None = None,
        max_retries: int | None = None,
        timeout_seconds: float | None = None,
        queue: str | None = None,
        priority: int | None = None,
    ) -> Callable[[F], F]:
        """Register a function (sync or async) as a task type.

        The handler receives the payload (a dict, or an instance of `payload` when
        given, validated at submit time), and a `TaskContext` as second argument
        if it takes one. Sync handlers run in a thread so they never block the loop.
        """

        def register(handler: F) -> F:
            type_name = name or handler.__name__
            params = inspect.signature(handler).parameters
            self._types[type_name] = TaskType(
                name=type_name,
                handler=handler,
                is_async=inspect.iscoroutinefunction(handler),
                wants_context=len(params) >= 2,
                payload_model=payload,
                max_retries=max_retries,
                timeout_seconds=timeout_seconds,
                queue=queue,
                priority=priority,
            )
            return handler

        return register

    def get(self, name: str) -> TaskType:
        found = self._types.get(name)
        if found is None and name in self._deferred:
            # Imported before it leaves _deferred: another thread asking meanwhile
            # waits on the import lock rather than find the type in neither place.
            importlib.import_module(self._deferred[name])
            self._deferred.pop(name, None)
            found = self._types.get(name)
        if found is None:
            raise UnknownTaskType(name)
        return found

    def __contains__(self, name: object) -> bool:
        return name in self._types or name in self._deferred

    def names(self) -> list[str]:
        return sorted(self._types.keys() | self._deferred.keys())

    def load_deferred(self) -> None:
        """Import every deferred type's module now rather than at its first lookup."""
        for name in list(self._deferred):
            self.get(name)


default_registry = Registry(deferred=BUILT_IN_TYPES)
"""Where `task_queue.task_type` registers, and what processes use unless told otherwise."""

task_type = default_registry.task


ENTRY_POINT_GROUP = "task_queue.tasks"


def load_modules(names: Iterable[str]) -> None:
    """Import the modules that register task types, so their decorators run.

    Those of installed packages that declare an entry point in the group
    `task_queue.tasks` (`[project.entry-points."task_queue.tasks"]`), then TASK_MODULES.
    """
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
        except Exception as exc:
            raise ConfigError(
                f"entry point {entry.name} = {entry.value} in {ENTRY_POINT_GROUP}: "
                f"cannot be loaded ({exc})"
            ) from None
    for module in names:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(f"TASK_MODULES={module!r}: cannot be imported ({exc})") from None
