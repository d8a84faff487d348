import subprocess
import sys


def test_a_worker_process_never_loads_fastapi() -> None:
    """FastAPI and the API's routes took about a quarter of a second of a worker's
    start-up; only a process that serves the API needs them."""
    probe = (
        "import sys, task_queue.cli, task_queue.service, task_queue.worker.server; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'fastapi'"
        " or m == 'task_queue.api.app'))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True
    ).stdout
    assert loaded.strip() == "[]"
