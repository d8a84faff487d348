"""Request ids and one structured log line per request, as plain ASGI (no per-request tasks)."""

from __future__ import annotations

import os
import re
import time
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from task_queue.logs import get_logger

log = get_logger("task_queue.api")

_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


class RequestLog:
    """Keeps an incoming X-Request-ID (or makes one), returns it, and logs the request.

    The id is bound to the logging context, so the task a request creates
    carries it, and the worker's lines about that task repeat it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

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
            route = scope.get("route")
            client = scope.get("client")
            log.info(
                "request",
                method=scope["method"],
                path=getattr(route, "path", scope["path"]),
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
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
