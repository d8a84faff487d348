"""The `email` task type.

Without SMTP_HOST the message is delivered to DATA_DIR/outbox/ as an .eml file
(and logged), so the quick start works on any machine.
"""

from __future__ import annotations

import email.utils
import re
from email.message import EmailMessage
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from task_queue.errors import PermanentError
from task_queue.registry import TaskContext, default_registry

_ADDRESS = re.compile(r"^[^@\s<>,;\"]+@[^@\s<>,;\"]+\.[^@\s<>,;\"]+$")


def _check_address(value: str) -> str:
    if not _ADDRESS.match(value):
        raise ValueError(f"not an e-mail address: {value!r}")
    return value


class EmailPayload(BaseModel):
    """`recipient` (one address) or `to` (a list), a subject and a body, optional HTML, cc, bcc."""

    model_config = ConfigDict(extra="forbid")

    recipient: str | None = None
    to: list[str] = Field(default_factory=list, max_length=100)
    cc: list[str] = Field(default_factory=list, max_length=100)
    bcc: list[str] = Field(default_factory=list, max_length=100)
    subject: str = Field(max_length=998)
    body: str = Field(max_length=1_000_000)
    html: str | None = Field(None, max_length=1_000_000)

    @field_validator("recipient")
    @classmethod
    def _one(cls, value: str | None) -> str | None:
        return None if value is None else _check_address(value)

    @field_validator("to", "cc", "bcc")
    @classmethod
    def _many(cls, values: list[str]) -> list[str]:
        return [_check_address(v) for v in values]

    @field_validator("subject")
    @classmethod
    def _single_line(cls, value: str) -> str:
        if "\r" in value or "\n" in value:
            raise ValueError("subject must not contain line breaks (header injection)")
        return value

    @model_validator(mode="after")
    def _has_recipient(self) -> EmailPayload:
        if self.recipient is None and not self.to:
            raise ValueError("give `recipient` or `to`")
        return self

    @property
    def to_addresses(self) -> list[str]:
        return ([self.recipient] if self.recipient else []) + self.to


def build_message(payload: EmailPayload, sender: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(payload.to_addresses)
    if payload.cc:
        message["Cc"] = ", ".join(payload.cc)
    message["Subject"] = payload.subject
    message["Date"] = email.utils.formatdate(localtime=False)
    message["Message-ID"] = email.utils.make_msgid(domain=sender.rpartition("@")[2] or None)
    message.set_content(payload.body)
    if payload.html is not None:
        message.add_alternative(payload.html, subtype="html")
    return message


@default_registry.task("email", payload=EmailPayload, max_retries=5, timeout_seconds=60)
def send_email(payload: EmailPayload, ctx: TaskContext) -> dict[str, Any]:
    """Deliver to the outbox directory; Bcc recipients are delivered but never in headers."""
    try:
        message = build_message(payload, ctx.settings.smtp_from)
    except ValueError as exc:
        raise PermanentError(f"cannot build the message: {exc}") from None
    recipients = payload.to_addresses + payload.cc + payload.bcc
    outbox = ctx.data_dir / "outbox"
    outbox.mkdir(parents=True, exist_ok=True)
    path = outbox / f"{ctx.task.id}.eml"
    path.write_bytes(bytes(message))
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
