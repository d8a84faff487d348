"""The webhook task type, run by a real worker pool against a real local HTTP receiver."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from email.utils import formatdate
from pathlib import Path
from typing import Any

import orjson
import pytest

from task_queue import __version__
from task_queue._clock import ManualClock
from task_queue.backends.memory import MemoryBackend
from task_queue.client import AsyncClient
from task_queue.config import Settings
from task_queue.errors import PayloadError
from task_queue.processors.webhooks import retry_after_seconds
from task_queue.registry import default_registry
from task_queue.task import Task, TaskStatus
from task_queue.worker.pool import WorkerPool
from tests.processors.http_peer import HttpPeer, Reply, serving
from tests.worker.conftest import eventually


@pytest.fixture
def peer() -> Iterator[HttpPeer]:
    with serving() as running:
        yield running


@pytest.fixture
def tasks(store: MemoryBackend, clock: ManualClock) -> AsyncClient:
    """Submits as the API does: the payload is validated before anything is stored."""
    return AsyncClient(store, registry=default_registry, clock=clock)


@asynccontextmanager
async def running_pool(
    store: MemoryBackend, data_dir: Path, *, allow_private: bool
) -> AsyncIterator[WorkerPool]:
    settings = Settings.load(
        environ={},
        overrides={"data_dir": data_dir, "log_file": "", "allow_private_urls": allow_private},
    )
    pool = WorkerPool(store, default_registry, settings, worker_id="webhooks", queues=[])
    running = asyncio.create_task(pool.run())
    try:
        yield pool
    finally:
        pool.stop()
        await running
        await pool.abort()
        await pool.close()


@pytest.fixture
async def pool(store: MemoryBackend, tmp_path: Path) -> AsyncIterator[WorkerPool]:
    """A pool that may reach the loopback peer (ALLOW_PRIVATE_URLS=true)."""
    async with running_pool(store, tmp_path, allow_private=True) as workers:
        yield workers


def final(task: Task) -> bool:
    return task.status.is_final


def retrying_after(attempt: int) -> Any:
    return lambda task: task.status is TaskStatus.RETRYING and task.attempts == attempt


async def run_again(store: MemoryBackend, clock: ManualClock, task: Task) -> None:
    """Move time to the task's run_at and promote it, so the pool takes it at once."""
    clock.advance(task.run_at - clock.now())
    await store.promote_due()


async def test_webhook_delivers_the_body_with_its_headers_and_reports_the_response(
    pool: WorkerPool, store: MemoryBackend, tasks: AsyncClient, peer: HttpPeer
) -> None:
    peer.script("/hook", Reply(body=b'{"received": true}', headers={"X-Receiver": "ok"}))
    event = {"event": "invoice.paid", "amount": 42, "lines": [1, 2]}
    task = await tasks.submit(
        "webhook", {"url": f"{peer.url}/hook", "body": event, "headers": {"X-Tenant": "acme"}}
    )
    done = await eventually(store, task.id, final)

    assert done.status is TaskStatus.COMPLETED
    assert done.attempts == 1
    assert done.result["status_code"] == 200
    assert done.result["headers"]["x-receiver"] == "ok"
    assert done.result["body"] == '{"received": true}'
    assert done.result["duration_ms"] > 0
    [received] = peer.received
    assert received.method == "POST"
    assert orjson.loads(received.body) == event
    assert received.headers["content-type"] == "application/json"
    assert received.headers["user-agent"] == f"task-queue/{__version__}"
    assert received.headers["idempotency-key"] == task.id
    assert received.headers["x-tenant"] == "acme"
    assert "x-taskqueue-signature" not in received.headers


async def test_string_body_goes_as_is_with_the_callers_method_and_content_type(
    pool: WorkerPool, store: MemoryBackend, tasks: AsyncClient, peer: HttpPeer
) -> None:
    payload = {
        "url": f"{peer.url}/form",
        "method": "put",
        "body": "a=1&b=2",
        "headers": {"content-type": "application/x-www-form-urlencoded"},
    }
    task = await tasks.submit("webhook", payload)
    assert (await eventually(store, task.id, final)).status is TaskStatus.COMPLETED
    [received] = peer.received
    assert (received.method, received.body) == ("PUT", b"a=1&b=2")
    assert received.headers["content-type"] == "application/x-www-form-urlencoded"


async def test_signature_verifies_with_the_shared_secret(
    pool: WorkerPool, store: MemoryBackend, tasks: AsyncClient, peer: HttpPeer
) -> None:
    secret = "whsec_3f9a"
    task = await tasks.submit(
        "webhook", {"url": f"{peer.url}/signed", "body": {"id": 7}, "secret": secret}
    )
    assert (await eventually(store, task.id, final)).status is TaskStatus.COMPLETED
    [received] = peer.received
    timestamp = received.headers["x-taskqueue-timestamp"]
    # Verified the way the module docstring tells receivers to, on the raw body.
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + received.body, hashlib.sha256)
    assert received.headers["x-taskqueue-signature"] == "v1=" + expected.hexdigest()
    assert abs(time.time() - int(timestamp)) < 60


async def test_server_errors_are_retried_until_success_under_one_idempotency_key(
    pool: WorkerPool, store: MemoryBackend, tasks: AsyncClient, peer: HttpPeer, clock: ManualClock
) -> None:
    peer.script("/flaky", Reply(500), Reply(502), Reply(200))
    task = await tasks.submit("webhook", {"url": f"{peer.url}/flaky"}, max_retries=5)
    for attempt in (1, 2):
        retrying = await eventually(store, task.id, retrying_after(attempt))
        assert retrying.error is not None
        assert retrying.error.startswith("WebhookError: receiver answered 50")
        await run_again(store, clock, retrying)
    done = await eventually(store, task.id, final)

    assert done.status is TaskStatus.COMPLETED
    assert done.attempts == 3
    keys = {r.headers["idempotency-key"] for r in peer.requests_to("/flaky")}
    assert keys == {task.id}
    assert len(peer.requests_to("/flaky")) == 3


async def test_too_many_requests_is_retried_after_the_retry_after_delay(
    pool: WorkerPool, store: MemoryBackend, tasks: AsyncClient, peer: HttpPeer, clock: ManualClock
) -> None:
    peer.script("/busy", Reply(429, headers={"Retry-After": "120"}))
    task = await tasks.submit("webhook", {"url": f"{peer.url}/busy"})
    retrying = await eventually(store, task.id, retrying_after(1))
    assert retrying.run_at == clock.now() + 120
    assert retrying.error == "Retry: receiver answered 429 Too Many Requests, Retry-After 120 s"


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("120", 120.0),
        ("0", 0.0),
        ("86400", 3600.0),  # capped at an hour
        (formatdate(1_000_090, usegmt=True), 90.0),
        (formatdate(999_000, usegmt=True), 0.0),  # a date in the past: now
        ("soon", None),
    ],
)
def test_retry_after_takes_seconds_or_an_http_date(
    header: str | None, seconds: float | None
) -> None:
    assert retry_after_seconds(header, now=1_000_000.0) == seconds


async def test_not_found_fails_after_one_attempt(
    pool: WorkerPool, store: MemoryBackend, tasks: AsyncClient, peer: HttpPeer
) -> None:
    peer.script("/gone", Reply(404, body=b"no such hook"))
    task = await tasks.submit("webhook", {"url": f"{peer.url}/gone"}, max_retries=5)
    done = await eventually(store, task.id, final)
    assert done.status is TaskStatus.FAILED
    assert done.attempts == 1
    assert done.error == "PermanentError: receiver answered 404 Not Found: no such hook"


async def test_redirect_fails_without_being_followed(
    pool: WorkerPool, store: MemoryBackend, tasks: AsyncClient, peer: HttpPeer
) -> None:
    peer.script("/moved", Reply(301, headers={"Location": "http://169.254.169.254/"}))
    task = await tasks.submit("webhook", {"url": f"{peer.url}/moved"})
    done = await eventually(store, task.id, final)
    assert done.status is TaskStatus.FAILED
    assert done.attempts == 1
    assert done.error is not None
    assert "redirects are not followed" in done.error
    assert [r.path for r in peer.received] == ["/moved"]


async def test_receiver_that_does_not_answer_in_time_is_retried(
    pool: WorkerPool, store: MemoryBackend, tasks: AsyncClient, peer: HttpPeer
) -> None:
    peer.script("/slow", Reply(delay=30))
    payload = {"url": f"{peer.url}/slow", "timeout_seconds": 0.2}
    task = await tasks.submit("webhook", payload)
    retrying = await eventually(store, task.id, retrying_after(1))
    assert retrying.error == "WebhookError: no response within 0.2 s"


async def test_http_timeout_gives_up_before_the_task_timeout(
    pool: WorkerPool, store: MemoryBackend, tasks: AsyncClient, peer: HttpPeer
) -> None:
    peer.script("/slow", Reply(delay=30))
    task = await tasks.submit("webhook", {"url": f"{peer.url}/slow"}, timeout_seconds=0.5)
    retrying = await eventually(store, task.id, retrying_after(1))
    assert retrying.error == "WebhookError: no response within 0.45 s"


async def test_refused_connection_is_retried(
    pool: WorkerPool, store: MemoryBackend, tasks: AsyncClient
) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    task = await tasks.submit("webhook", {"url": f"http://127.0.0.1:{port}/"})
    retrying = await eventually(store, task.id, retrying_after(1))
    assert retrying.error is not None
    assert retrying.error.startswith("WebhookError: cannot reach the receiver")


async def test_loopback_webhook_without_allow_private_fails_at_once_saying_why(
    store: MemoryBackend, tasks: AsyncClient, tmp_path: Path
) -> None:
    async with running_pool(store, tmp_path, allow_private=False):
        task = await tasks.submit("webhook", {"url": "http://127.0.0.1/"}, max_retries=5)
        done = await eventually(store, task.id, final)
    assert done.status is TaskStatus.FAILED
    assert done.attempts == 1
    assert done.error == (
        "UnsafeURL: 127.0.0.1, a loopback address: refused "
        "(set ALLOW_PRIVATE_URLS=true to allow private addresses)"
    )


async def test_response_excerpt_is_the_first_two_kilobytes_as_text(
    pool: WorkerPool, store: MemoryBackend, tasks: AsyncClient, peer: HttpPeer
) -> None:
    # 1 + 2 * 5000 bytes: the 2048-byte cut falls inside the 1024th "é", which is dropped.
    sent = ("a" + "é" * 5000).encode()
    peer.script("/big", Reply(chunks=(sent[:3001], sent[3001:])))
    task = await tasks.submit("webhook", {"url": f"{peer.url}/big"})
    done = await eventually(store, task.id, final)
    assert done.result["body"] == "a" + "é" * 1023


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"headers": {"X-Note": "hi\r\nX-Injected: 1"}}, "payload.headers"),
        ({"headers": {"X-Note\r\nX-Injected": "1"}}, "payload.headers"),
        ({"headers": {"X-Note": "hi\nthere"}}, "payload.headers"),
        ({"headers": {"Idempotency-Key": "mine"}}, "payload.headers"),
        ({"headers": {"x-taskqueue-signature": "v1=forged"}}, "payload.headers"),
        ({"headers": {"Host": "internal.example"}}, "payload.headers"),
        ({"url": "file:///etc/passwd"}, "payload.url"),
        ({"method": "TRACE"}, "payload.method"),
        ({"timeout_seconds": 0}, "payload.timeout_seconds"),
        ({"unknown": 1}, "payload.unknown"),
    ],
)
async def test_bad_payload_is_refused_at_submit(
    tasks: AsyncClient, store: MemoryBackend, payload: dict[str, Any], field: str
) -> None:
    with pytest.raises(PayloadError) as refused:
        await tasks.submit("webhook", {"url": "https://example.com/hook", **payload})
    assert [d["field"] for d in refused.value.details] == [field]
    assert (await store.stats()).waiting == 0
