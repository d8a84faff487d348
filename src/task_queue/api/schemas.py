"""Shapes of the HTTP API for OpenAPI; responses are rendered from Task.to_json directly."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from task_queue.api.limits import MAX_BATCH
from task_queue.client import TaskRequest
from task_queue.task import TaskStatus


class TaskOut(BaseModel):
    id: str
    type: str
    queue: str
    payload: dict[str, Any]
    priority: int
    status: TaskStatus
    attempts: int
    max_retries: int
    timeout_seconds: float
    idempotency_key: str | None
    result: Any
    error: str | None
    created_at: datetime
    run_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    updated_at: datetime


class BatchRequest(BaseModel):
    tasks: list[TaskRequest] = Field(min_length=1, max_length=MAX_BATCH)


class TaskList(BaseModel):
    tasks: list[TaskOut]
    next_cursor: str | None = None


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class WorkerOut(BaseModel):
    id: str
    hostname: str
    pid: int
    queues: list[str]
    concurrency: int
    state: str
    current_tasks: list[str]
    processed: int
    failed: int
    started_at: datetime
    last_heartbeat: datetime


class WorkerList(BaseModel):
    workers: list[WorkerOut]


class Health(BaseModel):
    status: str
    backend: dict[str, Any]
    workers: int | None = None


class WorkerCounts(BaseModel):
    total: int
    busy: int


class Stats(BaseModel):
    queue_size: int
    max_queue_size: int
    by_status: dict[str, int]
    by_type: dict[str, int]
    workers: WorkerCounts
    processed: int
    failed: int
    throughput_per_second: float
    uptime_seconds: float
    backend: str


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route can return."""
    return {status: {"model": ErrorBody} for status in statuses}
