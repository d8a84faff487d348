"""API keys and the rate limit, as one plain ASGI middleware in front of the routes.

It sits inside CORSMiddleware, so a 401 or 429 still carries the CORS headers a
browser needs to read it, and preflights are answered before they get here.
Health probes and /metrics are neither limited nor locked: orchestrators and
Prometheus must reach them when clients are throttled, and they hold no task data.

Who the client is: the API key it presents when that key is a configured one
(by the key's digest, never the key), else its address. A key that is not
configured never names a bucket, or anyone could dodge the limit by sending a
new made-up key with each request; such requests are charged to their address,
which also slows down anyone guessing keys.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from task_queue.api.auth import ApiKeys
from task_queue.api.errors import error_response
from task_queue.api.ratelimit import Limit, Limiter, LocalLimiter, RedisLimiter
from task_queue.backends.base import Backend
from task_queue.config import Network, Settings

Headers = list[tuple[bytes, bytes]]
OPEN_PATHS = frozenset({"/api/v1/health", "/api/v1/health/live", "/metrics"})
LOCKED_PREFIX = "/api/"
_NO_KEY = "this endpoint needs an API key: send `Authorization: Bearer KEY` or `X-API-Key: KEY`"


class ClientAddress:
    """The client's IP: the peer's, or from X-Forwarded-For when the peer is a trusted proxy.

    X-Forwarded-For is read from the right: each trusted proxy vouches for the
    hop before it, and the first address that is not a trusted proxy is the
    client. Entries further left were written by the client and prove nothing.
    """

    def __init__(self, trusted: Sequence[Network]) -> None:
        self._networks = tuple(trusted)
        self._trusted = functools.lru_cache(maxsize=1024)(self._in_networks)

    @property
    def behind_proxies(self) -> bool:
        return bool(self._networks)

    def __call__(self, scope: Scope) -> str:
        address = _peer(scope)
        if not self._networks or not self._trusted(address):
            return address
        forwarded = b",".join(v for n, v in scope["headers"] if n == b"x-forwarded-for")
        for hop in reversed(forwarded.decode("latin-1").split(",")):
            if not self._trusted(address):
                break
            try:
                address = str(ipaddress.ip_address(hop.strip()))
            except ValueError:
                break  # not an address: no proxy of ours wrote it
        return address

    def _in_networks(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped  # a dual-stack socket's view of an IPv4 proxy
        return any(ip in network for network in self._networks)


class Guard:
    """401 without a valid API key (when API_KEYS is set), 429 past the rate limit."""

    def __init__(self, app: ASGIApp, settings: Settings, backend: Backend) -> None:
        self.app = app
        self._keys = ApiKeys(settings.api_keys)
        self._address = ClientAddress(settings.trusted_proxies)
        rate = settings.rate_limit
        self._limiter = _limiter(Limit(rate), backend) if rate > 0 else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._address.behind_proxies:
            # The request log and the routes see the client, not the proxy.
            scope["client"] = (self._address(scope), 0)
        if scope["method"] == "OPTIONS" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        key = self._keys.match(scope["headers"]) if self._keys else None
        refused = key is None and bool(self._keys) and scope["path"].startswith(LOCKED_PREFIX)
        if self._limiter is None:
            if refused:
                await _unauthorized(scope, receive, send, {})
            else:
                await self.app(scope, receive, send)
            return
        client = f"key:{key}" if key else f"ip:{_peer(scope)}"
        decision = await self._limiter.take(client)
        limit = self._limiter.limit
        limit_headers = limit.headers(decision)
        if not decision.allowed:
            await _too_many(scope, receive, send, limit.retry_after(decision), limit_headers)
        elif refused:
            await _unauthorized(scope, receive, send, _text(limit_headers))
        else:

            async def send_with_limit(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [*message.get("headers", []), *limit_headers]
                await send(message)

            await self.app(scope, receive, send_with_limit)


def _peer(scope: Scope) -> str:
    peer = scope.get("client")
    return str(peer[0]) if peer else ""


def _limiter(limit: Limit, backend: Backend) -> Limiter:
    from task_queue.backends.redis import RedisBackend

    if isinstance(backend, RedisBackend):
        return RedisLimiter(limit, backend)
    return LocalLimiter(limit)


async def _too_many(
    scope: Scope, receive: Receive, send: Send, seconds: int, limit_headers: Headers
) -> None:
    headers = {"Retry-After": str(seconds), **_text(limit_headers)}
    message = f"rate limit exceeded: retry in {seconds} s"
    response = error_response(429, "rate_limited", message, {"retry_after": seconds}, headers)
    await response(scope, receive, send)


async def _unauthorized(
    scope: Scope, receive: Receive, send: Send, headers: dict[str, str]
) -> None:
    challenge = 'Bearer realm="task-queue"'
    if any(name in (b"authorization", b"x-api-key") for name, _ in scope["headers"]):
        challenge += ', error="invalid_token"'  # RFC 6750 section 3.1
    headers = {"WWW-Authenticate": challenge, **headers}
    response = error_response(401, "unauthorized", _NO_KEY, None, headers)
    await response(scope, receive, send)


def _text(headers: Headers) -> dict[str, str]:
    return {name.decode(): value.decode() for name, value in headers}
