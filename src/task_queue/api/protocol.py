"""uvicorn's httptools protocol with the limits it lacks: head size, head time, connections.

uvicorn 0.54 with httptools arms no timer until a first response is sent, and
any byte cancels its keep-alive timer, so a client that opens a connection and
sends its headers a byte at a time holds it forever; httptools buffers a header
of any size. This protocol closes both holes, and answers what the HTTP layer
refuses in the API's error shape, not uvicorn's plain text.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from task_queue.api.limits import HEAD_TIMEOUT_SECONDS, MAX_CONNECTIONS, MAX_HEAD_BYTES


class _HeadTooLarge(Exception):
    pass


class GuardedHttpProtocol(HttpToolsProtocol):
    """Cuts off heads over MAX_HEAD_BYTES (431) or slower than HEAD_TIMEOUT_SECONDS (408)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._in_head = True
        self._head_bytes = 0  # as received, so a header still arriving counts
        self._parsed_head_bytes = 0  # as parsed, exact where one read holds a whole head
        self._refusal: tuple[int, str, str] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > MAX_CONNECTIONS:
            self._refuse(503, "too_many_connections", "the server is at its connection limit")
            return
        self._start_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():
            self._refuse_large_head()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._in_head:
            self._start_head()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._count(len(name) + len(value) + 4)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._stop_head_timer()
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        status, code, message = self._refusal or (400, "invalid_http", msg)
        self._refuse(status, code, message)

    def _start_head(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        self._parsed_head_bytes = 0
        self._stop_head_timer()
        self._head_timer = self.loop.call_later(HEAD_TIMEOUT_SECONDS, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _count(self, size: int) -> None:
        self._parsed_head_bytes += size
        if self._parsed_head_bytes > MAX_HEAD_BYTES:
            self._refusal = (431, "headers_too_large", f"headers exceed {MAX_HEAD_BYTES} bytes")
            raise _HeadTooLarge  # httptools turns it into an error, then send_400_response

    def _refuse_large_head(self) -> None:
        self._refuse(431, "headers_too_large", f"headers exceed {MAX_HEAD_BYTES} bytes")

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # a response is being written: no room for another
            return
        message = f"headers not received within {HEAD_TIMEOUT_SECONDS:g} seconds"
        self._refuse(408, "request_timeout", message)

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer in the API's error shape and close: the stream cannot be trusted further."""
        self._stop_head_timer()
        body = orjson.dumps({"error": {"code": code, "message": message, "details": None}})
        head = [
            STATUS_LINE[status],
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n",
        ]
        if status == 503:
            head.append(b"retry-after: 1\r\n")
        self.transport.write(b"".join([*head, b"\r\n", body]))
        self.transport.close()
