"""For tests that run real servers on this machine: a free loopback port, and
polling until a process or server shows what the test waits for."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

POLL_SECONDS = 0.02


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(
    check: Callable[[], T | None],
    seconds: float,
    what: str,
    *,
    ignoring: tuple[type[Exception], ...] = (),
) -> T:
    """The first truthy value of check(), polled until `seconds` have passed.

    A check that raises one of `ignoring` counts as not yet (a server still
    starting refuses connections); anything else it raises ends the wait.
    """
    deadline = time.monotonic() + seconds
    while True:
        try:
            value = check()
        except ignoring:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {seconds:g} s waiting for {what}")
        time.sleep(POLL_SECONDS)
