"""The metrics one process exports, and the Grafana dashboard that reads them."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families

from task_queue.backends.memory import MemoryBackend
from task_queue.metrics import TASK_BUCKETS, Metrics
from task_queue.task import Task

DASHBOARD = Path(__file__).resolve().parents[1] / "deployments/grafana/task-queue-dashboard.json"
METRIC_NAME = re.compile(r"\btask_queue_[a-z_]+\b")


async def exported_sample_names() -> set[str]:
    """Every sample name /metrics shows once each family has counted something."""
    metrics = Metrics()
    counts = metrics.for_task("email", "default")
    counts.completed.count += 1
    counts.duration.observe(0.01)
    metrics.submitted("email", "default")
    metrics.request_done("GET", "/api/v1/tasks/{task_id}", 200, 0.001)
    backend = MemoryBackend()
    await backend.open()
    try:
        await backend.enqueue([Task.new("email", {}, now=0.0)])  # a queue with a pending task
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
        "task_queue_queue_pending",
        "task_queue_workers",
        "task_queue_workers_busy",
        "task_queue_backend_up",
        "task_queue_http_requests_total",
        "task_queue_http_request_duration_seconds_bucket",
    } <= names


def histogram_samples(registry: CollectorRegistry, name: str) -> dict[tuple[str, str], float]:
    return {
        (sample.name.removeprefix(name), sample.labels.get("le", "")): sample.value
        for family in registry.collect()
        if family.name == name
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def test_published_durations_are_what_observing_each_would_have_recorded() -> None:
    metrics = Metrics()
    assert metrics.registry is not None
    reference_registry = CollectorRegistry()
    reference = Histogram("reference", "", buckets=TASK_BUCKETS, registry=reference_registry)
    counts = metrics.for_task("email", "default")
    # Zero, bounds exactly, just above a bound, beyond the last bound.
    for seconds in (0.0, 0.001, 0.0011, 0.5, 0.5, 600.0, 601.0):
        counts.duration.observe(seconds)
        reference.observe(seconds)

    metrics.publish()

    published = histogram_samples(metrics.registry, "task_queue_task_duration_seconds")
    assert published == histogram_samples(reference_registry, "reference")
    assert published[("_count", "")] == 7


def test_tallies_are_published_once() -> None:
    metrics = Metrics()
    counts = metrics.for_task("email", "default")
    counts.completed.count += 2
    metrics.publish()
    metrics.publish()

    assert metrics.tasks_completed.labels("email", "default")._value.get() == 2


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
