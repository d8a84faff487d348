"""Two custom task types, registered with the `task_type` decorator.

Load them into a server from the repository root (examples/ is a plain
directory, so put the root on the import path):

    PYTHONPATH=. TASK_MODULES=examples.custom_task task-queue serve

then submit one:

    curl -s -X POST localhost:8080/api/v1/tasks -H 'Content-Type: application/json' \
      -d '{"type": "word_count", "payload": {"text": "to be or not to be"}}'
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from typing import Any

from pydantic import BaseModel, Field

from task_queue import PermanentError, Retry, TaskContext, task_type

WORD = re.compile(r"[\w']+")


class WordCountPayload(BaseModel):
    """Checked when the task is submitted: a bad payload is a 422, not a failed task."""

    text: str = Field(max_length=1_000_000)
    top: int = Field(3, ge=1, le=100)


@task_type("word_count", payload=WordCountPayload, max_retries=0, timeout_seconds=30)
def word_count(payload: WordCountPayload) -> dict[str, Any]:
    """A plain function: it runs in a worker thread, so it may block."""
    words = WORD.findall(payload.text.lower())
    if not words:
        raise PermanentError("the text has no words")  # fails at once, no retry
    counts = Counter(words)
    return {
        "words": len(words),
        "unique": len(counts),
        "top": [{"word": word, "count": n} for word, n in counts.most_common(payload.top)],
    }


class PausePayload(BaseModel):
    seconds: float = Field(0.5, ge=0, le=60)
    fail_attempts: int = Field(0, ge=0, le=10)


@task_type("pause", payload=PausePayload, max_retries=3, timeout_seconds=120)
async def pause(payload: PausePayload, ctx: TaskContext) -> dict[str, Any]:
    """A coroutine that takes a TaskContext: it runs on the worker's event loop.

    Its first `fail_attempts` attempts ask for a retry half a second later.
    """
    attempt = ctx.task.attempts  # 1 on the first run
    if attempt <= payload.fail_attempts:
        raise Retry(f"attempt {attempt} asked to be retried", delay=0.5)
    await asyncio.sleep(payload.seconds)
    ctx.logger.info("pause finished", seconds=payload.seconds)
    return {"slept": payload.seconds, "attempt": attempt}
