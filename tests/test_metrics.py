"""The metrics one process exports, and the Grafana dashboard that reads them."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from task_queue.backends.memory import MemoryBackend
from task_queue.metrics import Metrics

DASHBOARD = Path(__file__).resolve().parents[1] / "deployments/grafana/task-queue-dashboard.json"
METRIC_NAME = re.compile(r"\btask_queue_[a-z_]+\b")


async def exported_sample_names() -> set[str]:
    """Every sample name /metrics shows once each family has counted something."""
    metrics = Metrics()
    counts = metrics.for_task("email", "default")
    counts.completed.inc()
    counts.duration.observe(0.01)
    metrics.tasks_submitted.labels("email", "default").inc()
    metrics.request_done("GET", "/api/v1/tasks/{task_id}", 200, 0.001)
    backend = MemoryBackend()
    await backend.open()
    try:
        text = (await metrics.render(backend)).decode()
    finally:
        await backend.close()
    return {
        sample.name for family in text_string_to_metric_families(text) for sample in family.samples
    }


async def test_every_family_of_the_contract_is_exported() -> None:
    names = await exported_sample_names()

    assert {
        "task_queue_tasks_submitted_total",
        "task_queue_tasks_completed_total",
        "task_queue_tasks_failed_total",
        "task_queue_tasks_retried_total",
        "task_queue_task_duration_seconds_bucket",
        "task_queue_queue_depth",
        "task_queue_workers",
        "task_queue_workers_busy",
        "task_queue_backend_up",
        "task_queue_http_requests_total",
        "task_queue_http_request_duration_seconds_bucket",
    } <= names


def test_dashboard_is_an_importable_grafana_dashboard() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))

    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    assert dashboard["panels"]
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}"
        assert panel["targets"], panel["title"]


async def test_dashboard_queries_only_metrics_the_app_exports() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in METRIC_NAME.findall(target["expr"])
    }

    assert queried
    assert queried <= await exported_sample_names()
