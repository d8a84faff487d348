"""GET /api/v1/tasks/{id}/output serves the file a task wrote, and nothing else."""

from __future__ import annotations

import pytest

from tests.e2e.processes import TaskQueueProcess


def test_output_file_of_a_task_can_be_downloaded(sqlite_server: TaskQueueProcess) -> None:
    task = sqlite_server.submit("write_output", {"text": "id,total\n1,9.5\n"})
    assert sqlite_server.wait_final(task["id"])["status"] == "completed"

    response = sqlite_server.http.get(f"/api/v1/tasks/{task['id']}/output")

    assert response.status_code == 200
    assert response.text == "id,total\n1,9.5\n"


@pytest.mark.parametrize(
    "claimed",
    ["../task-queue.db", "outputs/../task-queue.db", "/etc/passwd", "outputs", "images/none"],
)
def test_output_outside_the_output_folders_is_not_served(
    sqlite_server: TaskQueueProcess, claimed: str
) -> None:
    task = sqlite_server.submit("claims_output", {"output": claimed})
    assert sqlite_server.wait_final(task["id"])["status"] == "completed"

    response = sqlite_server.http.get(f"/api/v1/tasks/{task['id']}/output")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_task_without_output_or_unknown_task_is_a_404(sqlite_server: TaskQueueProcess) -> None:
    task = sqlite_server.submit("sleep", {"seconds": 0})
    sqlite_server.wait_final(task["id"])

    assert sqlite_server.http.get(f"/api/v1/tasks/{task['id']}/output").status_code == 404
    assert sqlite_server.http.get("/api/v1/tasks/nope/output").status_code == 404
