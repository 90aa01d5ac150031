"""End to end: simulator -> exporter -> Prometheus -> dashboard queries and alert rules.

Starts the Shoplazza API simulator in process, the real exporter as a subprocess pointed
at it, and Debian's ``prometheus`` scraping the exporter every second with
deploy/prometheus/alerts.yml loaded. Then every query of the Grafana dashboard must
return data through Prometheus' HTTP API, and every alert rule must evaluate healthy.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from tests.test_deploy import ALERTS, REPO, concrete, dashboard_queries, healthcheck_command

pytestmark = pytest.mark.timeout(90)

T = TypeVar("T")

TOKEN = "sim-token-0123456789"
ACME_TASKS = ("task-done", "task-running", "task-failing")
BETA_TASKS = ("task-beta", "task-missing")  # task-missing is unknown to the simulator: 404
STARTUP_DEADLINE = 20.0
DATA_DEADLINE = 30.0

# Pause between two looks at a condition polled over HTTP (there is no event to wait on).
_POLL_PAUSE = threading.Event()


@dataclass
class Process:
    """A started subprocess with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 40) -> str:
        """The last lines of the process's output, for assertion messages."""
        text = self.log.read_text(encoding="utf-8", errors="replace")
        return f"--- {self.name} output ---\n" + "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        """Fail the test at once if the process has exited."""
        code = self.popen.poll()
        if code is not None:
            pytest.fail(f"{self.name} exited with status {code}\n{self.tail()}")


@dataclass
class Stack:
    """The running simulator, exporter and Prometheus."""

    exporter: Process
    exporter_url: str
    prometheus: Process
    prometheus_url: str


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(
    probe: Callable[[], T | None], what: str, deadline: float, alive: list[Process]
) -> T:
    """Call probe until it returns a truthy value; fail after deadline seconds."""
    end = time.monotonic() + deadline
    while True:
        result = probe()
        if result:
            return result
        for process in alive:
            process.check_alive()
        if time.monotonic() > end:
            logs = "\n".join(process.tail() for process in alive)
            pytest.fail(f"timed out after {deadline:g}s waiting for {what}\n{logs}")
        _POLL_PAUSE.wait(0.2)


def http_get(url: str) -> tuple[int, bytes]:
    """Status and body of a GET; (0, b"") when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def api(base: str, path: str, **params: str) -> Any:
    """The `data` of a successful Prometheus API answer."""
    url = f"{base}{path}?{urllib.parse.urlencode(params)}"
    status, body = http_get(url)
    assert status == 200, f"{url}: {status} {body[:500]!r}"
    answer = json.loads(body)
    assert answer["status"] == "success", answer
    return answer["data"]


def query(base: str, expr: str) -> list[dict[str, Any]]:
    """The result of an instant query (vector or scalar normalised to a list)."""
    data = api(base, "/api/v1/query", query=expr)
    if data["resultType"] in {"scalar", "string"}:
        return [{"metric": {}, "value": data["result"]}]
    result: list[dict[str, Any]] = data["result"]
    return result


def start(name: str, args: list[str], log: Path) -> Process:
    """Start a program with stdout and stderr going to a log file.

    PYTHONPATH gets the repository, so that ``python -m exporter`` runs this checkout
    even where the package is not installed.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    with log.open("wb") as handle:
        popen = subprocess.Popen(
            args, stdout=handle, stderr=subprocess.STDOUT, cwd=log.parent, env=env
        )
    return Process(name, popen, log)


def stop(process: Process) -> None:
    """Terminate a process, killing it if it does not exit in time."""
    if process.popen.poll() is None:
        process.popen.terminate()
        try:
            process.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.popen.kill()
            process.popen.wait(timeout=10)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Simulator, exporter and Prometheus, running; all stopped afterwards."""
    prometheus_bin = shutil.which("prometheus")
    if prometheus_bin is None:
        pytest.skip("prometheus is not installed (scripts/test.sh installs it)")
    simulator_module = pytest.importorskip("exporter.demo.simulator")
    tmp = tmp_path_factory.mktemp("e2e")

    sim = simulator_module.Simulator(tokens=(TOKEN,)).start()
    processes: list[Process] = []
    try:
        sim.add_task("task-done", 3, finished=3, status=0)
        sim.add_task("task-running", 10, finished=4, status=1)
        sim.add_task(
            "task-failing",
            5,
            finished=5,
            status=0,
            failure_list=[
                {"origin_link": "https://origin.example/a.png", "reason": "download failed"},
                {"origin_link": "https://origin.example/b.png", "reason": "unsupported type"},
            ],
        )
        sim.add_task("task-beta", 4, finished=1, status=1)

        token_file = tmp / "token"
        token_file.write_text(TOKEN + "\n", encoding="utf-8")
        task_dir = tmp / "upload-tasks"
        task_dir.mkdir()
        (task_dir / "beta.txt").write_text(
            "# written by the importer\n" + "\n".join(BETA_TASKS) + "\n", encoding="utf-8"
        )
        store = {"base_url": sim.url, "access_token_file": str(token_file)}
        config = {
            "stores": [
                {"name": "acme", **store, "task_ids": list(ACME_TASKS)},
                {"name": "beta", **store, "task_id_files": [str(task_dir / "*.txt")]},
            ],
            "defaults": {"min_poll_interval": "1s"},
        }
        config_file = tmp / "config.yaml"
        config_file.write_text(yaml.safe_dump(config), encoding="utf-8")

        exporter_address = f"127.0.0.1:{free_port()}"
        exporter = start(
            "exporter",
            [
                sys.executable,
                "-m",
                "exporter",
                "--config.file",
                str(config_file),
                "--web.listen-address",
                exporter_address,
            ],
            tmp / "exporter.log",
        )
        processes.append(exporter)
        exporter_url = f"http://{exporter_address}"
        wait_until(
            lambda: http_get(f"{exporter_url}/-/ready")[0] == 200,
            "the exporter to be ready",
            STARTUP_DEADLINE,
            [exporter],
        )

        prometheus_config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [
                {
                    "job_name": "shoplazza-upload-exporter",
                    "scrape_timeout": "1s",
                    "static_configs": [{"targets": [exporter_address]}],
                }
            ],
        }
        prometheus_file = tmp / "prometheus.yml"
        prometheus_file.write_text(yaml.safe_dump(prometheus_config), encoding="utf-8")
        prometheus_address = f"127.0.0.1:{free_port()}"
        prometheus = start(
            "prometheus",
            [
                prometheus_bin,
                f"--config.file={prometheus_file}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address={prometheus_address}",
                "--log.level=warn",
            ],
            tmp / "prometheus.log",
        )
        processes.append(prometheus)
        prometheus_url = f"http://{prometheus_address}"
        wait_until(
            lambda: http_get(f"{prometheus_url}/-/ready")[0] == 200,
            "Prometheus to be ready",
            STARTUP_DEADLINE,
            processes,
        )

        def every_task_scraped() -> bool:
            series = query(prometheus_url, "shoplazza_upload_task_poll_success")
            return {item["metric"]["task_id"] for item in series} == {*ACME_TASKS, *BETA_TASKS}

        wait_until(
            every_task_scraped,
            "Prometheus to hold the series of every task",
            DATA_DEADLINE,
            processes,
        )
        yield Stack(exporter, exporter_url, prometheus, prometheus_url)
    finally:
        for process in reversed(processes):
            stop(process)
        sim.stop()


def test_dashboard_queries_return_data(stack: Stack) -> None:
    queries = sorted({concrete(expr) for expr in dashboard_queries()})
    assert queries
    pending = set(queries)

    def all_answered() -> bool:
        for expr in sorted(pending):
            if query(stack.prometheus_url, expr):
                pending.discard(expr)
        return not pending

    try:
        wait_until(all_answered, "every dashboard query to return data", DATA_DEADLINE, [])
    except pytest.fail.Exception:
        pytest.fail("dashboard queries without data:\n" + "\n".join(sorted(pending)))


def test_dashboard_variables_find_stores_and_tasks(stack: Stack) -> None:
    stores = api(
        stack.prometheus_url,
        "/api/v1/label/store/values",
        **{"match[]": "shoplazza_upload_task_poll_success"},
    )
    assert set(stores) == {"acme", "beta"}
    tasks = api(
        stack.prometheus_url,
        "/api/v1/label/task_id/values",
        **{"match[]": 'shoplazza_upload_task_poll_success{store=~"acme"}'},
    )
    assert set(tasks) == set(ACME_TASKS)


def test_every_rule_evaluates_ok(stack: Stack) -> None:
    expected = {
        rule["alert"]
        for group in yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
        for rule in group["rules"]
    }

    def evaluated_rules() -> list[dict[str, Any]] | None:
        groups = api(stack.prometheus_url, "/api/v1/rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        if any(rule["health"] == "unknown" for rule in rules):
            return None
        return rules

    rules = wait_until(evaluated_rules, "every rule to be evaluated", DATA_DEADLINE, [])
    assert {rule["name"] for rule in rules} == expected
    unhealthy = {rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"}
    assert unhealthy == {}


def test_alerts_follow_the_tasks(stack: Stack) -> None:
    def active() -> dict[tuple[str, str], str] | None:
        alerts = api(stack.prometheus_url, "/api/v1/alerts")["alerts"]
        found = {
            (alert["labels"]["alertname"], alert["labels"].get("task_id", "")): alert["state"]
            for alert in alerts
        }
        wanted = {
            ("ShoplazzaUploadTaskFailedFiles", "task-failing"),
            ("ShoplazzaUploadTaskStale", "task-missing"),
        }
        return found if wanted <= set(found) else None

    found = wait_until(active, "the task alerts to become active", DATA_DEADLINE, [])
    assert found[("ShoplazzaUploadTaskFailedFiles", "task-failing")] == "firing"
    assert found[("ShoplazzaUploadTaskStale", "task-missing")] == "pending"
    # Healthy tasks and the running exporter raise nothing else.
    assert {name for name, _ in found} <= {
        "ShoplazzaUploadTaskFailedFiles",
        "ShoplazzaUploadTaskStale",
        "ShoplazzaApiErrorRatioHigh",  # pending: beta's 404s are a high share of its requests
    }


def test_container_healthcheck_command_passes(stack: Stack) -> None:
    command = healthcheck_command()
    port = stack.exporter_url.rsplit(":", 1)[1]
    code = command[2].replace("127.0.0.1:9877", f"127.0.0.1:{port}")
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=10, check=False
    )
    assert result.returncode == 0, result.stderr
