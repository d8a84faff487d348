"""A real nginx running the shipped nginx.conf, rendered for this machine.

The shipped file names Compose's hosts (api1, api2), port 80 and /tmp; the
rendering swaps exactly those, so the test runs the file users run.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

from tests.debian import require
from tests.deploy.deployment import DOCKER
from tests.e2e.processes import READY_SECONDS, free_port, wait_for

NGINX_CONF = DOCKER / "nginx.conf"


def _swap(
    pattern: str, replacement: str | Callable[[re.Match[str]], str], text: str, count: int
) -> str:
    """re.subn that insists on `count` matches, so a changed nginx.conf fails loudly here."""
    new, found = re.subn(pattern, replacement, text)
    assert found == count, f"{pattern!r} matched {found} times in {NGINX_CONF}, not {count}"
    return new


def render(listen_port: int, upstream_ports: Sequence[int], workdir: Path) -> str:
    """nginx.conf on 127.0.0.1:listen_port, proxying to local ports, writing in workdir."""
    ports = iter(upstream_ports)
    text = NGINX_CONF.read_text()
    text = _swap(r"server api\d:8080", lambda _: f"server 127.0.0.1:{next(ports)}", text, 2)
    text = _swap(r"listen 80;", f"listen 127.0.0.1:{listen_port};", text, 1)
    return _swap(r" /tmp/(?=\w)", f" {workdir}/", text, 6)


class Nginx:
    """nginx in the foreground on a free port; its access and error logs in workdir."""

    def __init__(self, upstream_ports: Sequence[int], workdir: Path) -> None:
        self.binary = require("/usr/sbin/nginx", "nginx")
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.conf = workdir / "nginx.conf"
        self.conf.write_text(render(self.port, upstream_ports, workdir))
        self.access_log = workdir / "access.log"
        self.error_log = workdir / "error.log"
        self.process: subprocess.Popen[bytes] | None = None

    def command(self, *extra: str) -> list[str]:
        # As root, nginx would run its workers as nobody, who cannot enter pytest's tmp dirs.
        directives = "daemon off;" + (" user root;" if os.geteuid() == 0 else "")
        return [self.binary, "-e", "stderr", "-p", str(self.workdir), "-c", str(self.conf),
                "-g", directives, *extra]  # fmt: skip

    def test_config(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command("-t"), capture_output=True, text=True, check=False)

    def start(self) -> None:
        with open(self.access_log, "wb") as out, open(self.error_log, "wb") as err:
            self.process = subprocess.Popen(self.command(), stdout=out, stderr=err)

        def answers() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"nginx exited:\n{self.error_log.read_text()}")
            try:
                return httpx.get(f"{self.url}/api/v1/health/live", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(answers, READY_SECONDS, "nginx to answer")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # nginx's fast shutdown
            self.process.wait(READY_SECONDS)
