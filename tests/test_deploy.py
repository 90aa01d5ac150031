"""Checks of what users deploy around the exporter.

The Dockerfile (hadolint), the alert rules and their unit tests (promtool), the example
Prometheus configuration, the Grafana dashboard (JSON, template variables, every query
parsed by promtool and using only metrics the exporter exports) and the Kubernetes
manifests (kubernetes-validate for core objects, hand-written checks for the Prometheus
Operator's CRDs and for how the objects fit together).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.helpers import GLOBAL_METRICS, STORE_METRICS, TASK_METRICS

REPO = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "upload-tasks.json"
K8S_DIR = REPO / "deploy" / "kubernetes"
RUNBOOK = REPO / "docs" / "runbook.md"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

# Kubernetes versions the manifests are validated against: the oldest one that
# kubernetes-validate>=1.28 (pyproject) bundles schemas for, and the newest one installed.
K8S_VERSIONS = sorted({"1.28.0", kubernetes_validate.latest_version()})

KNOWN_METRICS = TASK_METRICS | STORE_METRICS | GLOBAL_METRICS | {"up"}

# The alerts the deployment promises, with the labels their annotations must name.
REQUIRED_ALERTS: dict[str, tuple[str, ...]] = {
    "ShoplazzaUploadTaskStuck": ("store", "task_id"),
    "ShoplazzaUploadTaskFailedFiles": ("store", "task_id"),
    "ShoplazzaUploadTaskStale": ("store", "task_id"),
    "ShoplazzaApiErrorRatioHigh": ("store",),
    "ShoplazzaApiRateLimited": ("store",),
    "ShoplazzaExporterConfigReloadFailed": ("instance",),
    "ShoplazzaExporterDown": ("instance",),
    "ShoplazzaExporterAbsent": (),
}
SEVERITIES = frozenset({"critical", "warning", "info"})

# Concrete values for Grafana's variables, so that promtool and Prometheus accept queries.
GRAFANA_VALUES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
    "$task_id": ".*",
    "$store": ".*",
}

_PROMQL_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "inf", "nan", "by", "without", "on", "ignoring"}
)
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


# --- helpers ---------------------------------------------------------------------------


def tool(name: str) -> str:
    """Path of an external program, from the virtualenv first, or skip the test."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (scripts/test.sh installs it)")
    return found


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """Run a program, capturing its output as text."""
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def load_yaml(path: Path) -> Any:
    """The single YAML document of a file."""
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def alert_rules() -> list[dict[str, Any]]:
    """Every alerting rule of alerts.yml."""
    groups = load_yaml(ALERTS)["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def concrete(expr: str) -> str:
    """A dashboard query with Grafana's variables replaced by concrete values."""
    for name, value in GRAFANA_VALUES.items():
        expr = expr.replace("${" + name[1:] + "}", value).replace(name, value)
    assert "$" not in expr, f"unhandled Grafana variable in {expr!r}"
    return expr


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (a lexical approximation)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"'(?:[^'\\]|\\.)*'", "''", text)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        before = text[match.start() - 1] if match.start() else " "
        if before.isdigit() or before == ".":
            continue  # exponent or duration unit of a number
        if text[match.end() :].lstrip().startswith("("):
            continue  # function call
        if match.group(0).lower() in _PROMQL_KEYWORDS:
            continue
        names.add(match.group(0))
    return names


def selectors(expr: str) -> Iterator[tuple[str, str]]:
    """(metric name, label matchers text) of every selector of a known metric in expr."""
    pattern = r"(?<![A-Za-z0-9_:])(" + "|".join(sorted(KNOWN_METRICS, key=len, reverse=True))
    pattern += r")(?![A-Za-z0-9_:])\s*(\{[^}]*\})?"
    for match in re.finditer(pattern, expr):
        yield match.group(1), match.group(2) or ""


def dashboard() -> dict[str, Any]:
    """The Grafana dashboard."""
    with DASHBOARD.open(encoding="utf-8") as handle:
        data: dict[str, Any] = json.load(handle)
    return data


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def dashboard_queries() -> list[str]:
    """Every panel target's PromQL expression, as written (with Grafana variables)."""
    return [
        target["expr"]
        for panel in all_panels(dashboard()["panels"])
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def k8s_objects() -> dict[str, dict[str, Any]]:
    """Every object of the kustomization, keyed by kind (one of each kind here)."""
    kustomization = load_yaml(K8S_DIR / "kustomization.yaml")
    objects: dict[str, dict[str, Any]] = {}
    for name in kustomization["resources"]:
        with (K8S_DIR / name).open(encoding="utf-8") as handle:
            for doc in yaml.safe_load_all(handle):
                if doc:
                    assert doc["kind"] not in objects, f"second {doc['kind']} in {name}"
                    objects[doc["kind"]] = doc
    return objects


def container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    """The named container of a Deployment's pod template."""
    for item in deployment["spec"]["template"]["spec"]["containers"]:
        if item["name"] == name:
            found: dict[str, Any] = item
            return found
    raise AssertionError(f"no container {name!r}")


def validate_core_objects(objects: Iterable[tuple[str, dict[str, Any]]], version: str) -> None:
    """kubernetes-validate every object but the Prometheus Operator's CRDs (no schema
    there: the tests check those by hand); ``objects`` is (what to call it, object)."""
    for what, obj in objects:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(item) for item in exc.path)
            pytest.fail(f"{what} invalid for Kubernetes {version}: {path}: {exc.message}")


def check_service_monitor(monitor: dict[str, Any], service: dict[str, Any]) -> dict[str, Any]:
    """A ServiceMonitor (a CRD, checked by hand) scraping /metrics of the Service's port;
    returns its one endpoint."""
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["name"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector and selector.items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert endpoint.get("path", "/metrics") == "/metrics"
    timeout = re.fullmatch(r"(\d+)s", endpoint["scrapeTimeout"])
    assert timeout is not None and 1 <= int(timeout.group(1)) <= 30
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}
    found: dict[str, Any] = endpoint
    return found


def check_hardened_exporter(pod: dict[str, Any], exporter: dict[str, Any]) -> None:
    """The exporter container runs as uid 65532, read-only, unprivileged, with resources
    and the health and readiness probes; ``pod`` is its pod spec."""
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    context = exporter["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] == 65532
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(exporter["resources"][kind])
    assert exporter["livenessProbe"]["httpGet"] == {"path": "/-/healthy", "port": "metrics"}
    assert exporter["readinessProbe"]["httpGet"] == {"path": "/-/ready", "port": "metrics"}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    lines = [
        line
        for line in DOCKERFILE.read_text(encoding="utf-8").splitlines()
        if not line.lstrip().startswith("#")
    ]
    text = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    found = []
    for line in text.splitlines():
        if line.strip():
            instruction, _, arguments = line.strip().partition(" ")
            found.append((instruction.upper(), arguments.strip()))
    return found


def healthcheck_command() -> list[str]:
    """The exec-form command of the Dockerfile's HEALTHCHECK."""
    (arguments,) = [args for name, args in dockerfile_instructions() if name == "HEALTHCHECK"]
    command: list[str] = json.loads(arguments.partition(" CMD ")[2])
    return command


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


# --- Dockerfile ------------------------------------------------------------------------


def test_hadolint_has_no_findings() -> None:
    result = run(tool("hadolint"), "--no-color", str(DOCKERFILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_dockerfile_shape() -> None:
    instructions = dockerfile_instructions()
    by_name: dict[str, list[str]] = {}
    for name, arguments in instructions:
        by_name.setdefault(name, []).append(arguments)
    stages = [arguments.split()[0] for arguments in by_name["FROM"]]
    assert len(stages) == 2, "multi-stage: a build stage and a runtime stage"
    assert all(re.match(r"python:3\.(1[1-9])[.-].*slim", image) for image in stages), stages
    assert any(re.search(r"pip wheel .*--no-deps", run) for run in by_name["RUN"])
    runtime = instructions[[name for name, _ in instructions].index("FROM", 1) :]
    runtime_runs = [arguments for name, arguments in runtime if name == "RUN"]
    assert any(re.search(r"pip install [^&]*/wheels/\S+\.whl", run) for run in runtime_runs)
    assert by_name["USER"][-1] in {"65532", "65532:65532"}
    assert by_name["EXPOSE"] == ["9877"]
    assert by_name["ENTRYPOINT"] == ['["shoplazza-upload-exporter"]']
    assert by_name["CMD"] == ['["--config.file=/etc/shoplazza-upload-exporter/config.yaml"]']
    assert instructions[-1][0] in {"CMD", "ENTRYPOINT"}


def test_healthcheck_probes_healthy_with_python() -> None:
    command = healthcheck_command()
    assert command[:2] == ["python", "-c"]
    assert "http://127.0.0.1:9877/-/healthy" in command[2]
    compile(command[2], "<healthcheck>", "exec")


def test_dockerignore_keeps_what_the_wheel_needs() -> None:
    lines = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    assert lines.count("*") == 1, "whitelist: exclude everything, then re-include"
    for needed in ("!pyproject.toml", "!README.md", "!exporter/"):
        assert needed in lines


# --- alert rules -------------------------------------------------------------------------


def test_promtool_check_rules() -> None:
    result = run(tool("promtool"), "check", "rules", "--lint=all", "--lint-fatal", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_test_rules() -> None:
    result = run(tool("promtool"), "test", "rules", str(ALERTS_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_check_example_prometheus_config() -> None:
    result = run(tool("promtool"), "check", "config", "--lint=all", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    config = load_yaml(PROMETHEUS_CONFIG)
    assert config["rule_files"] == ["alerts.yml"]
    jobs = [job["job_name"] for job in config["scrape_configs"]]
    assert jobs == ["shoplazza-upload-exporter"]


def test_required_alerts_exist_once() -> None:
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names))
    assert set(REQUIRED_ALERTS) <= set(names)


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: str(rule["alert"]))
def test_alert_labels_and_annotations(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    assert set(annotations) == {"summary", "description", "runbook_url"}
    for label in REQUIRED_ALERTS.get(rule["alert"], ()):
        for key in ("summary", "description"):
            assert "{{ $labels." + label + " }}" in annotations[key], (key, label)


def test_runbook_urls_point_at_runbook_sections() -> None:
    headings = re.findall(r"^## (.+)$", RUNBOOK.read_text(encoding="utf-8"), re.MULTILINE)
    anchors = {slug(heading) for heading in headings}
    for rule in alert_rules():
        path, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert path == "docs/runbook.md"
        assert anchor == slug(rule["alert"]), rule["alert"]
        assert anchor in anchors, f"docs/runbook.md has no section {rule['alert']}"


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in load_yaml(ALERTS_TEST)["tests"]:
        for check in case.get("alert_rule_test", []):
            expected = check.get("exp_alerts") or []
            (firing if expected else quiet).add(check["alertname"])
            for alert in expected:
                assert "exp_annotations" in alert, check["alertname"]
    names = {rule["alert"] for rule in alert_rules()}
    assert names - firing == set(), "alerts without a firing test case"
    assert names - quiet == set(), "alerts without a no-alert test case"


def test_alerts_use_only_exported_metrics() -> None:
    for rule in alert_rules():
        unknown = metric_names(rule["expr"]) - KNOWN_METRICS
        assert not unknown, (rule["alert"], unknown)


def test_exporter_down_selector_matches_the_example_jobs() -> None:
    (rule,) = [rule for rule in alert_rules() if rule["alert"] == "ShoplazzaExporterDown"]
    match = re.search(r'up\{job=~"([^"]+)"\}', rule["expr"])
    assert match is not None
    job_regex = re.compile(match.group(1))
    config = load_yaml(PROMETHEUS_CONFIG)
    for job in config["scrape_configs"]:
        assert job_regex.fullmatch(job["job_name"])
    # With the Prometheus Operator the job label is the Service's name.
    service = k8s_objects()["Service"]
    assert job_regex.fullmatch(service["metadata"]["name"])


# --- Grafana dashboard --------------------------------------------------------------------


def test_dashboard_metadata_and_variables() -> None:
    data = dashboard()
    assert data["uid"] and data["title"]
    assert data.get("id") is None, "an importable dashboard carries no database id"
    assert "${DS_" not in DASHBOARD.read_text(encoding="utf-8"), "needs no __inputs"
    variables = {item["name"]: item for item in data["templating"]["list"]}
    datasource = variables["datasource"]
    assert datasource["type"] == "datasource"
    assert datasource["query"] == "prometheus"
    for name, label in (("store", "store"), ("task_id", "task_id")):
        variable = variables[name]
        assert variable["type"] == "query"
        assert variable["multi"] is True
        assert variable["includeAll"] is True
        assert variable["datasource"]["uid"] == "${datasource}"
        match = re.fullmatch(r"label_values\((\w+)(\{.*\})?, (\w+)\)", variable["query"])
        assert match is not None, variable["query"]
        assert match.group(1) in KNOWN_METRICS
        assert match.group(3) == label
    assert 'store=~"$store"' in variables["task_id"]["query"]


def test_dashboard_panels_use_the_datasource_variable() -> None:
    ids = []
    for panel in all_panels(dashboard()["panels"]):
        ids.append(panel["id"])
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            assert target["expr"].strip()
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_dashboard_has_the_promised_panels() -> None:
    queries = "\n".join(dashboard_queries())
    for needle in (
        "shoplazza_upload_task_progress_ratio",
        "shoplazza_upload_task_completed",
        "shoplazza_upload_task_last_progress_timestamp_seconds",
        "shoplazza_upload_task_files_failed",
        "rate(shoplazza_api_requests_total",
        "rate(shoplazza_api_errors_total",
        'code="429"',
        "shoplazza_upload_task_poll_success",
        "time() - shoplazza_upload_task_last_success_timestamp_seconds",
        "shoplazza_exporter_polls_skipped_total",
    ):
        assert needle in queries, needle
    types = {panel["type"] for panel in all_panels(dashboard()["panels"])}
    assert {"stat", "bargauge", "timeseries"} <= types


def test_dashboard_stuck_threshold_matches_the_alert() -> None:
    (rule,) = [rule for rule in alert_rules() if rule["alert"] == "ShoplazzaUploadTaskStuck"]
    pattern = r"last_progress_timestamp_seconds[^)]*\)\s*>\s*([0-9* ]+?)\s+and"
    alert_threshold = re.search(pattern, rule["expr"].replace("\n", " "))
    assert alert_threshold is not None
    stuck = [q for q in dashboard_queries() if "last_progress_timestamp_seconds" in q]
    assert stuck
    for query in stuck:
        found = re.search(pattern, query)
        assert found is not None, query
        assert found.group(1) == alert_threshold.group(1)


def test_dashboard_queries_filter_by_store_and_task() -> None:
    for expr in dashboard_queries():
        found = list(selectors(expr))
        assert found, f"no exporter metric in {expr!r}"
        for metric, matchers in found:
            if metric in TASK_METRICS | STORE_METRICS:
                assert 'store=~"$store"' in matchers, (metric, expr)
            if metric in TASK_METRICS:
                assert 'task_id=~"$task_id"' in matchers, (metric, expr)


def test_dashboard_uses_only_exported_metrics() -> None:
    for expr in dashboard_queries():
        unknown = metric_names(concrete(expr)) - KNOWN_METRICS
        assert not unknown, (expr, unknown)


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    queries = sorted({concrete(expr) for expr in dashboard_queries()})
    rules = [
        {"record": f"dashboard_query_{index}", "expr": expr} for index, expr in enumerate(queries)
    ]
    rule_file = tmp_path / "dashboard_queries.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run(tool("promtool"), "check", "rules", str(rule_file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_metric_name_extraction() -> None:
    assert metric_names(
        'sum by (store) (rate(a_total{code="429", x=~"b c"}[5m])) / (b > 0) > 1e3 '
        "and on (store, task_id) time() - c offset 5m"
    ) == {"a_total", "b", "c"}
    assert metric_names('up{job=~"x.*"} == 0') == {"up"}


# --- Kubernetes ---------------------------------------------------------------------------


def test_kustomization_lists_every_manifest() -> None:
    kustomization = load_yaml(K8S_DIR / "kustomization.yaml")
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    manifests = {path.name for path in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(manifests)
    assert set(k8s_objects()) == {
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "ServiceMonitor",
        "PrometheusRule",
    }


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_core_objects_validate(version: str) -> None:
    validate_core_objects(k8s_objects().items(), version)


def test_service_monitor() -> None:
    objects = k8s_objects()
    endpoint = check_service_monitor(objects["ServiceMonitor"], objects["Service"])
    assert endpoint["interval"] == "30s"


def test_service_targets_the_exporter() -> None:
    objects = k8s_objects()
    service, deployment = objects["Service"], objects["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    exporter = container(deployment, "exporter")
    named = {item["name"]: item["containerPort"] for item in exporter["ports"]}
    assert port["targetPort"] in named
    assert named[port["targetPort"]] == port["port"] == 9877


def test_prometheus_rule_equals_alerts_file() -> None:
    rule = k8s_objects()["PrometheusRule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["name"]
    assert set(rule["spec"]) == {"groups"}
    assert rule["spec"]["groups"] == load_yaml(ALERTS)["groups"]


def test_deployment_security_and_probes() -> None:
    deployment = k8s_objects()["Deployment"]
    check_hardened_exporter(
        deployment["spec"]["template"]["spec"], container(deployment, "exporter")
    )


def test_task_id_directory_is_an_emptydir_shared_by_both_containers() -> None:
    deployment = k8s_objects()["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert len(pod["containers"]) == 2
    shared = None
    for item in pod["containers"]:
        mounts = {mount["name"]: mount for mount in item.get("volumeMounts", [])}
        names = {name for name in mounts if "emptyDir" in volumes[name]}
        shared = names if shared is None else shared & names
    assert shared == {"upload-tasks"}
    exporter_mounts = {m["name"]: m for m in container(deployment, "exporter")["volumeMounts"]}
    assert exporter_mounts["upload-tasks"]["mountPath"] == "/var/run/upload-tasks"


def test_config_paths_match_the_mounts() -> None:
    objects = k8s_objects()
    deployment, config_map, secret = objects["Deployment"], objects["ConfigMap"], objects["Secret"]
    pod = deployment["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    exporter = container(deployment, "exporter")
    mounts = {mount["mountPath"]: mount["name"] for mount in exporter["volumeMounts"]}
    assert all("subPath" not in mount for mount in exporter["volumeMounts"])

    (config_arg,) = [arg for arg in exporter["args"] if arg.startswith("--config.file=")]
    config_path = Path(config_arg.partition("=")[2])
    config_volume = volumes[mounts[str(config_path.parent)]]
    assert config_volume["configMap"]["name"] == config_map["metadata"]["name"]
    assert config_path.name in config_map["data"]

    config = yaml.safe_load(config_map["data"][config_path.name])
    for store in config["stores"]:
        token_path = Path(store["access_token_file"])
        token_volume = volumes[mounts[str(token_path.parent)]]
        assert token_volume["secret"]["secretName"] == secret["metadata"]["name"]
        assert token_path.name in secret["stringData"]
        for pattern in store["task_id_files"]:
            assert mounts[str(Path(pattern).parent)] == "upload-tasks"
    state_dir = str(Path(config["state_file"]).parent)
    assert "emptyDir" in volumes[mounts[state_dir]]


def test_configmap_config_is_accepted_by_the_exporter(tmp_path: Path) -> None:
    from exporter.config import parse_config

    objects = k8s_objects()
    text = objects["ConfigMap"]["data"]["config.yaml"]
    secret_dir = "/var/run/secrets/shoplazza"
    assert secret_dir + "/" in text
    for key in objects["Secret"]["stringData"]:
        (tmp_path / key).write_text("fake-token-0123456789\n", encoding="utf-8")
    state_dir = "/var/lib/shoplazza-upload-exporter"  # must exist at load: a stand-in here
    (tmp_path / "state").mkdir()
    config = parse_config(
        text.replace(secret_dir, str(tmp_path)).replace(state_dir, str(tmp_path / "state")),
        source=str(tmp_path / "config.yaml"),
        environ={},
    )
    assert [store.name for store in config.stores] == ["acme"]
    assert config.stores[0].task_id_files == ("/var/run/upload-tasks/*.txt",)
    assert config.state_file == str(tmp_path / "state" / "state.json")
