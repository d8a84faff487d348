"""The one source of time for queues, leases and backoff.

Every component takes a `Clock` so tests move time forward instead of sleeping.
Times are float seconds since the Unix epoch.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float: ...


class SystemClock:
    """Wall-clock time: what every real process uses."""

    def now(self) -> float:
        return time.time()


class ManualClock:
    """A clock that only moves when told to, for lease and backoff tests."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds
