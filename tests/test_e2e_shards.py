"""End to end: a fleet of stores sharded over exporter processes, scraped by Prometheus.

One simulator serves 36 stores (each its own token; tasks are told apart by id, so the
stores share the simulator's base_url, and the exporter warns that they share one API
budget). Twelve stores are in the main configuration, the others in store files
(``store_files``; one of them, with several stores, is added while the shards run), with
``{store}`` in the default token file and task id files. Three
exporter processes (``--shard 0..2 --total-shards 3``) run that configuration, each with
its own state file, and Debian's ``prometheus`` scrapes all of them. Every store has a
task completed from the start and one that completes on its second fetch.

Then every task is exported by exactly one process (the one the rendezvous hashing of
its store picks, computed here from the formula, not the exporter's code), exactly once
in Prometheus, and the simulator saw every completed task fetched once and never again.
Going to four shards (the processes restarted with ``--total-shards 4``, the state files
kept), only the stores that moved are fetched again, once per task, by their new owner.
"""

from __future__ import annotations

import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.demo.simulator import SimTask, Simulator
from tests.test_deploy import ALERTS
from tests.test_e2e_prometheus import (
    Process,
    free_port,
    http_get,
    query,
    start,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)

STORES = tuple(f"shop-{index:02d}" for index in range(36))
MAIN_FILE_STORES = STORES[:12]  # in the main configuration; the rest in store files
# Several stores in one store file, added once the shards run; 12..29 one per file.
BATCH_FILE_STORES = STORES[30:]
JOB = "shoplazza-upload-exporter"
STARTUP_DEADLINE = 20.0
DATA_DEADLINE = 30.0
SCRAPES_AFTER = 3  # scrapes of every target waited for before counting fetches


def owner(store: str, total: int) -> int:
    """The shard of a store: rendezvous hashing as docs/sharding.md states it."""
    scores = [
        int.from_bytes(sha256(f"{store}\x00{index}".encode()).digest()[:8], "big")
        for index in range(total)
    ]
    return max(range(total), key=lambda index: (scores[index], -index))


def token(store: str) -> str:
    return f"{store}-token-5ecret-value"


def done_task(store: str) -> str:
    """The id of the store's task that is completed from the start."""
    return f"{store}-done"


def run_task(store: str) -> str:
    """The id of the store's task that completes on its second fetch."""
    return f"{store}-run"


ALL_TASKS = {task: store for store in STORES for task in (done_task(store), run_task(store))}
# Fetches the simulator answers before each kind of task is completed.
FETCHES_TO_COMPLETE = {done_task(s): 1 for s in STORES} | {run_task(s): 2 for s in STORES}


def one_step_a_fetch(task: SimTask, elapsed: float) -> None:
    """Simulator progress: one more file finished per fetch; completed when all are."""
    task.finished = min(task.total, task.finished + 1)
    task.status = 0 if task.finished == task.total else 1


def answers_ready(address: str) -> Callable[[], bool]:
    """A probe: the exporter at address answers /-/ready with 200."""
    return lambda: http_get(f"http://{address}/-/ready")[0] == 200


@dataclass
class Fleet:
    """The simulator, Prometheus and the exporter shards of one test."""

    tmp: Path
    sim: Simulator
    addresses: list[str]
    prometheus_url: str = ""
    prometheus: Process | None = None
    shards: list[Process] = field(default_factory=list)

    def config_file(self, shard: int) -> Path:
        return self.tmp / f"config-{shard}.yaml"

    def state_file(self, shard: int) -> Path:
        return self.tmp / "state" / f"shard-{shard}.json"

    def store_entry(self, store: str) -> dict[str, Any]:
        """A store of the configuration; its running task comes from its task id file."""
        return {"name": store, "base_url": self.sim.url, "task_ids": [done_task(store)]}

    def write_configuration(self) -> None:
        """Token files, task id files, store files, and the main file of each shard.

        The main files differ only in state_file: each shard keeps its own.
        """
        for store in STORES:
            (self.tmp / "tokens").mkdir(exist_ok=True)
            (self.tmp / "tokens" / store).write_text(token(store) + "\n", encoding="utf-8")
            task_dir = self.tmp / "tasks" / store
            task_dir.mkdir(parents=True)
            (task_dir / "ids.txt").write_text(f"# importer\n{run_task(store)}\n", "utf-8")
        stores_dir = self.tmp / "stores.d"
        stores_dir.mkdir()
        for store in STORES[len(MAIN_FILE_STORES) :]:
            if store not in BATCH_FILE_STORES:
                text = yaml.safe_dump({"stores": [self.store_entry(store)]})
                (stores_dir / f"{store}.yaml").write_text(text, encoding="utf-8")
        (self.tmp / "state").mkdir()
        for shard in range(len(self.addresses)):
            config = {
                "store_files": [str(stores_dir / "*.yaml")],
                "defaults": {
                    "access_token_file": str(self.tmp / "tokens" / "{store}"),
                    "task_id_files": [str(self.tmp / "tasks" / "{store}" / "*.txt")],
                    "min_poll_interval": "0s",
                    "timeout": "2s",
                },
                "stores": [self.store_entry(store) for store in MAIN_FILE_STORES],
                "state_file": str(self.state_file(shard)),
            }
            self.config_file(shard).write_text(yaml.safe_dump(config), encoding="utf-8")

    def add_batch_file(self) -> None:
        """A store file with several stores, added while the shards run (no reload)."""
        text = yaml.safe_dump({"stores": [self.store_entry(s) for s in BATCH_FILE_STORES]})
        (self.tmp / "stores.d" / "batch.yaml").write_text(text, encoding="utf-8")

    def start_shards(self, total: int) -> None:
        """Start ``total`` exporter processes, shard i on address i; wait until ready."""
        assert not self.shards
        for shard in range(total):
            args = [sys.executable, "-m", "exporter", f"--config.file={self.config_file(shard)}"]
            args += [f"--web.listen-address={self.addresses[shard]}"]
            args += [f"--shard={shard}", f"--total-shards={total}"]
            log = self.tmp / f"exporter-{shard}-of-{total}.log"
            self.shards.append(start(f"exporter shard {shard}/{total}", args, log))
        for address, process in zip(self.addresses, self.shards, strict=False):
            wait_until(
                answers_ready(address),
                f"{process.name} to be ready",
                STARTUP_DEADLINE,
                [process],
            )

    def stop_shards(self) -> None:
        """SIGTERM every shard (they write their state file) and expect exit status 0."""
        for process in self.shards:
            process.popen.send_signal(signal.SIGTERM)
        for process in self.shards:
            code = process.popen.wait(timeout=10)
            assert code == 0, f"{process.name} exited with {code}\n{process.tail()}"
        self.shards = []

    def alive(self) -> list[Process]:
        return [*self.shards, *([self.prometheus] if self.prometheus else [])]

    def wait_settled(self, total: int, since: float) -> None:
        """Wait until Prometheus holds every task, completed, from ``total`` targets that
        were scraped after ``since`` (Unix time), and then for SCRAPES_AFTER more scrapes of
        each, so that a fetch too many would have happened by now."""
        targets = {self.addresses[shard] for shard in range(total)}

        def last_scrapes() -> dict[str, float] | None:
            found = {
                item["metric"]["instance"]: float(item["value"][1])
                for item in query(self.prometheus_url, f'timestamp(up{{job="{JOB}"}} == 1)')
            }
            if not targets <= set(found) or min(found[t] for t in targets) <= since:
                return None
            return found

        wait_until(last_scrapes, f"{total} targets up and scraped", DATA_DEADLINE, self.alive())

        def all_completed() -> float | None:
            done = query(
                self.prometheus_url,
                "count(count by (store, task_id) (shoplazza_upload_task_completed == 1))",
            )
            if not done or int(float(done[0]["value"][1])) != len(ALL_TASKS):
                return None
            return time.time()

        completed_at = wait_until(
            all_completed, "every task completed in Prometheus", DATA_DEADLINE, self.alive()
        )
        wait_until(
            lambda: (
                (found := last_scrapes()) is not None
                and min(found[t] for t in targets) > completed_at + SCRAPES_AFTER
            ),
            f"{SCRAPES_AFTER} more scrapes of every target",
            DATA_DEADLINE,
            self.alive(),
        )


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    """The simulator with two tasks per store, Prometheus scraping four addresses (the
    fourth is the shard added later, down until then); stopped afterwards."""
    prometheus_bin = shutil.which("prometheus")
    if prometheus_bin is None:
        pytest.skip("prometheus is not installed (scripts/test.sh installs it)")
    sim = Simulator(tokens=[token(store) for store in STORES]).start()
    fleet = Fleet(tmp_path, sim, [f"127.0.0.1:{free_port()}" for _ in range(4)])
    try:
        for store in STORES:
            sim.add_task(done_task(store), 3, finished=3, status=0)
            sim.add_task(run_task(store), 2, finished=0, status=1, progress=one_step_a_fetch)
        fleet.write_configuration()
        prometheus_config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {
                    "job_name": JOB,
                    "scrape_timeout": "1s",
                    "static_configs": [{"targets": fleet.addresses}],
                }
            ],
        }
        prometheus_file = tmp_path / "prometheus.yml"
        prometheus_file.write_text(yaml.safe_dump(prometheus_config), encoding="utf-8")
        address = f"127.0.0.1:{free_port()}"
        fleet.prometheus = start(
            "prometheus",
            [
                prometheus_bin,
                f"--config.file={prometheus_file}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address={address}",
                "--log.level=warn",
            ],
            tmp_path / "prometheus.log",
        )
        fleet.prometheus_url = f"http://{address}"
        wait_until(
            lambda: http_get(f"{fleet.prometheus_url}/-/ready")[0] == 200,
            "Prometheus to be ready",
            STARTUP_DEADLINE,
            [fleet.prometheus],
        )
        yield fleet
    finally:
        for process in fleet.alive():
            if process.popen.poll() is None:
                process.popen.kill()
                process.popen.wait(timeout=10)
        sim.stop()


def assert_each_task_once(fleet: Fleet, total: int) -> None:
    """Prometheus holds every task exactly once, from the process of its store's shard."""
    url = fleet.prometheus_url
    duplicates = query(url, "count by (store, task_id) (shoplazza_upload_task_files) > 1")
    twice = sorted(item["metric"]["task_id"] for item in duplicates)
    assert twice == [], f"{len(twice)} tasks exported by more than one shard: {twice[:6]}"
    (count,) = query(url, "count(shoplazza_upload_task_files)")
    assert int(float(count["value"][1])) == len(ALL_TASKS)
    served = {
        item["metric"]["task_id"]: item["metric"]["instance"]
        for item in query(url, "group by (instance, task_id) (shoplazza_upload_task_files)")
    }
    expected = {task: fleet.addresses[owner(store, total)] for task, store in ALL_TASKS.items()}
    wrong = sorted(
        (task, served.get(task), where)
        for task, where in expected.items()
        if served.get(task) != where
    )
    assert wrong == [], f"{len(wrong)} tasks not on their shard (served, expected): {wrong[:4]}"
    # Store-level series too come from the owner alone (errors_total exists from the start
    # for every store a process serves), and the dashboard's per-store sums hold.
    store_series = query(url, "group by (instance, store) (shoplazza_api_errors_total)")
    owners = sorted((item["metric"]["store"], item["metric"]["instance"]) for item in store_series)
    assert owners == sorted((store, fleet.addresses[owner(store, total)]) for store in STORES)
    watched = {
        item["metric"]["store"]: float(item["value"][1])
        for item in query(url, "sum by (store) (shoplazza_exporter_watched_tasks)")
    }
    assert watched == dict.fromkeys(STORES, 2.0)
    assert_shard_alerts(fleet, total)


def assert_shard_alerts(fleet: Fleet, total: int) -> None:
    """The shard alerts' expressions (deploy/prometheus/alerts.yml) on the real shards:
    quiet with every shard up, and naming the count when one is out of sight (the
    exporter's total_shards label and count_values write numbers alike)."""
    rules = {
        rule["alert"]: rule["expr"]
        for group in yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]
        for rule in group["rules"]
    }
    missing = rules["ShoplazzaExporterShardsMissing"]
    assert query(fleet.prometheus_url, missing) == []
    assert query(fleet.prometheus_url, rules["ShoplazzaExporterShardingMismatch"]) == []
    selector = 'job=~"shoplazza-upload-exporter.*"'
    assert selector in missing
    hidden = missing.replace(selector, f'{selector}, instance!="{fleet.addresses[0]}"')
    (found,) = query(fleet.prometheus_url, hidden)
    assert found["metric"]["job"] == JOB
    assert found["metric"]["total_shards"] == str(total)
    assert found["metric"]["running_shards"] == str(total - 1)


def fetches(sim: Simulator) -> dict[str, int]:
    """Requests per task id the simulator saw since its records were last reset, all 200
    and each with its own store's token."""
    seen: dict[str, int] = {}
    for request in sim.requests:
        assert request.task_id in ALL_TASKS, request
        store = ALL_TASKS[request.task_id]
        assert request.token == token(store), f"{request.task_id}: not {store}'s token"
        assert request.status == 200, request
        seen[request.task_id] = seen.get(request.task_id, 0) + 1
    return seen


def test_shards_share_the_fleet_and_resharding_moves_only_the_moved_stores(
    fleet: Fleet,
) -> None:
    # Three shards: every task once, fetched until completed and never after.
    started = time.time()
    fleet.start_shards(3)
    fleet.add_batch_file()  # each shard takes its own stores of it, and only those
    fleet.wait_settled(3, started)
    assert_each_task_once(fleet, 3)
    assert fetches(fleet.sim) == FETCHES_TO_COMPLETE

    # Four shards: the same configuration and state files, --total-shards 4.
    fleet.stop_shards()
    for shard in range(3):
        assert fleet.state_file(shard).is_file(), f"shard {shard} wrote no state file"
    moved = {store for store in STORES if owner(store, 3) != owner(store, 4)}
    assert 0 < len(moved) < len(STORES) / 2
    assert {owner(store, 4) for store in moved} == {3}  # rendezvous: only to the new shard
    fleet.sim.reset_records()
    restarted = time.time()
    fleet.start_shards(4)
    fleet.wait_settled(4, restarted)
    assert_each_task_once(fleet, 4)
    # The stores that stayed are served from their shard's state file; the moved ones
    # are new to their owner, which fetches each of their tasks once (they are completed).
    expected = {task: 1 for task, store in ALL_TASKS.items() if store in moved}
    assert fetches(fleet.sim) == expected
