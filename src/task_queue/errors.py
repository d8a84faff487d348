"""Every error task-queue raises on purpose, in one hierarchy."""

from __future__ import annotations

from typing import Any


class TaskQueueError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(TaskQueueError):
    """A setting is missing or invalid; the message names the variable."""


class TaskNotFound(TaskQueueError):
    """No task has this id."""


class InvalidTransition(TaskQueueError):
    """The task's status does not allow the requested change (cancel a completed task)."""


class IdempotencyConflict(TaskQueueError):
    """The idempotency key was used before with a different request."""


class QueueFull(TaskQueueError):
    """The backend holds QUEUE_SIZE waiting tasks already."""


class BackendUnavailable(TaskQueueError):
    """The backend cannot be reached or cannot take the write right now."""


class LeaseLost(TaskQueueError):
    """The caller's lease on a task expired and the task moved on without it."""


class UnknownTaskType(TaskQueueError):
    """No handler is registered under this type name."""


class PermanentError(TaskQueueError):
    """Raised by a handler: the task can never succeed, so fail it without retrying."""


class Retry(TaskQueueError):
    """Raised by a handler: retry the task, after `delay` seconds when given."""

    def __init__(self, message: str = "retry requested", *, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class TaskTimeout(TaskQueueError):
    """The handler ran longer than the task's timeout_seconds."""


class PayloadError(PermanentError):
    """The payload does not fit the handler's model; never worth a retry."""

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.details = details
