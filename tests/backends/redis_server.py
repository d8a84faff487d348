"""A real, throwaway redis-server for the tests: its own loopback port, no persistence.

Never the shared Redis on 6379 and never a fake: the Lua scripts, EVALSHA and
blocking reads are what is under test.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol, TypeVar

import pytest

from tests.debian import require
from tests.local import free_port

REDIS_SERVER = "/usr/bin/redis-server"
START_TIMEOUT = 10.0  # seconds for the server to answer PING
STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process; `url` points at it."""

    def __init__(self, workdir: Path, *options: str) -> None:
        require(REDIS_SERVER, "redis-server")  # a fresh machine may not have it yet
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.start(*options)

    def start(self, *options: str) -> None:
        """Start redis-server on this port and directory (again, after a test killed
        it), without snapshots and with `options` on top; return once it answers."""
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--dir", str(self.workdir),
                *options,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers_ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)  # polling a process start-up, not a test's timing

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class _Stoppable(Protocol):
    def stop(self) -> None: ...


Servers = TypeVar("Servers", bound=_Stoppable)


@contextlib.contextmanager
def in_temporary_dir(prefix: str, start: Callable[[Path], Servers]) -> Iterator[Servers]:
    """Servers started in a directory of their own, stopped and removed at the end."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    servers = start(workdir)
    try:
        yield servers
    finally:
        servers.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server for the whole test session; tests keep apart by key prefix."""
    with in_temporary_dir("tq-redis-", RedisServer) as server:
        yield server
