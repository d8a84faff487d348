"""Fixtures that run real `task-queue` processes.

Servers that tests cannot disturb are shared by the whole session (start-ups
are the slow part); tests that signal, kill or restart processes get their own
through `launch`. Every process is stopped at teardown, SIGKILL if need be.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.backends.redis_server import RedisServer
from tests.e2e.processes import Launcher, TaskQueueProcess

# Short retries keep the retry tests fast; a short drain keeps teardown fast; the
# demo's task types fetch from a peer on loopback.
SHARED_SETTINGS: dict[str, Any] = {
    "ALLOW_PRIVATE_URLS": "true",
    "WORKER_COUNT": 4,
    "RETRY_BASE_SECONDS": 0.2,
    "RETRY_MAX_SECONDS": 2,
    "SHUTDOWN_TIMEOUT": 5,
}


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launcher]:
    """Start processes for one test: `launch.start("serve", WORKER_COUNT=1)`."""
    launcher = Launcher(tmp_path)
    try:
        yield launcher
    finally:
        launcher.stop_all()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone (files in tmp_path/redis): it may stop, pause
    or restart it, and the default key prefix is its own."""
    workdir = tmp_path / "redis"
    workdir.mkdir()
    server = RedisServer(workdir)
    try:
        yield server
    finally:
        server.process.send_signal(signal.SIGCONT)  # a test may have paused it
        server.stop()


@pytest.fixture(scope="session")
def memory_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TaskQueueProcess]:
    """`task-queue serve` on the memory backend, shared by the tests that only submit and read."""
    launcher = Launcher(tmp_path_factory.mktemp("memory-server"))
    try:
        yield launcher.start("serve", QUEUE_BACKEND="memory", **SHARED_SETTINGS)
    finally:
        launcher.stop_all()


@pytest.fixture(scope="session")
def sqlite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TaskQueueProcess]:
    """`task-queue serve` on the default backend (SQLite in DATA_DIR), shared likewise."""
    launcher = Launcher(tmp_path_factory.mktemp("sqlite-server"))
    try:
        yield launcher.start("serve", **SHARED_SETTINGS)
    finally:
        launcher.stop_all()


@pytest.fixture(params=["memory", "sqlite"])
def any_server(request: pytest.FixtureRequest) -> TaskQueueProcess:
    """Each shared server in turn, for behaviour every backend must show alike."""
    server: TaskQueueProcess = request.getfixturevalue(f"{request.param}_server")
    return server
