"""Request ids, one structured log line and the HTTP metrics per request, as plain ASGI.

Plain ASGI rather than BaseHTTPMiddleware: no extra task per request.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from task_queue.logs import get_logger
from task_queue.metrics import UNMATCHED_ROUTE, Metrics

log = get_logger("task_queue.api")

_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


class RequestLog:
    """Keeps an incoming X-Request-ID (or makes one), returns it, logs and counts the request.

    The id is bound to the logging context, so the task a request creates
    carries it, and the worker's lines about that task repeat it. Log line and
    metrics name the route template (/api/v1/tasks/{task_id}), never the raw
    path, so task ids and probes of unknown paths add no label values.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_id(scope) or os.urandom(16).hex()
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        bound = structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", UNMATCHED_ROUTE)
            self.metrics.request_done(scope["method"], route, status, seconds)
            client = scope.get("client")
            log.info(
                "request",
                method=scope["method"],
                path=scope["path"],
                route=route,
                status=status,
                duration_ms=round(seconds * 1000, 3),
                client=client[0] if client else None,
            )
            structlog.contextvars.reset_contextvars(**bound)


def _incoming_id(scope: Scope) -> str | None:
    headers: Any = scope.get("headers", [])
    for name, value in headers:
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _SAFE_REQUEST_ID.match(text) else None
    return None
