"""Clients for a remote task-queue over its REST API, with the same methods as AsyncClient."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self, Unpack

import httpx

from task_queue.client import MAX_WAIT_SECONDS, BlockingClient, SubmitOptions, TaskRequest
from task_queue.errors import (
    BackendUnavailable,
    IdempotencyConflict,
    InvalidTransition,
    QueueFull,
    TaskNotFound,
    TaskQueueError,
)
from task_queue.task import Task


class HttpError(TaskQueueError):
    """The API refused a request for a reason with no error class of its own (422, 429...)."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.details = details


_ERRORS: dict[str, type[TaskQueueError]] = {
    "not_found": TaskNotFound,
    "invalid_state": InvalidTransition,
    "idempotency_conflict": IdempotencyConflict,
    "queue_full": QueueFull,
    "backend_unavailable": BackendUnavailable,
}


class AsyncHttpClient:
    """Submit and steer tasks on a task-queue server: `AsyncHttpClient("http://host:8080")`."""

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 10.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/api/v1", headers=headers, timeout=timeout
        )

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise BackendUnavailable(f"cannot reach the task-queue API: {exc}") from exc
        body = response.json()
        if response.is_success:
            return body
        error = body.get("error", {}) if isinstance(body, dict) else {}
        code, message = error.get("code", "http_error"), error.get("message", response.text)
        kind = _ERRORS.get(code)
        if kind is not None:
            raise kind(message)
        raise HttpError(response.status_code, code, message, error.get("details"))

    async def submit(
        self, type: str, payload: Mapping[str, Any] | None = None, **options: Unpack[SubmitOptions]
    ) -> Task:
        request = TaskRequest(type=type, payload=dict(payload or {}), **options)
        body = request.model_dump(mode="json", exclude_none=True)
        return Task.from_json(await self._call("POST", "/tasks", json=body))

    async def get(self, task_id: str) -> Task:
        return Task.from_json(await self._call("GET", f"/tasks/{task_id}"))

    async def wait(self, task_id: str, timeout: float = MAX_WAIT_SECONDS) -> Task:
        """Long-polls the server, so the answer comes the moment the task is final."""
        wait = min(timeout, MAX_WAIT_SECONDS)
        return Task.from_json(
            await self._call("GET", f"/tasks/{task_id}", params={"wait": wait}, timeout=wait + 10)
        )

    async def cancel(self, task_id: str) -> Task:
        return Task.from_json(await self._call("POST", f"/tasks/{task_id}/cancel"))

    async def retry(self, task_id: str) -> Task:
        return Task.from_json(await self._call("POST", f"/tasks/{task_id}/retry"))

    async def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = await self._call("GET", "/stats")
        return stats

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class HttpClient(BlockingClient):
    """The blocking form of AsyncHttpClient, for scripts."""

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 10.0) -> None:
        super().__init__(_connect(base_url, api_key, timeout))


async def _connect(base_url: str, api_key: str | None, timeout: float) -> AsyncHttpClient:
    # httpx binds its connection pool to the loop it is created on: the runner's.
    return AsyncHttpClient(base_url, api_key=api_key, timeout=timeout)
