"""The commands of config.example.yaml and the README work as written."""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.config import load_config, parse_config
from exporter.config.tokens import check_token
from exporter.polling.client import StoreClient
from tests.helpers import ROOT

EXAMPLE = ROOT / "config.example.yaml"
# The simulator the example's sandbox store talks to, as the example and the README start it.
SIMULATOR = "python -m exporter.demo --port 8080 --demo"


def example_commands() -> list[str]:
    """The shell commands in the example's comments (lines ``#   <command>``)."""
    lines = [line.lstrip() for line in EXAMPLE.read_text(encoding="utf-8").splitlines()]
    return [line[4:] for line in lines if re.match(r"#   [A-Za-z]", line)]


def documented_text() -> str:
    """The README and docs/ pages, where the commands are documented."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return "\n".join(page.read_text(encoding="utf-8") for page in pages)


def bin_env() -> dict[str, str]:
    """The environment with this virtualenv's scripts first on PATH, as after `pip install`."""
    scripts = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": scripts + os.pathsep + os.environ.get("PATH", "")}


def check_command() -> str:
    (command,) = [c for c in example_commands() if "--config.check" in c]
    return command


def assignments(command: str) -> dict[str, str]:
    """The ``NAME=value`` words a shell command starts with."""
    env: dict[str, str] = {}
    for word in shlex.split(command):
        name, eq, value = word.partition("=")
        if not eq or not re.fullmatch(r"[A-Z_][A-Z0-9_]*", name):
            break
        env[name] = value
    return env


@pytest.fixture
def simulator(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """A documented simulator command run on a free port: (its URL, its first token)."""
    command: str = request.param
    argv = shlex.split(command.replace("--port 8080", "--port 0"))
    assert argv[:3] == ["python", "-m", "exporter.demo"]
    proc = subprocess.Popen(
        [sys.executable, *argv[1:]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip().rsplit(" ", 1)[-1]
        tokens = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and tokens.startswith("tokens: "), url
        yield url, tokens.removeprefix("tokens: ").split(", ")[0]
    finally:
        proc.terminate()
        proc.wait(timeout=5)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_the_example_check_command_works_when_pasted() -> None:
    command = check_command()
    assert "..." not in command
    result = subprocess.run(
        ["bash", "-c", command], cwd=ROOT, env=bin_env(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


def test_the_simulator_command_is_the_documented_one() -> None:
    assert [c for c in example_commands() if "exporter.demo" in c] == [SIMULATOR]
    assert SIMULATOR in documented_text()


@pytest.mark.parametrize("simulator", [SIMULATOR], indirect=True)
def test_the_example_sandbox_store_gets_200s_from_the_documented_simulator(
    simulator: tuple[str, str],
) -> None:
    """The sandbox store of the example, with the token its check command gives, polls the
    simulator started as documented: every task answers 200."""
    url, _ = simulator
    config = load_config(str(EXAMPLE), environ=assignments(check_command()))
    (sandbox,) = [store for store in config.stores if store.name == "sandbox"]
    assert sandbox.base_url == "http://127.0.0.1:8080"  # the documented port, here a free one
    client = StoreClient(
        dataclasses.replace(sandbox, base_url=url), token_reader=lambda source: source.value
    )
    try:
        codes = {task_id: client.fetch(task_id).code for task_id in sandbox.task_ids}
    finally:
        client.close()
    assert len(codes) >= 3 and set(codes.values()) == {"200"}, codes


def readme_simulator_commands() -> list[str]:
    """The README's simulator line and its ``# or ...`` alternative, as commands."""
    for line in documented_text().splitlines():
        if line.startswith(SIMULATOR):
            command, _, alternative = line.partition("# or ")
            base = command.strip().removesuffix(" --demo")
            return [command.strip(), f"{base} {alternative.strip()}"]
    raise AssertionError(f"no line starting with {SIMULATOR!r} in the README or docs/")


@pytest.mark.parametrize("simulator", readme_simulator_commands(), indirect=True)
def test_the_simulator_token_is_one_the_exporter_takes(simulator: tuple[str, str]) -> None:
    """With or without --demo, the simulator's default token passes the exporter's check."""
    url, token = simulator
    assert check_token(token, "the simulator's token") == token
    text = f"stores:\n  - name: sim\n    base_url: {url}\n    access_token_env: SIM_TOKEN\n"
    text += "    task_ids: [demo-images-stuck, task-0]\n"
    config = parse_config(text, environ={"SIM_TOKEN": token})
    client = StoreClient(config.stores[0], token_reader=lambda source: source.value)
    try:
        codes = [client.fetch(task_id).code for task_id in config.stores[0].task_ids]
    finally:
        client.close()
    assert "200" in codes and set(codes) <= {"200", "404"}, codes
