"""The /api/v1 endpoints of the contract."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse, PlainTextResponse
from pydantic import BaseModel, ValidationError

from task_queue.api.errors import ApiError, field_errors, json_response
from task_queue.api.limits import BODY_TIMEOUT_SECONDS, MAX_BATCH, MAX_BODY_BYTES, MAX_LIST_LIMIT
from task_queue.api.schemas import (
    GUARDED,
    BatchRequest,
    Health,
    Stats,
    TaskList,
    TaskOut,
    WorkerList,
    errors,
    request_body,
)
from task_queue.backends.base import Submitted, TaskFilter
from task_queue.client import MAX_WAIT_SECONDS, AsyncClient, TaskRequest
from task_queue.config import Settings
from task_queue.errors import BackendUnavailable
from task_queue.logs import get_logger
from task_queue.metrics import CONTENT_TYPE, Metrics
from task_queue.task import TaskStatus

log = get_logger("task_queue.api")
router = APIRouter(prefix="/api/v1")
root = APIRouter()
M = TypeVar("M", bound=BaseModel)

OUTPUT_FOLDERS = ("images", "outputs")
HEALTH_TIMEOUT_SECONDS = 2.0
CLOSE = {"Connection": "close"}
SUBMIT_ERRORS = {**errors(400, 408, 409, 413, 415, 422, 503), **GUARDED}
# Every route with a path or query parameter: FastAPI would otherwise declare
# its own 422 shape, which the error handler never sends.
LOOKUP_ERRORS = {**errors(404, 422, 503), **GUARDED}
LOCATION = {"Location": {"schema": {"type": "string"}, "description": "the task's URL"}}
EMAIL_TASK = {
    "type": "email",
    "payload": {"recipient": "user@example.com", "subject": "Hello", "body": "Hi"},
    "priority": 5,
}


def _client(request: Request) -> AsyncClient:
    client: AsyncClient = request.app.state.client
    return client


# Read from the request by hand: a declared Header parameter costs a fifth of a
# submit's time in FastAPI's dependency solver.
IDEMPOTENCY_HEADER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    "description": "Same as the body's idempotency_key; the body's wins when both are given.",
}


async def _read_json(request: Request) -> Any:
    """The body as JSON; what is not JSON, too large or too slow is refused before read whole."""
    media_type = request.headers.get("content-type", "application/json").split(";")[0].strip()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _too_large()
    try:
        async with asyncio.timeout(BODY_TIMEOUT_SECONDS):
            body = await _read_capped(request)
    except TimeoutError:
        message = f"body not received within {BODY_TIMEOUT_SECONDS:g} seconds"
        raise ApiError(408, "request_timeout", message, headers=CLOSE) from None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"body is not valid JSON: {exc}") from None


async def _read_capped(request: Request) -> bytes:
    # Counted as it arrives: a chunked body declares no length, and the server
    # already stops at a declared one.
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise _too_large()
    return bytes(body)


def _too_large() -> ApiError:
    # The rest of the body is never read, so the connection cannot carry another request.
    return ApiError(413, "payload_too_large", f"body exceeds {MAX_BODY_BYTES} bytes", headers=CLOSE)


def _validated(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        details = field_errors(exc.errors())
        message = "; ".join(f"{d['field']}: {d['message']}" for d in details)
        raise ApiError(422, "validation_error", message, details) from None


def _with_header_key(task: TaskRequest, key: str | None) -> TaskRequest:
    if key is None or task.idempotency_key is not None:
        return task
    return _validated(TaskRequest, {**task.model_dump(exclude_unset=True), "idempotency_key": key})


def _log_submitted(request: Request, outcome: list[Submitted]) -> None:
    """Log and count the tasks this request created; an idempotent repeat created none."""
    metrics: Metrics = request.app.state.metrics
    for item in outcome:
        task = item.task
        if item.created:
            metrics.submitted(task.type, task.queue)
            log.info(
                "task submitted",
                task_id=task.id,
                type=task.type,
                queue=task.queue,
                priority=task.priority,
                status=task.status.value,
            )


@router.post(
    "/tasks",
    status_code=201,
    responses={
        201: {"model": TaskOut, "description": "Queued", "headers": LOCATION},
        200: {"model": TaskOut, "description": "Came before with this key", "headers": LOCATION},
        **SUBMIT_ERRORS,
    },
    openapi_extra={**request_body(TaskRequest, EMAIL_TASK), "parameters": [IDEMPOTENCY_HEADER]},
)
async def submit_task(request: Request) -> Response:
    """Queue one task; 200 with the first task when its idempotency key came before."""
    task_request = _with_header_key(
        _validated(TaskRequest, await _read_json(request)),
        request.headers.get("idempotency-key"),
    )
    outcome = await _client(request).submit_requests(
        [task_request], request_id=request.state.request_id
    )
    _log_submitted(request, outcome)
    [item] = outcome
    return json_response(
        item.task.to_json(),
        201 if item.created else 200,
        {"Location": f"/api/v1/tasks/{item.task.id}"},
    )


@router.post(
    "/tasks/batch",
    status_code=201,
    responses={201: {"model": TaskList, "description": "All queued"}, **SUBMIT_ERRORS},
    openapi_extra=request_body(BatchRequest, {"tasks": [EMAIL_TASK]}),
)
async def submit_batch(request: Request) -> Response:
    """Queue up to 1000 tasks at once, all or none."""
    data = await _read_json(request)
    tasks = data.get("tasks") if isinstance(data, dict) else None
    if isinstance(tasks, list) and len(tasks) > MAX_BATCH:
        raise ApiError(413, "batch_too_large", f"a batch holds at most {MAX_BATCH} tasks")
    batch = _validated(BatchRequest, data)
    outcome = await _client(request).submit_requests(
        batch.tasks, request_id=request.state.request_id
    )
    _log_submitted(request, outcome)
    return json_response({"tasks": [item.task.to_json() for item in outcome]}, 201)


@router.get("/tasks/{task_id}", responses={200: {"model": TaskOut}, **LOOKUP_ERRORS})
async def get_task(
    request: Request,
    task_id: str,
    wait: Annotated[float, Query(ge=0, le=MAX_WAIT_SECONDS)] = 0,
) -> Response:
    """The task; with ?wait=S, held up to S seconds until it reaches a final state."""
    client = _client(request)
    task = await (client.wait(task_id, wait) if wait else client.get(task_id))
    return json_response(task.to_json())


@router.get(
    "/tasks/{task_id}/output",
    response_class=FileResponse,
    responses={
        200: {
            "description": "The file, in its own media type",
            "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
        },
        **LOOKUP_ERRORS,
    },
)
async def task_output(request: Request, task_id: str) -> Response:
    """The file a task wrote (a resized image, a processed CSV), named by its result."""
    task = await _client(request).get(task_id)
    settings: Settings = request.app.state.settings
    path = _output_path(task.result, settings.data_dir)
    if path is None:
        raise ApiError(404, "not_found", f"task {task_id} has no output file")
    return FileResponse(path, filename=path.name)


def _output_path(result: Any, data_dir: Path) -> Path | None:
    """The result's `output`, if it names an existing file in an output directory.

    The name comes from the task's result, so it is checked like user input: it
    must resolve inside DATA_DIR/images or DATA_DIR/outputs.
    """
    name = result.get("output") if isinstance(result, dict) else None
    if not isinstance(name, str):
        return None
    path = (data_dir / name).resolve()
    allowed = [(data_dir / folder).resolve() for folder in OUTPUT_FOLDERS]
    if not any(path.is_relative_to(folder) for folder in allowed) or not path.is_file():
        return None
    return path


@router.get("/tasks", responses={200: {"model": TaskList}, **errors(422, 503), **GUARDED})
async def list_tasks(
    request: Request,
    status: TaskStatus | None = None,
    type: str | None = None,
    queue: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = 50,
    cursor: str | None = None,
) -> Response:
    """Tasks, newest first; pass next_cursor back as cursor for the next page."""
    try:
        page = await _client(request).list_tasks(
            TaskFilter(status=status, type=type, queue=queue), limit=limit, cursor=cursor
        )
    except ValueError as exc:
        details = [{"field": "cursor", "message": str(exc)}]
        raise ApiError(422, "validation_error", str(exc), details) from None
    return json_response(
        {"tasks": [t.to_json() for t in page.tasks], "next_cursor": page.next_cursor}
    )


@router.post(
    "/tasks/{task_id}/cancel", responses={200: {"model": TaskOut}, **errors(409), **LOOKUP_ERRORS}
)
async def cancel_task(request: Request, task_id: str) -> Response:
    """Cancel a waiting task; a running one is asked to stop at its next heartbeat."""
    task = await _client(request).cancel(task_id)
    log.info("task cancel requested", task_id=task_id, status=task.status.value)
    return json_response(task.to_json())


@router.post(
    "/tasks/{task_id}/retry", responses={200: {"model": TaskOut}, **errors(409), **LOOKUP_ERRORS}
)
async def retry_task(request: Request, task_id: str) -> Response:
    """Run a failed or cancelled task again, attempts reset."""
    task = await _client(request).retry(task_id)
    log.info("task requeued", task_id=task_id)
    return json_response(task.to_json())


@router.get("/health", responses={200: {"model": Health}, 503: {"model": Health}})
async def health(request: Request) -> Response:
    """Ready when the backend answers within two seconds; a hung backend fails the probe.

    Also says how many workers are alive and how old the newest heartbeat is, so
    "the API is up but nothing runs tasks" shows without reading /workers.
    """
    backend = _client(request).backend
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT_SECONDS):
            details = await backend.ping()
            workers = await backend.workers()
    except (TimeoutError, BackendUnavailable) as exc:
        reason = str(exc) or "backend did not answer in time"
        body = {"status": "unhealthy", "backend": {"type": backend.name, "error": reason}}
        return json_response(body, 503)
    newest = max((w.last_heartbeat for w in workers), default=None)
    age = None if newest is None else round(max(0.0, backend.clock.now() - newest), 3)
    return json_response(
        {
            "status": "healthy",
            "backend": details,
            "workers": len(workers),
            "last_heartbeat_age_seconds": age,
        }
    )


@router.get("/health/live", responses={200: {"model": Health}})
async def live() -> Response:
    """Alive while the process serves requests; never touches the backend."""
    return json_response({"status": "alive", "backend": {}})


@router.get("/stats", responses={200: {"model": Stats}, **errors(503), **GUARDED})
async def stats(request: Request) -> Response:
    client = _client(request)
    settings: Settings = request.app.state.settings
    numbers = await client.stats()
    workers = await client.backend.workers()
    by_status = {status.value: 0 for status in TaskStatus} | numbers.by_status
    return json_response(
        {
            "queue_size": numbers.waiting,
            "max_queue_size": settings.queue_size,
            "by_status": by_status,
            "by_type": numbers.by_type,
            "pending_by_queue": numbers.pending_by_queue,
            "workers": {
                "total": len(workers),
                "busy": sum(1 for w in workers if w.current_tasks),
            },
            "processed": numbers.processed,
            "failed": numbers.failed,
            "throughput_per_second": round(numbers.finished_last_minute / 60, 3),
            "uptime_seconds": round(time.monotonic() - request.app.state.started, 3),
            "backend": client.backend.name,
        }
    )


@router.get("/workers", responses={200: {"model": WorkerList}, **errors(503), **GUARDED})
async def workers(request: Request) -> Response:
    """Every live worker of every process sharing the backend."""
    found = await _client(request).backend.workers()
    return json_response({"workers": [w.to_json() for w in found]})


@root.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request) -> Response:
    """Prometheus text: this machine's counters and the backend's queue and worker gauges."""
    found: Metrics = request.app.state.metrics
    text = await found.render(_client(request).backend)
    return Response(text, media_type=CONTENT_TYPE)
