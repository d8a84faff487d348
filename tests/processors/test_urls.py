"""The URL guard against a real local peer: refused addresses, pinned connections, body limits."""

from __future__ import annotations

import ipaddress
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from task_queue.errors import PermanentError
from task_queue.processors.urls import (
    UnsafeURL,
    guarded_request,
    read_limited,
    refusal,
    vetted_addresses,
)
from tests.processors.http_peer import HttpPeer, Reply, serving


@pytest.fixture
def peer() -> Iterator[HttpPeer]:
    with serving() as running:
        yield running


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """Configured like the worker's shared client: redirects are never followed."""
    async with httpx.AsyncClient(follow_redirects=False) as http:
        yield http


async def fetch(client: httpx.AsyncClient, url: str, *, allow_private: bool) -> httpx.Response:
    async with guarded_request(
        client, "GET", url, allow_private=allow_private, timeout=5
    ) as response:
        await response.aread()
        return response


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://localhost/", "loopback"),
        ("http://127.0.0.1/", "loopback"),
        ("http://[::1]/", "loopback"),
        ("http://10.0.0.1/", "private"),
        ("http://172.16.5.4/", "private"),
        ("https://192.168.1.1/", "private"),
        ("http://[fd00:ec2::254]/", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[fe80::1]/", "link-local"),
        ("http://[fec0::1]/", "site-local"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("http://[::ffff:a00:1]/", "private"),
        ("http://[64:ff9b::a9fe:a9fe]/", "link-local"),
        ("http://[2002:7f00:1::]/", "loopback"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://2130706433/", "loopback"),
        ("http://100.100.100.200/", "carrier-grade NAT"),
        ("http://192.0.0.192/", "IETF protocol"),
        ("http://224.0.0.1/", "multicast"),
        ("http://240.0.0.1/", "reserved"),
        ("http://metadata.google.internal/computeMetadata/v1/", "metadata"),
    ],
)
async def test_non_public_addresses_are_refused_with_the_reason(
    client: httpx.AsyncClient, url: str, reason: str
) -> None:
    with pytest.raises(UnsafeURL, match=reason) as refused:
        await fetch(client, url, allow_private=False)
    assert isinstance(refused.value, PermanentError)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/file",
        "file:///etc/passwd",
        "gopher://example.com/",
        "javascript:alert(1)",
        "/relative/path",
        "http:///no-host",
        "http://user:secret@example.com/",
        "http://example.com:99999/",
    ],
)
async def test_only_absolute_http_urls_without_credentials_are_fetched(
    client: httpx.AsyncClient, url: str
) -> None:
    with pytest.raises(UnsafeURL):
        await fetch(client, url, allow_private=True)


@pytest.mark.parametrize(
    "address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"]
)
async def test_public_addresses_pass_the_check(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is None
    vetted = await vetted_addresses(address, 443, allow_private=False, timeout=5)
    assert vetted == [ipaddress.ip_address(address)]


async def test_a_name_that_does_not_resolve_is_a_connection_error(
    client: httpx.AsyncClient,
) -> None:
    with pytest.raises(httpx.ConnectError, match="cannot resolve"):
        await fetch(client, "http://nothing-here.invalid/", allow_private=False)


async def test_private_peer_is_refused_without_allow_private_and_never_contacted(
    client: httpx.AsyncClient, peer: HttpPeer
) -> None:
    with pytest.raises(UnsafeURL, match=r"127\.0\.0\.1, a loopback address"):
        await fetch(client, f"http://localhost:{peer.port}/", allow_private=False)
    assert peer.received == []


async def test_connection_goes_to_the_vetted_address_with_the_original_host_header(
    client: httpx.AsyncClient, peer: HttpPeer
) -> None:
    response = await fetch(client, f"http://localhost:{peer.port}/hello?x=1", allow_private=True)
    assert response.status_code == 200
    [received] = peer.received
    assert received.headers["host"] == f"localhost:{peer.port}"
    assert received.path == "/hello?x=1"
    # httpx was handed the IP, so it had no name to look up again.
    assert response.request.url.host == "127.0.0.1"
    stream = response.extensions["network_stream"]
    assert stream.get_extra_info("server_addr") == ("127.0.0.1", peer.port)


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not has_ipv6_loopback(), reason="this machine has no IPv6 loopback")
async def test_ipv6_literal_is_requested_in_brackets(client: httpx.AsyncClient) -> None:
    with serving("::1") as peer:
        response = await fetch(client, f"http://[::1]:{peer.port}/six", allow_private=True)
    assert response.status_code == 200
    assert peer.received[0].headers["host"] == f"[::1]:{peer.port}"


async def test_redirect_is_returned_not_followed(client: httpx.AsyncClient, peer: HttpPeer) -> None:
    peer.script("/away", Reply(301, headers={"Location": "http://169.254.169.254/"}))
    response = await fetch(client, f"{peer.url}/away", allow_private=True)
    assert response.status_code == 301
    assert [r.path for r in peer.received] == ["/away"]


async def test_cookies_set_by_one_receiver_are_not_sent_with_the_next_request(
    client: httpx.AsyncClient, peer: HttpPeer
) -> None:
    peer.script("/login", Reply(headers={"Set-Cookie": "session=tenant-a"}))
    await fetch(client, f"{peer.url}/login", allow_private=True)
    await fetch(client, f"{peer.url}/other-tenant", allow_private=True)
    assert "cookie" not in peer.received[1].headers


async def body_of(client: httpx.AsyncClient, url: str, max_bytes: int) -> bytes:
    async with guarded_request(client, "GET", url, allow_private=True, timeout=5) as response:
        return await read_limited(response, max_bytes)


async def test_read_limited_returns_a_body_within_the_limit(
    client: httpx.AsyncClient, peer: HttpPeer
) -> None:
    peer.script("/small", Reply(body=b"x" * 100))
    peer.script("/chunked", Reply(chunks=(b"a" * 60, b"b" * 40)))
    assert await body_of(client, f"{peer.url}/small", 100) == b"x" * 100
    assert await body_of(client, f"{peer.url}/chunked", 100) == b"a" * 60 + b"b" * 40


async def test_read_limited_refuses_a_body_announced_too_large(
    client: httpx.AsyncClient, peer: HttpPeer
) -> None:
    peer.script("/big", Reply(body=b"x" * 1000))
    with pytest.raises(PermanentError, match="1000 bytes \\(Content-Length\\)"):
        await body_of(client, f"{peer.url}/big", 999)


async def test_read_limited_refuses_a_streamed_body_that_grows_too_large(
    client: httpx.AsyncClient, peer: HttpPeer
) -> None:
    peer.script("/stream", Reply(chunks=(b"a" * 600, b"b" * 600, b"c" * 600)))
    with pytest.raises(PermanentError, match="over the 1000 byte limit"):
        await body_of(client, f"{peer.url}/stream", 1000)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(CA file, certificate, key): a certificate valid for the name `localhost` only, no IP."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    ca = ["-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2"]
    openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=Test CA")
    openssl("req", *key, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=localhost")
    (folder / "leaf.ext").write_text(
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
    )
    openssl("x509", "-req", "-in", "leaf.csr", *ca, "-out", "leaf.pem", "-extfile", "leaf.ext")
    return folder / "ca.pem", folder / "leaf.pem", folder / "leaf.key"


@pytest.fixture
def tls_peer(certificates: tuple[Path, Path, Path]) -> Iterator[HttpPeer]:
    _, certificate, key = certificates
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate, key)
    with serving(tls=context) as running:
        yield running


@pytest.fixture
async def tls_client(certificates: tuple[Path, Path, Path]) -> AsyncIterator[httpx.AsyncClient]:
    trusted = ssl.create_default_context(cafile=str(certificates[0]))
    async with httpx.AsyncClient(verify=trusted, follow_redirects=False) as http:
        yield http


async def test_https_verifies_the_certificate_for_the_name_not_the_ip(
    tls_client: httpx.AsyncClient, tls_peer: HttpPeer
) -> None:
    response = await fetch(tls_client, f"https://localhost:{tls_peer.port}/", allow_private=True)
    assert response.status_code == 200
    assert response.request.url.host == "127.0.0.1"
    assert tls_peer.received[0].headers["host"] == f"localhost:{tls_peer.port}"


async def test_https_connection_verified_for_one_name_never_carries_another(
    tls_client: httpx.AsyncClient, tls_peer: HttpPeer
) -> None:
    await fetch(tls_client, f"https://localhost:{tls_peer.port}/", allow_private=True)
    # Same IP and port, so the same pool origin: a kept-alive connection would be
    # reused here, and the request sent under the certificate checked for localhost.
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        await fetch(tls_client, f"https://127.0.0.1:{tls_peer.port}/", allow_private=True)
    assert len(tls_peer.received) == 1
