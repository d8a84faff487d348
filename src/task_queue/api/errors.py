"""Every failure becomes the contract's error shape: {"error": {code, message, details}}."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from task_queue.errors import (
    BackendUnavailable,
    IdempotencyConflict,
    InvalidTransition,
    PayloadError,
    QueueFull,
    TaskNotFound,
    UnknownTaskType,
)
from task_queue.logs import get_logger

log = get_logger("task_queue.api")

RETRY_AFTER_SECONDS = "1"


class ApiError(Exception):
    """An HTTP failure raised by a route, rendered in the contract's shape."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status, headers, media_type="application/json")


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> Response:
    body = {"error": {"code": code, "message": message, "details": details}}
    return json_response(body, status, headers)


def field_errors(errors: Any, prefix: tuple[str, ...] = ()) -> list[dict[str, str]]:
    """Pydantic's error list as [{"field": "payload.to", "message": ...}]."""
    out = []
    for error in errors:
        loc = [str(p) for p in (*prefix, *error["loc"]) if p != "body"]
        out.append({"field": ".".join(loc) or "body", "message": error["msg"]})
    return out


def _status_of(exc: Exception) -> tuple[int, str, Any, dict[str, str] | None]:
    if isinstance(exc, ApiError):
        return exc.status, exc.code, exc.details, exc.headers
    if isinstance(exc, TaskNotFound):
        return 404, "not_found", None, None
    if isinstance(exc, InvalidTransition):
        return 409, "invalid_state", None, None
    if isinstance(exc, IdempotencyConflict):
        return 409, "idempotency_conflict", None, None
    if isinstance(exc, UnknownTaskType):
        return 422, "unknown_task_type", [{"field": "type", "message": "unknown task type"}], None
    if isinstance(exc, PayloadError):
        return 422, "invalid_payload", exc.details, None
    if isinstance(exc, QueueFull):
        return 503, "queue_full", None, {"Retry-After": RETRY_AFTER_SECONDS}
    if isinstance(exc, BackendUnavailable):
        return 503, "backend_unavailable", None, {"Retry-After": RETRY_AFTER_SECONDS}
    raise exc


def _message(exc: Exception) -> str:
    if isinstance(exc, TaskNotFound):
        return f"task {exc} not found"
    if isinstance(exc, UnknownTaskType):
        return f"unknown task type {exc}"
    return str(exc)


async def _domain_error(request: Request, exc: Exception) -> Response:
    status, code, details, headers = _status_of(exc)
    return error_response(status, code, _message(exc), details, headers)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    details = field_errors(exc.errors())
    message = "invalid request: " + "; ".join(f"{d['field']}: {d['message']}" for d in details)
    return error_response(422, "validation_error", message, details)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    headers = dict(exc.headers) if exc.headers else None
    return error_response(exc.status_code, code, str(exc.detail), None, headers)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error", path=request.url.path)
    return error_response(500, "internal_error", "internal server error")


def install(app: FastAPI) -> None:
    for kind in (
        ApiError,
        TaskNotFound,
        InvalidTransition,
        IdempotencyConflict,
        UnknownTaskType,
        PayloadError,
        QueueFull,
        BackendUnavailable,
    ):
        app.add_exception_handler(kind, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
