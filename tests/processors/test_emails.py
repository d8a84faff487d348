"""The `email` type against a real SMTP server (aiosmtpd) on a free loopback port."""

from __future__ import annotations

import asyncio
import email
import email.policy
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from pydantic import ValidationError

from task_queue._clock import ManualClock
from task_queue.backends.memory import MemoryBackend
from task_queue.config import Settings
from task_queue.errors import PermanentError, Retry
from task_queue.logs import get_logger
from task_queue.processors.emails import EmailPayload, send_email, smtp_port
from task_queue.registry import TaskContext, default_registry
from task_queue.task import Task, TaskStatus
from task_queue.worker.pool import WorkerPool
from tests.worker.conftest import eventually

SENDER = "Task Queue <queue@example.com>"
MAIL = {"recipient": "ada@example.com", "subject": "Hello", "body": "Hi Ada"}
USER, PASSWORD = "queue", "s3cret"


@dataclass
class Received:
    """One message as the server took it."""

    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    tls: bool
    login: bytes | None


@dataclass
class Mailbox:
    """An aiosmtpd handler that records each message and answers as scripted."""

    received: list[Received] = field(default_factory=list)
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    data_reply: str | None = None

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address in self.rcpt_replies:
            return self.rcpt_replies[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.data_reply is not None:
            return self.data_reply
        assert isinstance(envelope.content, bytes)
        assert server.transport is not None
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        login = session.auth_data.login if isinstance(session.auth_data, LoginPassword) else None
        self.received.append(
            Received(
                mail_from=envelope.mail_from or "",
                rcpt_tos=list(envelope.rcpt_tos),
                message=message,
                tls=server.transport.get_extra_info("ssl_object") is not None,
                login=login,
            )
        )
        return "250 OK: queued as 42"


def accept_queue_credentials(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and auth_data == (USER.encode(), PASSWORD.encode())
    # handled=False: aiosmtpd itself answers a failure, with 535.
    return AuthResult(success=ok, handled=False, auth_data=auth_data)


class FreePortController(Controller):
    """Listens on port 0 (the kernel picks a free one, no race) and learns which it got."""

    def _trigger_server(self) -> None:
        assert self.server is not None
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


@dataclass
class Server:
    port: int
    mailbox: Mailbox


@pytest.fixture
def start_smtp() -> Iterator[Callable[..., Server]]:
    """Starts aiosmtpd servers (options go to aiosmtpd's SMTP class); all stop after the test."""
    controllers: list[Controller] = []

    def start(**options: Any) -> Server:
        mailbox = Mailbox()
        controller = FreePortController(
            mailbox, hostname="127.0.0.1", port=0, server_hostname="smtp.test", **options
        )
        controller.start()
        controllers.append(controller)
        return Server(controller.port, mailbox)

    yield start
    for controller in controllers:
        controller.stop()


@pytest.fixture
def smtp(start_smtp: Callable[..., Server]) -> Server:
    """A plain SMTP server that takes every message."""
    return start_smtp()


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (made with the openssl command): (cert, key)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    command = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
    subprocess.run(
        [
            *command.split(),
            *("-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=smtp"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


@pytest.fixture
def server_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    return context


@pytest.fixture
def trusted(certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The test certificate is trusted the way an operator trusts a private CA: SSL_CERT_FILE."""
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))


def settings_for(tmp_path: Path, port: int | None = None, **overrides: Any) -> Settings:
    """Settings of a worker sending through 127.0.0.1:port, or simulating when port is None."""
    smtp = {} if port is None else {"smtp_host": "127.0.0.1", "smtp_port": port}
    return Settings.load(
        environ={},
        overrides={"data_dir": tmp_path, "log_file": "", "smtp_from": SENDER, **smtp, **overrides},
    )


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def send(http: httpx.AsyncClient) -> Callable[..., Any]:
    """Runs the handler directly, as a worker would, with a real TaskContext."""

    async def run(
        settings: Settings, payload: dict[str, Any], task: Task | None = None
    ) -> dict[str, Any]:
        task = task or Task.new("email", payload, now=0.0, timeout_seconds=60)
        context = TaskContext(
            task=task,
            settings=settings,
            logger=get_logger("test"),
            http=http,
            report_progress=lambda progress: None,  # e-mail reports none
        )
        return await send_email(EmailPayload.model_validate(payload), context)

    return run


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A port bound (so nobody else takes it) but not listening: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) but never says a word."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield sock.getsockname()[1]


# Delivery


async def test_message_reaches_the_server_with_its_headers_bodies_and_bcc_only_in_the_envelope(
    smtp: Server, send: Callable[..., Any], tmp_path: Path
) -> None:
    payload = {
        "to": ['"Lovelace, Ada" <ada@example.com>', "charles@example.com"],
        "cc": ["Zoë Ö <zoe@example.com>"],
        "bcc": ["boss@example.com"],
        "subject": "Engine ready — report",
        "body": "Plain words.",
        "html": "<p>Plain <b>words</b>.</p>",
    }

    result = await send(settings_for(tmp_path, smtp.port), payload)

    [received] = smtp.mailbox.received
    message = received.message
    assert received.mail_from == "queue@example.com"
    assert received.rcpt_tos == [
        "ada@example.com",
        "charles@example.com",
        "zoe@example.com",
        "boss@example.com",
    ]
    assert message["From"] == SENDER
    assert [a.addr_spec for a in message["To"].addresses] == [
        "ada@example.com",
        "charles@example.com",
    ]
    assert message["To"].addresses[0].display_name == "Lovelace, Ada"
    assert message["Cc"].addresses[0].display_name == "Zoë Ö"
    assert "Bcc" not in message
    assert b"boss@example.com" not in bytes(message)
    assert message["Subject"] == "Engine ready — report"
    assert message.get_content_type() == "multipart/alternative"
    plain, html = message.iter_parts()
    assert isinstance(plain, EmailMessage)
    assert isinstance(html, EmailMessage)
    assert plain.get_content().strip() == "Plain words."
    assert html.get_content_type() == "text/html"
    assert html.get_content().strip() == "<p>Plain <b>words</b>.</p>"
    assert result == {
        "message_id": message["Message-ID"],
        "delivered_to": received.rcpt_tos,
        "simulated": False,
        "smtp_response": "OK: queued as 42",
        "refused": {},
    }


async def test_a_body_line_holding_a_lone_dot_does_not_end_the_message_early(
    smtp: Server, send: Callable[..., Any], tmp_path: Path
) -> None:
    smuggled = "first\r\n.\r\nMAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.com>\r\n"

    await send(settings_for(tmp_path, smtp.port), {**MAIL, "body": smuggled})

    [received] = smtp.mailbox.received
    assert received.rcpt_tos == ["ada@example.com"]
    assert "MAIL FROM:<evil@example.com>" in received.message.get_content()


async def test_message_id_is_the_same_on_every_attempt_of_a_task_and_hides_its_id(
    smtp: Server, send: Callable[..., Any], tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, smtp.port)
    task = Task.new("email", MAIL, now=0.0, timeout_seconds=60)

    first = await send(settings, MAIL, task)
    again = await send(settings, MAIL, task)
    other = await send(settings, MAIL)

    assert first["message_id"] == again["message_id"] != other["message_id"]
    assert first["message_id"].endswith("@example.com>")
    assert task.id not in first["message_id"]


async def test_some_recipients_refused_the_others_get_it_and_the_refusals_are_reported(
    smtp: Server, send: Callable[..., Any], tmp_path: Path
) -> None:
    smtp.mailbox.rcpt_replies["gone@example.com"] = "550 5.1.1 No such user"
    smtp.mailbox.rcpt_replies["full@example.com"] = "452 4.2.2 Mailbox full"
    payload = {**MAIL, "cc": ["gone@example.com", "full@example.com", "bob@example.com"]}

    result = await send(settings_for(tmp_path, smtp.port), payload)

    [received] = smtp.mailbox.received
    assert received.rcpt_tos == ["ada@example.com", "bob@example.com"]
    assert result["delivered_to"] == ["ada@example.com", "bob@example.com"]
    assert result["refused"] == {
        "gone@example.com": "550 5.1.1 No such user",
        "full@example.com": "452 4.2.2 Mailbox full",
    }


# Authentication and TLS


async def test_credentials_of_smtp_username_are_used_to_log_in(
    start_smtp: Callable[..., Server], send: Callable[..., Any], tmp_path: Path
) -> None:
    server = start_smtp(authenticator=accept_queue_credentials, auth_require_tls=False)
    settings = settings_for(tmp_path, server.port, smtp_username=USER, smtp_password=PASSWORD)

    await send(settings, MAIL)

    [received] = server.mailbox.received
    assert received.login == USER.encode()


async def test_rejected_credentials_fail_at_once_naming_the_535_reply(
    start_smtp: Callable[..., Server], send: Callable[..., Any], tmp_path: Path
) -> None:
    server = start_smtp(authenticator=accept_queue_credentials, auth_require_tls=False)
    settings = settings_for(tmp_path, server.port, smtp_username=USER, smtp_password="wrong")

    with pytest.raises(PermanentError, match=r"rejected the credentials.*535"):
        await send(settings, MAIL)
    assert server.mailbox.received == []


async def test_starttls_is_used_when_offered_and_the_login_happens_inside_it(
    start_smtp: Callable[..., Server],
    send: Callable[..., Any],
    tmp_path: Path,
    server_tls: ssl.SSLContext,
    trusted: None,
) -> None:
    # auth_require_tls: the server offers AUTH only once the connection is encrypted.
    server = start_smtp(tls_context=server_tls, authenticator=accept_queue_credentials)
    settings = settings_for(tmp_path, server.port, smtp_username=USER, smtp_password=PASSWORD)

    await send(settings, MAIL)

    [received] = server.mailbox.received
    assert received.tls
    assert received.login == USER.encode()


async def test_smtp_tls_speaks_tls_from_the_first_byte(
    start_smtp: Callable[..., Server],
    send: Callable[..., Any],
    tmp_path: Path,
    server_tls: ssl.SSLContext,
    trusted: None,
) -> None:
    server = start_smtp(ssl_context=server_tls)

    await send(settings_for(tmp_path, server.port, smtp_tls=True), MAIL)

    [received] = server.mailbox.received
    assert received.tls


async def test_a_certificate_nobody_trusts_is_refused_and_retried(
    start_smtp: Callable[..., Server],
    send: Callable[..., Any],
    tmp_path: Path,
    server_tls: ssl.SSLContext,
) -> None:
    server = start_smtp(ssl_context=server_tls)

    with pytest.raises(Retry, match="CERTIFICATE_VERIFY_FAILED"):
        await send(settings_for(tmp_path, server.port, smtp_tls=True), MAIL)


def test_smtp_port_0_means_465_with_smtp_tls_and_587_without(tmp_path: Path) -> None:
    assert smtp_port(settings_for(tmp_path, 0, smtp_tls=True)) == 465
    assert smtp_port(settings_for(tmp_path, 0)) == 587
    assert smtp_port(settings_for(tmp_path, 2525, smtp_tls=True)) == 2525


# Failures: which are retried, which fail at once


@pytest.mark.parametrize(
    ("stage", "reply", "outcome"),
    [
        pytest.param("rcpt", "450 4.2.1 Try again later", Retry, id="rcpt-4xx"),
        pytest.param("rcpt", "550 5.1.1 No such user", PermanentError, id="rcpt-5xx"),
        pytest.param("data", "451 4.3.0 Queue full", Retry, id="data-4xx"),
        pytest.param("data", "554 5.7.1 Spam", PermanentError, id="data-5xx"),
    ],
)
async def test_a_4xx_reply_is_retried_and_a_5xx_reply_fails_at_once(
    smtp: Server,
    send: Callable[..., Any],
    tmp_path: Path,
    stage: str,
    reply: str,
    outcome: type[Exception],
) -> None:
    if stage == "rcpt":
        smtp.mailbox.rcpt_replies["ada@example.com"] = reply
    else:
        smtp.mailbox.data_reply = reply

    with pytest.raises(outcome) as raised:
        await send(settings_for(tmp_path, smtp.port), MAIL)

    assert type(raised.value) is outcome
    assert reply in str(raised.value)


async def test_connection_refused_is_retried(
    refusing_port: int, send: Callable[..., Any], tmp_path: Path
) -> None:
    with pytest.raises(Retry, match=f"127.0.0.1:{refusing_port}"):
        await send(settings_for(tmp_path, refusing_port), MAIL)


async def test_a_server_that_never_answers_times_out_and_is_retried(
    silent_port: int, send: Callable[..., Any], tmp_path: Path
) -> None:
    # Each SMTP step waits half the task's timeout at most: 0.2 s here.
    task = Task.new("email", MAIL, now=0.0, timeout_seconds=0.4)

    with pytest.raises(Retry, match="Timed out"):
        await send(settings_for(tmp_path, silent_port), MAIL, task)


# Validation at submit time


@pytest.mark.parametrize(
    ("change", "field"),
    [
        pytest.param({"subject": "Hi\r\nBcc: spy@example.com"}, ("subject",), id="subject-crlf"),
        pytest.param({"subject": "Hi\u2028there"}, ("subject",), id="subject-unicode-break"),
        pytest.param({"recipient": "ada@example.com\n"}, ("recipient",), id="recipient-newline"),
        pytest.param({"to": ["a@example.com", "b@example.com\r"]}, ("to", 1), id="to-cr"),
        pytest.param({"cc": ["Spy\r\nBcc: x@example.com <a@b.com>"]}, ("cc", 0), id="name-crlf"),
        pytest.param({"bcc": ["a@b.com\x00"]}, ("bcc", 0), id="bcc-nul"),
        pytest.param({"cc": ["not an address"]}, ("cc", 0), id="cc-not-an-address"),
        pytest.param({"bcc": ["a..b@example.com"]}, ("bcc", 0), id="bcc-bad-local-part"),
        pytest.param({"to": ["Ada <ada@example.com> extra"]}, ("to", 0), id="to-trailing-text"),
        pytest.param({"cc": ["a@" + "." * 5000 + "@"]}, ("cc", 0), id="cc-too-long"),
    ],
)
def test_header_injection_and_bad_addresses_are_refused_naming_the_field(
    change: dict[str, Any], field: tuple[str | int, ...]
) -> None:
    with pytest.raises(ValidationError) as refused:
        EmailPayload.model_validate({**MAIL, **change})

    assert [error["loc"] for error in refused.value.errors()] == [field]


def test_more_than_100_distinct_recipients_in_all_are_refused() -> None:
    many = [f"user{n}@example.com" for n in range(100)]

    with pytest.raises(ValidationError, match="at most 100 recipients"):
        EmailPayload.model_validate({**MAIL, "cc": many[:50], "bcc": many[50:]})
    # An address given twice is one recipient: 99 distinct addresses and Ada.
    twice = EmailPayload.model_validate({**MAIL, "cc": many[:99], "bcc": many[:99]})
    assert len(twice.envelope_recipients) == 100


# Simulated delivery


async def test_without_smtp_host_the_message_goes_to_the_outbox_as_before(
    send: Callable[..., Any], tmp_path: Path
) -> None:
    payload = {**MAIL, "cc": ["Bob <bob@example.com>"], "bcc": ["boss@example.com"]}

    result = await send(settings_for(tmp_path), payload)

    path = Path(result.pop("outbox_path"))
    assert path.parent == tmp_path / "outbox"
    saved = await asyncio.to_thread(path.read_bytes)
    message = email.message_from_bytes(saved, policy=email.policy.default)
    assert result == {
        "message_id": message["Message-ID"],
        "delivered_to": ["ada@example.com", "bob@example.com", "boss@example.com"],
        "simulated": True,
    }
    assert message["Subject"] == "Hello"
    assert message["Cc"] == "Bob <bob@example.com>"
    assert "Bcc" not in message


# Through the worker pool


@pytest.fixture
async def start_pool(store: MemoryBackend) -> AsyncIterator[Callable[[Settings], None]]:
    """Starts a real WorkerPool running the registered `email` type; stopped after the test."""
    pools: list[tuple[WorkerPool, asyncio.Task[None]]] = []

    def start(settings: Settings) -> None:
        pool = WorkerPool(store, default_registry, settings, worker_id="mailer", queues=[])
        pools.append((pool, asyncio.create_task(pool.run())))

    yield start
    for pool, running in pools:
        pool.stop()
        await running
        await pool.abort()
        await pool.close()


async def run_once(store: MemoryBackend, clock: ManualClock) -> Task:
    """Submits MAIL and returns the task once the pool has run it, whatever came of it."""
    task = Task.new("email", MAIL, now=clock.now(), max_retries=5, timeout_seconds=60)
    await store.enqueue([task])
    return await eventually(
        store, task.id, lambda t: t.attempts == 1 and t.status is not TaskStatus.RUNNING
    )


async def test_worker_pool_completes_the_task_once_the_server_took_the_message(
    smtp: Server,
    start_pool: Callable[[Settings], None],
    store: MemoryBackend,
    clock: ManualClock,
    tmp_path: Path,
) -> None:
    start_pool(settings_for(tmp_path, smtp.port))

    done = await run_once(store, clock)

    assert done.status is TaskStatus.COMPLETED
    [received] = smtp.mailbox.received
    assert done.result["message_id"] == received.message["Message-ID"]


async def test_worker_pool_retries_with_backoff_while_the_server_refuses_connections(
    refusing_port: int,
    start_pool: Callable[[Settings], None],
    store: MemoryBackend,
    clock: ManualClock,
    tmp_path: Path,
) -> None:
    start_pool(settings_for(tmp_path, refusing_port))

    done = await run_once(store, clock)

    assert done.status is TaskStatus.RETRYING
    assert done.run_at > clock.now()
    assert (done.error or "").startswith(f"Retry: SMTP server 127.0.0.1:{refusing_port}")


@pytest.mark.parametrize(
    ("reply", "status", "error"),
    [
        pytest.param("450 4.2.1 Try again later", TaskStatus.RETRYING, "Retry", id="4xx"),
        pytest.param("550 5.1.1 No such user", TaskStatus.FAILED, "PermanentError", id="5xx"),
    ],
)
async def test_worker_pool_retries_a_4xx_refusal_and_fails_a_5xx_refusal_at_once(
    smtp: Server,
    start_pool: Callable[[Settings], None],
    store: MemoryBackend,
    clock: ManualClock,
    tmp_path: Path,
    reply: str,
    status: TaskStatus,
    error: str,
) -> None:
    smtp.mailbox.rcpt_replies["ada@example.com"] = reply
    start_pool(settings_for(tmp_path, smtp.port))

    done = await run_once(store, clock)

    assert done.status is status
    assert (done.error or "").startswith(f"{error}: SMTP server")
    assert reply in (done.error or "")


async def test_worker_pool_fails_the_task_at_once_when_the_credentials_are_rejected(
    start_smtp: Callable[..., Server],
    start_pool: Callable[[Settings], None],
    store: MemoryBackend,
    clock: ManualClock,
    tmp_path: Path,
) -> None:
    server = start_smtp(authenticator=accept_queue_credentials, auth_require_tls=False)
    start_pool(settings_for(tmp_path, server.port, smtp_username=USER, smtp_password="wrong"))

    done = await run_once(store, clock)

    assert done.status is TaskStatus.FAILED
    assert "535" in (done.error or "")
