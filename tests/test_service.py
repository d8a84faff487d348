"""What a process imports at start-up, seen from a fresh interpreter."""

import subprocess
import sys


def run_probe(probe: str) -> str:
    """What `probe` prints, run by a Python that has imported nothing yet."""
    return subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True
    ).stdout


def test_a_worker_process_never_loads_fastapi() -> None:
    """FastAPI and the API's routes took about a quarter of a second of a worker's
    start-up; only a process that serves the API needs them."""
    probe = (
        "import sys, task_queue.cli, task_queue.service, task_queue.worker.server; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'fastapi'"
        " or m == 'task_queue.api.app'))"
    )
    assert run_probe(probe).strip() == "[]"


def test_a_worker_process_loads_a_built_in_type_at_its_first_task() -> None:
    """Pillow, aiosmtplib and the built-in types' pydantic models took a tenth of a
    second of every worker's start-up, needed or not."""
    probe = (
        "import sys, task_queue.cli, task_queue.service, task_queue.worker.server; "
        "from task_queue import default_registry as registry; "
        "print(registry.names(), 'PIL' in sys.modules, 'aiosmtplib' in sys.modules); "
        "registry.get('image_resize'); "
        "print('PIL' in sys.modules, 'aiosmtplib' in sys.modules)"
    )
    before, after = run_probe(probe).splitlines()
    assert before == "['data_processing', 'email', 'image_resize', 'webhook'] False False"
    assert after == "True False"


def test_the_api_loads_the_built_in_types_before_its_first_request() -> None:
    probe = (
        "import sys; from task_queue.api.app import create_app; "
        "from task_queue.backends.memory import MemoryBackend; "
        "from task_queue.client import AsyncClient; from task_queue.config import Settings; "
        "from task_queue.metrics import Metrics; "
        "create_app(AsyncClient(MemoryBackend()), Settings.load({}), Metrics()); "
        "print('PIL' in sys.modules, 'aiosmtplib' in sys.modules)"
    )
    assert run_probe(probe).strip() == "True True"
