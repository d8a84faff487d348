"""GET /metrics and the health probes of real `task-queue` processes."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.backends.redis_server import RedisServer
from tests.e2e.processes import Launcher, TaskQueueProcess, free_port, wait_for

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

FAST_RETRIES = {"RETRY_BASE_SECONDS": 0.05, "RETRY_MAX_SECONDS": 0.1}


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(url: str, request_id: str | None = None) -> Samples:
    headers = {"X-Request-ID": request_id} if request_id else {}
    # A new connection each time: with HTTP_WORKERS, whichever copy accepts answers.
    with httpx.Client(base_url=url, timeout=10) as fresh:
        response = fresh.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, found), v in samples.items() if n == name and wanted <= found)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def test_counters_move_by_what_the_tasks_did(launch: Launcher) -> None:
    server = launch.start("serve", WORKER_COUNT=4, **FAST_RETRIES)
    before = scrape(server.url)
    ids = [
        server.submit("sleep", {"seconds": 0})["id"],
        server.submit("sleep", {"seconds": 0.1})["id"],
        server.submit("flaky", {"failures": 1}, max_retries=3)["id"],
        server.submit("always_fails", max_retries=1)["id"],
        server.submit("permanent")["id"],
    ]
    final = {server.wait_final(task_id)["status"] for task_id in ids}
    assert final == {"completed", "failed"}

    # A run is counted just after its outcome is stored: poll, bounded.
    def counted() -> Samples | None:
        samples = scrape(server.url)
        runs = total(samples, "task_queue_task_duration_seconds_count")
        return (
            samples if runs - total(before, "task_queue_task_duration_seconds_count") >= 7 else None
        )

    after = wait_for(counted, 10, "seven runs to be counted")

    def task(metric: str, type: str) -> float:
        return moved(before, after, f"task_queue_tasks_{metric}_total", type=type, queue="default")

    assert [task("submitted", t) for t in ("sleep", "flaky", "always_fails", "permanent")] == [
        2, 1, 1, 1,
    ]  # fmt: skip
    assert (task("completed", "sleep"), task("completed", "flaky")) == (2, 1)
    assert (task("retried", "flaky"), task("retried", "always_fails")) == (1, 1)
    assert (task("failed", "always_fails"), task("failed", "permanent")) == (1, 1)
    assert task("retried", "permanent") == 0
    runs = {
        type: moved(before, after, "task_queue_task_duration_seconds_count", type=type)
        for type in ("sleep", "flaky", "always_fails", "permanent")
    }
    assert runs == {"sleep": 2, "flaky": 2, "always_fails": 2, "permanent": 1}

    # Every run lands in the +Inf bucket; the 0.1 s sleep lies above the 25 ms bound
    # (the 0 s one usually below it, unless the machine is slow: not asserted).
    def sleep_bucket(le: str) -> float:
        return moved(before, after, "task_queue_task_duration_seconds_bucket", type="sleep", le=le)

    assert sleep_bucket("+Inf") == 2
    assert sleep_bucket("0.025") <= 1
    # The event loop's timers may fire up to a millisecond early.
    assert moved(before, after, "task_queue_task_duration_seconds_sum", type="sleep") >= 0.099


def test_requests_are_counted_by_route_template_not_by_path(launch: Launcher) -> None:
    server = launch.start("serve")
    task_id = server.submit("sleep", {"seconds": 0})["id"]
    server.wait_final(task_id)
    assert server.http.get(f"/api/v1/tasks/{task_id}/nowhere").status_code == 404
    assert server.http.get("/api/v1/tasks/no-such-task").status_code == 404

    samples = scrape(server.url)

    routes = {
        dict(labels)["route"] for name, labels in samples if name.startswith("task_queue_http")
    }
    assert task_id not in "".join(routes)
    assert "no-such-task" not in "".join(routes)
    assert {"/api/v1/tasks", "/api/v1/tasks/{task_id}", "unmatched"} <= routes
    get_task = {"method": "GET", "route": "/api/v1/tasks/{task_id}"}
    assert value(samples, "task_queue_http_requests_total", **get_task, status="200") >= 1
    assert value(samples, "task_queue_http_requests_total", **get_task, status="404") == 1
    assert value(samples, "task_queue_http_request_duration_seconds_count", **get_task) >= 2
    submits = {"method": "POST", "route": "/api/v1/tasks"}
    assert value(samples, "task_queue_http_requests_total", **submits, status="201") == 1
    [logged] = server.logs("request", method="GET", status=404, route="unmatched")
    assert logged["path"] == f"/api/v1/tasks/{task_id}/nowhere"


def test_gauges_come_from_the_backend(launch: Launcher) -> None:
    # A short lease: the worker record, and with it "busy", is written every LEASE_SECONDS / 3.
    # No prefetch: a leased task counts as running, so the pending one must stay unleased.
    server = launch.start(
        "serve", WORKER_COUNT=1, WORKER_PREFETCH=0, LEASE_SECONDS=1.5, SHUTDOWN_TIMEOUT=1
    )
    blocker = server.submit("sleep", {"seconds": 30})["id"]
    server.wait_status(blocker, "running")
    server.submit("sleep", {"seconds": 0}, delay_seconds=600)
    server.submit("sleep", {"seconds": 0})

    def busy() -> Samples | None:
        samples = scrape(server.url)
        return samples if value(samples, "task_queue_workers_busy") == 1 else None

    samples = wait_for(busy, 10, "the worker's record to say it is busy")

    assert value(samples, "task_queue_backend_up") == 1
    assert value(samples, "task_queue_workers") == 1
    depth = {
        s: value(samples, "task_queue_queue_depth", status=s) for s in ("running", "scheduled")
    }
    assert depth == {"running": 1, "scheduled": 1}
    assert value(samples, "task_queue_queue_depth", status="pending") == 1
    assert value(samples, "task_queue_queue_pending", queue="default") == 1


def test_every_http_process_reports_the_sum_over_all_of_them(launch: Launcher) -> None:
    server = launch.start("serve", HTTP_WORKERS=2, WORKER_COUNT=2)
    wait_for(lambda: len({line["pid"] for line in server.logs("listening")}) == 2, 30, "2 copies")
    ids = []
    for n in range(40):
        with httpx.Client(base_url=server.url) as fresh:
            response = fresh.post("/api/v1/tasks", json={"type": "sleep", "payload": {"n": n}})
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    assert all(server.wait_final(task_id)["status"] == "completed" for task_id in ids)
    submitters = {line["pid"] for line in server.logs("request", method="POST")}
    assert len(submitters) == 2, "the kernel gave every submission to one copy: nothing summed"

    by_pid: dict[int, Samples] = {}

    def both_answered() -> bool:
        request_id = f"scrape-{len(by_pid)}-{time.monotonic_ns()}"
        samples = scrape(server.url, request_id)
        [line] = wait_for(lambda: server.logs("request", request_id=request_id), 5, "its log")
        if total(samples, "task_queue_tasks_completed_total", type="sleep") == 40:
            by_pid[line["pid"]] = samples
        return len(by_pid) == 2

    wait_for(both_answered, 30, "a complete scrape from each copy")
    for samples in by_pid.values():
        assert (
            value(samples, "task_queue_tasks_submitted_total", type="sleep", queue="default") == 40
        )
        assert total(samples, "task_queue_task_duration_seconds_count", type="sleep") == 40
        submits = {"method": "POST", "route": "/api/v1/tasks", "status": "201"}
        assert value(samples, "task_queue_http_requests_total", **submits) == 40


def test_a_lone_worker_serves_its_counters_on_metrics_port(launch: Launcher) -> None:
    api = launch.start("api")
    metrics_port = free_port()
    worker = launch.start("worker", METRICS_PORT=metrics_port)
    task_id = api.submit("sleep", {"seconds": 0})["id"]
    api.wait_final(task_id)

    sleep = {"type": "sleep", "queue": "default"}

    def counted() -> Samples | None:
        samples = scrape(f"http://127.0.0.1:{metrics_port}")
        return samples if value(samples, "task_queue_tasks_completed_total", **sleep) else None

    from_worker = wait_for(counted, 10, "the worker to count the task")
    from_api = scrape(api.url)

    assert value(from_worker, "task_queue_tasks_completed_total", **sleep) == 1
    assert value(from_api, "task_queue_tasks_submitted_total", **sleep) == 1
    assert value(from_api, "task_queue_tasks_completed_total", **sleep) == 0  # not its process
    # The gauges are the backend's, so both see the same worker.
    assert value(from_worker, "task_queue_workers") == value(from_api, "task_queue_workers") == 1
    assert worker.popen.poll() is None


def test_the_worker_logs_the_request_id_of_the_request_that_made_the_task(
    launch: Launcher,
) -> None:
    server = launch.start("serve")
    response = server.http.post(
        "/api/v1/tasks",
        json={"type": "sleep", "payload": {}},
        headers={"X-Request-ID": "trace-42"},
    )
    assert response.headers["x-request-id"] == "trace-42"
    task_id = response.json()["id"]
    server.wait_final(task_id)

    [started] = server.logs("task started", task_id=task_id)
    assert started["request_id"] == "trace-42"
    [submitted] = server.logs("task submitted", task_id=task_id)
    assert submitted["request_id"] == "trace-42"
    # At LOG_LEVEL=info the worker's closing line too, with its outcome.
    [completed] = wait_for(lambda: server.logs("task completed", task_id=task_id), 5, "its line")
    assert completed["request_id"] == "trace-42"
    assert completed["status"] == "completed"
    assert completed["duration_ms"] >= 0


def test_at_warning_the_worker_logs_a_failing_task_with_its_fields_and_skips_started_lines(
    launch: Launcher,
) -> None:
    """The worker binds a task's fields to its logger on the first line written
    (none, for a task that completes at warning): what it writes has them all."""
    server = launch.start("serve", LOG_LEVEL="warning", **FAST_RETRIES)
    response = server.http.post(
        "/api/v1/tasks",
        json={"type": "always_fails", "max_retries": 1},
        headers={"X-Request-ID": "trace-43"},
    )
    task_id = response.json()["id"]
    assert server.wait_final(task_id)["status"] == "failed"

    [failed] = wait_for(lambda: server.logs("task failed", task_id=task_id), 5, "its line")
    [retrying] = server.logs("task retrying", task_id=task_id)
    for line, attempt in ((retrying, 1), (failed, 2)):
        assert (line["type"], line["attempt"], line["request_id"]) == (
            "always_fails", attempt, "trace-43",
        )  # fmt: skip
        assert line["error"].startswith("RuntimeError")
    assert server.logs("task started") == []


def redis_api(launch: Launcher, redis: RedisServer) -> TaskQueueProcess:
    server = launch.start("serve", QUEUE_BACKEND="redis", REDIS_URL=redis.url)
    wait_for(lambda: server.http.get("/api/v1/health").json()["workers"] == 1, 10, "a worker")
    return server


def test_health_is_503_soon_after_redis_stops_while_live_stays_200(
    launch: Launcher, own_redis: RedisServer
) -> None:
    server = redis_api(launch, own_redis)
    healthy = server.http.get("/api/v1/health").json()
    assert healthy["status"] == "healthy"
    assert 0 <= healthy["last_heartbeat_age_seconds"] < 30

    own_redis.stop()

    response = server.http.get("/api/v1/health")
    assert response.status_code == 503
    assert response.json()["status"] == "unhealthy"
    assert server.http.get("/api/v1/health/live").status_code == 200


def test_a_hung_redis_fails_health_within_its_timeout_and_metrics_still_answer(
    launch: Launcher, own_redis: RedisServer
) -> None:
    server = redis_api(launch, own_redis)

    own_redis.process.send_signal(signal.SIGSTOP)  # accepts connections, answers nothing

    # Answered by the health check's own timeout, not by the client's 10 s one.
    response = server.http.get("/api/v1/health")
    assert response.status_code == 503
    assert response.json()["backend"]["error"] == "backend did not answer in time"
    assert server.http.get("/api/v1/health/live").status_code == 200
    samples = scrape(server.url)
    assert value(samples, "task_queue_backend_up") == 0
    assert ("task_queue_queue_depth", frozenset({("status", "pending")})) not in samples


def test_api_and_worker_given_one_multiproc_dir_share_one_scrape(
    launch: Launcher, tmp_path: Path
) -> None:
    shared = tmp_path / "prometheus"
    shared.mkdir()
    api = launch.start("api", PROMETHEUS_MULTIPROC_DIR=shared)
    launch.start("worker", PROMETHEUS_MULTIPROC_DIR=shared)
    task_id = api.submit("sleep", {"seconds": 0})["id"]
    api.wait_final(task_id)

    sleep = {"type": "sleep", "queue": "default"}

    def counted() -> Samples | None:
        samples = scrape(api.url)
        return samples if value(samples, "task_queue_tasks_completed_total", **sleep) else None

    samples = wait_for(counted, 10, "the api to see the worker's count")

    assert value(samples, "task_queue_tasks_completed_total", **sleep) == 1
    assert value(samples, "task_queue_tasks_submitted_total", **sleep) == 1
    launch.stop_all()
    assert list(shared.iterdir()), "a directory the operator gave is theirs: left in place"
