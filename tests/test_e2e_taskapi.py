"""End to end: tasks registered through the task API, scraped by a real Prometheus.

The simulator runs in process; the exporter (``--web.enable-task-api``, with a state file)
runs as a subprocess, Debian's ``prometheus`` scrapes it every second, and importers are
``shoplazza-upload-task`` subprocesses (docs/task-api.md). One Prometheus per scenario:

- one exporter: registered tasks appear in Prometheus with their labels on
  ``shoplazza_upload_task_info``; a task removed through the API disappears; after a
  restart the registered tasks are there again, and the simulator sees no completed task
  fetched again;
- three shards: registrations through the ``{shard}`` URL end on the owner of each store
  (also when the client believes in two shards and follows the 421), and each task is
  exactly once in Prometheus, from its owner.
"""

from __future__ import annotations

import shutil
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from exporter.demo.simulator import Simulator
from tests.test_e2e_prometheus import Process, free_port, http_get, query, start, wait_until
from tests.test_e2e_shards import one_step_a_fetch, owner
from tests.test_taskclient import consecutive_ports, run

pytestmark = pytest.mark.timeout(120)

TOKEN = "sim-token-of-the-task-api-e2e"
JOB = "shoplazza-upload-exporter"
STARTUP_DEADLINE = 20.0
DATA_DEADLINE = 30.0
SCRAPES_AFTER = 3  # scrapes waited for after a change, so a fetch too many would show


@dataclass
class Bench:
    """The simulator, one Prometheus, and the exporters it scrapes (address -> process)."""

    tmp: Path
    sim: Simulator
    prometheus_url: str = ""
    processes: list[Process] = field(default_factory=list)

    def alive(self) -> list[Process]:
        return [p for p in self.processes if p.popen.poll() is None]

    def config(self, name: str, stores: dict[str, list[str]]) -> Path:
        """A configuration of these stores (name -> configured ids) with its state file."""
        token = self.tmp / "token"
        token.write_text(TOKEN + "\n", encoding="utf-8")
        config = {
            "state_file": str(self.tmp / f"{name}.state.json"),
            "defaults": {
                "access_token_file": str(token),
                "min_poll_interval": "0s",
                "timeout": "2s",
            },
            "stores": [
                {"name": store, "base_url": self.sim.url, "task_ids": ids}
                for store, ids in stores.items()
            ],
        }
        path = self.tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        return path

    def exporter(self, config: Path, address: str, *flags: str) -> Process:
        """Start an exporter with the task API on at ``address``; wait until ready."""
        args = [sys.executable, "-m", "exporter", f"--config.file={config}"]
        args += [f"--web.listen-address={address}", "--web.enable-task-api", *flags]
        log = self.tmp / f"exporter-{address.rsplit(':', 1)[1]}-{len(self.processes)}.log"
        process = start(f"exporter at {address}", args, log)
        self.processes.append(process)
        wait_until(
            lambda: http_get(f"http://{address}/-/ready")[0] == 200,
            f"{process.name} to be ready",
            STARTUP_DEADLINE,
            [process],
        )
        return process

    def scraped_after(self, targets: list[str], since: float, scrapes: int = 1) -> None:
        """Wait until Prometheus scraped every target ``scrapes`` seconds after ``since``
        (Unix time; it scrapes each second). timestamp() of the selector itself: of an
        expression (``up == 1``) it would be the evaluation time."""

        def done() -> bool:
            found = {
                item["metric"]["instance"]: float(item["value"][1])
                for item in query(self.prometheus_url, f'timestamp(up{{job="{JOB}"}})')
            }
            return set(targets) <= set(found) and all(
                found[t] > since + scrapes - 1 for t in targets
            )

        wait_until(done, f"{targets} scraped after {since:.1f}", DATA_DEADLINE, self.alive())

    def series(self, expr: str) -> dict[str, dict[str, str]]:
        """task_id -> labels of each series ``expr`` gives now."""
        return {
            item["metric"]["task_id"]: item["metric"] for item in query(self.prometheus_url, expr)
        }


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    """The simulator and a Prometheus scraping the addresses the test sets (every
    second); everything stopped afterwards."""
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus is not installed (scripts/test.sh installs it)")
    sim = Simulator(tokens=(TOKEN,)).start()
    bench = Bench(tmp_path, sim)
    try:
        yield bench
    finally:
        for process in bench.processes:
            if process.popen.poll() is None:
                process.popen.kill()
                process.popen.wait(timeout=10)
        sim.stop()


def start_prometheus(bench: Bench, targets: list[str]) -> None:
    prometheus_config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": JOB, "scrape_timeout": "1s", "static_configs": [{"targets": targets}]}
        ],
    }
    path = bench.tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(prometheus_config), encoding="utf-8")
    address = f"127.0.0.1:{free_port()}"
    binary = shutil.which("prometheus")
    assert binary is not None
    process = start(
        "prometheus",
        [
            binary,
            f"--config.file={path}",
            f"--storage.tsdb.path={bench.tmp / 'tsdb'}",
            f"--web.listen-address={address}",
            "--log.level=warn",
        ],
        bench.tmp / "prometheus.log",
    )
    bench.processes.append(process)
    bench.prometheus_url = f"http://{address}"
    wait_until(
        lambda: http_get(f"{bench.prometheus_url}/-/ready")[0] == 200,
        "Prometheus to be ready",
        STARTUP_DEADLINE,
        [process],
    )


def client(*args: str) -> None:
    """Run ``shoplazza-upload-task``; it must succeed."""
    done = run(*args)
    assert done.returncode == 0, f"shoplazza-upload-task {' '.join(args)}: {done.stderr}"


def test_registered_tasks_in_prometheus_removed_and_kept_across_a_restart(bench: Bench) -> None:
    sim = bench.sim
    sim.add_task("conf-1", 2, finished=2, status=0)
    sim.add_task("reg-done", 3, finished=3, status=0)  # completed on its first fetch
    sim.add_task("reg-run", 2, finished=0, status=1, progress=one_step_a_fetch)  # on its second
    sim.add_task("reg-gone", 5, finished=1, status=1)  # in progress; removed through the API
    config = bench.config("one", {"acme": ["conf-1"]})
    address = f"127.0.0.1:{free_port()}"
    start_prometheus(bench, [address])
    exporter = bench.exporter(config, address)
    url = ["--url", f"http://{address}"]
    client(*url, "add", "acme", "reg-done", "reg-run", "--label", "importer=nightly")
    client(*url, "add", "acme", "reg-gone", "--label", "importer=adhoc", "--label", "batch=7")

    # (a) in Prometheus with their labels, next to the configured task
    def all_completed_and_labelled() -> dict[str, dict[str, str]] | None:
        info = bench.series('shoplazza_upload_task_info{store="acme"}')
        done = bench.series('shoplazza_upload_task_completed{store="acme"} == 1')
        if set(info) != {"conf-1", "reg-done", "reg-run", "reg-gone"}:
            return None
        return info if {"conf-1", "reg-done", "reg-run"} <= set(done) else None

    info = wait_until(
        all_completed_and_labelled, "the registered tasks in Prometheus", DATA_DEADLINE, [exporter]
    )
    assert info["reg-done"]["importer"] == info["reg-run"]["importer"] == "nightly"
    assert (info["reg-gone"]["importer"], info["reg-gone"]["batch"]) == ("adhoc", "7")
    assert "importer" not in info["conf-1"]
    (registered,) = query(bench.prometheus_url, 'shoplazza_exporter_registered_tasks{store="acme"}')
    assert registered["value"][1] == "3"

    # (b) removed through the API: gone from Prometheus at the next scrapes
    client(*url, "remove", "acme", "reg-gone")
    removed_at = time.time()
    bench.scraped_after([address], removed_at)
    assert "reg-gone" not in bench.series('shoplazza_upload_task_files{store="acme"}')
    assert "reg-gone" not in bench.series('shoplazza_upload_task_info{store="acme"}')
    assert set(bench.series('shoplazza_upload_task_files{store="acme"}')) == {
        "conf-1",
        "reg-done",
        "reg-run",
    }

    # (c) a restart (SIGTERM, the same state file and address): the registered tasks are
    # back in Prometheus, completed, with their labels; none is fetched again.
    assert {sim.count(t) for t in ("conf-1", "reg-done")} == {1} and sim.count("reg-run") == 2
    exporter.popen.send_signal(signal.SIGTERM)
    assert exporter.popen.wait(timeout=10) == 0, exporter.tail()
    sim.reset_records()
    restarted_at = time.time()
    again = bench.exporter(config, address)
    bench.scraped_after([address], restarted_at, SCRAPES_AFTER)
    info = bench.series('shoplazza_upload_task_info{store="acme"}')
    assert set(info) == {"conf-1", "reg-done", "reg-run"}
    assert info["reg-done"]["importer"] == "nightly"
    done = bench.series('shoplazza_upload_task_completed{store="acme"} == 1')
    assert set(done) == {"conf-1", "reg-done", "reg-run"}
    fetched = [request.task_id for request in sim.requests]
    assert fetched == [], f"completed tasks fetched again after the restart: {fetched}"
    again.check_alive()


# Three stores of each shard (by the formula of docs/sharding.md), so that every shard
# serves some and a client that believes in two shards asks the wrong one for some.
_NAMES = [f"shop-{index:02d}" for index in range(36)]
STORES = tuple(s for shard in range(3) for s in [n for n in _NAMES if owner(n, 3) == shard][:3])


def test_three_shards_a_registration_ends_on_the_owner_and_each_task_is_once(
    bench: Bench,
) -> None:
    sim = bench.sim
    base = consecutive_ports()  # ports base..base+2, base ending in 0: the {shard} digit
    addresses = [f"127.0.0.1:{base + shard}" for shard in range(3)]
    template = f"http://127.0.0.1:{base // 10}{{shard}}"
    for store in STORES:
        sim.add_task(f"{store}-a", 2, finished=2, status=0)
        sim.add_task(f"{store}-b", 2, finished=0, status=1, progress=one_step_a_fetch)
    start_prometheus(bench, addresses)
    stores: dict[str, list[str]] = {store: [] for store in STORES}
    for shard, address in enumerate(addresses):
        config = bench.config(f"shard-{shard}", stores)
        bench.exporter(config, address, f"--shard={shard}", "--total-shards=3")
    for store in STORES:
        client("--url", template, "--total-shards", "3", "add", store, f"{store}-a")
    # A client that believes in two shards asks the wrong one for some stores: the 421
    # names the owner and the client follows it once.
    moved = [store for store in STORES if owner(store, 2) != owner(store, 3)]
    assert moved, "no store whose owner differs between 2 and 3 shards"
    for store in STORES:
        client("--url", template, "--total-shards", "2", "add", store, f"{store}-b")
    expected = {f"{s}-{x}": addresses[owner(s, 3)] for s in STORES for x in "ab"}

    def everything_completed() -> bool:
        done = query(bench.prometheus_url, "count(shoplazza_upload_task_completed == 1)")
        return bool(done) and int(float(done[0]["value"][1])) == len(expected)

    wait_until(everything_completed, "every task completed", DATA_DEADLINE, bench.alive())
    bench.scraped_after(addresses, time.time(), SCRAPES_AFTER)
    duplicates = query(bench.prometheus_url, "count by (task_id) (shoplazza_upload_task_files) > 1")
    assert duplicates == [], f"tasks exported by more than one shard: {duplicates}"
    served = {
        item["metric"]["task_id"]: item["metric"]["instance"]
        for item in query(
            bench.prometheus_url, "group by (instance, task_id) (shoplazza_upload_task_files)"
        )
    }
    assert served == expected
    registered = {
        item["metric"]["instance"]: float(item["value"][1])
        for item in query(
            bench.prometheus_url, "sum by (instance) (shoplazza_exporter_registered_tasks)"
        )
    }
    per_shard = {address: 0.0 for address in addresses}
    for address in expected.values():
        per_shard[address] += 1
    assert registered == per_shard
    # Each task fetched until completed and no more, by its owner alone.
    counts = {task: sim.count(task) for task in expected}
    assert counts == {task: 1 if task.endswith("-a") else 2 for task in expected}
