"""The `webhook` task type: one HTTP request to a user's URL, retried until it is taken.

Every request carries `Idempotency-Key: <task id>`, the same on every retry, so
a receiver that saw the request before (its answer lost on the way back) can
drop the duplicate. The URL passes the SSRF guard (`urls.guarded_request`).

Outcomes: 2xx completes the task. 408, 429, 5xx, connection failures and
timeouts are retried, after Retry-After when the receiver sends one (capped at
an hour), else with the pool's exponential backoff. Any other status (3xx
included: redirects are not followed) fails the task at once.

Signature. With `secret`, the request is signed the way Stripe signs its
webhooks, so a receiver can tell it came from us, unaltered, and recently:

    X-TaskQueue-Timestamp: <unix seconds when this attempt was sent>
    X-TaskQueue-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<raw body bytes>")>

Each attempt is signed anew with its own timestamp. A receiver verifies it on
the raw body, before parsing, and rejects old timestamps to stop replays:

    import hashlib, hmac, time

    def verify(secret: bytes, body: bytes, timestamp: str, signature: str) -> bool:
        expected = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
        fresh = abs(time.time() - int(timestamp)) < 300
        return fresh and hmac.compare_digest(signature, "v1=" + expected.hexdigest())
"""

from __future__ import annotations

import asyncio
import codecs
import email.utils
import hashlib
import hmac
import re
import time
from datetime import UTC
from typing import Any, Literal

import httpx
import orjson
from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator

from task_queue import __version__
from task_queue.errors import PermanentError, Retry
from task_queue.processors.urls import UnsafeURL, guarded_request, parse_http_url
from task_queue.registry import TaskContext, default_registry

EXCERPT_BYTES = 2048
MAX_RETRY_AFTER_SECONDS = 3600.0
MAX_RESULT_HEADERS = 50
MAX_HEADER_CHARS = 1024
TASK_TIMEOUT_SHARE = 0.9  # the HTTP call gives up first, so its error names the cause

# RFC 9110 token characters: anything else (CR, LF, ':', spaces) cannot be a header name.
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # tab allowed, CR/LF/NUL never
_SET_BY_US = frozenset(
    {"idempotency-key", "x-taskqueue-timestamp", "x-taskqueue-signature"}
    | {"host", "content-length", "transfer-encoding", "connection"}  # framing: the client's
)


class WebhookError(Exception):
    """The receiver could not take the request now (5xx, 408, 429, network): worth a retry."""


class WebhookPayload(BaseModel):
    """Where to send what; headers are checked here, so injection is a 422 at submit."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=8192)
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    headers: dict[str, str] = Field(default_factory=dict, max_length=100)
    body: JsonValue = Field(None, description="JSON, sent as application/json; a string as is")
    secret: str | None = Field(None, min_length=1, max_length=4096)
    timeout_seconds: float = Field(10.0, gt=0, le=600)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        try:
            parse_http_url(value)
        except UnsafeURL as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("headers")
    @classmethod
    def _safe_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"header name {name!r} is not an HTTP token")
            if _CONTROL.search(value):
                raise ValueError(f"header {name} contains a line break or control character")
            if name.lower() in _SET_BY_US:
                raise ValueError(f"header {name} is set by task-queue and cannot be given")
        return headers


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The X-TaskQueue-Signature value: v1=hex HMAC-SHA256 of "<timestamp>.<body>"."""
    signed = f"{timestamp}.".encode() + body
    return "v1=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """Retry-After as seconds from `now` (delta-seconds or an HTTP date), capped; None if absent."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def _encode(body: JsonValue) -> tuple[bytes, str | None]:
    """The bytes to send and their Content-Type: a string goes as is, anything else as JSON."""
    if body is None:
        return b"", None
    if isinstance(body, str):
        return body.encode(), None
    return orjson.dumps(body), "application/json"


def _request_headers(
    payload: WebhookPayload, task_id: str, body: bytes, kind: str | None
) -> httpx.Headers:
    headers = httpx.Headers({"User-Agent": f"task-queue/{__version__}"})
    if kind is not None:
        headers["Content-Type"] = kind
    headers.update(payload.headers)  # case-insensitive: the user's Content-Type wins
    headers["Idempotency-Key"] = task_id
    if payload.secret is not None:
        timestamp = int(time.time())  # the receiver's wall clock judges freshness
        headers["X-TaskQueue-Timestamp"] = str(timestamp)
        headers["X-TaskQueue-Signature"] = sign(payload.secret, timestamp, body)
    return headers


async def _excerpt(response: httpx.Response) -> str:
    """The first EXCERPT_BYTES of the body as text; the rest is never read."""
    data = bytearray()
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) >= EXCERPT_BYTES:
            break
    try:
        decoder = codecs.getincrementaldecoder(response.charset_encoding or "utf-8")
    except LookupError:
        decoder = codecs.getincrementaldecoder("utf-8")
    # Not final: a character cut in two at the limit is dropped, not garbled.
    return decoder(errors="replace").decode(bytes(data[:EXCERPT_BYTES]))


def _check_status(response: httpx.Response, excerpt: str) -> None:
    status = response.status_code
    answered = f"receiver answered {status} {response.reason_phrase}".rstrip()
    if 200 <= status < 300:
        return
    if status in (408, 429) or 500 <= status < 600:
        delay = retry_after_seconds(response.headers.get("Retry-After"), time.time())
        if delay is not None:
            raise Retry(f"{answered}, Retry-After {delay:g} s", delay=delay)
        raise WebhookError(answered)
    if 300 <= status < 400:
        location = response.headers.get("Location", "")[:200]
        raise PermanentError(f"{answered}: redirects are not followed (Location: {location})")
    raise PermanentError(f"{answered}: {excerpt[:200]}")


@default_registry.task("webhook", payload=WebhookPayload, max_retries=5, timeout_seconds=60)
async def send_webhook(payload: WebhookPayload, ctx: TaskContext) -> dict[str, Any]:
    """Send the request once; the pool retries on WebhookError or Retry."""
    body, kind = _encode(payload.body)
    headers = _request_headers(payload, ctx.task.id, body, kind)
    timeout = min(payload.timeout_seconds, ctx.task.timeout_seconds * TASK_TIMEOUT_SHARE)
    started = time.perf_counter()
    try:
        async with (
            asyncio.timeout(timeout),
            guarded_request(
                ctx.http,
                payload.method,
                payload.url,
                allow_private=ctx.settings.allow_private_urls,
                timeout=timeout,
                headers=headers,
                content=body,
            ) as response,
        ):
            excerpt = await _excerpt(response)
    except (TimeoutError, httpx.TimeoutException):
        raise WebhookError(f"no response within {timeout:g} s") from None
    except httpx.TransportError as exc:
        raise WebhookError(f"cannot reach the receiver: {str(exc) or type(exc).__name__}") from None
    duration_ms = round((time.perf_counter() - started) * 1000, 3)
    _check_status(response, excerpt)
    ctx.logger.info("webhook delivered", status_code=response.status_code, duration_ms=duration_ms)
    return {
        "status_code": response.status_code,
        "headers": {
            name: value[:MAX_HEADER_CHARS]
            for name, value in list(response.headers.items())[:MAX_RESULT_HEADERS]
        },
        "body": excerpt,
        "duration_ms": duration_ms,
    }
