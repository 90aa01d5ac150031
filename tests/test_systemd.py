"""deploy/systemd: the units as shipped pass ``systemd-analyze verify`` and a hardening
threshold of ``systemd-analyze security`` (docs/systemd.md).

Verify checks that ExecStart's program exists, so it runs on a scratch root (``--root``)
holding the units where an administrator installs them, a stand-in executable at
ExecStart's path, /bin/kill for ExecReload and the host's own system units (targets).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "deploy" / "systemd"
SERVICE = "shoplazza-upload-exporter.service"
SOCKET = "shoplazza-upload-exporter.socket"
HOST_UNITS = Path("/usr/lib/systemd/system")


def _analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.fail("systemd-analyze is not installed (scripts/test.sh installs systemd)")
    return found


def _exec_paths(text: str) -> set[str]:
    joined = text.replace("\\\n", " ")
    return set(re.findall(r"^Exec(?:Start|Reload)=[-@:+!]*(/\S+)", joined, re.MULTILINE))


def _scratch_root(tmp_path: Path, socket_activation: bool) -> Path:
    root = tmp_path / "root"
    units = root / "etc" / "systemd" / "system"
    units.mkdir(parents=True)
    shutil.copytree(HOST_UNITS, root / "usr" / "lib" / "systemd" / "system", symlinks=True)
    shutil.copy(UNITS / SERVICE, units / SERVICE)
    texts = [(UNITS / SERVICE).read_text(encoding="utf-8")]
    if socket_activation:
        shutil.copy(UNITS / SOCKET, units / SOCKET)
        dropins = units / f"{SERVICE}.d"
        dropins.mkdir()
        shutil.copy(UNITS / "socket-activation.conf", dropins / "socket-activation.conf")
        texts.append((UNITS / "socket-activation.conf").read_text(encoding="utf-8"))
    for path in set().union(*map(_exec_paths, texts)):
        stand_in = root / path.lstrip("/")
        stand_in.parent.mkdir(parents=True, exist_ok=True)
        stand_in.write_text("#!/bin/sh\n")
        stand_in.chmod(0o755)
    return root


@pytest.mark.parametrize("socket_activation", [False, True], ids=["service", "socket"])
def test_units_pass_systemd_analyze_verify(tmp_path: Path, socket_activation: bool) -> None:
    root = _scratch_root(tmp_path, socket_activation)
    units = root / "etc" / "systemd" / "system"
    names = [SERVICE, SOCKET] if socket_activation else [SERVICE]
    result = subprocess.run(
        [_analyze(), "verify", f"--root={root}", *(str(units / name) for name in names)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Unknown keys are only warnings (exit 0): any output is a finding.
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""


def test_verify_finds_what_is_wrong(tmp_path: Path) -> None:
    """The check above can fail: a misspelt key and a missing ExecStart are reported."""
    root = _scratch_root(tmp_path, socket_activation=False)
    unit = root / "etc" / "systemd" / "system" / SERVICE
    unit.write_text(unit.read_text().replace("ProtectHome=", "ProtectHom="))
    (root / "usr" / "local" / "bin" / "shoplazza-upload-exporter").unlink()
    result = subprocess.run(
        [_analyze(), "verify", f"--root={root}", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "Unknown key 'ProtectHom'" in result.stderr
    assert "/usr/local/bin/shoplazza-upload-exporter is not executable" in result.stderr


@pytest.mark.parametrize("socket_activation", [False, True], ids=["service", "socket"])
def test_service_is_hardened(tmp_path: Path, socket_activation: bool) -> None:
    """``systemd-analyze security`` rates the exposure at most 2.0 (of 10; 1.4 when written)."""
    root = _scratch_root(tmp_path, socket_activation)
    result = subprocess.run(
        [
            _analyze(),
            "security",
            "--offline=yes",
            "--threshold=20",
            f"--root={root}",
            str(root / "etc" / "systemd" / "system" / SERVICE),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_service_settings_the_docs_promise() -> None:
    text = (UNITS / SERVICE).read_text(encoding="utf-8")
    for setting in (
        "DynamicUser=yes",
        "StateDirectory=shoplazza-upload-exporter",
        "ConfigurationDirectory=shoplazza-upload-exporter",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ):
        assert f"\n{setting}\n" in text, setting
    dropin = (UNITS / "socket-activation.conf").read_text(encoding="utf-8")
    assert "--web.systemd-socket" in dropin
    assert "\nExecStart=\n" in dropin  # clears the unit's own ExecStart first
    assert "\nListenStream=9877\n" in (UNITS / SOCKET).read_text(encoding="utf-8")
