"""task-queue's job bodies for the peer benchmarks (TASK_MODULES=tq_tasks, PYTHONPATH=here).

The same bodies as the peers': INCR the shared counter, or RPUSH the start delay.
"""

from __future__ import annotations

from typing import Any

from _common import aincr, arecord

from task_queue import task_type


@task_type("peer_noop")
async def peer_noop(payload: dict[str, Any]) -> None:
    await aincr()


@task_type("peer_stamp")
async def peer_stamp(payload: dict[str, Any]) -> None:
    await arecord(payload["t"])
