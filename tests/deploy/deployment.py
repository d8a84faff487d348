"""The shipped deployment files, loaded, and the settings the app knows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from task_queue.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "deployments" / "docker"
K8S = ROOT / "deployments" / "k8s"
IMAGE = "task-queue:0.1.0"

# Variables a deployment may give the app that are not Settings fields, each
# with its reason. Anything else is a typo or a setting the app ignores.
EXTRA_VARIABLES = {
    # Kubernetes only: expanded into REDIS_URL as $(REDIS_PASSWORD).
    "REDIS_PASSWORD",
}
KNOWN_VARIABLES = {name.upper() for name in Settings.model_fields} | EXTRA_VARIABLES


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())
    return document
