"""A no-op task type for the benchmarks (TASK_MODULES=benchmarks.noop_tasks)."""

from typing import Any

from task_queue import task_type


@task_type("noop")
async def noop(payload: dict[str, Any]) -> None:
    return None
