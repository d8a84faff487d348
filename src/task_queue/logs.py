"""Structured logging: JSON lines (or text) to stderr and LOG_FILE.

Our own lines go from structlog straight to the outputs, rendered by orjson:
a task logs two lines, and the standard library's LogRecord path cost five
times as much per line, a third of a no-op task's whole cost. Lines of other
libraries (uvicorn) still come through the standard library, rendered alike.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import IO, Any

import orjson
import structlog

from task_queue.errors import ConfigError


def _add_pid(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    # Looked up per line, not once: HTTP_WORKERS forks copies after logging is set up.
    event["pid"] = os.getpid()
    return event


class _Timestamp:
    """structlog's UTC ISO 8601 stamp, with the whole-second part formatted once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        event["timestamp"] = f"{self._prefix}.{int((now - second) * 1e6):06d}Z"
        return event


class _Outputs:
    """A structlog logger writing every rendered line to each output, unbuffered."""

    def __init__(self, name: str, outputs: list[IO[bytes]]) -> None:
        self.name = name
        self._outputs = outputs

    def msg(self, line: str | bytes) -> None:
        data = (line if isinstance(line, bytes) else line.encode()) + b"\n"
        for output in self._outputs:
            # A closed stderr or a full disk loses the line, never the work: a log
            # call that raised inside a signal handler would leave shutdown undone.
            with contextlib.suppress(OSError, ValueError):
                output.write(data)
                output.flush()

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


def configure(level: str = "info", fmt: str = "json", file: Path | None = None) -> None:
    """Route every log line of the process (ours, uvicorn's) to stderr and `file`."""
    outputs: list[IO[bytes]] = [sys.stderr.buffer]
    if file is not None:
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            outputs.append(open(file, "ab"))  # noqa: SIM115 - open for the process's life
        except OSError as exc:
            raise ConfigError(f"LOG_FILE={str(file)!r}: cannot be written ({exc})") from None
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        _add_pid,
        _Timestamp(),
    ]
    ours: Any
    theirs: Any
    if fmt == "json":
        # The standard library's Formatter must return str; orjson renders bytes.
        ours = structlog.processors.JSONRenderer(serializer=orjson.dumps)
        theirs = structlog.processors.JSONRenderer()
    else:
        ours = theirs = structlog.dev.ConsoleRenderer(colors=False)
    threshold = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, ours],
        logger_factory=lambda name="task_queue", *_: _Outputs(name, outputs),
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        cache_logger_on_first_use=True,
    )
    _route_standard_logging(shared, theirs, outputs, threshold)


def _route_standard_logging(
    shared: list[Any], renderer: Any, outputs: list[IO[bytes]], threshold: int
) -> None:
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    for output in outputs:
        handler = logging.StreamHandler(_Text(output))
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(threshold)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    # Request lines come from our own middleware, with the request id.
    logging.getLogger("uvicorn.access").disabled = True


class _Text:
    """A text view of a binary output, for the standard library's StreamHandler."""

    def __init__(self, output: IO[bytes]) -> None:
        self._output = output

    def write(self, text: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._output.write(text.encode())

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._output.flush()


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
