"""The README's promises: the CI command is its test command, its PromQL parses."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from tests.helpers import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


def promql_examples() -> list[str]:
    block = README.split("### Example PromQL", 1)[1].split("```promql", 1)[1].split("```", 1)[0]
    exprs: list[list[str]] = []
    for line in block.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith(" ") and exprs:
            exprs[-1].append(line.strip())
        else:
            exprs.append([line.strip()])
    return [" ".join(parts) for parts in exprs]


def test_ci_runs_the_readme_test_command() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith(("#", "set ", "cd "))
    ]
    assert lines == ["./scripts/test.sh"]
    assert "\n./scripts/test.sh\n" in README


def test_readme_promql_parses(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool
    exprs = promql_examples()
    assert len(exprs) >= 8
    records = [{"record": f"readme:example{i}", "expr": expr} for i, expr in enumerate(exprs)]
    rules = {"groups": [{"name": "readme", "rules": records}]}
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_readme_promql_leaves_completed_tasks_out_of_age_queries() -> None:
    """Completed tasks are never polled again: an age query without a guard lies about them."""
    exprs = promql_examples()
    ages = [e for e in exprs if "last_success_timestamp_seconds" in e]
    progress = [e for e in exprs if "last_progress_timestamp_seconds" in e]
    assert ages and progress
    for expr in ages:
        assert "and on (store, task_id) shoplazza_upload_task_completed == 0" in expr, expr
    for expr in progress:
        assert "and on (store, task_id) shoplazza_upload_task_status == 1" in expr, expr


def test_readme_state_table_covers_every_state_alert_and_panel() -> None:
    section = README.split("### Task states", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")][1:]
    states = [row.split("|")[1].strip() for row in rows]
    assert [s.split(" (")[0] for s in states] == [
        "not polled",
        "in progress",
        "stuck",
        "failing polls",
        "completed",
        "completed with failed files",
        "unknown status",
        "forgotten",
    ]
    for row in rows:
        assert len(row.split("|")) == 6 and all(cell.strip() for cell in row.split("|")[1:5])
    alerts = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    task_alerts = [
        rule["alert"]
        for group in alerts["groups"]
        for rule in group["rules"]
        if rule["alert"].startswith("ShoplazzaUploadTask")
    ]
    for name in task_alerts:
        assert name.removeprefix("ShoplazzaUploadTask") in section, name


def test_readme_shows_the_status_page_screenshot() -> None:
    assert "![" in README and "(docs/status-page.png)" in README
    png = (ROOT / "docs" / "status-page.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    script = (ROOT / "scripts" / "screenshot.sh").read_text(encoding="utf-8")
    assert "--headless" in script and "--demo" in script and "docs/status-page.png" in script


def test_readme_links_the_fleet_screenshots() -> None:
    for name in ("fleet-summary", "fleet-filtered", "task-page"):
        assert f"(docs/{name}.png)" in README, name
        png = (ROOT / "docs" / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
        script = (ROOT / "scripts" / "screenshot-fleet.sh").read_text(encoding="utf-8")
        assert f"docs/{name}.png" in script
