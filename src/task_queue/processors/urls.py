"""The SSRF guard: fetch a user-given URL only from a public address, the one that was checked.

Webhook, image and CSV URLs come from whoever submits a task, and the worker
that fetches them usually sits inside a trusted network. `guarded_request`
refuses (`UnsafeURL`, a permanent error) any URL that is not http(s) or whose
host resolves to a loopback, private, link-local (cloud metadata at
169.254.169.254), multicast, shared (CGNAT), reserved or otherwise non-public
address, unless the caller passes `allow_private=True` (ALLOW_PRIVATE_URLS).

No DNS-rebinding gap. The host is resolved once, here, every address it
resolves to is checked, and the request goes to the checked address itself:
the URL handed to httpx carries the IP (IPv6 in brackets) and the original
`Host` header, so httpx never looks the name up again and a DNS answer that
changes between check and connect cannot move the connection.

TLS still verifies the real name. For https the request carries the
`sni_hostname` extension; httpcore passes it as `server_hostname` to
`SSLContext.wrap_socket`, which both sends it as SNI and matches the
certificate against it (`check_hostname`), never against the IP.

One hazard of connecting by IP, and how it is closed: httpcore's pool matches
a kept-alive connection by origin (scheme, host, port), here the IP, and
ignores `sni_hostname` (aiohttp fixed the same hazard by adding
server_hostname to its pool key). A TLS connection verified for a.example
could then carry a later request for b.example on the same IP (a CDN). So
https requests are sent with `Connection: close`: each TLS connection carries
the one request whose name it verified. Plain http keeps pooling, since no
certificate binds an http connection to a name and the Host header routes each
request. The alternative, a custom httpcore network backend that resolves and
checks inside `connect_tcp`, keeps https keep-alive but needs the shared
client built with that transport (worker/pool.py) and a hand-written httpx
transport adapter; it is worth it only if TLS handshakes per request ever show.

The shared client's cookie jar is never sent: cookies one receiver sets must
not reach another task's request to the same IP. Redirects are not followed
(the worker's client has follow_redirects=False): a 3xx is returned as is,
because its Location was never checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import httpx

from task_queue.errors import PermanentError, Retry

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_PORTS = {"http": 80, "https": 443}

# Names that reach a cloud metadata service without needing a private address
# in DNS; refused by name before any lookup.
METADATA_HOSTS = frozenset(
    {"metadata.google.internal", "metadata.goog", "metadata", "instance-data"}
)

_SHARED = ipaddress.ip_network("100.64.0.0/10")  # CGNAT; Alibaba metadata 100.100.100.200
_IETF = ipaddress.ip_network("192.0.0.0/24")  # protocol assignments; Oracle metadata 192.0.0.192
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

# First match names the reason; the order puts the most telling name first.
_REFUSALS: tuple[tuple[str, Callable[[IPAddress], bool]], ...] = (
    ("unspecified", lambda a: a.is_unspecified),
    ("loopback", lambda a: a.is_loopback),
    ("link-local (cloud metadata lives there)", lambda a: a.is_link_local),
    ("site-local", lambda a: isinstance(a, ipaddress.IPv6Address) and a.is_site_local),
    ("multicast", lambda a: a.is_multicast),
    ("reserved", lambda a: a.is_reserved),
    ("shared (carrier-grade NAT)", lambda a: a in _SHARED),
    ("IETF protocol", lambda a: a in _IETF),
    ("private", lambda a: a.is_private),
    ("non-public", lambda a: not a.is_global),
)


class UnsafeURL(PermanentError):
    """The URL may not be fetched: bad scheme, or it resolves to a private, loopback,
    link-local, multicast, reserved or cloud-metadata address."""


def parse_http_url(url: str) -> httpx.URL:
    """The URL parsed, or UnsafeURL when it is not an absolute http(s) URL without credentials.

    Needs no network, so payload models call it to refuse bad URLs at submit time.
    """
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise UnsafeURL(f"not a valid URL: {exc}") from None
    if parsed.scheme not in DEFAULT_PORTS:
        scheme = parsed.scheme or "(none)"
        raise UnsafeURL(f"URL scheme {scheme!r} is not allowed: only http and https")
    if not parsed.raw_host:
        raise UnsafeURL("the URL has no host")
    if parsed.userinfo:
        raise UnsafeURL("credentials in the URL are not supported: send an Authorization header")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise UnsafeURL(f"port {parsed.port} is out of range")
    return parsed


def refusal(address: IPAddress) -> str | None:
    """Why connecting to `address` is refused (e.g. "loopback"), or None when it is public."""
    if isinstance(address, ipaddress.IPv6Address):
        # An IPv4 address inside IPv6 (mapped, NAT64, 6to4) reaches that IPv4 host.
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return refusal(embedded)
    for reason, applies in _REFUSALS:
        if applies(address):
            return reason
    return None


async def vetted_addresses(
    host: str, port: int, *, allow_private: bool, timeout: float
) -> list[IPAddress]:
    """Every address `host` resolves to, each checked; UnsafeURL names the first refused one.

    A failed lookup is httpx.ConnectError (a timeout httpx.ConnectTimeout), so
    callers treat it like any other connection failure: worth a retry.
    """
    name = host.rstrip(".").lower()
    if not allow_private and name in METADATA_HOSTS:
        raise UnsafeURL(f"{host} is a cloud metadata service")
    try:
        addresses: list[IPAddress] = [ipaddress.ip_address(host)]
        described = ""
    except ValueError:
        addresses = await _resolve(host, port, timeout)
        described = f"{host} resolves to "
    if not allow_private:
        for address in addresses:
            reason = refusal(address)
            if reason is not None:
                raise UnsafeURL(
                    f"{described}{address}, a {reason} address: refused "
                    "(set ALLOW_PRIVATE_URLS=true to allow private addresses)"
                )
    return addresses


async def _resolve(host: str, port: int, timeout: float) -> list[IPAddress]:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise httpx.ConnectError(f"cannot resolve {host}: {exc.strerror}") from exc
    except TimeoutError:
        raise httpx.ConnectTimeout(f"resolving {host} took more than {timeout:g} s") from None
    found = [ipaddress.ip_address(info[4][0]) for info in infos]
    return list(dict.fromkeys(found))  # one per address, in the resolver's order


@contextlib.asynccontextmanager
async def guarded_request(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    allow_private: bool,
    timeout: float,
    headers: Mapping[str, str] | None = None,
    content: bytes | None = None,
) -> AsyncIterator[httpx.Response]:
    """Yields the response opened as a stream (body not read yet).

    `timeout` bounds the lookup and each phase of the request (connect, write,
    each read), not the whole exchange: bound that with asyncio.timeout. When
    the host has several addresses, the next one is tried only when connecting
    to one fails, before anything was sent.
    """
    target = parse_http_url(url)
    host = target.raw_host.decode("ascii")
    port = target.port or DEFAULT_PORTS[target.scheme]
    addresses = await vetted_addresses(host, port, allow_private=allow_private, timeout=timeout)
    sent = httpx.Headers(headers)
    sent["Host"] = target.netloc.decode("ascii")
    extensions: dict[str, Any] = {}
    if target.scheme == "https":
        sent["Connection"] = "close"
        extensions["sni_hostname"] = host
    request = client.build_request(
        method, target, headers=sent, content=content, timeout=timeout, extensions=extensions
    )
    # build_request adds the client's cookie jar; only the caller's cookies go out.
    request.headers.pop("Cookie", None)
    if "Cookie" in sent:
        request.headers["Cookie"] = sent["Cookie"]
    response = await _send_to_first(client, request, addresses)
    try:
        yield response
    finally:
        await response.aclose()


async def _send_to_first(
    client: httpx.AsyncClient, request: httpx.Request, addresses: list[IPAddress]
) -> httpx.Response:
    failure: httpx.ConnectError | None = None
    for address in addresses:
        request.url = request.url.copy_with(host=str(address))
        try:
            return await client.send(request, stream=True)
        except httpx.ConnectError as exc:
            failure = exc
    assert failure is not None  # a lookup never returns no address
    raise failure


async def limited_chunks(
    response: httpx.Response, max_bytes: int, chunk_size: int | None = None
) -> AsyncIterator[bytes]:
    """The body a chunk at a time, refusing (PermanentError) one larger than max_bytes.

    Content-Length is checked first, then the bytes are counted while streaming,
    decoded (after gzip/deflate), since that is what fills memory or disk.
    """
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise PermanentError(
            f"response body is {int(declared)} bytes (Content-Length), over the {max_bytes} limit"
        )
    size = 0
    async for chunk in response.aiter_bytes(chunk_size):
        size += len(chunk)
        if size > max_bytes:
            raise PermanentError(f"response body is over the {max_bytes} byte limit")
        yield chunk


async def read_limited(response: httpx.Response, max_bytes: int) -> bytes:
    """The body, refusing (PermanentError) one larger than max_bytes."""
    return b"".join([chunk async for chunk in limited_chunks(response, max_bytes)])


def check_download(response: httpx.Response, field: str) -> None:
    """Let a 2xx through; 408, 429 and 5xx may pass, so Retry; any other answer never will.

    A redirect fails too: the guard checked this URL only, and following the
    redirect could lead inward.
    """
    status = response.status_code
    if 200 <= status < 300:
        return
    answer = f"{field}: the server answered {status} {response.reason_phrase}"
    if status in (408, 429) or status >= 500:
        raise Retry(answer)
    if 300 <= status < 400:
        location = response.headers.get("location", "")
        answer += f" to {location!r} (redirects are not followed: give the final URL)"
    raise PermanentError(answer)
