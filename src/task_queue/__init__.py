"""task-queue: a distributed task queue for Python.

Submit work from Python with `Client` (or `AsyncClient`), from anywhere with
`HttpClient` or the REST API; register task types with `task_type`.
"""

__version__ = "0.1.0"

from task_queue.client import AsyncClient, Client, TaskRequest
from task_queue.errors import (
    BackendUnavailable,
    IdempotencyConflict,
    InvalidTransition,
    PermanentError,
    QueueFull,
    Retry,
    TaskNotFound,
    TaskQueueError,
)
from task_queue.http_client import AsyncHttpClient, HttpClient
from task_queue.registry import Registry, TaskContext, default_registry, task_type
from task_queue.task import Task, TaskStatus

__all__ = [
    # clients
    "AsyncClient",
    "AsyncHttpClient",
    # errors
    "BackendUnavailable",
    "Client",
    "HttpClient",
    "IdempotencyConflict",
    "InvalidTransition",
    "PermanentError",
    "QueueFull",
    # task types
    "Registry",
    "Retry",
    # tasks
    "Task",
    "TaskContext",
    "TaskNotFound",
    "TaskQueueError",
    "TaskRequest",
    "TaskStatus",
    "__version__",
    "default_registry",
    "task_type",
]
