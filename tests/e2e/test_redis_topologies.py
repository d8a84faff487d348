"""`task-queue serve` on a real Redis Cluster and behind a real Sentinel, and bad REDIS_URLs.

The cluster and the Sentinel are the session fixtures of tests/backends; each
test here runs its own serve process on the default prefix of one of them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.processes import Launcher, free_port, process_env
from tests.e2e.test_quickstart import assert_serve_refuses_to_start


@pytest.mark.parametrize("topology", ["redis_cluster", "redis_sentinel"])
def test_task_retried_once_completes_through_serve(
    request: pytest.FixtureRequest, launch: Launcher, topology: str
) -> None:
    url: str = request.getfixturevalue(topology).url
    server = launch.start(
        "serve", REDIS_URL=url, WORKER_COUNT=2, RETRY_BASE_SECONDS=0.2, RETRY_MAX_SECONDS=1
    )

    task = server.submit("flaky", {"failures": 1})
    done = server.wait_final(task["id"], seconds=15)

    assert done["status"] == "completed"
    assert done["attempts"] == 2
    assert done["result"] == {"succeeded_on_attempt": 2}
    health = server.http.get("/api/v1/health").json()
    assert health["status"] == "healthy"
    stats = server.http.get("/api/v1/stats").json()
    assert stats["by_status"]["completed"] >= 1


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://127.0.0.1:26379",  # no service name
        "redis+cluster://127.0.0.1:7000/2",  # a cluster has database 0 only
        "redis+clustre://127.0.0.1:7000",  # unknown scheme
        f"redis+cluster://127.0.0.1:{free_port()}",  # nothing listens there
    ],
)
def test_serve_with_an_unusable_redis_url_exits_2_naming_it(tmp_path: Path, url: str) -> None:
    env = process_env({"DATA_DIR": tmp_path / "data", "PORT": free_port(), "REDIS_URL": url})

    assert_serve_refuses_to_start(env, tmp_path, naming="REDIS_URL")
