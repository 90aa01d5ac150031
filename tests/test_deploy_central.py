"""deploy/kubernetes-central/ and its example Jobs, as ``kubectl kustomize`` renders them:
core objects validate, the exporter runs with the task API on and its state file on the
PersistentVolumeClaim, the rules are alerts.yml's, and the Jobs' client commands parse and
name the Service (docs/task-api.md)."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.cli import build_parser
from exporter.taskclient import build_parser as client_parser
from scripts import mixin
from tests.test_deploy import (
    ALERTS,
    K8S_VERSIONS,
    REPO,
    check_hardened_exporter,
    load_yaml,
    run,
    validate_core_objects,
)
from tests.test_deploy_sharded import PROMETHEUS_PEER, selects

CENTRAL = REPO / "deploy" / "kubernetes-central"


def render(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: it renders the kustomization offline")
    result = run(kubectl, "kustomize", str(directory))
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def objects() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for obj in render(CENTRAL):
        assert obj["kind"] not in found
        found[obj["kind"]] = obj
    return found


@pytest.fixture(scope="module")
def jobs() -> list[dict[str, Any]]:
    return render(CENTRAL / "examples")


def test_kustomizations_list_every_manifest() -> None:
    for directory in (CENTRAL, CENTRAL / "examples"):
        kustomization = load_yaml(directory / "kustomization.yaml")
        manifests = {p.name for p in directory.glob("*.yaml")} - {"kustomization.yaml"}
        assert sorted(kustomization["resources"]) == sorted(manifests)


def test_renders_the_central_objects_and_no_secret(objects: dict[str, dict[str, Any]]) -> None:
    assert sorted(objects) == sorted(
        [
            "ConfigMap",
            "Deployment",
            "PersistentVolumeClaim",
            "Service",
            "ServiceMonitor",
            "PrometheusRule",
            "PodDisruptionBudget",
            "NetworkPolicy",
        ]
    )


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_core_objects_validate(
    objects: dict[str, dict[str, Any]], jobs: list[dict[str, Any]], version: str
) -> None:
    everything = [*objects.values(), *jobs]
    validate_core_objects(
        ((f"{o['kind']} {o['metadata']['name']}", o) for o in everything), version
    )


def test_the_rules_are_alerts_yml(objects: dict[str, dict[str, Any]]) -> None:
    rule = objects["PrometheusRule"]
    assert rule["spec"]["groups"] == load_yaml(ALERTS)["groups"]
    assert (CENTRAL / "prometheusrule.yaml").read_text().split("apiVersion:", 1)[1] == (
        REPO / "deploy" / "kubernetes" / "prometheusrule.yaml"
    ).read_text().split("apiVersion:", 1)[1]
    assert Path("deploy/kubernetes-central/prometheusrule.yaml") in mixin.RULES  # generated


def test_disruption_budget_and_network_policy(
    objects: dict[str, dict[str, Any]], jobs: list[dict[str, Any]]
) -> None:
    """The Components of deploy/components/ select the exporter's pod; the policy admits
    Prometheus, and the importers' Jobs to the task API (the metrics port), nothing else."""
    labels = pod_labels(objects["Deployment"])
    budget = objects["PodDisruptionBudget"]
    assert selects(budget["spec"]["selector"], labels)
    assert budget["spec"]["maxUnavailable"] == 1 and "minAvailable" not in budget["spec"]
    policy = objects["NetworkPolicy"]["spec"]
    assert selects(policy["podSelector"], labels)
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    prometheus, importers = policy["ingress"]
    assert prometheus["from"] == [PROMETHEUS_PEER]
    for rule in (prometheus, importers):
        assert rule["ports"] == [{"protocol": "TCP", "port": "metrics"}]
    (peer,) = importers["from"]
    assert set(peer) == {"podSelector"}  # the exporter's namespace only
    for job in jobs:
        assert selects(peer["podSelector"], job["spec"]["template"]["metadata"]["labels"])
    assert not selects(peer["podSelector"], labels)
    allowed = set()
    for rule in policy["egress"]:
        assert "to" not in rule, rule
        allowed |= {(p["protocol"], p["port"]) for p in rule["ports"]}
    assert allowed == {("UDP", 53), ("TCP", 53), ("TCP", 443)}


def test_the_exporter_serves_the_task_api_with_its_state_on_the_claim(
    objects: dict[str, dict[str, Any]],
) -> None:
    deployment = objects["Deployment"]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"  # one writer of the state file
    pod = deployment["spec"]["template"]["spec"]
    [exporter] = pod["containers"]
    check_hardened_exporter(pod, exporter)
    args = build_parser().parse_args(exporter["args"])
    assert args.enable_task_api
    config = yaml.safe_load(objects["ConfigMap"]["data"]["config.yaml"])
    state_file: str = config["state_file"]
    mounts = {m["name"]: m["mountPath"] for m in exporter["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    [state] = [n for n, path in mounts.items() if state_file.startswith(path + "/")]
    claim = volumes[state]["persistentVolumeClaim"]["claimName"]
    assert claim == objects["PersistentVolumeClaim"]["metadata"]["name"]
    service = objects["Service"]
    assert service["spec"]["selector"].items() <= pod_labels(deployment).items()
    assert objects["ServiceMonitor"]["spec"]["endpoints"][0]["port"] == "metrics"


def pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


def test_the_jobs_register_with_the_client(
    objects: dict[str, dict[str, Any]], jobs: list[dict[str, Any]]
) -> None:
    service = objects["Service"]
    url = f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    config = yaml.safe_load(objects["ConfigMap"]["data"]["config.yaml"])
    stores = {store["name"] for store in config["stores"]}
    commands: list[list[str]] = []
    for job in jobs:
        pod = job["spec"]["template"]["spec"]
        assert pod["restartPolicy"] == "Never"
        [register] = pod["containers"]
        assert (
            register["image"]
            == objects["Deployment"]["spec"]["template"]["spec"]["containers"][0]["image"]
        )
        script = register["args"][0].replace("$(cat /var/run/upload-tasks/ids.txt)", "t1 t2")
        for step in script.split(";")[1:]:
            words = shlex.split(step)
            assert words[0] == "shoplazza-upload-task"
            args = client_parser().parse_args(words[1:])
            assert args.url == url and args.store in stores
            commands.append([args.command, *args.ids])
    assert ["add", "t1", "t2"] in commands and ["wait", "t1", "t2"] in commands
