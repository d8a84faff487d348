"""Token buckets for the HTTP API's rate limit: RATE_LIMIT tokens a second, a burst of twice that.

A bucket holds up to `burst` tokens, refills at `rate` tokens a second, and each
request takes one. Two homes for the buckets:

- `LocalLimiter`: this process's memory (memory and SQLite backends). With
  HTTP_WORKERS=N each forked process has its own buckets, so a client may get
  up to N times the limit; Redis is the way to one limit across processes.
- `RedisLimiter`: one bucket per client in Redis (the Redis backend), shared by
  every API process on every machine. When Redis cannot be reached the request
  goes through: a rate limiter that refused everything would turn a Redis
  outage into an API outage, and submits fail with 503 then anyway.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import takewhile
from typing import TYPE_CHECKING, Protocol

from task_queue.errors import BackendUnavailable
from task_queue.logs import get_logger

if TYPE_CHECKING:
    from task_queue.backends.redis import RedisBackend

log = get_logger("task_queue.api")


@dataclass(frozen=True, slots=True)
class Decision:
    """One request's outcome: `tokens` left after it, `wait` seconds until the next token."""

    allowed: bool
    tokens: float
    wait: float


class Limit:
    """RATE_LIMIT as a bucket, and the response headers that describe it.

    The headers follow draft-ietf-httpapi-ratelimit-headers-06 (December 2022),
    the last draft with separate RateLimit-Limit, -Remaining and -Reset fields,
    which is what most clients and gateways read; -07 merged them into one
    `RateLimit` field. Limit is the bucket's size (so Remaining never exceeds
    it), Reset the seconds until the bucket is full again, and the policy
    `rate;w=window;burst=size`, `burst` being an extension parameter.
    """

    def __init__(self, rate: float) -> None:
        self.rate = rate
        # At least one token, or a rate under 0.5/s would refuse every request.
        self.burst = max(1.0, 2 * rate)
        # Integers only in the fields: a fractional rate becomes a quota per longer window.
        window = max(1, math.ceil(1 / rate))
        policy = f"{math.floor(rate * window)};w={window};burst={math.floor(self.burst)}"
        self._fixed = [
            (b"ratelimit-limit", b"%d" % math.floor(self.burst)),
            (b"ratelimit-policy", policy.encode()),
        ]

    def headers(self, decision: Decision) -> list[tuple[bytes, bytes]]:
        reset = math.ceil((self.burst - decision.tokens) / self.rate)
        return [
            *self._fixed,
            (b"ratelimit-remaining", b"%d" % math.floor(decision.tokens)),
            (b"ratelimit-reset", b"%d" % reset),
        ]

    def retry_after(self, decision: Decision) -> int:
        return max(1, math.ceil(decision.wait))


class Limiter(Protocol):
    limit: Limit

    async def take(self, client: str) -> Decision: ...


class TokenBuckets:
    """Every client's bucket in one dict, ordered by last use, so idle ones are dropped cheaply.

    A bucket left alone for burst/rate seconds is full again, the same as no
    bucket: those are forgotten, which bounds memory by the clients of the
    last few seconds rather than every address ever seen.
    """

    def __init__(self, limit: Limit, now: Callable[[], float] = time.monotonic) -> None:
        self._rate = limit.rate
        self._burst = limit.burst
        self._now = now
        self._refill_seconds = self._burst / self._rate
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, at)
        self._next_sweep = now() + self._refill_seconds

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, client: str) -> Decision:
        now = self._now()
        if now >= self._next_sweep:
            self._sweep(now)
        stored = self._buckets.pop(client, None)
        tokens = self._burst
        if stored is not None:
            left, at = stored
            tokens = min(self._burst, left + max(0.0, now - at) * self._rate)
        if tokens >= 1:
            tokens -= 1
            decision = Decision(True, tokens, 0.0)
        else:
            decision = Decision(False, tokens, (1 - tokens) / self._rate)
        self._buckets[client] = (tokens, now)
        return decision

    def _sweep(self, now: float) -> None:
        idle_since = now - self._refill_seconds
        idle = [c for c, _ in takewhile(lambda b: b[1][1] <= idle_since, self._buckets.items())]
        for client in idle:
            del self._buckets[client]
        self._next_sweep = now + self._refill_seconds


class LocalLimiter:
    """Buckets in this process's memory."""

    def __init__(self, limit: Limit) -> None:
        self.limit = limit
        self._buckets = TokenBuckets(limit)

    async def take(self, client: str) -> Decision:
        return self._buckets.take(client)


class RedisLimiter:
    """Buckets in Redis, shared by every API process; lets requests through while Redis is down."""

    def __init__(self, limit: Limit, backend: RedisBackend) -> None:
        self.limit = limit
        self._backend = backend
        self._failing = False

    async def take(self, client: str) -> Decision:
        try:
            taken, tokens, wait = await self._backend.take_token(
                client, self.limit.rate, self.limit.burst
            )
        except BackendUnavailable as exc:
            if not self._failing:  # once per outage, not once per request
                self._failing = True
                # The class only: it tells an outage apart; the text adds connection details.
                error = type(exc.__cause__ or exc).__name__
                log.warning("rate limit off while Redis is unreachable", error=error)
            return Decision(True, self.limit.burst, 0.0)
        if self._failing:
            self._failing = False
            log.info("rate limit on again: Redis answers")
        return Decision(taken, tokens, wait)
