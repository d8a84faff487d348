"""Benchmarks, run as modules from the checkout: `python -m benchmarks.<name>`."""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child_pythonpath() -> str:
    """PYTHONPATH for a task-queue process a benchmark starts: the checkout, for
    benchmarks.noop_tasks, then the caller's own. A comparison run with
    PYTHONPATH=<worktree>/src then measures that commit in the workers too, not
    only in the process that submits."""
    return os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
