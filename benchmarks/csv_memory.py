"""Measure the `data_processing` handler's time and peak memory on a ~200 MB CSV.

    .venv/bin/python benchmarks/csv_memory.py [--mb 200]

Writes a CSV of about `--mb` megabytes into a temporary directory, serves it
from a local HTTP server, and runs the handler in-process over `csv_url`
(download through the SSRF guard, then the pipeline), once per pipeline:

1. filter + aggregate (blocking step, 40 groups),
2. filter + select + limit (streaming all the way),
3. sort + limit (the heap that keeps only the top rows),
4. filter + sort (what a full sort of ~40% of the rows holds),
5. dedupe on email (~80% distinct: what the set of digests holds),
6. aggregate by email (~800,000 groups: what the groups hold).

Each pipeline runs in a fresh child process, because ru_maxrss is the peak of
the whole process's life: a shared process would report the largest run for
every later one. The table shows the peak RSS and its growth over the child's
RSS before the run (interpreter, imports and the HTTP server).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import functools
import json
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from task_queue.config import Settings
from task_queue.logs import get_logger
from task_queue.processors.data import DataPayload, process_csv
from task_queue.registry import TaskContext
from task_queue.task import Task

HEADER = ["id", "email", "region", "status", "amount", "created_at", "note"]
REGIONS = [f"region-{n:02d}" for n in range(40)]
STATUSES = ["paid", "paid", "paid", "refunded", "pending"]

PIPELINES: dict[str, list[dict[str, Any]]] = {
    "filter + aggregate": [
        {"type": "filter", "column": "status", "op": "eq", "value": "paid"},
        {
            "type": "aggregate",
            "group_by": ["region"],
            "aggregations": [
                {"function": "count", "as": "orders"},
                {"column": "amount", "function": "sum", "as": "revenue"},
                {"column": "amount", "function": "avg", "as": "average"},
                {"column": "amount", "function": "min", "as": "smallest"},
                {"column": "amount", "function": "max", "as": "largest"},
            ],
        },
    ],
    "filter + select + limit": [
        {"type": "filter", "column": "amount", "op": "gte", "value": 100},
        {"type": "select", "columns": ["id", "email", "amount"]},
        {"type": "limit", "count": 10_000_000},
    ],
    "sort + limit": [
        {"type": "sort", "by": ["amount"], "descending": True},
        {"type": "limit", "count": 100},
    ],
    "filter + sort": [
        {"type": "filter", "column": "amount", "op": "lt", "value": 500},
        {"type": "sort", "by": ["amount"]},
    ],
    "dedupe": [{"type": "dedupe", "columns": ["email"]}],
    "aggregate by email": [
        {
            "type": "aggregate",
            "group_by": ["email"],
            "aggregations": [
                {"function": "count", "as": "orders"},
                {"column": "amount", "function": "sum", "as": "spent"},
            ],
        },
    ],
}


def peak_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / (1024 * 1024)


def generate(path: Path, megabytes: int) -> int:
    """Write a CSV of about `megabytes` MB, a batch of rows at a time; returns the row count."""
    target = megabytes * 1_000_000
    rand = random.Random(7)
    rows = 0
    with path.open("w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(HEADER)
        while file.tell() < target:
            batch = [
                [
                    rows + i,
                    f"user{rand.randrange(1_000_000)}@example.com",
                    rand.choice(REGIONS),
                    rand.choice(STATUSES),
                    f"{rand.uniform(0, 1000):.2f}",
                    f"2026-{rand.randrange(1, 13):02d}-{rand.randrange(1, 29):02d}T12:00:00Z",
                    "a note of some length to make rows realistic",
                ]
                for i in range(10_000)
            ]
            writer.writerows(batch)
            rows += len(batch)
    return rows


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return


async def run_handler(path: Path, pipeline: str, data_dir: Path) -> dict[str, Any]:
    handler = functools.partial(_Quiet, directory=str(path.parent))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{path.name}"
    settings = Settings.load(
        environ={},
        overrides={"data_dir": data_dir, "allow_private_urls": True, "log_file": ""},
    )
    payload = DataPayload.model_validate({"csv_url": url, "operations": PIPELINES[pipeline]})
    before = peak_rss_mib()
    started = time.perf_counter()
    try:
        async with httpx.AsyncClient(follow_redirects=False) as http:
            ctx = TaskContext(
                task=Task.new("data_processing", {}, now=time.time()),
                settings=settings,
                logger=get_logger("benchmarks.csv_memory"),
                http=http,
                report_progress=lambda progress: None,
            )
            result = await process_csv(payload, ctx)
    finally:
        server.shutdown()
        server.server_close()
    return {
        "pipeline": pipeline,
        "seconds": round(time.perf_counter() - started, 2),
        "rss_before_mib": round(before, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "rows_in": result["rows_in"],
        "rows_out": result["rows_out"],
    }


def child(path: Path, pipeline: str) -> None:
    with tempfile.TemporaryDirectory() as data_dir:
        measured = asyncio.run(run_handler(path, pipeline, Path(data_dir)))
    print(json.dumps(measured))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200, help="size of the generated CSV")
    parser.add_argument("--child", nargs=2, metavar=("CSV", "PIPELINE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), args.child[1])
        return
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "orders.csv"
        started = time.perf_counter()
        rows = generate(path, args.mb)
        size = path.stat().st_size / 1_000_000
        print(f"generated {size:.0f} MB, {rows:,} rows in {time.perf_counter() - started:.1f} s")
        print()
        print("| pipeline | rows in | rows out | seconds | RSS before | peak RSS | growth |")
        print("|---|---|---|---|---|---|---|")
        for pipeline in PIPELINES:
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(path), pipeline],
                check=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            ).stdout
            m = json.loads(out.strip().splitlines()[-1])
            growth = m["peak_rss_mib"] - m["rss_before_mib"]
            print(
                f"| {m['pipeline']} | {m['rows_in']:,} | {m['rows_out']:,} | {m['seconds']} "
                f"| {m['rss_before_mib']} MiB | {m['peak_rss_mib']} MiB | +{growth:.1f} MiB |"
            )


if __name__ == "__main__":
    main()
