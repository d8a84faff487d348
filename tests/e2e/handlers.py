"""Task types for the end-to-end tests, loaded by the servers through TASK_MODULES.

Each type does one observable thing, so a test can tell from the outside what
the worker did: how long it ran, how often it was tried, which process ran it.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from task_queue import PermanentError, TaskContext, task_type


def _seconds_for_this_run(payload: dict[str, Any], ctx: TaskContext) -> float:
    """payload["seconds"]; with payload["once"], only on the task's first run.

    A task handed back at shutdown runs again after a restart; `once` lets a
    test interrupt a long first run and still see the second run finish at once.
    The marker lives in DATA_DIR, so it survives the restart.
    """
    seconds = float(payload.get("seconds", 0))
    if not payload.get("once"):
        return seconds
    marker = ctx.data_dir / f"started-{ctx.task.id}"
    if marker.exists():
        return 0.0
    marker.touch()
    return seconds


@task_type("sleep", max_retries=0)
async def sleep(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """Sleeps without blocking the event loop."""
    seconds = _seconds_for_this_run(payload, ctx)
    await asyncio.sleep(seconds)
    return {"slept": seconds}


@task_type("sleep_sync", max_retries=0)
def sleep_sync(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """Sleeps in the worker's handler thread, where nothing can interrupt it."""
    seconds = _seconds_for_this_run(payload, ctx)
    time.sleep(seconds)
    return {"slept": seconds}


@task_type("flaky")
def flaky(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """Fails its first payload["failures"] attempts, then succeeds."""
    if ctx.task.attempts <= int(payload["failures"]):
        raise RuntimeError(f"flaky failure on attempt {ctx.task.attempts}")
    return {"succeeded_on_attempt": ctx.task.attempts}


@task_type("record", max_retries=3)
async def record(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """After payload.get("seconds", 0) seconds, appends "task-id pid" to payload["path"].

    The line is written at the very end, so a run killed midway leaves no trace
    and the file shows how many runs finished, and in which process.
    """
    await asyncio.sleep(float(payload.get("seconds", 0)))
    await asyncio.to_thread(_append_line, Path(payload["path"]), f"{ctx.task.id} {os.getpid()}")
    return {"pid": os.getpid()}


def _append_line(path: Path, line: str) -> None:
    with path.open("a", encoding="utf-8") as out:
        out.write(line + "\n")


@task_type("always_fails")
def always_fails(payload: dict[str, Any], ctx: TaskContext) -> None:
    """Fails every attempt, naming the attempt, so the kept error shows which one was last."""
    raise RuntimeError(f"failure on attempt {ctx.task.attempts}")


@task_type("permanent")
def permanent(payload: dict[str, Any]) -> None:
    """Fails in a way no retry can fix."""
    raise PermanentError("this task can never succeed")


@task_type("write_output", max_retries=0)
def write_output(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """Writes payload["text"] to an output file, as image_resize and data_processing do."""
    name = f"outputs/{ctx.task.id}.txt"
    path = ctx.data_dir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(payload["text"], encoding="utf-8")
    return {"output": name}


@task_type("claims_output", max_retries=0)
def claims_output(payload: dict[str, Any]) -> dict[str, Any]:
    """Names whatever output it is told to, to probe the download endpoint's checks."""
    return {"output": payload["output"]}


@task_type("kills_its_worker", max_retries=1)
async def kills_its_worker(payload: dict[str, Any]) -> None:
    """Ends its worker process on every attempt, as a crashing C extension would.

    Waits a moment first, so the test sees the worker start before it dies.
    """
    await asyncio.sleep(0.5)
    os._exit(3)
