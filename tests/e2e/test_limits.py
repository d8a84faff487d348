"""A real server holds its limits against clients on raw sockets: too big, too deep, too slow.

httpx would fix up what these clients get wrong on purpose (lengths, chunking,
pacing), so each speaks HTTP/1.1 by hand.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import httpx

from task_queue.api.limits import (
    HEAD_TIMEOUT_SECONDS,
    MAX_BODY_BYTES,
    MAX_CONNECTIONS,
    MAX_HEAD_BYTES,
)
from task_queue.client import MAX_PAYLOAD_DEPTH, MAX_WAIT_SECONDS
from tests.e2e.processes import Launcher, TaskQueueProcess

SUBMIT_HEAD = b"POST /api/v1/tasks HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
CHUNK = 64 * 1024


def connect(server: TaskQueueProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=HEAD_TIMEOUT_SECONDS * 3)


def send_until_refused(sock: socket.socket, data: bytes, times: int) -> int:
    """Bytes sent of `data` repeated, until the server stops taking them."""
    sent = 0
    try:
        for _ in range(times):
            sock.sendall(data)
            sent += len(data)
    except (BrokenPipeError, ConnectionResetError):
        pass
    return sent


def read_to_close(sock: socket.socket) -> bytes:
    data = bytearray()
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass  # the server closed with our unread bytes in its buffer, after answering
    return bytes(data)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], Any]:
    """Status, headers and JSON body of the one response before the server closes."""
    head, _, body = read_to_close(sock).partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, json.loads(body)


def assert_refused(response: tuple[int, dict[str, str], Any], status: int, code: str) -> None:
    got, headers, body = response
    assert got == status, body
    assert headers["content-type"].startswith("application/json")
    assert headers["connection"] == "close"
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code


def test_declared_oversize_body_is_a_413_before_any_of_it_is_sent(
    sqlite_server: TaskQueueProcess,
) -> None:
    with connect(sqlite_server) as sock:
        sock.sendall(SUBMIT_HEAD + b"Content-Length: %d\r\n\r\n" % (MAX_BODY_BYTES + 1))

        assert_refused(read_response(sock), 413, "payload_too_large")


def test_chunked_oversize_body_is_a_413_and_the_server_stops_reading(
    sqlite_server: TaskQueueProcess,
) -> None:
    chunk = b"%x\r\n%s\r\n" % (CHUNK, b" " * CHUNK)
    with connect(sqlite_server) as sock:
        sock.sendall(SUBMIT_HEAD + b"Transfer-Encoding: chunked\r\n\r\n")

        sent = send_until_refused(sock, chunk, times=20 * MAX_BODY_BYTES // CHUNK)

        assert_refused(read_response(sock), 413, "payload_too_large")
    assert sent < 20 * MAX_BODY_BYTES


def test_body_longer_than_its_content_length_is_not_read_past_it(
    sqlite_server: TaskQueueProcess,
) -> None:
    body = b'{"type": "sleep"}'
    with connect(sqlite_server) as sock:
        sock.sendall(SUBMIT_HEAD + b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        # What follows the declared length is read as a next request, and is not one.
        send_until_refused(sock, b"x" * CHUNK, times=2 * MAX_BODY_BYTES // CHUNK)

        data = read_to_close(sock)
    assert b'"invalid_http"' in data


def test_header_over_the_head_limit_is_a_431(sqlite_server: TaskQueueProcess) -> None:
    head = b"GET /api/v1/stats HTTP/1.1\r\nHost: test\r\nX-Big: %s\r\n\r\n" % (
        b"a" * (MAX_HEAD_BYTES + 1)
    )
    with connect(sqlite_server) as sock:
        send_until_refused(sock, head, times=1)

        assert_refused(read_response(sock), 431, "headers_too_large")


def test_endless_header_is_cut_off_at_the_head_limit(sqlite_server: TaskQueueProcess) -> None:
    with connect(sqlite_server) as sock:
        sock.sendall(b"GET /api/v1/stats HTTP/1.1\r\nHost: test\r\nX-Big: ")

        sent = send_until_refused(sock, b"a" * CHUNK, times=1000)

        assert_refused(read_response(sock), 431, "headers_too_large")
    assert sent < 1000 * CHUNK


def test_idle_and_slowloris_connections_are_cut_off_at_the_head_timeout(
    sqlite_server: TaskQueueProcess,
) -> None:
    # Both at once: each waits out the whole timeout.
    started = time.monotonic()
    with connect(sqlite_server) as idle, connect(sqlite_server) as slow:
        slow.sendall(b"GET /api/v1/stats HTTP/1.1\r\nHost: test\r\nX-Slow: ")
        try:
            while time.monotonic() - started < HEAD_TIMEOUT_SECONDS * 3:
                slow.sendall(b"a")  # a byte now and then, never the end of the headers
                time.sleep(0.5)
        except (BrokenPipeError, ConnectionResetError):
            pass

        assert_refused(read_response(slow), 408, "request_timeout")
        assert_refused(read_response(idle), 408, "request_timeout")


def test_connection_over_the_limit_is_a_503_and_the_server_recovers(launch: Launcher) -> None:
    server = launch.start("serve", QUEUE_BACKEND="memory")
    server.http.close()  # its keep-alive connection would count against the limit
    held = [connect(server) for _ in range(MAX_CONNECTIONS)]
    try:
        with connect(server) as sock:
            assert_refused(read_response(sock), 503, "too_many_connections")
    finally:
        for sock in held:
            sock.close()

    assert httpx.get(f"{server.url}/api/v1/stats").status_code == 200


def nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


def test_payload_at_the_depth_limit_is_accepted(sqlite_server: TaskQueueProcess) -> None:
    content = b'{"type": "sleep", "delay_seconds": 3600, "payload": %s}' % nested(MAX_PAYLOAD_DEPTH)

    response = sqlite_server.http.post(
        "/api/v1/tasks", content=content, headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 201, response.text


def test_payload_one_level_deeper_than_the_limit_is_a_422(
    sqlite_server: TaskQueueProcess,
) -> None:
    content = b'{"type": "sleep", "payload": %s}' % nested(MAX_PAYLOAD_DEPTH + 1)

    response = sqlite_server.http.post(
        "/api/v1/tasks", content=content, headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 422, response.text
    assert response.json()["error"]["details"][0]["field"] == "payload"


def test_long_poll_longer_than_the_cap_is_a_422(sqlite_server: TaskQueueProcess) -> None:
    response = sqlite_server.http.get("/api/v1/tasks/any", params={"wait": MAX_WAIT_SECONDS + 1})

    assert response.status_code == 422, response.text
    assert response.json()["error"]["details"][0]["field"] == "query.wait"
