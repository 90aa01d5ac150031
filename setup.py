"""Build hook: records the git revision in the wheel (``exporter/_build.py``).

Everything else about the package is in pyproject.toml. The revision comes from
``SHOPLAZZA_EXPORTER_REVISION`` when set (a Docker build context has no ``.git``), else from
``git rev-parse HEAD`` when the source is a git checkout, else it is empty
(docs/packaging.md).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

_REVISION_RE = re.compile(r"[0-9a-f]{7,64}")


def source_revision(root: Path) -> str:
    """The commit the source was checked out at, or "" when unknown."""
    given = os.environ.get("SHOPLAZZA_EXPORTER_REVISION", "").strip().lower()
    if given:
        if not _REVISION_RE.fullmatch(given):
            raise SystemExit(f"SHOPLAZZA_EXPORTER_REVISION={given!r}: expected a git commit hash")
        return given
    if not (root / ".git").exists():
        return ""
    try:
        result = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    text = result.stdout.strip()
    return text if result.returncode == 0 and _REVISION_RE.fullmatch(text) else ""


class BuildPyWithRevision(build_py):
    """``build_py`` that also writes ``exporter/_build.py`` into the build tree."""

    def run(self) -> None:
        super().run()
        revision = source_revision(Path(__file__).resolve().parent)
        target = Path(self.build_lib) / "exporter" / "_build.py"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(
            f'"""Written by setup.py when the wheel was built."""\n\nREVISION = {revision!r}\n',
            encoding="utf-8",
        )


setup(cmdclass={"build_py": BuildPyWithRevision})
