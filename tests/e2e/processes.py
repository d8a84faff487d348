"""Real `task-queue` processes for the end-to-end tests, and bounded waits on them.

Nothing here sleeps to wait for a state: every wait polls the HTTP API, the
process or its log, and gives up at a deadline with a message saying what it
waited for and what the process printed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from task_queue.config import Settings
from tests.local import free_port, wait_for

REPO = Path(__file__).resolve().parents[2]
TASK_QUEUE = str(Path(sys.executable).with_name("task-queue"))
HANDLERS_MODULE = "tests.e2e.handlers"

READY_SECONDS = 15.0  # a process that does not answer by then is broken
STOP_GRACE_SECONDS = 10.0  # after SIGTERM, then SIGKILL
FINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})

# Inherited settings would leak the developer's environment into the processes.
_SETTING_NAMES = {name.upper() for name in Settings.model_fields} | {"TASK_QUEUE_URL"}


def process_env(settings: Mapping[str, object]) -> dict[str, str]:
    """The environment of a test process: quiet defaults, then `settings`."""
    env = {k: v for k, v in os.environ.items() if k not in _SETTING_NAMES}
    env.update(
        PYTHONPATH=str(REPO),
        HOST="127.0.0.1",
        LOG_FORMAT="json",
        LOG_FILE="",
        LOG_LEVEL="info",
        RATE_LIMIT="0",
        TASK_MODULES=HANDLERS_MODULE,
    )
    env.update({name: str(value) for name, value in settings.items()})
    return env


class TaskQueueProcess:
    """One `task-queue` subprocess, its stderr captured to a file, and an HTTP client on it."""

    def __init__(
        self, command: str, settings: Mapping[str, object], data_dir: Path, log_path: Path
    ) -> None:
        self.command = command
        self.settings = dict(settings)
        self.data_dir = data_dir
        self.log_path = log_path
        self.port = int(str(settings.get("PORT", 0))) or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = process_env({"DATA_DIR": data_dir, **settings, "PORT": self.port})
        data_dir.mkdir(parents=True, exist_ok=True)
        self._stderr = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            [TASK_QUEUE, command],
            env=env,
            cwd=data_dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
        )
        self.http = httpx.Client(base_url=self.url, timeout=10.0)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def backend(self) -> str:
        return str(self.settings.get("QUEUE_BACKEND", "sqlite"))

    @property
    def serves_http(self) -> bool:
        return self.command in ("serve", "api")

    def stderr(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def logs(self, event: str | None = None, **fields: object) -> list[dict[str, Any]]:
        """The JSON log lines printed so far, those with this event and fields when given."""
        lines = []
        for text in self.stderr().splitlines():
            try:
                line = json.loads(text)
            except ValueError:
                continue  # a traceback or a line cut off mid-write
            if not isinstance(line, dict):
                continue
            if event is not None and line.get("event") != event:
                continue
            if all(line.get(name) == value for name, value in fields.items()):
                lines.append(line)
        return lines

    def wait_ready(self) -> None:
        """Until /health/live answers (worker: its "worker started" line); bounded."""

        def ready() -> bool:
            if self.popen.poll() is not None:
                raise AssertionError(
                    f"task-queue {self.command} exited with {self.popen.returncode} "
                    f"before it was ready:\n{self.stderr()}"
                )
            if not self.serves_http:
                return bool(self.logs("worker started"))
            try:
                return self.http.get("/api/v1/health/live", timeout=1.0).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, READY_SECONDS, f"task-queue {self.command} to be ready")

    def signal(self, sig: signal.Signals) -> None:
        self.popen.send_signal(sig)

    def wait_exit(self, seconds: float) -> int:
        """The exit code, once the process ended within `seconds` (else AssertionError)."""
        try:
            return self.popen.wait(seconds)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"task-queue {self.command} still running {seconds:g} s later:\n{self.stderr()}"
            ) from None

    def stop(self) -> None:
        """SIGTERM, and SIGKILL if that has not ended the process in STOP_GRACE_SECONDS."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.http.close()
        self._stderr.close()

    # HTTP helpers, each asserting the answer it expects.

    def submit(self, type: str, payload: Mapping[str, Any] | None = None, **options: Any) -> Any:
        body = {"type": type, "payload": dict(payload or {}), **options}
        response = self.http.post("/api/v1/tasks", json=body)
        assert response.status_code == 201, response.text
        return response.json()

    def task(self, task_id: str) -> Any:
        response = self.http.get(f"/api/v1/tasks/{task_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait_final(self, task_id: str, seconds: float = 30.0) -> Any:
        """The task once completed, failed or cancelled, long-polling at most `seconds`."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            wait = max(0.0, min(left, 60.0))
            response = self.http.get(
                f"/api/v1/tasks/{task_id}", params={"wait": round(wait, 3)}, timeout=wait + 10
            )
            assert response.status_code == 200, response.text
            task = response.json()
            if task["status"] in FINAL_STATUSES:
                return task
            if left <= 0:
                raise AssertionError(f"task not final after {seconds:g} s: {task}")

    def wait_status(self, task_id: str, status: str, seconds: float = 15.0) -> Any:
        def reached() -> Any:
            task = self.task(task_id)
            return task if task["status"] == status else None

        return wait_for(reached, seconds, f"task {task_id} to be {status}")

    def workers(self) -> list[dict[str, Any]]:
        response = self.http.get("/api/v1/workers")
        assert response.status_code == 200, response.text
        workers: list[dict[str, Any]] = response.json()["workers"]
        return workers


class RawRequest:
    """One HTTP request on a plain socket, for when the test must know the server has read it."""

    def __init__(self, port: int, method: str, path: str) -> None:
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=READY_SECONDS)
        request = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        self.sock.sendall(request.encode())

    def __enter__(self) -> RawRequest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def _unread_bytes_at_server(self) -> int | None:
        """Bytes of this connection still waiting in the server's receive queue (Linux)."""
        client_port = self.sock.getsockname()[1]
        local, remote = f"0100007F:{self.port:04X}", f"0100007F:{client_port:04X}"
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1] == local and fields[2] == remote:
                return int(fields[4].split(":")[1], 16)
        return None

    def wait_until_read_by_server(self) -> None:
        wait_for(
            lambda: self._unread_bytes_at_server() == 0,
            READY_SECONDS,
            "the server to read the request",
        )

    def response(self) -> tuple[int, dict[str, str], bytes]:
        """Status, headers (lower-case names) and body, read to the end of the connection."""
        data = bytearray()
        while chunk := self.sock.recv(65536):
            data += chunk
        head, _, body = bytes(data).partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(status_line.split()[1]), headers, body


class Launcher:
    """Starts processes on one DATA_DIR (unless told otherwise) and stops them all at the end."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.data_dir = base / "data"
        self.processes: list[TaskQueueProcess] = []

    def start(
        self, command: str = "serve", *, data_dir: Path | None = None, **settings: object
    ) -> TaskQueueProcess:
        """A process, started and ready; settings are environment variables."""
        log_path = self.base / f"{command}-{len(self.processes)}.stderr"
        process = TaskQueueProcess(command, settings, data_dir or self.data_dir, log_path)
        self.processes.append(process)
        process.wait_ready()
        return process

    def stop_all(self) -> None:
        for process in self.processes:
            process.stop()
