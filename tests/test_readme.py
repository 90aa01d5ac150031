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
