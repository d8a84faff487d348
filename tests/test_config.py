"""Settings come from the environment; CLI flags win; bad values name their variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from task_queue.config import Settings
from task_queue.errors import ConfigError


def test_defaults_follow_the_contract() -> None:
    settings = Settings.load(environ={})
    assert (settings.port, settings.host, settings.worker_count) == (8080, "0.0.0.0", 5)
    assert (settings.queue_size, settings.shutdown_timeout, settings.lease_seconds) == (
        1000,
        30,
        30,
    )
    assert settings.backend == "sqlite"
    assert settings.database_path == Path("data/task-queue.db")
    assert settings.cors_origins == ["*"]
    assert settings.log_file == Path("logs/task-queue.log")


def test_redis_url_selects_redis_unless_a_backend_is_named() -> None:
    assert Settings.load(environ={"REDIS_URL": "redis://x"}).backend == "redis"
    named = Settings.load(environ={"REDIS_URL": "redis://x", "QUEUE_BACKEND": "memory"})
    assert named.backend == "memory"


def test_lists_are_comma_separated() -> None:
    settings = Settings.load(environ={"API_KEYS": "a, b,,c", "QUEUES": "emails,reports"})
    assert settings.api_keys == ["a", "b", "c"]
    assert settings.queues == ["emails", "reports"]


def test_cli_override_beats_the_environment() -> None:
    settings = Settings.load(environ={"PORT": "9000"}, overrides={"port": "9100"})
    assert settings.port == 9100


def test_prefetch_is_off_unless_asked_for() -> None:
    assert Settings.load(environ={}).worker_prefetch == 0
    assert Settings.load(environ={"WORKER_PREFETCH": "12"}).worker_prefetch == 12


def test_empty_log_file_disables_the_file_log() -> None:
    assert Settings.load(environ={"LOG_FILE": ""}).log_file is None


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PORT", "abc"),
        ("PORT", "70000"),
        ("WORKER_COUNT", "0"),
        ("WORKER_PREFETCH", "-1"),
        ("WORKER_PREFETCH", "some"),
        ("QUEUE_BACKEND", "bogus"),
        ("LEASE_SECONDS", "-1"),
        ("LOG_FORMAT", "xml"),
        ("ALLOW_PRIVATE_URLS", "maybe"),
        ("TRUSTED_PROXIES", "10.0.0.0/8,proxy.internal"),
        ("TRUSTED_PROXIES", "10.0.0.0/33"),
    ],
)
def test_bad_value_names_its_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^{variable}="):
        Settings.load(environ={variable: value})


def test_trusted_proxies_are_addresses_and_networks() -> None:
    settings = Settings.load(environ={"TRUSTED_PROXIES": "10.0.0.0/8, 192.168.1.7,::1"})
    assert [str(n) for n in settings.trusted_proxies] == ["10.0.0.0/8", "192.168.1.7/32", "::1/128"]
    assert Settings.load(environ={}).trusted_proxies == []
