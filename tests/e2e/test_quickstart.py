"""The README's first steps, as a new user takes them: `serve`, POST an e-mail, use the CLI."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.e2e.processes import TASK_QUEUE, TaskQueueProcess, free_port, process_env

EMAIL = {"recipient": "user@example.com", "subject": "Hello", "body": "Hi"}
CLI_SECONDS = 30.0  # bound on one CLI run; a config error takes well under a second


def test_emailed_task_completes_and_lands_in_the_outbox(sqlite_server: TaskQueueProcess) -> None:
    response = sqlite_server.http.post(
        "/api/v1/tasks",
        content=json.dumps({"type": "email", "payload": EMAIL}),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 201, response.text
    task = response.json()
    assert response.headers["location"] == f"/api/v1/tasks/{task['id']}"

    done = sqlite_server.wait_final(task["id"], seconds=2)

    assert done["status"] == "completed"
    assert done["result"]["simulated"] is True
    assert done["result"]["delivered_to"] == ["user@example.com"]
    messages = [path.read_text() for path in (sqlite_server.data_dir / "outbox").glob("*.eml")]
    assert any("Subject: Hello" in text and "user@example.com" in text for text in messages)
    health = sqlite_server.http.get("/api/v1/health").json()
    assert health["status"] == "healthy"
    assert health["workers"] == 1


def test_cli_enqueue_wait_prints_the_completed_task(
    sqlite_server: TaskQueueProcess, tmp_path: Path
) -> None:
    env = process_env({"DATA_DIR": sqlite_server.data_dir})

    run = subprocess.run(
        [TASK_QUEUE, "enqueue", "email", "--payload", json.dumps(EMAIL), "--wait"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=CLI_SECONDS,
    )

    assert run.returncode == 0, run.stderr
    task = json.loads(run.stdout)
    assert task["type"] == "email"
    assert task["status"] == "completed"
    assert task["payload"] == EMAIL
    # The task went through the server's SQLite file, so the server sees it too.
    assert sqlite_server.task(task["id"])["status"] == "completed"


def test_cli_enqueue_through_the_http_api_with_url(
    memory_server: TaskQueueProcess, tmp_path: Path
) -> None:
    run = subprocess.run(
        [TASK_QUEUE, "enqueue", "sleep", "--priority", "3", "--wait", "--url", memory_server.url],
        env=process_env({}),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=CLI_SECONDS,
    )

    assert run.returncode == 0, run.stderr
    task = json.loads(run.stdout)
    assert (task["status"], task["priority"]) == ("completed", 3)
    assert memory_server.task(task["id"])["status"] == "completed"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PORT", "abc"),
        ("PORT", "70000"),
        ("WORKER_COUNT", "0"),
        ("QUEUE_BACKEND", "bogus"),
        ("SHUTDOWN_TIMEOUT", "soon"),
        ("TASK_MODULES", "no_such_module_anywhere"),
    ],
)
def test_serve_with_a_bad_setting_exits_2_with_one_line_naming_it(
    tmp_path: Path, variable: str, value: str
) -> None:
    env = process_env({"DATA_DIR": tmp_path / "data", "PORT": free_port(), variable: value})

    assert_serve_refuses_to_start(env, tmp_path, naming=variable)


def test_serve_on_a_port_in_use_exits_2_naming_port(
    memory_server: TaskQueueProcess, tmp_path: Path
) -> None:
    env = process_env({"DATA_DIR": tmp_path / "data", "PORT": memory_server.port})

    assert_serve_refuses_to_start(env, tmp_path, naming="PORT")


def assert_serve_refuses_to_start(env: dict[str, str], cwd: Path, *, naming: str) -> None:
    """`task-queue serve` exits 2 with one line on stderr, naming the setting at fault."""
    run = subprocess.run(
        [TASK_QUEUE, "serve"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=CLI_SECONDS,
    )

    assert run.returncode == 2
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    assert naming in lines[0]
