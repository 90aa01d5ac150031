"""End to end: simulator -> exporter -> Prometheus -> dashboard queries and alert rules.

Starts the Shoplazza API simulator in process, the real exporter as a subprocess pointed
at it, and Debian's ``prometheus`` scraping the exporter every second with
deploy/prometheus/alerts.yml loaded. Then every query of the Grafana dashboard must
return data through Prometheus' HTTP API, every alert rule must evaluate healthy, and the
dashboard's state, data-age, stale and stuck queries must name exactly the right tasks,
with a task in each state. Tasks that look 20 minutes old (stuck, stale, completed long
ago, forgotten) come from a state file written before the exporter starts: the exporter
keeps their last progress and last success times, as it does across restarts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
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

from tests.test_deploy import (
    ALERTS,
    NEW_TASK_METRICS,
    REPO,
    concrete,
    dashboard_queries,
    healthcheck_command,
)

pytestmark = pytest.mark.timeout(90)

T = TypeVar("T")

TOKEN = "sim-token-of-the-e2e-test"
# One task per state (README, "Task states"):
ACME_TASKS = (
    "task-done",  # completed 20 minutes ago (state file), never polled again
    "task-running",  # in progress, one file finished every 2 seconds
    "task-failing",  # completed with 2 failed files
    "task-stuck",  # in progress, no progress for 20 minutes (state file), polls fine
    "task-broken",  # answered 20 minutes ago (state file), every poll fails since: 500
    "task-seven",  # status 7
    "task-forgotten",  # completed 2 hours ago (state file): forgotten after 1 hour
)
FORGOTTEN = "task-forgotten"
BETA_TASKS = ("task-beta", "task-missing")  # task-missing is unknown to the simulator: 404
OLD = 20 * 60  # seconds: older than the stuck (15 min) and stale (10 min) thresholds
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


def _one_file_every(seconds: float) -> Callable[[Any, float], None]:
    def progress(task: Any, elapsed: float) -> None:
        task.finished = min(task.total, int(elapsed / seconds))

    return progress


def _old_state(when: float) -> str:
    """A state file in which three acme tasks were last seen ``when`` (Unix time)."""
    from exporter.model import TaskRecord, TaskSnapshot
    from exporter.polling.statefile import dump_state

    def seen(task_id: str, snapshot: TaskSnapshot) -> TaskRecord:
        done = when if snapshot.completed else None
        return TaskRecord(
            "acme",
            task_id,
            snapshot=snapshot,
            poll_success=True,
            last_code="200",
            last_success=when,
            last_progress=when,
            completed_at=done,
        )

    tasks = [
        seen("task-done", TaskSnapshot(total=3, finished=3, status=0, succeeded=3, failed=0)),
        seen("task-stuck", TaskSnapshot(total=10, finished=4, status=1, succeeded=4, failed=0)),
        seen("task-broken", TaskSnapshot(total=10, finished=2, status=1, succeeded=2, failed=0)),
        seen(FORGOTTEN, TaskSnapshot(total=5, finished=5, status=0, succeeded=3, failed=2)),
    ]
    old = when - 6000
    tasks[-1] = dataclasses.replace(
        tasks[-1], completed_at=old, last_success=old, last_progress=old
    )
    return dump_state(tasks, {})


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
        sim.add_task("task-running", 1000, finished=0, status=1, progress=_one_file_every(2.0))
        sim.add_task("task-stuck", 10, finished=4, status=1)
        sim.add_task("task-broken", 10, finished=2, status=1)
        sim.behave("task-broken", simulator_module.Reply(status=500))
        sim.add_task("task-seven", 5, finished=5, status=7)
        sim.add_task(FORGOTTEN, 5, finished=5, status=0)
        state_file = tmp / "state.json"
        state_file.write_text(_old_state(time.time() - OLD), encoding="utf-8")

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
            "state_file": str(state_file),
            "forget_completed_after": "1h",
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
            watched = {*ACME_TASKS, *BETA_TASKS} - {FORGOTTEN}
            return {item["metric"]["task_id"] for item in series} == watched

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


def exported_families(stack: Stack) -> set[str]:
    """The metric families the running exporter exports."""
    status, body = http_get(f"{stack.exporter_url}/metrics")
    assert status == 200
    return {line.split()[2] for line in body.decode().splitlines() if line.startswith("# TYPE ")}


def test_dashboard_queries_return_data(stack: Stack) -> None:
    # Families of the amended metrics table that this exporter may not export yet; every
    # query that needs none of them must answer, and once exported, all of them must.
    exported = exported_families(stack)
    missing = NEW_TASK_METRICS - exported
    queries = sorted(
        concrete(expr)
        for expr in set(dashboard_queries())
        if not any(name in expr for name in missing)
    )
    assert len(queries) >= len(set(dashboard_queries())) - 1
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


def panel_expr(title: str, ref: str = "A") -> str:
    """A dashboard panel's query, concrete; a stat's ``count(X) or vector(0)`` gives X."""
    from tests.test_deploy import panel

    (expr,) = [t["expr"] for t in panel(title)["targets"] if t["refId"] == ref]
    inner = re.fullmatch(r"count\((.*)\) or vector\(0\)", expr)
    return concrete(inner.group(1) if inner else expr)


def tasks_of(stack: Stack, expr: str) -> dict[str, float]:
    """task_id -> value of an instant query's result."""
    return {
        item["metric"]["task_id"]: float(item["value"][1])
        for item in query(stack.prometheus_url, expr)
    }


# Dashboard "State" codes (deploy/grafana/upload-tasks.json, the Tasks table's mappings).
EXPECTED_STATES = {
    "task-done": 3,  # completed
    "task-running": 1,  # in progress
    "task-failing": 4,  # completed with failures
    "task-stuck": 2,  # stuck
    "task-broken": 5,  # failing polls
    "task-seven": 6,  # unknown status
    "task-beta": 1,  # in progress
    "task-missing": 5,  # failing polls (never answered)
}


def test_dashboard_state_age_stale_and_stuck_queries_per_task(stack: Stack) -> None:
    """With a task in each state, each query names exactly the tasks it should."""
    state = panel_expr("Tasks", "S")
    age = panel_expr("Data age")
    stale = panel_expr("Stale data")
    stuck = panel_expr("Stuck")

    def settled() -> bool:
        return (
            tasks_of(stack, state) == EXPECTED_STATES
            and set(tasks_of(stack, stuck)) == {"task-stuck"}
            and set(tasks_of(stack, stale)) == {"task-broken"}
        )

    try:
        wait_until(settled, "the dashboard's state queries to settle", DATA_DEADLINE, [])
    except pytest.fail.Exception:
        pytest.fail(
            f"state {tasks_of(stack, state)}, stuck {tasks_of(stack, stuck)}, "
            f"stale {tasks_of(stack, stale)}"
        )
    # The forgotten task has no series left, so no query or alert can name it.
    everything = f'shoplazza_upload_task_poll_success{{task_id="{FORGOTTEN}"}}'
    assert query(stack.prometheus_url, everything) == []
    ages = tasks_of(stack, age)
    # Completed tasks are left out, however old their data (task-done: 20 minutes).
    assert set(ages) == {"task-running", "task-stuck", "task-broken", "task-seven", "task-beta"}
    assert ages["task-broken"] >= OLD
    assert ages["task-running"] < 60
    assert set(tasks_of(stack, panel_expr("Tasks", "T"))) <= {"task-running", "task-beta"}


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
    assert set(tasks) == set(ACME_TASKS) - {FORGOTTEN}


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
    wanted = {
        ("ShoplazzaUploadTaskFailedFiles", "task-failing"): "pending",  # for: 5m
        ("ShoplazzaUploadTaskStuck", "task-stuck"): "firing",
        ("ShoplazzaUploadTaskStale", "task-broken"): "pending",  # for: 10m
        ("ShoplazzaUploadTaskStale", "task-missing"): "pending",
        ("ShoplazzaUploadTaskUnknownStatus", "task-seven"): "pending",  # for: 10m
    }

    def active() -> dict[tuple[str, str], str] | None:
        alerts = api(stack.prometheus_url, "/api/v1/alerts")["alerts"]
        found = {
            (alert["labels"]["alertname"], alert["labels"].get("task_id", "")): alert["state"]
            for alert in alerts
        }
        return found if set(wanted) <= set(found) else None

    found = wait_until(active, "the task alerts to become active", DATA_DEADLINE, [])
    assert {key: found[key] for key in wanted} == wanted
    # Nothing else about tasks: not the completed one with old data, not the running ones.
    task_alerts = {key for key in found if key[0].startswith("ShoplazzaUploadTask")}
    assert task_alerts == set(wanted)
    assert {name for name, _ in found} - {name for name, _ in wanted} <= {
        "ShoplazzaApiErrorRatioHigh",  # pending: the 404s and 500s are a high share of requests
    }


def test_container_healthcheck_command_passes(stack: Stack) -> None:
    command = healthcheck_command()
    port = stack.exporter_url.rsplit(":", 1)[1]
    code = command[2].replace("127.0.0.1:9877", f"127.0.0.1:{port}")
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=10, check=False
    )
    assert result.returncode == 0, result.stderr


def test_readme_queries_name_the_right_tasks(stack: Stack) -> None:
    """The README's stuck, stale and unknown-status queries, with a task in each state."""
    from tests.test_readme import promql_examples

    exprs = promql_examples()
    (stuck,) = [e for e in exprs if "last_progress_timestamp_seconds" in e]
    (stale,) = [e for e in exprs if "last_success_timestamp_seconds" in e]
    (unknown,) = [e for e in exprs if e == "shoplazza_upload_task_status > 1"]
    (failing,) = [e for e in exprs if e == "shoplazza_upload_task_poll_success == 0"]
    expected = {
        stuck: {"task-stuck"},
        stale: {"task-broken"},
        unknown: {"task-seven"},
        failing: {"task-broken", "task-missing"},
    }

    def found() -> dict[str, set[str]]:
        return {expr: set(tasks_of(stack, expr)) for expr in expected}

    try:
        wait_until(lambda: found() == expected, "the README's queries", DATA_DEADLINE, [])
    except pytest.fail.Exception:
        pytest.fail(f"README queries gave {found()}")
