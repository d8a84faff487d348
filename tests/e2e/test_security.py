"""API keys, the rate limit and CORS, over real HTTP against real `task-queue api` processes.

Counts of accepted requests are checked against what the bucket allows for
the time the requests actually took (burst + rate * elapsed), never against a
wall-clock threshold, so a slow machine makes them looser, not flaky.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.backends.redis_server import RedisServer
from tests.e2e.processes import TASK_QUEUE, Launcher, TaskQueueProcess, process_env

STATS = "/api/v1/stats"
ALLOWED_ORIGIN = "https://app.example"


def timed(requests: Iterator[httpx.Response]) -> tuple[list[httpx.Response], float]:
    started = time.monotonic()
    responses = list(requests)
    return responses, time.monotonic() - started


def most_accepted(burst: float, rate: float, elapsed: float) -> float:
    """What a bucket full at the start lets through in `elapsed` seconds, plus one for rounding."""
    return burst + rate * elapsed + 1


def test_a_burst_past_the_limit_is_refused_with_429_until_retry_after(launch: Launcher) -> None:
    api = launch.start("api", QUEUE_BACKEND="memory", RATE_LIMIT=20)
    responses, elapsed = timed(api.http.get(STATS) for _ in range(300))
    statuses = [r.status_code for r in responses]
    accepted = statuses.count(200)
    assert set(statuses) <= {200, 429}
    assert statuses[:40] == [200] * 40  # the burst: twice the rate
    assert 40 <= accepted <= most_accepted(40, 20, elapsed)

    first = responses[0].headers
    assert (first["RateLimit-Limit"], first["RateLimit-Remaining"]) == ("40", "39")
    assert first["RateLimit-Policy"] == "20;w=1;burst=40"
    assert int(first["RateLimit-Reset"]) >= 1

    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["error"]["code"] == "rate_limited"
    retry_after = int(refused.headers["Retry-After"])
    assert retry_after >= 1
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert refused.headers["RateLimit-Limit"] == "40"
    assert int(refused.headers["RateLimit-Reset"]) >= 1

    time.sleep(retry_after)  # the server's clock: only a real wait refills the bucket
    assert api.http.get(STATS).status_code == 200


def test_health_probes_and_preflights_are_never_limited(launch: Launcher) -> None:
    api = launch.start("api", QUEUE_BACKEND="memory", RATE_LIMIT=0.1)
    assert api.http.get(STATS).status_code == 200
    assert api.http.get(STATS).status_code == 429
    for path in ("/api/v1/health", "/api/v1/health/live"):
        assert [api.http.get(path).status_code for _ in range(5)] == [200] * 5
    preflight = {"Origin": ALLOWED_ORIGIN, "Access-Control-Request-Method": "POST"}
    assert api.http.options("/api/v1/tasks", headers=preflight).status_code == 200


def test_two_apis_on_one_redis_share_one_limit(launch: Launcher, own_redis: RedisServer) -> None:
    settings = {"QUEUE_BACKEND": "redis", "REDIS_URL": own_redis.url, "RATE_LIMIT": 10}
    apis = [launch.start("api", **settings), launch.start("api", **settings)]
    responses, elapsed = timed(apis[i % 2].http.get(STATS) for i in range(200))
    accepted = [r for r in responses if r.status_code == 200]
    assert 20 <= len(accepted) <= most_accepted(20, 10, elapsed)
    served_by = {str(r.url.port) for r in accepted}
    assert served_by == {str(api.port) for api in apis}


def test_with_redis_gone_requests_go_through_and_one_warning_says_so(
    launch: Launcher, own_redis: RedisServer
) -> None:
    api = launch.start("api", QUEUE_BACKEND="redis", REDIS_URL=own_redis.url, RATE_LIMIT=0.1)
    assert [api.http.get("/openapi.json").status_code for _ in range(2)] == [200, 429]
    own_redis.stop()
    assert [api.http.get("/openapi.json").status_code for _ in range(3)] == [200] * 3
    assert len(api.logs("rate limit off while Redis is unreachable")) == 1


def test_x_forwarded_for_is_believed_only_from_a_trusted_proxy(launch: Launcher) -> None:
    # One token a bucket, refilled in ten seconds: every request after the first is refused.
    untrusted = launch.start("api", QUEUE_BACKEND="memory", RATE_LIMIT=0.1)
    trusted = launch.start(
        "api", QUEUE_BACKEND="memory", RATE_LIMIT=0.1, TRUSTED_PROXIES="127.0.0.0/8"
    )

    def status(api: TaskQueueProcess, forwarded_for: str) -> int:
        return api.http.get(STATS, headers={"X-Forwarded-For": forwarded_for}).status_code

    assert [status(untrusted, ip) for ip in ("203.0.113.1", "203.0.113.2")] == [200, 429]
    assert [status(trusted, ip) for ip in ("203.0.113.1", "203.0.113.1")] == [200, 429]
    assert status(trusted, "203.0.113.2") == 200
    assert status(trusted, "203.0.113.3, 203.0.113.1") == 429  # only the last hop is vouched for
    assert trusted.logs("request", client="203.0.113.2")  # the log names the client too
    assert not untrusted.logs("request", client="203.0.113.2")


def test_api_keys_lock_every_api_call_but_health_and_preflight(launch: Launcher) -> None:
    keys = [f"key-{uuid.uuid4().hex}", f"key-{uuid.uuid4().hex}"]
    api = launch.start("api", QUEUE_BACKEND="memory", API_KEYS=",".join(keys))
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"X-API-Key": "wrong"},
        {"Authorization": f"Basic {keys[0]}"},
    ):
        response = api.http.get(STATS, headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert response.json()["error"]["code"] == "unauthorized"
    assert api.http.post("/api/v1/tasks", json={"type": "sleep"}).status_code == 401

    assert api.http.get(STATS, headers={"Authorization": f"Bearer {keys[0]}"}).status_code == 200
    assert api.http.get(STATS, headers={"X-API-Key": keys[1]}).status_code == 200
    submitted = api.http.post(
        "/api/v1/tasks", json={"type": "sleep"}, headers={"X-API-Key": keys[0]}
    )
    assert submitted.status_code == 201
    for open_path in ("/api/v1/health", "/api/v1/health/live", "/openapi.json"):
        assert api.http.get(open_path).status_code == 200, open_path
    preflight = {
        "Origin": ALLOWED_ORIGIN,
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization",
    }
    assert api.http.options(STATS, headers=preflight).status_code == 200


def test_the_cli_sends_the_first_of_api_keys_to_a_server_given_by_url(
    launch: Launcher, tmp_path: Path
) -> None:
    key = f"key-{uuid.uuid4().hex}"
    api = launch.start("api", QUEUE_BACKEND="memory", API_KEYS=key)

    def stats(keys: str) -> subprocess.CompletedProcess[str]:
        command = [TASK_QUEUE, "stats", "--url", api.url]
        env = process_env({"API_KEYS": keys})
        return subprocess.run(
            command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30
        )

    assert stats(f"{key},another").returncode == 0
    assert json.loads(stats(key).stdout)["queue_size"] == 0
    refused = stats("wrong")
    assert refused.returncode != 0
    assert key not in refused.stderr


def test_without_api_keys_the_api_is_open(launch: Launcher) -> None:
    api = launch.start("api", QUEUE_BACKEND="memory")
    assert api.http.get(STATS).status_code == 200
    assert api.http.get(STATS, headers={"X-API-Key": "anything"}).status_code == 200


def test_api_keys_never_reach_the_logs(launch: Launcher, tmp_path: Path) -> None:
    key, wrong = f"key-{uuid.uuid4().hex}", f"wrong-{uuid.uuid4().hex}"
    log_file = tmp_path / "task-queue.log"
    api = launch.start(
        "api",
        QUEUE_BACKEND="memory",
        API_KEYS=key,
        RATE_LIMIT=0.1,
        LOG_LEVEL="debug",
        LOG_FILE=log_file,
    )
    for headers in ({"X-API-Key": key}, {"Authorization": f"Bearer {key}"}, {"X-API-Key": wrong}):
        for _ in range(2):  # the second of each is refused by the rate limit
            api.http.post("/api/v1/tasks", json={"type": "sleep"}, headers=headers)
            api.http.get("/api/v1/tasks/missing", headers=headers)
    api.stop()
    logged = api.stderr() + log_file.read_text()
    assert '"status":429' in logged.replace(" ", "")  # the requests were logged
    assert key not in logged
    assert wrong not in logged


def test_a_valid_key_is_its_own_bucket_and_anything_else_is_charged_to_the_address(
    launch: Launcher,
) -> None:
    keys = [f"key-{uuid.uuid4().hex}", f"key-{uuid.uuid4().hex}"]
    api = launch.start("api", QUEUE_BACKEND="memory", API_KEYS=",".join(keys), RATE_LIMIT=0.1)

    def status(key: str | None) -> int:
        return api.http.get(STATS, headers={"X-API-Key": key} if key else {}).status_code

    assert [status(None), status(None)] == [401, 429]  # guessing keys is rate limited too
    assert status("made-up") == 429  # a made-up key is no new bucket
    assert [status(keys[0]), status(keys[0])] == [200, 429]
    assert status(keys[1]) == 200


def test_cors_echoes_an_allowed_origin_with_credentials_and_ignores_others(
    launch: Launcher,
) -> None:
    api = launch.start(
        "api", QUEUE_BACKEND="memory", CORS_ORIGINS=ALLOWED_ORIGIN, API_KEYS="k", RATE_LIMIT=0.1
    )

    def preflight(origin: str) -> httpx.Response:
        headers = {
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        }
        return api.http.options("/api/v1/tasks", headers=headers)

    allowed = preflight(ALLOWED_ORIGIN)
    assert allowed.status_code == 200
    assert allowed.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
    assert allowed.headers["Access-Control-Allow-Credentials"] == "true"
    assert "authorization" in allowed.headers["Access-Control-Allow-Headers"].lower()
    refused = preflight("https://evil.example")
    assert "Access-Control-Allow-Origin" not in refused.headers

    # The guard's own answers still carry CORS headers, or a browser could not read them.
    origin = {"Origin": ALLOWED_ORIGIN}
    unauthorized = api.http.get(STATS, headers=origin)
    limited = api.http.get(STATS, headers=origin)
    assert (unauthorized.status_code, limited.status_code) == (401, 429)
    for response in (unauthorized, limited):
        assert response.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
        exposed = response.headers["Access-Control-Expose-Headers"].lower()
        assert "retry-after" in exposed
        assert "ratelimit-remaining" in exposed
    other = api.http.get(STATS, headers={"Origin": "https://evil.example", "X-API-Key": "k"})
    assert "Access-Control-Allow-Origin" not in other.headers


def test_cors_with_any_origin_never_allows_credentials(launch: Launcher) -> None:
    api = launch.start("api", QUEUE_BACKEND="memory")  # CORS_ORIGINS defaults to *
    headers = {"Origin": "https://anywhere.example", "Access-Control-Request-Method": "POST"}
    response = api.http.options("/api/v1/tasks", headers=headers)
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in response.headers
