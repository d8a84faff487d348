"""A real HTTP/1.1 server for the URL and webhook tests: it records requests, replies as scripted.

It runs the stdlib ThreadingHTTPServer in a thread on a free port, so the code
under test talks to it over real sockets (keep-alive, chunked bodies, TLS).
Each path can be scripted with a sequence of replies (fail twice, then succeed);
the last reply repeats. A reply may be held back for `delay` seconds to make the
client time out; closing the peer releases every held reply at once.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socket import AF_INET6


@dataclass(frozen=True)
class Reply:
    """One scripted response; `chunks` are sent with chunked encoding and no Content-Length."""

    status: int = 200
    body: bytes = b"ok"
    headers: Mapping[str, str] = field(default_factory=dict)
    chunks: tuple[bytes, ...] | None = None
    delay: float = 0.0


@dataclass(frozen=True)
class Received:
    """One request as it reached the peer; header names in lower case."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class HttpPeer:
    def __init__(self, server: ThreadingHTTPServer, scheme: str) -> None:
        host, port = server.server_address[:2]
        shown = f"[{host}]" if ":" in str(host) else str(host)
        self.url = f"{scheme}://{shown}:{port}"
        self.port = int(port)
        self.received: list[Received] = []
        self.closing = threading.Event()
        self._scripts: dict[str, list[Reply]] = {}
        self._lock = threading.Lock()

    def script(self, path: str, *replies: Reply) -> None:
        """Reply to `path` with these responses in turn, repeating the last one."""
        with self._lock:
            self._scripts[path] = list(replies)

    def requests_to(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]

    def record(self, request: Received) -> Reply:
        with self._lock:
            self.received.append(request)
            replies = self._scripts.get(request.path.partition("?")[0], [])
            if len(replies) > 1:
                return replies.pop(0)
            return replies[0] if replies else Reply()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked encoding, as real receivers do
    peer: HttpPeer

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_GET

    def log_message(self, format: str, *args: object) -> None:
        return

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {name.lower(): value for name, value in self.headers.items()}
        reply = self.peer.record(Received(self.command, self.path, headers, body))
        if reply.delay:
            self.peer.closing.wait(reply.delay)
        try:
            self._send(reply)
        except OSError:  # the client gave up waiting and closed the connection
            self.close_connection = True

    def _send(self, reply: Reply) -> None:
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if reply.chunks is None:
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for chunk in reply.chunks:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        return  # a client that hangs up mid-response is part of the timeout tests


@contextmanager
def serving(host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> Iterator[HttpPeer]:
    """A peer listening on `host` (IPv4 or IPv6), over TLS when a server context is given."""
    server_class = type("Server", (_Server,), {"address_family": AF_INET6} if ":" in host else {})
    server = server_class((host, 0), _Handler)
    peer = HttpPeer(server, "https" if tls else "http")
    server.RequestHandlerClass = type("Handler", (_Handler,), {"peer": peer})
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    # A short poll interval: shutdown() waits for the next poll, once per test.
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield peer
    finally:
        peer.closing.set()
        server.shutdown()
        server.server_close()
        thread.join()
