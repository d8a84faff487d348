"""Whatever a client sends, a real server answers with a 4xx in the contract's error shape.

Runs against the memory and the SQLite server alike: what reaches the backend
(odd ids, cursors) must not crash either of them.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.e2e.processes import Launcher, TaskQueueProcess

EMAIL = {"recipient": "user@example.com", "subject": "Hello", "body": "Hi"}
JSON = {"Content-Type": "application/json"}


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> Any:
    """The response is `status` with {"error": {"code", "message", "details"}}; returns details."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"code", "message", "details"}
    assert isinstance(error["code"], str)
    assert isinstance(error["message"], str)
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    return error["details"]


def fields_named(details: Any) -> list[str]:
    assert isinstance(details, list), details
    return [detail["field"] for detail in details]


def task_body(**changes: Any) -> dict[str, Any]:
    return {"type": "email", "payload": EMAIL, **changes}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param(task_body(priority="high"), "priority", id="priority-as-text"),
        pytest.param(task_body(priority=True), "priority", id="priority-as-bool"),
        pytest.param(task_body(priority=11), "priority", id="priority-above-10"),
        pytest.param(task_body(priority=-1), "priority", id="priority-below-0"),
        pytest.param(task_body(priority=10**30), "priority", id="priority-huge"),
        pytest.param(task_body(max_retries=101), "max_retries", id="max-retries-above-100"),
        pytest.param(task_body(max_retries=1.5), "max_retries", id="max-retries-fraction"),
        pytest.param(task_body(timeout_seconds=0), "timeout_seconds", id="timeout-zero"),
        pytest.param(task_body(delay_seconds=-1), "delay_seconds", id="negative-delay"),
        pytest.param(task_body(payload=[1, 2]), "payload", id="payload-as-list"),
        pytest.param(task_body(payload="hi"), "payload", id="payload-as-text"),
        pytest.param(task_body(run_at="tomorrow"), "run_at", id="run-at-not-a-time"),
        pytest.param(task_body(run_at="2030-01-01T00:00:00"), "run_at", id="run-at-no-zone"),
        pytest.param({"type": 5, "payload": EMAIL}, "type", id="type-as-number"),
        pytest.param({"type": "", "payload": EMAIL}, "type", id="type-empty"),
        pytest.param({"payload": EMAIL}, "type", id="type-missing"),
        pytest.param(task_body(queue="no spaces allowed"), "queue", id="queue-bad-name"),
        pytest.param(task_body(colour="red"), "colour", id="unknown-field"),
    ],
)
def test_invalid_field_is_a_422_naming_the_field(
    any_server: TaskQueueProcess, body: dict[str, Any], field: str
) -> None:
    response = any_server.http.post("/api/v1/tasks", json=body)

    details = assert_error(response, 422, "validation_error")
    assert fields_named(details) == [field]


def test_unknown_task_type_is_a_422_naming_the_type_field(any_server: TaskQueueProcess) -> None:
    response = any_server.http.post("/api/v1/tasks", json={"type": "no_such_type"})

    details = assert_error(response, 422, "unknown_task_type")
    assert fields_named(details) == ["type"]


def test_payload_the_task_type_rejects_is_a_422_naming_the_payload_field(
    any_server: TaskQueueProcess,
) -> None:
    body = task_body(payload={**EMAIL, "recipient": "not an address"})

    response = any_server.http.post("/api/v1/tasks", json=body)

    details = assert_error(response, 422, "invalid_payload")
    assert fields_named(details) == ["payload.recipient"]


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b'{"type": "email",', id="cut-off"),
        pytest.param(b"", id="empty"),
        pytest.param(b"{'type': 'email'}", id="single-quotes"),
        pytest.param(b'{"type": NaN}', id="nan"),
        pytest.param(b"\xff\xfe{}", id="not-utf8"),
        pytest.param(b"[" * 100_000, id="nested-too-deep"),
    ],
)
def test_malformed_json_is_a_400(any_server: TaskQueueProcess, content: bytes) -> None:
    response = any_server.http.post("/api/v1/tasks", content=content, headers=JSON)

    assert_error(response, 400, "invalid_json")


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"null", id="null"),
        pytest.param(b"[]", id="list"),
        pytest.param(b'"email"', id="string"),
        pytest.param(b"0", id="number"),
    ],
)
def test_json_that_is_not_an_object_is_a_422(any_server: TaskQueueProcess, content: bytes) -> None:
    response = any_server.http.post("/api/v1/tasks", content=content, headers=JSON)

    assert_error(response, 422, "validation_error")


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
)
def test_body_that_is_not_json_is_a_415(any_server: TaskQueueProcess, content_type: str) -> None:
    response = any_server.http.post(
        "/api/v1/tasks", content=b'{"type": "email"}', headers={"Content-Type": content_type}
    )

    assert_error(response, 415, "unsupported_media_type")


def test_body_over_one_mebibyte_is_a_413(any_server: TaskQueueProcess) -> None:
    body = task_body(payload={**EMAIL, "body": "x" * (2 * 1024 * 1024)})

    response = any_server.http.post("/api/v1/tasks", json=body)

    assert_error(response, 413, "payload_too_large")


def test_batch_over_a_thousand_tasks_is_refused_whole(any_server: TaskQueueProcess) -> None:
    tasks = [{"type": "sleep", "payload": {}} for _ in range(1001)]

    response = any_server.http.post("/api/v1/tasks/batch", json={"tasks": tasks})

    assert response.status_code in (413, 422)
    assert_error(response, response.status_code)


def test_batch_with_one_bad_task_stores_none_of_them(any_server: TaskQueueProcess) -> None:
    key = f"batch-{uuid.uuid4()}"
    good = {"type": "sleep", "payload": {}, "idempotency_key": key}
    batch = {"tasks": [good, {"type": "no_such_type", "payload": {}}]}

    refused = any_server.http.post("/api/v1/tasks/batch", json=batch)

    assert_error(refused, 422, "unknown_task_type")
    # Had the good task been stored, its key would now answer 200 with it.
    assert any_server.http.post("/api/v1/tasks", json=good).status_code == 201


ODD_IDS = [
    str(uuid.uuid4()),
    "' OR '1'='1",
    "%",
    "null",
    "../../etc/passwd",
    "\u00f1\U0001f600",
    "a" * 2000,
    " ",
]


@pytest.mark.parametrize("task_id", ODD_IDS, ids=range(len(ODD_IDS)))
def test_unknown_id_is_a_404_for_get_cancel_and_retry(
    any_server: TaskQueueProcess, task_id: str
) -> None:
    path = f"/api/v1/tasks/{quote(task_id, safe='')}"

    for response in (
        any_server.http.get(path),
        any_server.http.get(path, params={"wait": 0.1}),
        any_server.http.post(f"{path}/cancel"),
        any_server.http.post(f"{path}/retry"),
    ):
        assert_error(response, 404, "not_found")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        pytest.param({"cursor": "not-a-cursor"}, "cursor", id="garbage-cursor"),
        pytest.param({"cursor": "-1"}, "cursor", id="negative-cursor"),
        pytest.param({"cursor": "' OR 1=1 --"}, "cursor", id="sql-cursor"),
        pytest.param({"limit": 0}, "query.limit", id="limit-zero"),
        pytest.param({"limit": 501}, "query.limit", id="limit-above-500"),
        pytest.param({"limit": "ten"}, "query.limit", id="limit-as-text"),
        pytest.param({"status": "sleeping"}, "query.status", id="unknown-status"),
    ],
)
def test_bad_list_query_is_a_422(
    any_server: TaskQueueProcess, params: dict[str, Any], field: str
) -> None:
    response = any_server.http.get("/api/v1/tasks", params=params)

    details = assert_error(response, 422, "validation_error")
    assert fields_named(details) == [field]


def test_same_idempotency_key_with_same_body_returns_the_first_task(
    any_server: TaskQueueProcess,
) -> None:
    body = task_body(idempotency_key=f"key-{uuid.uuid4()}")

    first = any_server.http.post("/api/v1/tasks", json=body)
    again = any_server.http.post("/api/v1/tasks", json=body)

    assert first.status_code == 201
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]


def test_same_idempotency_key_with_another_body_is_a_409(any_server: TaskQueueProcess) -> None:
    key = f"key-{uuid.uuid4()}"
    first = any_server.http.post("/api/v1/tasks", json=task_body(idempotency_key=key))

    other = task_body(idempotency_key=key, priority=9)
    response = any_server.http.post("/api/v1/tasks", json=other)

    assert first.status_code == 201
    assert_error(response, 409, "idempotency_conflict")


def test_idempotency_key_header_works_like_the_body_field(any_server: TaskQueueProcess) -> None:
    headers = {"Idempotency-Key": f"key-{uuid.uuid4()}"}

    first = any_server.http.post("/api/v1/tasks", json=task_body(), headers=headers)
    again = any_server.http.post("/api/v1/tasks", json=task_body(), headers=headers)
    other = any_server.http.post("/api/v1/tasks", json=task_body(priority=1), headers=headers)

    assert first.status_code == 201
    assert (again.status_code, again.json()["id"]) == (200, first.json()["id"])
    assert_error(other, 409, "idempotency_conflict")


def test_cancelling_a_completed_task_is_a_409(any_server: TaskQueueProcess) -> None:
    task = any_server.submit("sleep", {"seconds": 0})
    assert any_server.wait_final(task["id"])["status"] == "completed"

    response = any_server.http.post(f"/api/v1/tasks/{task['id']}/cancel")

    assert_error(response, 409, "invalid_state")
    assert any_server.task(task["id"])["status"] == "completed"


def test_retrying_a_task_that_has_not_failed_is_a_409(any_server: TaskQueueProcess) -> None:
    task = any_server.submit("sleep", {"seconds": 0}, delay_seconds=3600)

    response = any_server.http.post(f"/api/v1/tasks/{task['id']}/retry")

    assert_error(response, 409, "invalid_state")
    assert any_server.task(task["id"])["status"] == "scheduled"


def test_cursor_too_large_for_an_integer_is_not_a_server_error(
    any_server: TaskQueueProcess,
) -> None:

    response = any_server.http.get("/api/v1/tasks", params={"cursor": "9" * 30})

    assert response.status_code in (200, 422), response.text
    if response.status_code == 422:
        assert fields_named(assert_error(response, 422)) == ["cursor"]


def test_batch_repeating_an_idempotency_key_with_the_same_task_stores_it_once(
    any_server: TaskQueueProcess,
) -> None:
    task = task_body(idempotency_key=f"key-{uuid.uuid4()}")

    response = any_server.http.post("/api/v1/tasks/batch", json={"tasks": [task, task]})

    assert response.status_code == 201, response.text
    first, second = response.json()["tasks"]
    assert first["id"] == second["id"]


def test_batch_repeating_an_idempotency_key_with_another_task_is_a_409(
    any_server: TaskQueueProcess,
) -> None:
    key = f"key-{uuid.uuid4()}"
    tasks = [task_body(idempotency_key=key), task_body(idempotency_key=key, priority=9)]

    response = any_server.http.post("/api/v1/tasks/batch", json={"tasks": tasks})

    assert_error(response, 409, "idempotency_conflict")


@pytest.fixture(params=["memory", "sqlite"])
def own_server(request: pytest.FixtureRequest, launch: Launcher) -> TaskQueueProcess:
    """A server for one test: these requests have been seen to leave a backend unusable."""
    return launch.start("serve", QUEUE_BACKEND=request.param)


def test_run_at_beyond_year_9999_in_utc_is_a_422_and_stores_nothing(
    own_server: TaskQueueProcess,
) -> None:
    body = task_body(run_at="9999-12-31T23:59:59-14:00")

    response = own_server.http.post("/api/v1/tasks", json=body)

    assert fields_named(assert_error(response, 422)) == ["run_at"]
    assert own_server.http.get("/api/v1/tasks").status_code == 200


def test_payload_nested_too_deep_to_store_is_refused_in_the_error_shape(
    own_server: TaskQueueProcess,
) -> None:
    depth = 300
    payload = b'{"a":' * depth + b"1" + b"}" * depth
    content = b'{"type": "sleep", "payload": ' + payload + b"}"

    response = own_server.http.post("/api/v1/tasks", content=content, headers=JSON)

    assert response.status_code in (400, 413, 422), response.text
    assert_error(response, response.status_code)
    assert own_server.http.get("/api/v1/tasks").status_code == 200
