"""The `task-queue` command: serve, api, worker, enqueue, stats, bench."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import orjson
import uvloop

from task_queue.backends.base import QueueStats
from task_queue.client import AsyncClient, SubmitOptions, TaskRequest
from task_queue.config import Settings
from task_queue.errors import ConfigError, TaskQueueError
from task_queue.http_client import AsyncHttpClient
from task_queue.logs import configure
from task_queue.registry import default_registry, load_modules
from task_queue.task import Task

EXIT_USAGE = 2


def _settings_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("settings (each overrides the environment variable)")
    for name in Settings.model_fields:
        group.add_argument(f"--{name.replace('_', '-')}", dest=f"setting_{name}", metavar="VALUE")


def _client_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get("TASK_QUEUE_URL"),
        help="talk to this task-queue API (env TASK_QUEUE_URL) instead of the backend directly",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="task-queue", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("serve", "HTTP API and worker pool in one process"),
        ("api", "HTTP API only"),
        ("worker", "worker pool only, sharing the backend with the API"),
    ):
        _settings_flags(commands.add_parser(name, help=text, description=text))

    enqueue = commands.add_parser("enqueue", help="submit a task from the shell")
    enqueue.add_argument("type", help="task type, e.g. email")
    enqueue.add_argument("--payload", default="{}", help="payload as a JSON object")
    enqueue.add_argument("--priority", type=int)
    enqueue.add_argument("--queue")
    enqueue.add_argument("--max-retries", type=int)
    enqueue.add_argument("--timeout-seconds", type=float)
    enqueue.add_argument("--delay-seconds", type=float)
    enqueue.add_argument("--idempotency-key")
    enqueue.add_argument("--wait", action="store_true", help="print the task once it is final")
    enqueue.add_argument("--wait-timeout", type=float, default=60.0)
    _client_flags(enqueue)
    _settings_flags(enqueue)

    stats = commands.add_parser("stats", help="print queue statistics as JSON")
    _client_flags(stats)
    _settings_flags(stats)

    bench = commands.add_parser("bench", help="measure end-to-end throughput in one process")
    bench.add_argument("--tasks", type=int, default=20_000)
    bench.add_argument("--backend", choices=["memory", "sqlite", "redis"], default="memory")
    bench.add_argument("--concurrency", type=int, default=10, help="WORKER_COUNT for the run")
    bench.add_argument("--data-dir", default=None, help="where the sqlite file goes (a temp dir)")
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    prefix = "setting_"
    return {k[len(prefix) :]: v for k, v in vars(args).items() if k.startswith(prefix)}


def _print(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


def _stats_json(stats: QueueStats) -> dict[str, Any]:
    return {
        "queue_size": stats.waiting,
        "by_status": stats.by_status,
        "by_type": stats.by_type,
        "processed": stats.processed,
        "failed": stats.failed,
        "throughput_per_second": round(stats.finished_last_minute / 60, 3),
    }


async def _enqueue(args: argparse.Namespace, settings: Settings) -> Task:
    try:
        payload = orjson.loads(args.payload)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"--payload is not valid JSON: {exc}") from None
    names = ("priority", "queue", "max_retries", "timeout_seconds", "delay_seconds")
    options: SubmitOptions = {}
    for name in (*names, "idempotency_key"):
        value = getattr(args, name)
        if value is not None:
            options[name] = value  # type: ignore[literal-required]
    TaskRequest.model_validate({"type": args.type, "payload": payload, **options})
    client = await _connect(args, settings)
    try:
        task = await client.submit(args.type, payload, **options)
        if args.wait:
            task = await client.wait(task.id, args.wait_timeout)
        return task
    finally:
        await client.close()


async def _connect(args: argparse.Namespace, settings: Settings) -> AsyncClient | AsyncHttpClient:
    if args.url:
        # The server's API_KEYS, set where the CLI runs, supplies the key to send.
        api_key = settings.api_keys[0] if settings.api_keys else None
        return AsyncHttpClient(args.url, api_key=api_key)
    if settings.backend == "memory":
        raise ConfigError("QUEUE_BACKEND=memory lives inside the server process: pass --url")
    return await AsyncClient.connect(settings)


async def _stats(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    client = await _connect(args, settings)
    try:
        if isinstance(client, AsyncHttpClient):
            return await client.stats()
        return _stats_json(await client.stats())
    finally:
        await client.close()


def _run(coroutine: Any) -> Any:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.load(overrides=_overrides(args) if "setting_port" in args else None)
        configure(settings.log_level, settings.log_format, settings.log_file)
        load_modules(settings.task_modules)
        if args.command in ("serve", "api", "worker"):
            from task_queue import service

            code = service.start(
                settings,
                default_registry,
                api=args.command != "worker",
                worker=args.command != "api",
            )
            # Handler threads still running after a forced stop must not hold the exit.
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        elif args.command == "enqueue":
            _print(_run(_enqueue(args, settings)).to_json())
        elif args.command == "stats":
            _print(_run(_stats(args, settings)))
        elif args.command == "bench":
            from task_queue import bench

            _print(_run(bench.run(args, settings)))
    except ConfigError as exc:
        sys.stderr.write(f"task-queue: configuration error: {exc}\n")
        raise SystemExit(EXIT_USAGE) from None
    except TaskQueueError as exc:
        sys.stderr.write(f"task-queue: {type(exc).__name__}: {exc}\n")
        raise SystemExit(1) from None
    except Exception as exc:
        from pydantic import ValidationError

        if not isinstance(exc, ValidationError):
            raise
        error = exc.errors()[0]
        field = ".".join(str(p) for p in error["loc"]) or "task"
        sys.stderr.write(f"task-queue: invalid task: {field}: {error['msg']}\n")
        raise SystemExit(EXIT_USAGE) from None
