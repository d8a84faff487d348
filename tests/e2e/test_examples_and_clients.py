"""The examples run as the README says, and the Python clients work against real servers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from task_queue import Client, HttpClient, TaskNotFound, TaskStatus
from task_queue.config import Settings
from tests.e2e.processes import Launcher, TaskQueueProcess, process_env

ROOT = Path(__file__).resolve().parents[2]
MAIL = {"recipient": "ada@example.com", "subject": "Hello", "body": "Hi"}


def run_example(args: list[str], server: TaskQueueProcess) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TASK_QUEUE_URL": server.url}
    return subprocess.run(
        args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


def test_demo_script_completes_every_task(any_server: TaskQueueProcess) -> None:
    done = run_example(["bash", "examples/demo.sh"], any_server)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "completed" in done.stdout


def test_quickstart_example_prints_the_completed_task(memory_server: TaskQueueProcess) -> None:
    done = run_example([sys.executable, "examples/quickstart.py"], memory_server)
    assert done.returncode == 0, done.stderr
    assert "final status: completed" in done.stdout


def test_custom_task_example_loads_through_task_modules(launch: Launcher) -> None:
    server = launch.start(
        "serve", QUEUE_BACKEND="memory", PYTHONPATH=ROOT, TASK_MODULES="examples.custom_task"
    )
    task = server.submit("word_count", {"text": "to be or not to be"})
    assert server.wait_final(task["id"])["status"] == "completed"


def test_http_client_submits_waits_cancels_and_retries(memory_server: TaskQueueProcess) -> None:
    with HttpClient(memory_server.url) as client:
        task = client.submit("email", MAIL, priority=7)
        assert task.priority == 7
        done = client.wait(task.id, timeout=30)
        assert done.status is TaskStatus.COMPLETED
        assert done.result["delivered_to"] == ["ada@example.com"]

        later = client.submit("email", MAIL, delay_seconds=3600)
        assert client.cancel(later.id).status is TaskStatus.CANCELLED
        again = client.retry(later.id)
        assert again.status is TaskStatus.PENDING
        assert again.attempts == 0
        with pytest.raises(TaskNotFound):
            client.get("no-such-task")


def test_client_submits_straight_into_the_sqlite_file_a_worker_serves(
    launch: Launcher,
) -> None:
    worker = launch.start("worker")
    settings = Settings.load(environ=process_env({"DATA_DIR": worker.data_dir, "LOG_FILE": ""}))
    with Client(settings) as client:
        task = client.submit("email", MAIL)
        done = client.wait(task.id, timeout=30)
    assert done.status is TaskStatus.COMPLETED
