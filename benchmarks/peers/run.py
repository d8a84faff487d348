"""Put the same no-op workload through task-queue's peers on one throwaway redis-server.

    .venv-peers/bin/python benchmarks/peers/run.py [--tasks 20000] [--only celery,rq]

Starts `redis-server --port <free> --save "" --appendonly no` (never the shared 6379),
FLUSHALLs before each peer, runs each `<peer>_bench.py` in a subprocess with a timeout,
then `task-queue bench --backend redis` if the installed task-queue supports it, and
prints a Markdown table with task-queue's ratio to each peer. A peer that fails is
reported in the table, never fatal.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PEERS = ["celery", "rq", "dramatiq", "arq", "taskiq", "saq"]
Result = dict[str, Any]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1"]
    argv += ["--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(100):
        try:
            client.ping()
            return proc, url
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"redis-server did not start on port {port}")


def failed(peer: str, why: str) -> Result:
    return {"peer": peer, "version": "-", "enqueue_per_second": None, "drain_per_second": None,
            "notes": f"FAILED: {why}"}  # fmt: skip


def run_peer(peer: str, url: str, tasks: int, timeout: float) -> Result:
    argv = [sys.executable, str(HERE / f"{peer}_bench.py"), "--tasks", str(tasks)]
    argv += ["--timeout", str(timeout)]
    env = {**os.environ, "PEER_REDIS_URL": url}
    try:
        done = subprocess.run(
            argv, cwd=HERE, env=env, capture_output=True, text=True, timeout=timeout + 120
        )
    except subprocess.TimeoutExpired:
        return failed(peer, f"no result within {timeout + 120:.0f}s")
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return failed(peer, f"exit {done.returncode}: {tail}")
    result: Result = json.loads(lines[-1])
    return result


def task_queue_binary(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    local = ROOT / ".venv" / "bin" / "task-queue"
    return str(local) if local.exists() else shutil.which("task-queue")


def run_task_queue(binary: str | None, url: str, tasks: int, timeout: float) -> Result:
    peer = "task-queue"
    if binary is None:
        return failed(peer, "task-queue is not installed (make install the project venv)")
    usage = subprocess.run([binary, "bench", "--help"], capture_output=True, text=True).stdout
    if "redis" not in usage:
        return failed(peer, "not measurable yet: `task-queue bench` has no --backend redis")
    env = {**os.environ, "REDIS_URL": url, "QUEUE_BACKEND": "redis"}
    argv = [binary, "bench", "--backend", "redis", "--tasks", str(tasks)]
    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return failed(peer, f"no result within {timeout:.0f}s")
    # Logs are JSON lines; the result is the last indented JSON object ("{" alone on a line).
    out = done.stdout.splitlines()
    starts = [i for i, line in enumerate(out) if line == "{"]
    if done.returncode != 0 or not starts:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return failed(peer, f"exit {done.returncode}: {tail}")
    data = json.loads("\n".join(out[starts[-1] :]))
    # task-queue has no --version; ask the python of the venv it is installed in.
    probe = "import importlib.metadata as m; print(m.version('task-queue'))"
    python = Path(binary).parent / "python"
    version = subprocess.run([python, "-c", probe], capture_output=True, text=True).stdout
    return {
        "peer": peer,
        "version": version.strip().split()[-1] if version.strip() else "dev",
        "enqueue_per_second": data.get("submit_per_second"),
        "drain_per_second": data.get("end_to_end_per_second"),
        "notes": f"1 process, worker_count {data.get('worker_count')}, "
        f"{data.get('submitters')} concurrent submitters; drain = end-to-end with "
        "submit overlapping (not enqueue-then-drain like the peers)",
    }


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def ratio(ours: float | None, theirs: float | None) -> str:
    return "-" if not ours or not theirs else f"{ours / theirs:.2f}x"


def table(results: list[Result], ours: Result) -> str:
    rows = [
        "| peer | version | enqueue/s | drain/s | task-queue enqueue ratio "
        "| task-queue drain ratio | notes |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in [*results, ours]:
        enq, drn = r["enqueue_per_second"], r["drain_per_second"]
        is_us = r is ours
        rows.append(
            f"| {r['peer']} | {r['version']} | {fmt(enq)} | {fmt(drn)} "
            f"| {'' if is_us else ratio(ours['enqueue_per_second'], enq)} "
            f"| {'' if is_us else ratio(ours['drain_per_second'], drn)} | {r['notes']} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--only", default=",".join(PEERS), help="comma-separated peers")
    parser.add_argument("--timeout", type=float, default=120.0, help="drain budget per peer, s")
    parser.add_argument("--task-queue", help="task-queue executable (default: .venv/bin)")
    args = parser.parse_args()
    chosen = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(chosen) - {*PEERS, "task-queue"}
    if unknown:
        parser.error(f"unknown peers: {', '.join(sorted(unknown))}")

    server, url = start_redis()
    client = redis.Redis.from_url(url)
    results: list[Result] = []
    try:
        for peer in (p for p in chosen if p in PEERS):
            client.flushall()
            print(f"running {peer} ({args.tasks} tasks) ...", file=sys.stderr, flush=True)
            results.append(run_peer(peer, url, args.tasks, args.timeout))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
        client.flushall()
        print("running task-queue ...", file=sys.stderr, flush=True)
        ours = run_task_queue(task_queue_binary(args.task_queue), url, args.tasks, 300)
        print(json.dumps(ours), file=sys.stderr, flush=True)
    finally:
        server.terminate()
        server.wait()
    print(f"\n{args.tasks:,} no-op jobs, one worker process each, one redis-server.\n")
    print(table(results, ours))
    measured = [r for r in results if r["drain_per_second"]]
    if measured:
        best = max(measured, key=lambda r: r["drain_per_second"])
        print(
            f"\nFastest peer drain: {best['peer']} {fmt(best['drain_per_second'])}/s; "
            f"task-queue ratio {ratio(ours['drain_per_second'], best['drain_per_second'])} "
            "(issue #4 asks >= 2x)."
        )
    print(
        "Peers: one sequential enqueue call per job, then one worker drains the backlog "
        "(rate from the first completion, worker startup excluded). task-queue: "
        "`task-queue bench --backend redis`, 50 concurrent submitters with the worker "
        "running, so its enqueue/s is not like-for-like and its drain/s is end-to-end."
    )


if __name__ == "__main__":
    main()
