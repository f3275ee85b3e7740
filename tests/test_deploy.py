"""deploy/ validated offline (issue #20): no cluster and no Docker engine run here, so the
Kubernetes manifests are checked against the Kubernetes API's own schemas, the compose file
against the Compose specification, and the HAProxy file by HAProxy itself; and all of them
against what the service really offers (its settings, probes and metrics)."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service.metrics import Metrics
from service.settings import Settings
from tests.support.service_process import ROOT

DEPLOY = ROOT / "deploy"
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
# The oldest Kubernetes release still supported when this was written: what a cluster may run.
KUBERNETES_VERSION = "1.30.0"


def _documents() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def _by_kind(kind: str) -> dict[str, Any]:
    (found,) = [doc for doc in _documents() if doc["kind"] == kind]
    return found


def _compose() -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    return compose


def _replicas() -> dict[str, Any]:
    return {name: service for name, service in _compose()["services"].items() if name.startswith("leafresh-")}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda path: path.name)
def test_kubernetes_manifests_match_the_api_schemas(path: Path) -> None:
    for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_the_schema_check_refuses_a_misspelled_field() -> None:
    # Proof that the check above can fail: strict validation rejects what the API would ignore.
    deployment = copy.deepcopy(_by_kind("Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/ready"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", [])}


def _setting_names() -> set[str]:
    return {f"LEAFRESH_{name.upper()}" for name in Settings.model_fields}


def test_the_deployment_probes_drain_and_grace_fit_the_service() -> None:
    pod = _by_kind("Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = _env(container)
    assert set(env) <= _setting_names(), set(env) - _setting_names()
    Settings.model_validate({name.removeprefix("LEAFRESH_").lower(): value for name, value in env.items()})
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["failureThreshold"] == 1  # out of rotation at the drain's first 503
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    grace = float(env["LEAFRESH_SHUTDOWN_GRACE_S"])
    # Kubernetes kills at terminationGracePeriodSeconds, counted from the start of preStop.
    assert pod["terminationGracePeriodSeconds"] >= pause + grace + 5
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_the_autoscaler_reads_a_metric_the_service_exports() -> None:
    hpa = _by_kind("HorizontalPodAutoscaler")
    (metric,) = hpa["spec"]["metrics"]
    exported = {metric.name for metric in Metrics().registry.collect()}
    assert metric["pods"]["metric"]["name"] in exported
    assert hpa["spec"]["scaleTargetRef"]["name"] == _by_kind("Deployment")["metadata"]["name"]
    labels = _by_kind("Deployment")["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        selector = _by_kind(kind)["spec"]["selector"]
        assert selector.get("matchLabels", selector).items() <= labels.items(), kind


def test_the_compose_file_matches_the_compose_specification() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", "compose.yaml"],
        cwd=DEPLOY,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_replicas_drain_use_redis_and_one_gpu_each() -> None:
    compose = _compose()
    replicas = _replicas()
    assert len(replicas) >= 2
    gpus = []
    for service in replicas.values():
        env = service["environment"]
        assert set(env) <= _setting_names()
        assert env["LEAFRESH_SESSION_URL"].startswith("redis://redis:")
        stop = int(re.fullmatch(r"(\d+)s", service["stop_grace_period"]).group(1))  # type: ignore[union-attr]
        assert stop >= float(env["LEAFRESH_SHUTDOWN_GRACE_S"]) + 5
        assert "/ready" in " ".join(service["healthcheck"]["test"])
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        gpus += device["device_ids"]
    assert len(gpus) == len(set(gpus)), "two replicas on one GPU"
    assert "--appendonly" in compose["services"]["redis"]["command"]  # conversations survive a restart
    assert compose["services"]["redis"]["healthcheck"]


def test_the_haproxy_configuration_is_valid_and_lists_every_replica() -> None:
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        pytest.fail("haproxy is not installed: run `make test`, which installs it (Debian package haproxy)")
    result = subprocess.run([haproxy, "-c", "-f", str(DEPLOY / "haproxy.cfg")], capture_output=True, text=True)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "ALERT" not in output, output
    servers = re.findall(r"^\s+server \S+ (\S+):8000", (DEPLOY / "haproxy.cfg").read_text(), re.MULTILINE)
    assert sorted(servers) == sorted(_replicas())
