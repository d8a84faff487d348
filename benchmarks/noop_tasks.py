"""Task types for the benchmarks (TASK_MODULES=benchmarks.noop_tasks): one that does
nothing, and one that sleeps `seconds`."""

import asyncio
from typing import Any

from task_queue import task_type


@task_type("noop")
async def noop(payload: dict[str, Any]) -> None:
    return None


@task_type("nap")
async def nap(payload: dict[str, Any]) -> None:
    await asyncio.sleep(float(payload["seconds"]))
