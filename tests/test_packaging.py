"""The package as users get it: a wheel with the licence, py.typed, SPDX metadata and the
source revision in build_info (docs/packaging.md)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_SOURCES = ("pyproject.toml", "setup.py", "README.md", "LICENSE")


def _source_copy(directory: Path) -> Path:
    """What a checkout holds of the package, without this repository's build leftovers."""
    directory.mkdir()
    for name in _SOURCES:
        shutil.copy(ROOT / name, directory / name)
    shutil.copytree(
        ROOT / "exporter", directory / "exporter", ignore=shutil.ignore_patterns("__pycache__")
    )
    (directory / "exporter" / "_build.py").unlink(missing_ok=True)
    return directory


def _wheel(source: Path, out: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(source)],
        check=True,
        timeout=300,
    )
    (wheel,) = out.glob("shoplazza_upload_exporter-*.whl")
    return wheel


def _build_info(wheel: Path) -> str:
    """The build_info line the wheel's code exports (imported from the wheel itself)."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from exporter.build import build_labels; import exporter.build as b;"
        "assert b.__file__.startswith(sys.argv[1]), b.__file__;"
        "print(sorted(build_labels('v').items()))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(wheel)], capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def test_wheel_carries_licence_typing_marker_and_git_revision(tmp_path: Path) -> None:
    source = _source_copy(tmp_path / "checkout")
    git = ["git", "-C", str(source), "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "release"], check=True)
    head = subprocess.run(
        [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()

    wheel = _wheel(source, tmp_path / "dist")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        assert "exporter/py.typed" in names
        (licence,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert zf.read(licence) == (ROOT / "LICENSE").read_bytes()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = zf.read(metadata).decode()
    assert "\nLicense-Expression: Apache-2.0\n" in meta
    assert "\nClassifier: Typing :: Typed\n" in meta
    assert "\nProject-URL: " in meta
    python = "{}.{}.{}".format(*sys.version_info[:3])
    assert _build_info(wheel) == str(
        [("python_version", python), ("revision", head), ("version", "v")]
    )


def test_wheel_from_a_tree_without_git_has_an_empty_revision(tmp_path: Path) -> None:
    wheel = _wheel(_source_copy(tmp_path / "tarball"), tmp_path / "dist")
    assert "('revision', '')" in _build_info(wheel)


def test_licence_is_the_apache_2_text() -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License\n                           Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert 'license = "Apache-2.0"' in (ROOT / "pyproject.toml").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", ["LICENSE", "setup.py"])
def test_docker_build_context_holds_what_the_wheel_build_reads(name: str) -> None:
    assert f"!{name}\n" in (ROOT / ".dockerignore").read_text(encoding="utf-8")
    assert name in (ROOT / "Dockerfile").read_text(encoding="utf-8")
