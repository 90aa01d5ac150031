"""Render the monitoring mixin (deploy/mixin/) into the files users deploy.

    python -m scripts.mixin          # write them
    python -m scripts.mixin --check  # exit 1, with a diff, when a committed file differs

The mixin is the only source: deploy/prometheus/alerts.yml, the PrometheusRules of
deploy/kubernetes/ and deploy/kubernetes-sharded/ and deploy/kubernetes-central/, and
deploy/grafana/upload-tasks.json are
its output and are never edited by hand (docs/mixin.md). Needs the `jsonnet` package (the
test extras install it).
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from pathlib import Path
from typing import Any

import _jsonnet
import yaml

REPO = Path(__file__).resolve().parent.parent
MIXIN = Path("deploy/mixin")
ALERTS = Path("deploy/prometheus/alerts.yml")
RULES = (
    Path("deploy/kubernetes/prometheusrule.yaml"),
    Path("deploy/kubernetes-sharded/prometheusrule.yaml"),
    Path("deploy/kubernetes-central/prometheusrule.yaml"),
)
GRAFANA = Path("deploy/grafana")

# What the renderer takes from the mixin: the rules, each alert's notes (hidden fields,
# written as comments), and every dashboard in its importable form.
SNIPPET = """
local mixin = (import 'mixin.libsonnet') + OVERRIDES;
local importable = import 'lib/importable.libsonnet';
{
  alerts: mixin.prometheusAlerts,
  notes: {
    [rule.alert]: if std.objectHasAll(rule, 'notes') then rule.notes else ''
    for group in mixin.prometheusAlerts.groups
    for rule in group.rules
  },
  config: mixin._config,
  dashboards: {
    [name]: importable(mixin.grafanaDashboards[name])
    for name in std.objectFields(mixin.grafanaDashboards)
  },
}
"""

RULE_KEYS = ("alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations")
ANNOTATION_KEYS = ("summary", "description", "runbook_url", "dashboard_url")

GENERATED = (
    "GENERATED from deploy/mixin/ by `python -m scripts.mixin`: do not edit; change the mixin."
)

ALERTS_HEADER = """\
# Alerting rules for shoplazza-upload-exporter.
# {generated}
#
#   promtool check rules deploy/prometheus/alerts.yml
#   promtool test rules deploy/prometheus/alerts_test.yml
#
# The same groups are in the PrometheusRules of deploy/kubernetes/,
# deploy/kubernetes-sharded/ and deploy/kubernetes-central/; kube-prometheus users import
# deploy/mixin/mixin.libsonnet.
# Thresholds, the job selector and the links are _config of the mixin
# (deploy/mixin/config.libsonnet; docs/mixin.md). The job selector,
#   {selector}
# must match the job_name of YOUR scrape config (with the Prometheus Operator: the Service
# name).
#
# Every alert is true in every task state (README, "Task states"): completed tasks are
# never polled again, so nothing here alerts on their age; a task whose polls fail is
# ShoplazzaUploadTaskStale, not also stuck; forgotten tasks have no series, so nothing fires.
#
# RUNBOOK BASE URL: every runbook_url is <base>#<alert name in lower case>, with one base:
#   {runbook}
# Set yours once, where you publish docs/runbook.md: runbookBaseUrl in the mixin's _config,
# or without jsonnet (e.g. your Git host's page of it):
#   sed -i 's#{runbook}#https://YOUR/runbook.md#' deploy/prometheus/alerts.yml
# DASHBOARD URL: every dashboard_url is <dashboard URL>[?var-...], the dashboard URL being
#   {dashboard}
# Set yours (dashboardUrl in _config), or:
#   sed -i 's#{dashboard}#https://YOUR-GRAFANA/d/{uid}#' deploy/prometheus/alerts.yml
# On Kubernetes, set both in runbook-url.yaml of the kustomization instead (kustomize
# replacements write them into every rule of the PrometheusRule).
"""

RULE_HEADERS = {
    "deploy/kubernetes/prometheusrule.yaml": """\
# Prometheus Operator form of deploy/prometheus/alerts.yml (the comments that explain each
# rule are there), for the sidecar of this directory.
# {generated}
# Your Prometheus resource selects rules by label (ruleSelector); kube-prometheus-stack, for
# example, wants `release: <helm release name>`: add that label here if needed. The
# runbook_url and dashboard_url bases are replaced by runbook_base_url and
# dashboard_base_url of runbook-url.yaml when kustomize renders this directory.
""",
    "deploy/kubernetes-sharded/prometheusrule.yaml": """\
# Prometheus Operator form of deploy/prometheus/alerts.yml (the comments that explain each
# rule are there), the same rules as the sidecar's deploy/kubernetes/prometheusrule.yaml:
# they aggregate by store and task_id, never by instance, so they hold across shards
# unchanged, and the shard alerts watch the shards themselves.
# {generated}
# Your Prometheus resource selects rules by label (ruleSelector); add e.g.
# `release: <helm release name>` if needed. The runbook_url and dashboard_url bases are
# replaced by runbook_base_url and dashboard_base_url of runbook-url.yaml when kustomize
# renders this directory.
""",
    "deploy/kubernetes-central/prometheusrule.yaml": """\
# Prometheus Operator form of deploy/prometheus/alerts.yml (the comments that explain each
# rule are there), the same rules as the sidecar's deploy/kubernetes/prometheusrule.yaml:
# a registered task is watched, exported and alerted on like a configured one.
# {generated}
# Your Prometheus resource selects rules by label (ruleSelector); add e.g.
# `release: <helm release name>` if needed. The runbook_url and dashboard_url bases are
# replaced by runbook_base_url and dashboard_base_url of runbook-url.yaml when kustomize
# renders this directory.
""",
}

RULE_METADATA = {
    "name": "shoplazza-upload-exporter",
    "labels": {
        "app.kubernetes.io/name": "shoplazza-upload-exporter",
        "app.kubernetes.io/part-of": "shoplazza-importer",
    },
}


class _Dumper(yaml.SafeDumper):
    """Block style, multi-line strings as literal blocks, indented lists."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _ordered(mapping: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """The mapping with ``keys`` first, in that order, then any other key sorted."""
    first = {key: mapping[key] for key in keys if key in mapping}
    return first | {key: mapping[key] for key in sorted(mapping) if key not in first}


def _groups(alerts: dict[str, Any]) -> list[dict[str, Any]]:
    groups = []
    for group in alerts["groups"]:
        rules = []
        for rule in group["rules"]:
            rule = _ordered(rule, RULE_KEYS)
            if "annotations" in rule:
                rule["annotations"] = _ordered(rule["annotations"], ANNOTATION_KEYS)
            rules.append(rule)
        groups.append(_ordered(group, ("name", "interval")) | {"rules": rules})
    return groups


def _dump(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=4096, allow_unicode=True)


def _with_notes(text: str, notes: dict[str, str]) -> str:
    """YAML text with each alert's notes as comments above its `- alert:` line."""
    lines: list[str] = []
    for line in text.splitlines():
        stripped = line.lstrip()
        if stripped.startswith("- alert: "):
            indent = " " * (len(line) - len(stripped))
            note = notes.get(stripped.removeprefix("- alert: ").strip(), "")
            if lines and lines[-1].strip() and not lines[-1].lstrip().startswith("rules:"):
                lines.append("")
            lines += [f"{indent}# {part}".rstrip() for part in note.strip().splitlines()]
        lines.append(line)
    return "\n".join(lines) + "\n"


def evaluate(repo: Path = REPO, overrides: str = "{}") -> dict[str, Any]:
    """The mixin's alerts, notes, config and dashboards, as data; ``overrides`` is a jsonnet
    object added to the mixin, as its users do (e.g. ``{_config+:: {...}}``)."""
    mixin = repo / MIXIN
    snippet = SNIPPET.replace("OVERRIDES", f"({overrides})")
    result: dict[str, Any] = json.loads(
        _jsonnet.evaluate_snippet(str(mixin / "render.jsonnet"), snippet, jpathdir=[str(mixin)])
    )
    return result


def render(repo: Path = REPO) -> dict[Path, str]:
    """Relative path -> the text the mixin gives for every generated file."""
    data = evaluate(repo)
    config = data["config"]
    groups = _groups(data["alerts"])
    header = ALERTS_HEADER.format(
        generated=GENERATED,
        selector=config["exporterSelector"],
        runbook=config["runbookBaseUrl"],
        dashboard=config["dashboardUrl"],
        uid=config["dashboardUid"],
    )
    files = {ALERTS: header + _with_notes(_dump({"groups": groups}), data["notes"])}
    for path in RULES:
        rule = {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PrometheusRule",
            "metadata": RULE_METADATA,
            "spec": {"groups": groups},
        }
        files[path] = RULE_HEADERS[path.as_posix()].format(generated=GENERATED) + _dump(rule)
    for name, dashboard in data["dashboards"].items():
        files[GRAFANA / name] = json.dumps(dashboard, indent=2, ensure_ascii=False) + "\n"
    return files


def check(repo: Path = REPO) -> list[str]:
    """A unified diff for every generated file whose committed text differs."""
    problems = []
    for path, text in render(repo).items():
        target = repo / path
        current = target.read_text(encoding="utf-8") if target.exists() else ""
        if current != text:
            problems.append(
                "".join(
                    difflib.unified_diff(
                        current.splitlines(keepends=True),
                        text.splitlines(keepends=True),
                        f"{path} (committed)",
                        f"{path} (rendered from deploy/mixin)",
                    )
                )
            )
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.mixin", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--check", action="store_true", help="compare, write nothing; exit 1 on a difference"
    )
    parser.add_argument("--repo", type=Path, default=REPO, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.check:
        problems = check(args.repo)
        for diff in problems:
            sys.stdout.write(diff)
        if problems:
            print(
                f"{len(problems)} file(s) differ from the mixin: run `python -m scripts.mixin`",
                file=sys.stderr,
            )
            return 1
        return 0
    for path, text in render(args.repo).items():
        (args.repo / path).write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
