"""Settings from the environment, in one place.

Each field is an environment variable of the same name in upper case (PORT,
WORKER_COUNT...); the CLI adds a flag of the same name that overrides it. A bad
value becomes a ConfigError whose one-line message names the variable.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from task_queue.errors import ConfigError

Seconds = Annotated[float, Field(gt=0)]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _split(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseModel):
    """Everything a task-queue process can be told; see docs/configuration.md."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    port: int = Field(8080, ge=1, le=65535)
    host: str = "0.0.0.0"
    worker_count: int = Field(5, ge=1, le=10_000)
    worker_prefetch: int = Field(0, ge=0, le=10_000)
    http_workers: int = Field(1, ge=1, le=64)
    metrics_port: int = Field(0, ge=0, le=65535)
    queue_size: int = Field(1000, ge=1)
    queue_backend: Literal["memory", "sqlite", "redis"] | None = None
    redis_url: str = ""
    data_dir: Path = Path("data")
    queues: list[str] = Field(default_factory=list)
    shutdown_timeout: float = Field(30.0, ge=0)
    lease_seconds: Seconds = 30.0
    retry_base_seconds: Seconds = 1.0
    retry_max_seconds: Seconds = 300.0
    result_ttl_seconds: Seconds = 7 * 24 * 3600.0
    allow_private_urls: bool = False
    image_max_bytes: int = Field(20 * 1024 * 1024, ge=1)
    rate_limit: float = Field(100.0, ge=0)
    cors_origins: list[str] = Field(default_factory=lambda: ["*"])
    api_keys: list[str] = Field(default_factory=list)
    trusted_proxies: list[Network] = Field(default_factory=list)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"
    log_file: Path | None = Path("logs/task-queue.log")
    smtp_host: str = ""
    smtp_port: int = Field(0, ge=0, le=65535)
    smtp_username: str = ""
    smtp_password: str = ""
    smtp_from: str = "task-queue@localhost"
    smtp_tls: bool = False
    task_modules: list[str] = Field(default_factory=list)

    _split_lists = field_validator(
        "queues", "cors_origins", "api_keys", "task_modules", mode="before"
    )(_split)

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> Any:
        # A bare address is its own /32 (/128); host bits under a prefix are forgiven.
        try:
            return [ipaddress.ip_network(item, strict=False) for item in _split(value)]
        except ValueError as exc:
            raise ValueError(f"not an IP address or CIDR network ({exc})") from None

    @field_validator("log_level", "log_format", "queue_backend", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("queue_backend", "log_file", mode="before")
    @classmethod
    def _empty_is_default(cls, value: Any) -> Any:
        return None if value == "" else value

    @property
    def backend(self) -> str:
        """QUEUE_BACKEND, else redis when REDIS_URL is set, else the embedded SQLite."""
        if self.queue_backend:
            return self.queue_backend
        return "redis" if self.redis_url else "sqlite"

    @property
    def database_path(self) -> Path:
        return self.data_dir / "task-queue.db"

    @classmethod
    def load(
        cls, environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
    ) -> Settings:
        """Read the environment, apply CLI overrides, and validate; raises ConfigError."""
        source = os.environ if environ is None else environ
        values: dict[str, Any] = {
            name: source[name.upper()] for name in cls.model_fields if name.upper() in source
        }
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            error = exc.errors()[0]
            name = str(error["loc"][0]).upper() if error["loc"] else "configuration"
            given = values.get(str(error["loc"][0])) if error["loc"] else None
            raise ConfigError(f"{name}={given!r}: {error['msg']}") from None
