"""The shipped nginx.conf, run for real in front of two `task-queue api` processes.

One redis-server, two APIs and one worker on it, nginx before the APIs: the
Compose stack without Docker. Requests go through nginx only.
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.backends.redis_server import RedisServer
from tests.deploy.deployment import ROOT, compose
from tests.deploy.nginx import NGINX_CONF, Nginx
from tests.e2e.processes import FINAL_STATUSES, READY_SECONDS, Launcher, TaskQueueProcess, wait_for

TASKS = 200
MAIL = {"recipient": "ada@example.com", "subject": "Hi", "body": "through nginx"}


class Stack:
    """What a test reaches: nginx's URL, and the processes behind it for their logs."""

    def __init__(self, nginx: Nginx, apis: list[TaskQueueProcess], worker: TaskQueueProcess):
        self.nginx = nginx
        self.apis = apis
        self.worker = worker
        self.http = httpx.Client(base_url=nginx.url, timeout=30.0)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("nginx-stack")
    # Redis with the Compose file's options (AOF, the listpack bound): a real
    # redis-server takes them, as the image's would.
    redis = RedisServer(base, *compose()["services"]["redis"]["command"][1:])
    launcher = Launcher(base)
    nginx: Nginx | None = None
    try:
        settings = {
            "QUEUE_BACKEND": "redis",
            "REDIS_URL": redis.url,
            "QUEUE_SIZE": TASKS * 2,
            "ALLOW_PRIVATE_URLS": "true",
            "SHUTDOWN_TIMEOUT": 5,
        }
        apis = [launcher.start("api", **settings) for _ in range(2)]
        worker = launcher.start("worker", WORKER_COUNT=8, **settings)
        nginx = Nginx([api.port for api in apis], base / "nginx")
        nginx.start()
        running = Stack(nginx, apis, worker)
        yield running
        running.http.close()
    finally:
        if nginx is not None:
            nginx.stop()
        launcher.stop_all()
        redis.stop()


def served_by(apis: list[TaskQueueProcess], request_ids: set[str]) -> Counter[int]:
    """How many of these requests each API pid logged, once all are (a line follows its reply)."""

    def counted() -> Counter[int] | None:
        found = Counter(
            api.pid
            for api in apis
            for line in api.logs("request")
            if line.get("request_id") in request_ids
        )
        return found if found.total() == len(request_ids) else None

    return wait_for(counted, READY_SECONDS, f"{len(request_ids)} requests in the API logs")


def wait_final(http: httpx.Client, task_id: str) -> dict[str, Any]:
    response = http.get(f"/api/v1/tasks/{task_id}", params={"wait": 30}, timeout=40)
    assert response.status_code == 200, response.text
    task: dict[str, Any] = response.json()
    assert task["status"] in FINAL_STATUSES, task
    return task


def test_shipped_config_passes_nginx_t(tmp_path: Path) -> None:
    done = Nginx([8080, 8081], tmp_path).test_config()
    assert done.returncode == 0, done.stderr
    assert "test is successful" in done.stderr


def test_tasks_through_nginx_are_spread_over_both_apis_and_all_complete(stack: Stack) -> None:
    request_ids = [f"spread-{number}" for number in range(TASKS)]
    task_ids = []
    for request_id in request_ids:
        response = stack.http.post(
            "/api/v1/tasks",
            json={"type": "email", "payload": MAIL},
            headers={"X-Request-ID": request_id},
        )
        assert response.status_code == 201, response.text
        assert response.headers["x-request-id"] == request_id
        task_ids.append(response.json()["id"])

    finals = [wait_final(stack.http, task_id)["status"] for task_id in task_ids]
    assert finals == ["completed"] * TASKS
    served = served_by(stack.apis, set(request_ids))
    assert sorted(served) == sorted(api.pid for api in stack.apis), served


def test_request_id_reaches_the_api_and_the_worker(stack: Stack) -> None:
    response = stack.http.post(
        "/api/v1/tasks",
        json={"type": "email", "payload": MAIL},
        headers={"X-Request-ID": "deploy-traced"},
    )
    task_id = response.json()["id"]
    wait_final(stack.http, task_id)
    assert served_by(stack.apis, {"deploy-traced"}).total() == 1
    assert stack.worker.logs("task started", task_id=task_id, request_id="deploy-traced")


def test_nginx_makes_a_request_id_when_the_client_sends_none(stack: Stack) -> None:
    response = stack.http.get("/api/v1/health")
    request_id = response.headers["x-request-id"]
    assert len(request_id) == 32
    assert served_by(stack.apis, {request_id}).total() == 1


def test_long_poll_answers_through_nginx_once_the_task_is_final(stack: Stack) -> None:
    response = stack.http.post(
        "/api/v1/tasks", json={"type": "email", "payload": MAIL, "delay_seconds": 1}
    )
    assert wait_final(stack.http, response.json()["id"])["status"] == "completed"


def test_stats_queue_size_that_keda_reads_is_served(stack: Stack) -> None:
    stats = stack.http.get("/api/v1/stats").json()
    assert isinstance(stats["queue_size"], int)


def test_demo_script_completes_every_task_through_nginx(stack: Stack) -> None:
    done = subprocess.run(
        ["bash", "examples/demo.sh"],
        env={**os.environ, "TASK_QUEUE_URL": stack.nginx.url},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "completed" in done.stdout


class _Echo(BaseHTTPRequestHandler):
    """Answers with the request's headers, as the upstream nginx proxies to."""

    def do_GET(self) -> None:
        body = "\n".join(f"{name.lower()}: {value}" for name, value in self.headers.items())
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: object) -> None:
        pass


def test_nginx_passes_the_client_address_and_request_id_upstream(tmp_path: Path) -> None:
    echo = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    nginx = Nginx([echo.server_address[1]] * 2, tmp_path)
    try:
        nginx.start()
        response = httpx.get(
            f"{nginx.url}/anything",
            headers={"X-Forwarded-For": "203.0.113.7", "X-Request-ID": "abc-123"},
        )
    finally:
        nginx.stop()
        echo.shutdown()
        echo.server_close()
    headers = dict(line.split(": ", 1) for line in response.text.splitlines())
    assert headers["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
    assert headers["x-real-ip"] == "127.0.0.1"
    assert headers["x-request-id"] == "abc-123"
    assert "connection" not in headers  # HTTP/1.1 keep-alive to the upstream, not "close"


def test_proxy_timeouts_outlast_the_longest_long_poll() -> None:
    text = NGINX_CONF.read_text()
    for directive in ("proxy_read_timeout", "proxy_send_timeout"):
        (line,) = [line for line in text.splitlines() if line.strip().startswith(directive)]
        assert int(line.split()[1].rstrip("s;")) > 60, line


def test_metrics_are_not_served_through_nginx(stack: Stack) -> None:
    assert stack.http.get("/metrics").status_code == 404
    assert stack.apis[0].http.get("/metrics").status_code == 200  # the inside network still can
