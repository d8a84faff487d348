"""Shapes of the HTTP API for OpenAPI; responses are rendered from Task.to_json directly.

Response models forbid extra fields, so the spec says exactly what is sent and
the fuzz test (tests/e2e/test_openapi_fuzz.py) catches a field added to one
and not the other.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from task_queue.api.limits import HEAD_TIMEOUT_SECONDS, MAX_BATCH, MAX_BODY_BYTES, MAX_HEAD_BYTES
from task_queue.client import TaskRequest
from task_queue.task import TaskStatus


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskOut(_Closed):
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
    progress: Any = None
    created_at: datetime
    run_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    updated_at: datetime


class BatchRequest(BaseModel):
    tasks: list[TaskRequest] = Field(min_length=1, max_length=MAX_BATCH)


class TaskList(_Closed):
    tasks: list[TaskOut]
    next_cursor: str | None = None


class ErrorDetail(_Closed):
    code: str
    message: str
    details: Any = None


class ErrorBody(_Closed):
    error: ErrorDetail


class WorkerOut(_Closed):
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


class WorkerList(_Closed):
    workers: list[WorkerOut]


# Open, unlike the others: the health endpoints are being extended in parallel work.
class Health(BaseModel):
    status: str
    backend: dict[str, Any]
    workers: int | None = None
    last_heartbeat_age_seconds: float | None = None


class WorkerCounts(_Closed):
    total: int
    busy: int


class Stats(_Closed):
    queue_size: int
    max_queue_size: int
    by_status: dict[str, int]
    by_type: dict[str, int]
    pending_by_queue: dict[str, int]
    workers: WorkerCounts
    processed: int
    failed: int
    throughput_per_second: float
    uptime_seconds: float
    backend: str


_RETRY_AFTER = {"schema": {"type": "string"}, "description": "seconds to wait before trying again"}
_CLOSE = {"schema": {"type": "string", "enum": ["close"]}, "description": "the body is not read"}
_ERROR_HEADERS: dict[int, dict[str, Any]] = {
    408: {"Connection": _CLOSE},
    413: {"Connection": _CLOSE},
    429: {"Retry-After": _RETRY_AFTER},
    503: {"Retry-After": _RETRY_AFTER},
}
_ERROR_DESCRIPTIONS = {
    400: "The body is not valid JSON",
    401: "No valid API key (when API_KEYS is set)",
    404: "No such task",
    408: "The body did not arrive in time",
    409: "The task's state or idempotency key forbids it",
    413: f"The body exceeds {MAX_BODY_BYTES} bytes, or a batch {MAX_BATCH} tasks",
    415: "The body is not application/json",
    422: "A field, query parameter or task type is invalid",
    429: "Rate limit exceeded (RATE_LIMIT)",
    503: "Queue full or backend unreachable",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route can return."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {"model": ErrorBody, "description": _ERROR_DESCRIPTIONS[status]}
        if status in _ERROR_HEADERS:
            entry["headers"] = _ERROR_HEADERS[status]
        out[status] = entry
    return out


# Every /api route but health sits behind the API key and the rate limit.
GUARDED = errors(401, 429)


def request_body(model: type[BaseModel], example: Any) -> dict[str, Any]:
    """An operation's requestBody, for routes that read their JSON by hand."""
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    content = {"application/json": {"schema": schema, "example": example}}
    return {"requestBody": {"required": True, "content": content}}


API_DESCRIPTION = f"""A distributed task queue: submit, watch and steer tasks.

Errors are `{{"error": {{"code", "message", "details"}}}}`. Before any route is
reached, the HTTP layer answers in the same shape and closes the connection:
400 `invalid_http` for a malformed request, 431 `headers_too_large` for a
request line and headers over {MAX_HEAD_BYTES} bytes, 408 `request_timeout`
when they take over {HEAD_TIMEOUT_SECONDS:g} seconds, and 503
`too_many_connections` at the connection limit.
"""


def add_request_schemas(app: FastAPI) -> None:
    """Put the hand-read request bodies' models into the spec's components."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        spec = build()
        _, defs = models_json_schema(
            [(TaskRequest, "validation"), (BatchRequest, "validation")],
            ref_template="#/components/schemas/{model}",
        )
        spec.setdefault("components", {}).setdefault("schemas", {}).update(defs["$defs"])
        return spec

    app.openapi = openapi  # type: ignore[method-assign]
