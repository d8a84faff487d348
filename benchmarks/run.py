"""Measure task-queue's throughput targets and print them as a Markdown table.

    make bench            (or: .venv/bin/python benchmarks/run.py [--quick])

1. Queue throughput: `task-queue bench` (20,000 no-op tasks, one process,
   WORKER_COUNT 10, 50 concurrent submitters) on the memory and SQLite backends,
   at the default LOG_LEVEL=info (two lines per task) and at warning.
2. HTTP submit: wrk (Debian package `wrk`) with 50 connections for 10 s against a
   real `task-queue api` process, on each backend, and with HTTP_WORKERS=2 on SQLite.
Numbers go into docs/benchmarks.md with the date and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).with_name("task-queue"))
# Log lines go to stderr, which the benchmark discards; no log file.
LOGS = {"LOG_FILE": ""}


def queue_throughput(backend: str, tasks: int, log_level: str) -> dict[str, object]:
    out = subprocess.run(
        [CLI, "bench", "--backend", backend, "--tasks", str(tasks), "--concurrency", "10"],
        env={**os.environ, **LOGS, "LOG_LEVEL": log_level},
        check=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ).stdout
    result: dict[str, object] = json.loads(out)
    return result


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_live(port: int, deadline: float) -> None:
    url = f"http://127.0.0.1:{port}/api/v1/health/live"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("task-queue api did not start")


def http_submit(backend: str, seconds: int, extra_env: dict[str, str]) -> dict[str, object]:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install wrk")
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="task-queue-http-bench-") as data_dir:
        env = {
            **os.environ,
            **LOGS,
            "QUEUE_BACKEND": backend,
            "QUEUE_SIZE": "100000000",
            "PORT": str(port),
            "HOST": "127.0.0.1",
            "DATA_DIR": data_dir,
            "PYTHONPATH": str(ROOT),
            "TASK_MODULES": "benchmarks.noop_tasks",
            # wrk is one client: at the default limit it would measure 429s.
            "RATE_LIMIT": "0",
            **extra_env,
        }
        server = subprocess.Popen([CLI, "api"], env=env, stderr=subprocess.DEVNULL)
        try:
            _wait_live(port, time.monotonic() + 20)
            cpu_before = _cpu_seconds(server.pid)
            out = subprocess.run(
                [
                    "wrk",
                    "-t1",
                    "-c50",
                    f"-d{seconds}s",
                    "-s",
                    str(ROOT / "benchmarks" / "submit.lua"),
                    f"http://127.0.0.1:{port}/api/v1/tasks",
                ],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            cpu = _cpu_seconds(server.pid) - cpu_before
        finally:
            server.terminate()
            server.wait(30)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    requests = re.search(r"(\d+) requests in", out)
    latency = re.search(r"Latency\s+(\S+)", out)
    refused = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {
        "backend": backend,
        "requests_per_second": round(float(rate.group(1))) if rate else None,
        "mean_latency": latency.group(1) if latency else None,
        "refused": int(refused.group(1)) if refused else 0,
        # CPU of the first process only: a fair cost per request when nothing else
        # runs in it, and far steadier than req/s on a shared machine.
        "cpu_us_per_request": round(cpu / int(requests.group(1)) * 1e6) if requests else None,
    }


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2,000 tasks and 3 s of HTTP")
    args = parser.parse_args()
    tasks, seconds = (2_000, 3) if args.quick else (20_000, 10)
    print(f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}")
    python = platform.python_version()
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, Python {python}")
    print()
    print("| measurement | backend | result |")
    print("|---|---|---|")
    for backend, level in (
        ("memory", "info"),
        ("memory", "warning"),
        ("sqlite", "info"),
        ("sqlite", "warning"),
    ):
        result = queue_throughput(backend, tasks, level)
        print(
            f"| queue end to end, {tasks} no-op tasks, WORKER_COUNT 10, LOG_LEVEL={level} "
            f"| {backend} "
            f"| {result['end_to_end_per_second']} tasks/s "
            f"(submit alone {result['submit_per_second']}/s) |"
        )
    for backend, processes in (("memory", 1), ("sqlite", 1), ("sqlite", 2)):
        result = http_submit(backend, seconds, {"HTTP_WORKERS": str(processes)})
        print(
            f"| HTTP submit, wrk 50 connections {seconds} s, HTTP_WORKERS={processes}, "
            f"LOG_LEVEL=info | {backend} "
            f"| {result['requests_per_second']} req/s, mean latency {result['mean_latency']}, "
            f"{result['refused']} refused |"
        )


if __name__ == "__main__":
    main()
