"""The `email` task type: real SMTP delivery, or a simulated one for the quick start.

Without SMTP_HOST the message is delivered to DATA_DIR/outbox/ as an .eml file
(and logged), so the quick start works on any machine. With SMTP_HOST it is sent
with aiosmtplib, one connection per task:

- `SMTP_TLS=true` is implicit TLS (SMTPS), port 465 unless SMTP_PORT says
  otherwise. Otherwise the connection starts in plain text and is upgraded with
  STARTTLS whenever the server offers it, port 587 (message submission) unless
  SMTP_PORT says otherwise. Certificates are always verified against the system
  trust store; point OpenSSL's `SSL_CERT_FILE` at a bundle to trust a private CA.
- With SMTP_USERNAME set, the worker logs in (CRAM-MD5, PLAIN or LOGIN, the
  first the server offers) after any TLS upgrade. A server that offers no
  STARTTLS gets the credentials over the plain connection: use SMTP_TLS, or a
  server with STARTTLS, wherever the network is not trusted.
- Every SMTP step (connect, each command, the message data) waits at most
  SMTP_TIMEOUT_SECONDS (30 s), or half the task's timeout when that is
  shorter, so a stalled server is reported as an SMTP timeout, not as a task
  timeout.

How failures steer the task (see `_steer`): a 5xx reply (recipient, sender or
message refused, credentials rejected) and a server that cannot take the
message as configured (no AUTH, no SMTPUTF8) fail it at once; a 4xx reply, a
refused or lost connection, a TLS failure and a timeout are retried with
backoff. When the server refuses some recipients but accepts others, the
message goes to those accepted and the task completes, reporting the refused
ones in `refused`: a retry would deliver it a second time to everyone who got
it. When it refuses every recipient the task is retried if any refusal was
temporary (4xx), and fails otherwise.

Header injection cannot reach this far: the payload model refuses line breaks
and control characters in the subject, addresses and display names when the
task is submitted, and Bcc recipients go into the SMTP envelope only, never
into a header.
"""

from __future__ import annotations

import asyncio
import email.errors
import email.utils
import hashlib
import re
from collections.abc import Iterable
from email.headerregistry import Address
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import aiosmtplib
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from task_queue.errors import PermanentError, Retry
from task_queue.registry import TaskContext, default_registry

if TYPE_CHECKING:
    from task_queue.config import Settings

SMTPS_PORT = 465
SUBMISSION_PORT = 587
SMTP_TIMEOUT_SECONDS = 30.0
MAX_RECIPIENTS = 100
"""To, Cc and Bcc together: RFC 5321 obliges a server to take only 100 per message."""
MAX_ADDRESS_LENGTH = 512
"""Display name included; RFC 5321 caps the address itself at 254, and the cap
bounds the work of the address patterns on hostile input."""

# Line breaks of every kind (the email package splits headers on all that
# str.splitlines knows) and other control characters; a tab is harmless.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_ADDR_SPEC = r"[^@\s<>,;:\"()\[\]\\]+@[^@\s<>,;:\"()\[\]\\]+\.[^@\s<>,;:\"()\[\]\\]+"
_BARE = re.compile(_ADDR_SPEC)
_NAMED = re.compile(rf'(?:"(?P<quoted>[^"]*)"|(?P<plain>[^"<>]*?))\s*<(?P<address>{_ADDR_SPEC})>')


def parse_mailbox(value: str) -> Address:
    """`ada@example.com`, `Ada Lovelace <ada@example.com>` or `"Lovelace, Ada" <ada@...>`.

    Raises ValueError for anything else, and for anything the email package
    would not put in a header as given.
    """
    if _CONTROL.search(value):
        raise ValueError("line breaks and control characters are not allowed (header injection)")
    named = _NAMED.fullmatch(value)
    if named:
        name = (named["quoted"] if named["quoted"] is not None else named["plain"]).strip()
        spec = named["address"]
    elif _BARE.fullmatch(value):
        name, spec = "", value
    else:
        raise ValueError(f"not an e-mail address: {value!r}")
    try:
        return Address(display_name=name, addr_spec=spec)
    except (ValueError, email.errors.HeaderParseError) as exc:
        raise ValueError(f"not an e-mail address: {value!r} ({exc})") from None


def _check_mailbox(value: str) -> str:
    parse_mailbox(value)
    return value


Mailbox = Annotated[str, Field(max_length=MAX_ADDRESS_LENGTH), AfterValidator(_check_mailbox)]


class EmailPayload(BaseModel):
    """`recipient` (one address) or `to` (a list), a subject and a body, optional HTML, cc, bcc.

    Every address may carry a display name (`Ada Lovelace <ada@example.com>`).
    """

    model_config = ConfigDict(extra="forbid")

    recipient: Mailbox | None = None
    to: list[Mailbox] = Field(default_factory=list, max_length=MAX_RECIPIENTS)
    cc: list[Mailbox] = Field(default_factory=list, max_length=MAX_RECIPIENTS)
    bcc: list[Mailbox] = Field(default_factory=list, max_length=MAX_RECIPIENTS)
    subject: str = Field(max_length=998)
    body: str = Field(max_length=1_000_000)
    html: str | None = Field(None, max_length=1_000_000)

    @field_validator("subject")
    @classmethod
    def _single_line(cls, value: str) -> str:
        if _CONTROL.search(value):
            raise ValueError(
                "subject must not contain line breaks or control characters (header injection)"
            )
        return value

    @model_validator(mode="after")
    def _has_recipients(self) -> EmailPayload:
        if self.recipient is None and not self.to:
            raise ValueError("give `recipient` or `to`")
        if len(self.envelope_recipients) > MAX_RECIPIENTS:
            raise ValueError(f"at most {MAX_RECIPIENTS} recipients in all (to, cc and bcc)")
        return self

    @property
    def to_addresses(self) -> list[str]:
        return ([self.recipient] if self.recipient else []) + self.to

    @property
    def envelope_recipients(self) -> list[str]:
        """Every address the message goes to, Bcc included, each once, without display names."""
        specs = (parse_mailbox(v).addr_spec for v in [*self.to_addresses, *self.cc, *self.bcc])
        return list(dict.fromkeys(specs))


def message_id_for(task_id: str, sender: str) -> str:
    """The Message-ID of a task's message: the same on every attempt.

    A message sent again after a lost server reply is then recognisably the
    same message. A hash, so recipients never learn the task id (with which the
    API would show them the payload, Bcc list included).
    """
    domain = email.utils.parseaddr(sender)[1].rpartition("@")[2] or "localhost"
    return f"<{hashlib.sha256(task_id.encode()).hexdigest()[:32]}@{domain}>"


def build_message(payload: EmailPayload, sender: str, message_id: str) -> EmailMessage:
    """The RFC 5322 message: From, To, Cc, Subject, Date, Message-ID; never a Bcc header."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = _mailboxes(payload.to_addresses)
    if payload.cc:
        message["Cc"] = _mailboxes(payload.cc)
    message["Subject"] = payload.subject
    message["Date"] = email.utils.formatdate(localtime=False)
    message["Message-ID"] = message_id
    message.set_content(payload.body)
    if payload.html is not None:
        message.add_alternative(payload.html, subtype="html")
    return message


def _mailboxes(values: Iterable[str]) -> tuple[Address, ...]:
    # Address objects rather than joined text: the email package quotes display
    # names holding commas or quotes, and encodes non-ASCII ones.
    return tuple(parse_mailbox(value) for value in values)


def smtp_port(settings: Settings) -> int:
    """SMTP_PORT, or the standard port of the mode when it is 0: 465 for SMTP_TLS, else 587."""
    if settings.smtp_port:
        return settings.smtp_port
    return SMTPS_PORT if settings.smtp_tls else SUBMISSION_PORT


@default_registry.task("email", payload=EmailPayload, max_retries=5, timeout_seconds=60)
async def send_email(payload: EmailPayload, ctx: TaskContext) -> dict[str, Any]:
    """Send over SMTP when SMTP_HOST is set, else deliver to the outbox directory."""
    sender = ctx.settings.smtp_from
    try:
        message = build_message(payload, sender, message_id_for(ctx.task.id, sender))
    except ValueError as exc:
        raise PermanentError(f"cannot build the message: {exc}") from None
    if ctx.settings.smtp_host:
        return await _send_over_smtp(message, payload.envelope_recipients, ctx)
    return await _deliver_to_outbox(message, payload, ctx)


async def _deliver_to_outbox(
    message: EmailMessage, payload: EmailPayload, ctx: TaskContext
) -> dict[str, Any]:
    recipients = payload.envelope_recipients
    path = ctx.data_dir / "outbox" / f"{ctx.task.id}.eml"
    await asyncio.to_thread(_write, path, bytes(message))
    ctx.logger.info(
        "email delivered to outbox",
        path=str(path),
        recipients=recipients,
        subject=payload.subject,
    )
    return {
        "message_id": message["Message-ID"],
        "delivered_to": recipients,
        "simulated": True,
        "outbox_path": str(path),
    }


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


async def _send_over_smtp(
    message: EmailMessage, recipients: list[str], ctx: TaskContext
) -> dict[str, Any]:
    settings = ctx.settings
    port = smtp_port(settings)
    server = f"{settings.smtp_host}:{port}"
    client = aiosmtplib.SMTP(
        hostname=settings.smtp_host,
        port=port,
        username=settings.smtp_username or None,
        password=settings.smtp_password or None,
        use_tls=settings.smtp_tls,
        timeout=min(SMTP_TIMEOUT_SECONDS, ctx.task.timeout_seconds / 2),
    )
    # The envelope sender is the bare address of SMTP_FROM, which may carry a display name.
    sender = email.utils.parseaddr(settings.smtp_from)[1] or settings.smtp_from
    try:
        async with client:
            refusals, reply = await client.send_message(
                message, sender=sender, recipients=recipients
            )
    except (aiosmtplib.SMTPException, OSError, ValueError) as exc:
        raise _steer(exc, server) from exc
    refused = {address: f"{r.code} {r.message}" for address, r in refusals.items()}
    delivered = [address for address in recipients if address not in refused]
    log = ctx.logger.warning if refused else ctx.logger.info
    log(
        "email sent over SMTP",
        server=server,
        message_id=message["Message-ID"],
        recipients=delivered,
        refused=refused,
    )
    return {
        "message_id": message["Message-ID"],
        "delivered_to": delivered,
        "simulated": False,
        "smtp_response": reply,
        "refused": refused,
    }


def _steer(exc: Exception, server: str) -> Exception:
    """What to raise for a failed send: PermanentError fails the task at once, Retry backs off."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        replies = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
        text = f"SMTP server {server} refused every recipient ({replies})"
        return Retry(text) if any(r.code < 500 for r in exc.recipients) else PermanentError(text)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        text = f"SMTP server {server} {_refusal(exc)}: {exc.code} {exc.message}"
        return PermanentError(text) if 500 <= exc.code < 600 else Retry(text)
    if isinstance(exc, OSError):
        # Refused and lost connections, timeouts, TLS failures: aiosmtplib's
        # connection errors are ConnectionError or TimeoutError, both OSError.
        return Retry(f"SMTP server {server}: {exc}")
    # The server lacks what the message or the settings need (AUTH, SMTPUTF8),
    # or an address slipped past validation: trying again changes nothing.
    return PermanentError(f"SMTP server {server} cannot take this message: {exc}")


def _refusal(exc: aiosmtplib.SMTPResponseException) -> str:
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return "rejected the credentials of SMTP_USERNAME"
    if isinstance(exc, aiosmtplib.SMTPSenderRefused):
        return f"refused the sender {exc.sender}"
    if isinstance(exc, aiosmtplib.SMTPDataError):
        return "refused the message"
    return "answered"
