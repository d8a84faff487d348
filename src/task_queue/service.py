"""Runs `serve`, `api` and `worker` processes: signals, the HTTP server and the worker.

One event loop holds everything. The first SIGTERM or SIGINT stops intake (the
HTTP server stops accepting, the pool stops taking tasks) and drains for up to
SHUTDOWN_TIMEOUT; a second one hands running tasks back at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import socket
from collections.abc import Coroutine, Generator, Sequence
from typing import Any

import uvicorn
import uvloop

from task_queue import backends, metrics
from task_queue.api.limits import BACKLOG, KEEP_ALIVE_SECONDS
from task_queue.api.metrics_app import create_metrics_app
from task_queue.api.protocol import GuardedHttpProtocol
from task_queue.backends.base import Backend
from task_queue.client import AsyncClient
from task_queue.config import Settings
from task_queue.errors import BackendUnavailable, ConfigError
from task_queue.logs import get_logger
from task_queue.registry import Registry
from task_queue.worker.server import WorkerServer

log = get_logger("task_queue.service")

EXIT_OK = 0
EXIT_FORCED = 1
PARENT_CHECK_SECONDS = 1.0


class _HttpServer(uvicorn.Server):
    """uvicorn without its own signal handlers: this process decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def listen(settings: Settings, port: int | None = None, variable: str = "PORT") -> socket.socket:
    """Bind before anything starts, so a taken port is a clear start-up error."""
    port = settings.port if port is None else port
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"{variable}={port}: cannot listen on {settings.host}:{port} ({exc.strerror})"
        ) from None
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


async def open_backend(settings: Settings) -> Backend:
    backend = backends.create(settings)
    try:
        await backend.open()
    except BackendUnavailable as exc:
        variable = "REDIS_URL" if settings.backend == "redis" else "DATA_DIR"
        raise ConfigError(f"{variable}: backend {settings.backend} unavailable: {exc}") from None
    return backend


def start(settings: Settings, registry: Registry, *, api: bool, worker: bool) -> int:
    """Run this process, and HTTP_WORKERS - 1 forked copies sharing its socket; the exit code.

    One process serves HTTP on one core; copies that accept on the same socket
    use the others. The parent binds first (a taken port is a start-up error),
    passes every signal on to its copies, and exits after they have. All of
    them write their metrics to one directory, so a scrape of any sums them all.
    """
    with metrics.multiprocess_dir():
        return _start(settings, registry, api=api, worker=worker)


def _start(settings: Settings, registry: Registry, *, api: bool, worker: bool) -> int:
    sock = listen(settings) if api else None
    copies = settings.http_workers - 1 if api else 0
    if copies and settings.backend == "memory":
        raise ConfigError(
            f"HTTP_WORKERS={settings.http_workers}: the memory backend lives in one process; "
            "use sqlite or redis to serve from several"
        )
    if copies:  # loaded before the fork, so that the copies share them (run() looks them up)
        import task_queue.api.app  # noqa: F401

        registry.load_deferred()
    children = []
    for _ in range(copies):
        pid = os.fork()
        if pid == 0:
            # Its own process group: a terminal's Ctrl-C reaches the parent only,
            # which passes it on once, so it never counts as a second signal here.
            os.setpgid(0, 0)
            parent = os.getppid()
            return _in_loop(
                run(settings, registry, api=api, worker=worker, sock=sock, parent=parent)
            )
        children.append(pid)
    code = _in_loop(run(settings, registry, api=api, worker=worker, sock=sock, children=children))
    for pid in children:
        _, status = os.waitpid(pid, 0)
        metrics.process_ended(pid)
        code = max(code, os.waitstatus_to_exitcode(status))
    return code


def _in_loop(main: Coroutine[Any, Any, int]) -> int:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


async def run(
    settings: Settings,
    registry: Registry,
    *,
    api: bool,
    worker: bool,
    sock: socket.socket | None = None,
    children: Sequence[int] = (),
    parent: int | None = None,
) -> int:
    """Serve until signalled; the exit code: 0 after a graceful stop, 1 when forced."""
    stop, force = asyncio.Event(), asyncio.Event()
    _handle_signals(stop, force, children)
    if api and sock is None:
        sock = listen(settings)
    # A worker alone serves its counters on METRICS_PORT: no API process can read them.
    metrics_sock = (
        listen(settings, settings.metrics_port, "METRICS_PORT")
        if worker and not api and settings.metrics_port
        else None
    )
    backend = await open_backend(settings)
    counted = metrics.Metrics()
    jobs: list[Coroutine[Any, Any, object]] = [counted.publish_until(stop)]
    if parent is not None:
        jobs.append(_stop_when_orphaned(parent, stop))
    try:
        if worker:
            jobs.append(WorkerServer(backend, registry, settings, counted).run(stop, force))
        if metrics_sock is not None:
            metrics_app = create_metrics_app(backend, counted)
            jobs.append(_serve_http(metrics_app, None, metrics_sock, settings, stop, force))
        if api:
            # Here, not at the top: a `worker` alone never loads FastAPI and the routes.
            from task_queue.api.app import create_app

            assert sock is not None
            client = AsyncClient(backend, registry=registry)
            app = create_app(client, settings, counted)
            jobs.append(_serve_http(app, client, sock, settings, stop, force))
        await asyncio.gather(*jobs)
    finally:
        counted.publish()  # what the drain counted, before a sibling's last scrape
        await backend.close()
    return EXIT_FORCED if force.is_set() else EXIT_OK


async def _stop_when_orphaned(parent: int, stop: asyncio.Event) -> None:
    """A forked copy whose parent died (SIGKILL) shuts down instead of serving on alone."""
    while not stop.is_set():
        if os.getppid() != parent:
            log.warning("parent process is gone: shutting down", parent=parent)
            stop.set()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), PARENT_CHECK_SECONDS)


def _handle_signals(stop: asyncio.Event, force: asyncio.Event, children: Sequence[int]) -> None:
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if stop.is_set():
            log.warning("second signal: handing back running tasks and exiting", signal=sig.name)
            force.set()
        else:
            log.info("shutting down", signal=sig.name)
            stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)


async def _serve_http(
    app: object,
    client: AsyncClient | None,
    sock: socket.socket,
    settings: Settings,
    stop: asyncio.Event,
    force: asyncio.Event,
) -> None:
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        http=GuardedHttpProtocol,
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,
        # Not uvicorn's X-Forwarded-For rewriting, which trusts loopback peers by
        # default: TRUSTED_PROXIES alone decides whose forwarding is believed.
        proxy_headers=False,
        # Whole seconds only; never None, which would let a request hold shutdown forever.
        timeout_graceful_shutdown=max(1, math.ceil(settings.shutdown_timeout)),
        backlog=BACKLOG,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )
    server = _HttpServer(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    host, port = sock.getsockname()[:2]
    log.info("listening", url=f"http://{host}:{port}", backend=settings.backend, pid=os.getpid())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({serving, stopped}, return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    if client is not None:
        client.stop_waiting()
    forced = asyncio.create_task(force.wait())
    await asyncio.wait({serving, forced}, return_when=asyncio.FIRST_COMPLETED)
    if force.is_set():
        server.force_exit = True
    await serving
    forced.cancel()
    stopped.cancel()
