"""The Kubernetes manifests against the Kubernetes 1.30 schemas, and against each other.

kubernetes-validate ships the OpenAPI-derived schemas of each release, so the
check runs offline. KEDA's CRD schema ships in no package reachable here: its
objects are checked for the fields KEDA needs and for what they point at.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from tests.deploy.deployment import IMAGE, K8S, KNOWN_VARIABLES, compose, load_yaml_documents

KUBERNETES_VERSION = "1.30.0"
MANIFESTS = sorted(K8S.glob("*.yaml"))
KEDA = K8S / "keda" / "worker-scaledobject.yaml"


def objects(*paths: Path) -> list[dict[str, Any]]:
    return [doc for path in paths or MANIFESTS for doc in load_yaml_documents(path)]


def find(kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def config() -> dict[str, str]:
    data: dict[str, str] = find("ConfigMap", "task-queue-config")["data"]
    return data


def app_containers() -> list[dict[str, Any]]:
    return [
        container
        for o in objects()
        if o["kind"] == "Deployment"
        for container in o["spec"]["template"]["spec"]["containers"]
    ]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda path: path.name)
def test_manifest_validates_against_the_kubernetes_schemas(path: Path) -> None:
    for document in load_yaml_documents(path):
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_validator_rejects_a_misspelt_field() -> None:
    deployment = find("Deployment", "api")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_everything_lives_in_the_task_queue_namespace() -> None:
    for o in objects(*MANIFESTS, KEDA):
        if o["kind"] != "Namespace":
            assert o["metadata"]["namespace"] == "task-queue", o["metadata"]["name"]


def test_selectors_match_the_pods_they_mean() -> None:
    pods = {
        o["metadata"]["name"]: o["spec"]["template"]["metadata"]["labels"]
        for o in objects()
        if o["kind"] in ("Deployment", "StatefulSet")
    }
    for o in objects():
        if o["kind"] in ("Deployment", "StatefulSet", "PodDisruptionBudget"):
            selector = o["spec"]["selector"]["matchLabels"]
        elif o["kind"] == "Service":
            selector = o["spec"]["selector"]
        else:
            continue
        assert selector == pods[o["metadata"]["name"]], o["metadata"]["name"]


def test_every_app_variable_is_one_the_app_reads() -> None:
    assert set(config()) <= KNOWN_VARIABLES
    for container in app_containers():
        assert container["image"] == IMAGE
        assert {e["name"] for e in container["env"]} <= KNOWN_VARIABLES


def test_redis_url_carries_the_password_from_the_secret() -> None:
    secret = find("Secret", "task-queue-secrets")["stringData"]
    for container in app_containers():
        names = [e["name"] for e in container["env"]]
        env = {e["name"]: e for e in container["env"]}
        assert env["REDIS_URL"]["value"] == "redis://:$(REDIS_PASSWORD)@redis:6379/0"
        # Kubernetes expands $(VAR) only from variables listed before it.
        assert names.index("REDIS_PASSWORD") < names.index("REDIS_URL")
        reference = env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert reference["name"] == "task-queue-secrets"
        assert reference["key"] in secret
    redis = find("StatefulSet", "redis")["spec"]["template"]["spec"]["containers"][0]
    assert "$(REDIS_PASSWORD)" in redis["args"][redis["args"].index("--requirepass") + 1]


def test_redis_persists_an_append_only_file_on_a_claimed_volume() -> None:
    statefulset = find("StatefulSet", "redis")
    redis = statefulset["spec"]["template"]["spec"]["containers"][0]
    assert redis["args"][redis["args"].index("--appendonly") + 1] == "yes"
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in redis["volumeMounts"]
    service = find("Service", "redis")
    assert service["spec"]["clusterIP"] == "None"
    assert statefulset["spec"]["serviceName"] == "redis"


def test_redis_keeps_task_hashes_as_listpacks_as_the_compose_stack_does() -> None:
    """The memory bound of docs/deployment.md; test_nginx.py runs a real
    redis-server with the Compose file's options, this one among them."""
    args = find("StatefulSet", "redis")["spec"]["template"]["spec"]["containers"][0]["args"]
    command = compose()["services"]["redis"]["command"]
    flag = "--hash-max-listpack-value"
    assert args[args.index(flag) + 1] == command[command.index(flag) + 1] == "1024"


def test_pods_run_non_root_on_a_read_only_root_without_capabilities() -> None:
    for o in objects():
        if o["kind"] not in ("Deployment", "StatefulSet"):
            continue
        pod = o["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            assert "limits" in container["resources"]
            assert "requests" in container["resources"]


def test_app_pods_write_to_data_dir_and_tmp_volumes_only() -> None:
    assert config()["DATA_DIR"] == "/data"
    assert config()["LOG_FILE"] == ""
    for container in app_containers():
        assert {m["mountPath"] for m in container["volumeMounts"]} == {"/data", "/tmp"}


def test_api_probes_liveness_and_health() -> None:
    (api,) = find("Deployment", "api")["spec"]["template"]["spec"]["containers"]
    assert api["livenessProbe"]["httpGet"]["path"] == "/api/v1/health/live"
    assert api["readinessProbe"]["httpGet"]["path"] == "/api/v1/health"
    assert api["startupProbe"]["httpGet"]["path"] == "/api/v1/health/live"


def test_pods_get_longer_than_the_drain_before_sigkill() -> None:
    shutdown = float(config()["SHUTDOWN_TIMEOUT"])
    for name in ("api", "worker"):
        pod = find("Deployment", name)["spec"]["template"]["spec"]
        pre_stop = pod["containers"][0].get("lifecycle", {}).get("preStop", {})
        sleep = pre_stop.get("exec", {}).get("command", ["sleep", "0"])
        assert sleep[0] == "sleep"
        assert pod["terminationGracePeriodSeconds"] > shutdown + float(sleep[1]), name


def test_api_scales_from_2_to_10_on_cpu_and_memory() -> None:
    autoscaler = find("HorizontalPodAutoscaler", "api")["spec"]
    assert autoscaler["scaleTargetRef"]["name"] == "api"
    assert (autoscaler["minReplicas"], autoscaler["maxReplicas"]) == (2, 10)
    assert {m["resource"]["name"] for m in autoscaler["metrics"]} == {"cpu", "memory"}


def test_disruption_budgets_keep_an_api_and_a_worker() -> None:
    for name in ("api", "worker"):
        assert find("PodDisruptionBudget", name)["spec"]["minAvailable"] == 1


def test_ingress_routes_to_the_api_service_and_outlasts_a_long_poll() -> None:
    ingress = find("Ingress", "api")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "api", "port": {"name": "http"}}
    ports = find("Service", "api")["spec"]["ports"]
    assert backend["port"]["name"] in [port["name"] for port in ports]
    timeout = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"]
    assert int(timeout) > 60


def test_only_the_app_reaches_redis() -> None:
    deny = find("NetworkPolicy", "default-deny-ingress")["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress"]}
    policy = find("NetworkPolicy", "redis-from-app")["spec"]
    assert policy["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "redis"}
    (rule,) = policy["ingress"]
    senders = [
        peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for peer in rule["from"]
    ]
    assert sorted(senders) == ["api", "worker"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 6379}]


def test_keda_scales_the_worker_deployment_on_the_stats_queue_size() -> None:
    authentication, scaled = objects(KEDA)
    assert scaled["apiVersion"] == authentication["apiVersion"] == "keda.sh/v1alpha1"
    assert (authentication["kind"], scaled["kind"]) == ("TriggerAuthentication", "ScaledObject")
    spec = scaled["spec"]
    target = spec["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == ("apps/v1", "Deployment")
    assert find("Deployment", target["name"])["metadata"]["name"] == "worker"
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "metrics-api"
    metadata = trigger["metadata"]
    assert re.fullmatch(
        r"http://api\.task-queue\.svc\.cluster\.local/api/v1/stats", metadata["url"]
    )
    assert metadata["valueLocation"] == "queue_size"
    assert float(metadata["targetValue"]) > 0
    assert all(isinstance(value, str) for value in metadata.values())
    assert trigger["authenticationRef"]["name"] == authentication["metadata"]["name"]
    (reference,) = authentication["spec"]["secretTargetRef"]
    secret = find("Secret", "task-queue-secrets")["stringData"]
    assert reference["name"] == "task-queue-secrets"
    assert secret[reference["key"]] in secret["API_KEYS"].split(",")


def test_workers_serve_their_metrics_to_the_monitoring_namespace_only() -> None:
    (worker,) = find("Deployment", "worker")["spec"]["template"]["spec"]["containers"]
    port = {e["name"]: e["value"] for e in worker["env"] if "value" in e}["METRICS_PORT"]
    assert worker["ports"] == [{"name": "metrics", "containerPort": int(port)}]
    policy = find("NetworkPolicy", "metrics-from-monitoring")["spec"]
    (rule,) = policy["ingress"]
    assert {p["port"] for p in rule["ports"]} == {8080, int(port)}
    paths = find("Ingress", "api")["spec"]["rules"][0]["http"]["paths"]
    assert not [p for p in paths if "/metrics".startswith(p["path"]) and p["pathType"] == "Prefix"]
