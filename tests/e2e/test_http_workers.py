"""HTTP_WORKERS: one `task-queue api` serving from several processes on one port."""

from __future__ import annotations

import os
import signal
import subprocess

import httpx

from tests.e2e.processes import TASK_QUEUE, Launcher, TaskQueueProcess, process_env, wait_for


def listening_pids(server: TaskQueueProcess, count: int) -> set[int]:
    def started() -> set[int] | None:
        pids = {line["pid"] for line in server.logs("listening")}
        return pids if len(pids) == count else None

    return wait_for(started, 30, f"{count} processes to listen")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_copies_share_the_port_and_all_serve_requests(launch: Launcher) -> None:
    api = launch.start("api", HTTP_WORKERS=2)
    launch.start("worker")
    pids = listening_pids(api, 2)
    assert api.pid in pids

    ids = []
    for n in range(60):
        # A new connection each time, so the kernel hands each to whichever copy accepts.
        with httpx.Client(base_url=api.url) as fresh:
            response = fresh.post("/api/v1/tasks", json={"type": "email", "payload": _mail(n)})
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])

    assert {line["pid"] for line in api.logs("request")} == pids
    assert all(api.wait_final(task_id)["status"] == "completed" for task_id in ids)


def test_sigterm_to_the_parent_stops_every_copy_and_exits_zero(launch: Launcher) -> None:
    api = launch.start("api", HTTP_WORKERS=3)
    copies = listening_pids(api, 3) - {api.pid}

    api.signal(signal.SIGTERM)

    assert api.wait_exit(20) == 0
    assert not any(alive(pid) for pid in copies)


def test_copies_stop_by_themselves_when_the_parent_is_killed(launch: Launcher) -> None:
    api = launch.start("api", HTTP_WORKERS=2)
    [copy] = listening_pids(api, 2) - {api.pid}

    api.signal(signal.SIGKILL)
    api.wait_exit(5)

    wait_for(lambda: not alive(copy) or None, 20, "the orphaned copy to exit")


def test_several_http_workers_need_a_shared_backend(tmp_path: os.PathLike[str]) -> None:
    env = process_env({"HTTP_WORKERS": 2, "QUEUE_BACKEND": "memory", "DATA_DIR": tmp_path})
    done = subprocess.run(
        [TASK_QUEUE, "api"], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith("task-queue: configuration error: HTTP_WORKERS=2")
    )


def _mail(n: int) -> dict[str, str]:
    return {"recipient": f"user{n}@example.com", "subject": "hi", "body": "b"}
