"""The bounded pool, the timer heap and the pure read path of the poller (docs/design.md)."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from exporter.clock import ScaledClock
from exporter.config import Config, load_config
from exporter.demo.simulator import Reply, Simulator
from exporter.polling.poller import Poller
from exporter.web.routes import App
from tests.helpers import (
    TOKEN,
    TOKEN_ENV,
    FakeClock,
    config_yaml,
    make_exporter,
    sample,
    scheduler_quiet,
    scrape,
    store_yaml,
    wait_until,
    write,
)
from tests.polling.test_poller import scaled_store


def _load(path: str) -> Config:
    return load_config(path, {TOKEN_ENV: TOKEN})


def _own_threads() -> set[threading.Thread]:
    """Threads of this process except the simulator's (one per connection it serves)."""
    return {
        t
        for t in threading.enumerate()
        if "process_request_thread" not in t.name and not t.name.startswith("shoplazza-simulator")
    }


def test_threads_do_not_grow_with_stores(sim: Simulator, tmp_path: Path) -> None:
    """300 stores x 2 tasks on a pool of 8 workers: 11 threads, not 300."""
    stores = [f"s{i:03d}" for i in range(300)]
    for name in stores:
        sim.add_task(f"{name}-a", total=3, finished=1)
        sim.add_task(f"{name}-b", total=3, finished=3, status=0)
    sim.latency = 0.01
    text = "stores:\n" + "".join(
        store_yaml(name, sim.url, [f"{name}-a", f"{name}-b"], min_poll_interval="1m")
        for name in stores
    )
    before = _own_threads()
    poller = Poller(workers=8)
    poller.apply_config(_load(write(tmp_path / "c.yaml", text)))
    poller.refresh(30)
    assert sim.count() == 600
    # the workers, the scheduler, the task file reader and the transport's one watchdog of
    # request deadlines
    started = {t for t in _own_threads() - before if not isinstance(t, threading.Timer)}
    assert len(started) <= 8 + 3
    assert len(poller.scheduler.workers) == 8
    poller.stop()


def test_a_store_waiting_for_budget_is_woken_by_its_timer(tmp_path: Path) -> None:
    """Background work of a store whose bucket is empty resumes without any scrape."""
    keys = {"min_poll_interval": "1h", "requests_per_second": 1, "burst": 1}
    with scaled_store(tmp_path, 20, 6, **keys) as (clock, sim, exporter):
        exporter.poller.refresh(0.5)
        assert sim.wait_for(lambda s: s.count() == 6, timeout=5)
        starts = sorted(r.at for r in sim.requests)
        assert (starts[-1] - starts[0]) * clock.speed >= 5 * 0.9  # one a second, not a burst


def test_a_429_that_arrives_while_the_store_waits_for_a_worker_holds_its_next_request(
    sim: Simulator, tmp_path: Path
) -> None:
    """One worker, three stores: x's first request gets a 429 while x waits on the ready
    queue for its second; the worker takes x off the queue and must start nothing."""
    for task_id in ("x1", "x2", "b1", "c1"):
        sim.add_task(task_id, total=3, finished=1)
    sim.script("x1", Reply(status=429, headers={"Retry-After": "60"}))
    clock = FakeClock()
    text = "stores:\n" + "".join(
        store_yaml(name, sim.url, ids, min_poll_interval="1h")
        for name, ids in (("x", ["x1", "x2"]), ("b", ["b1"]), ("c", ["c1"]))
    )
    poller = Poller(clock=clock, workers=1, housekeeping_every=1e9)
    try:
        poller.apply_config(_load(write(tmp_path / "c.yaml", text)))
        # The worker takes x1 and puts x back on the ready queue behind b and c; x1's 429
        # comes back while x waits there.
        poller.refresh(5)
        assert [r.task_id for r in sim.requests][:1] == ["x1"]
        wait_until(lambda: sim.count("b1") == 1 and sim.count("c1") == 1)  # x was taken off
        wait_until(lambda: scheduler_quiet(poller))  # ... and whatever it started has ended
        assert sim.count("x2") == 0
        assert poller.stores["x"].bucket.paused(clock.monotonic())
        clock.advance(59)
        wait_until(lambda: scheduler_quiet(poller))
        assert sim.count("x2") == 0
        clock.advance(1.5)  # the pause is over: the store's timer starts x2
        wait_until(lambda: sim.count("x2") == 1)
    finally:
        poller.stop()


def test_a_reload_that_lowers_the_budget_while_the_store_waits_holds(tmp_path: Path) -> None:
    """The only worker is held by store b while x waits on the ready queue with 10 tokens;
    a reload lowers x to burst 1 and 1 request/s: from then on x starts at most 1 + t
    requests in t seconds."""
    with Simulator(tokens=(TOKEN,)) as sim, Simulator(tokens=(TOKEN,)) as held:
        ids = [f"x{i}" for i in range(6)]
        for task_id in ids:
            sim.add_task(task_id, total=3, finished=1)
        held.add_task("b1", total=3, finished=1)
        held.behave("b1", Reply(latency=60))  # holds the worker until ``held`` stops

        def config(rate: float, burst: int) -> Config:
            text = "stores:\n" + store_yaml("b", held.url, ["b1"]) + store_yaml(
                "x", sim.url, ids, min_poll_interval="1h", requests_per_second=rate,
                burst=burst, max_concurrency=10,
            )  # fmt: skip
            return _load(write(tmp_path / "c.yaml", text))

        def started(n: int) -> Callable[[], bool]:
            return lambda: sim.count() >= n

        clock = FakeClock()
        poller = Poller(clock=clock, workers=1, housekeeping_every=1e9)
        try:
            poller.apply_config(config(10, 10))
            poller.refresh(0)  # queues b1 and x's six, waits for none
            assert held.wait_for(lambda s: s.in_flight == 1)  # the worker is held by b1
            assert sim.count() == 0  # x is on the ready queue
            poller.apply_config(config(1, 1))
            held.stop()  # b1 fails at once: the worker takes x off the ready queue
            for step in range(13):  # t = 0, 0.5, ... 6 s after the reload
                allowed = min(1 + step // 2, 6)  # burst + rate x t, whole requests
                wait_until(started(allowed))
                wait_until(lambda: scheduler_quiet(poller))
                assert sim.count() == allowed  # never more
                clock.advance(0.5)
        finally:
            poller.stop()


def test_view_reads_memory_only_discovery_happens_in_refresh(
    sim: Simulator, tmp_path: Path
) -> None:
    sim.add_task("a", total=3, finished=1)
    sim.add_task("b", total=3, finished=1)
    ids = tmp_path / "ids.txt"
    ids.write_text("a\n", encoding="utf-8")
    clock = FakeClock()
    text = config_yaml(sim.url, [], task_id_files=f"['{ids}']")
    poller = Poller(clock=clock, housekeeping_every=1e9)  # no timer: only refresh discovers
    poller.apply_config(_load(write(tmp_path / "c.yaml", text)))
    ids.write_text("a\nb\n", encoding="utf-8")
    clock.advance(5)
    for _ in range(3):
        assert [t.task_id for t in poller.views()[0].tasks] == ["a"]
    poller.refresh(5)
    assert [t.task_id for t in poller.views()[0].tasks] == ["a", "b"]
    poller.stop()


def test_housekeeping_timer_discovers_and_forgets_without_scrapes(
    sim: Simulator, tmp_path: Path
) -> None:
    sim.add_task("done", total=1, finished=1, status=0)
    ids = tmp_path / "ids.txt"
    ids.write_text("done\n", encoding="utf-8")
    text = config_yaml(sim.url, [], task_id_files=f"['{ids}']", top="forget_completed_after: 2s\n")
    poller = Poller(clock=ScaledClock(speed=2))
    poller.apply_config(_load(write(tmp_path / "c.yaml", text)))
    poller.refresh(5)
    assert poller.views()[0].tasks[0].completed
    ids.write_text("done\nnew\n", encoding="utf-8")
    wait_until(lambda: [t.task_id for t in poller.views()[0].tasks] == ["new"], timeout=10)
    assert poller.forgotten.keys() == {("shop", "done")}
    poller.stop()


def test_view_hands_out_cached_records_and_new_views_follow_changes(
    sim: Simulator, tmp_path: Path
) -> None:
    sim.add_task("t1", total=4, finished=1)
    sim.add_task("t2", total=4, finished=1)
    clock = FakeClock()
    text = (
        "stores:\n"
        + store_yaml("a", sim.url, ["t1"], min_poll_interval="10s", requests_per_second=1, burst=1)
        + store_yaml("b", sim.url, ["t2"], min_poll_interval="10s")
    )
    path = tmp_path / "c.yaml"
    exporter = make_exporter(write(path, text), clock=clock)
    poller = exporter.poller
    poller.refresh(5)
    first = poller.views()
    again = poller.views()
    assert all(x is y for x, y in zip(first, again, strict=True))  # nothing changed: no copy

    sim.task("t1").finished = 2
    clock.advance(10)
    poller.refresh(5)  # store a: new data; store b: same data, a new success time
    second = poller.views()
    assert second[0] is not first[0]  # changed: a new view
    assert second[0].tasks[0].snapshot is not None and second[0].tasks[0].snapshot.finished == 2
    assert first[0].tasks[0].snapshot is not None and first[0].tasks[0].snapshot.finished == 1

    clock.advance(0.5)
    poller.refresh(5)  # nothing due: nothing changes
    third = poller.views()
    assert all(x is y for x, y in zip(second, third, strict=True))

    sim.script("t1", Reply(status=429, headers={"Retry-After": "60"}))
    clock.advance(10)
    poller.refresh(5)  # a's request: 429, counters change
    fourth = poller.views()
    assert fourth[0] is not third[0]  # changed: a new view
    assert dict(fourth[0].errors)["429"] == 1
    clock.advance(10)
    poller.refresh(5)  # a paused: a skip count changes, nothing else
    fifth = poller.views()
    assert fifth[0] is not fourth[0]  # changed: a new view
    assert dict(fifth[0].skipped)["backoff"] == 1

    write(path, text.replace("[t2]", "[t2, t3]"))  # b gets a task
    exporter.reload()
    sixth = poller.views()
    assert sixth[1] is not fifth[1]  # changed: a new view
    assert [t.task_id for t in sixth[1].tasks] == ["t2", "t3"]
    exporter.close()


def test_labels_and_stuck_after_come_from_the_store_config(sim: Simulator, tmp_path: Path) -> None:
    sim.add_task("t1", total=4, finished=1)
    base = _load(write(tmp_path / "c.yaml", config_yaml(sim.url, ["t1", "t2"])))
    labelled = dataclasses.replace(
        base.stores[0], stuck_after=60.0, task_labels=(("t1", (("source", "a.csv"),)),)
    )
    poller = Poller(clock=FakeClock())
    poller.apply_config(dataclasses.replace(base, stores=(labelled,)))
    view = poller.views()[0]
    assert view.stuck_after == 60.0
    assert {t.task_id: t.labels for t in view.tasks} == {"t1": (("source", "a.csv"),), "t2": ()}
    relabelled = dataclasses.replace(labelled, task_labels=(("t1", (("source", "b.csv"),)),))
    poller.apply_config(dataclasses.replace(base, stores=(relabelled,)))
    again = poller.views()[0]
    assert again is not view  # changed: a new view
    assert again.tasks[0].labels == (("source", "b.csv"),)
    poller.stop()


def test_close_stops_the_poller_once(sim: Simulator, tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", config_yaml(sim.url, ["t1"]))
    exporter = make_exporter(path)
    stops: list[int] = []
    real_stop = exporter.poller.scheduler.stop

    def counted_stop() -> None:
        stops.append(1)
        real_stop()

    exporter.poller.scheduler.stop = counted_stop  # type: ignore[method-assign]
    exporter.poller.stop()  # what the command line does on SIGTERM
    exporter.close()
    exporter.close()
    assert stops == [1]


def test_labels_of_task_file_lines_reach_the_task(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``TaskFiles.labels`` (labels after an id in a task file), under configured ones."""
    import exporter.polling.poller as poller_module
    from exporter.config.watch import TaskFiles

    class LabelledFiles(TaskFiles):  # the labels a task file line carries, as discovery keeps them
        def refresh(self, force: bool = False) -> bool:
            changed = super().refresh(force)
            self.labels = {i: (("source", f"{i}.csv"), ("importer", "nightly")) for i in self.ids}
            return changed

    monkeypatch.setattr(poller_module, "TaskFiles", LabelledFiles)
    ids = tmp_path / "ids.txt"
    ids.write_text("a\nb\n", encoding="utf-8")
    base = _load(write(tmp_path / "c.yaml", config_yaml(sim.url, [], task_id_files=f"['{ids}']")))
    store = dataclasses.replace(base.stores[0], task_labels=(("b", (("source", "manual"),)),))
    poller = Poller(clock=FakeClock())
    poller.apply_config(dataclasses.replace(base, stores=(store,)))
    labels = {t.task_id: dict(t.labels) for t in poller.views()[0].tasks}
    assert labels == {
        "a": {"source": "a.csv", "importer": "nightly"},
        "b": {"source": "manual", "importer": "nightly"},
    }
    poller.stop()


def test_an_idle_store_closes_its_connections_and_a_busy_one_keeps_them(tmp_path: Path) -> None:
    """Connections are kept for stores polled soon, closed for stores with nothing due."""
    with (
        Simulator(tokens=(TOKEN,)) as done,
        Simulator(tokens=(TOKEN,)) as busy,
        Simulator(tokens=(TOKEN,)) as slow,
    ):
        done.add_task("d1", total=3, finished=3, status=0)  # completed: never fetched again
        busy.add_task("b1", total=3, finished=1)  # in progress, polled every 10 s
        slow.add_task("s1", total=3, finished=1)  # in progress, polled every 2 minutes
        text = "stores:\n" + "".join(
            (
                store_yaml("done", done.url, ["d1"], min_poll_interval="10s"),
                store_yaml("busy", busy.url, ["b1"], min_poll_interval="10s"),
                store_yaml("slow", slow.url, ["s1"], min_poll_interval="2m"),
            )
        )
        clock = FakeClock()
        exporter = make_exporter(write(tmp_path / "c.yaml", text), clock=clock)
        try:
            exporter.refresh(5)
            assert (done.count(), busy.count(), slow.count()) == (1, 1, 1)
            stores = exporter.poller.stores
            assert not stores["done"].client.holds_connections
            assert not stores["slow"].client.holds_connections
            assert stores["busy"].client.holds_connections
            assert exporter.poller.transport.hosts == 1
            # a released store polls again when its task is due, on a new connection
            slow.task("s1").finished = 2
            clock.advance(121)
            exporter.refresh(5)
            assert slow.count("s1") == 2 and done.count("d1") == 1
            [view] = [v for v in exporter.view().stores if v.name == "slow"]
            assert view.tasks[0].snapshot is not None and view.tasks[0].snapshot.finished == 2
            assert not stores["slow"].client.holds_connections
            assert exporter.poller.transport.hosts == 1  # busy's, polled again meanwhile
        finally:
            exporter.close()


def test_stores_share_one_session_and_a_host_pool(sim: Simulator, tmp_path: Path) -> None:
    """A fleet on one host costs one pool, not a session per store; answers stay apart."""
    for n in range(5):
        sim.add_task(f"t{n}", total=10, finished=n)
    text = "stores:\n" + "".join(
        store_yaml(f"s{n}", sim.url, [f"t{n}"], min_poll_interval="10s") for n in range(5)
    )
    exporter = make_exporter(write(tmp_path / "c.yaml", text))
    try:
        exporter.refresh(5)
        clients = [store.client for store in exporter.poller.stores.values()]
        assert len({id(c._transport) for c in clients}) == 1
        assert exporter.poller.transport.hosts == 1
        finished = {v.name: v.tasks[0].snapshot.finished for v in exporter.view().stores}  # type: ignore[union-attr]
        assert finished == {f"s{n}": n for n in range(5)}
    finally:
        exporter.close()


def test_a_store_removed_by_a_reload_closes_its_hosts_connections(tmp_path: Path) -> None:
    with Simulator(tokens=(TOKEN,)) as kept, Simulator(tokens=(TOKEN,)) as gone:
        kept.add_task("k1", total=3, finished=1)
        gone.add_task("g1", total=3, finished=1)
        path = tmp_path / "c.yaml"
        both = store_yaml("kept", kept.url, ["k1"]) + store_yaml("gone", gone.url, ["g1"])
        exporter = make_exporter(write(path, "stores:\n" + both))
        try:
            exporter.refresh(5)
            assert exporter.poller.transport.hosts == 2  # both polled every 10 s: kept alive
            write(path, "stores:\n" + store_yaml("kept", kept.url, ["k1"]))
            assert exporter.reload()[0]
            assert exporter.poller.transport.hosts == 1
        finally:
            exporter.close()


def test_a_store_moved_to_another_host_lets_the_old_one_go(tmp_path: Path) -> None:
    with Simulator(tokens=(TOKEN,)) as old, Simulator(tokens=(TOKEN,)) as new:
        for sim in (old, new):
            sim.add_task("t1", total=3, finished=1)
        path = tmp_path / "c.yaml"
        exporter = make_exporter(write(path, "stores:\n" + store_yaml("shop", old.url, ["t1"])))
        try:
            exporter.refresh(5)
            assert exporter.poller.transport.hosts == 1  # polled every 10 s: kept alive
            write(path, "stores:\n" + store_yaml("shop", new.url, ["t1"]))
            assert exporter.reload()[0]
            assert exporter.poller.transport.hosts == 0  # the old host's pool is closed
        finally:
            exporter.close()


def test_a_stalled_store_never_starves_another(
    sim: Simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """32 requests of one store stalled upstream (answer heads trickled a byte a second,
    each cut at its 3 s timeout) leave workers to a store polled every second."""
    stalled = [f"s{n}" for n in range(32)]
    for task_id in stalled:
        sim.add_task(task_id, total=5, finished=1)
        sim.behave(task_id, Reply(head_drip=1.0))
    sim.add_task("h1", total=5, finished=1)
    text = "stores:\n" + "".join(
        (
            store_yaml(
                "stalled",
                sim.url,
                stalled,
                min_poll_interval=0,
                timeout="3s",
                max_concurrency=32,
                burst=64,
                requests_per_second=100,
            ),
            store_yaml("healthy", sim.url, ["h1"], min_poll_interval="1s"),
        )
    )
    exporter = make_exporter(write(tmp_path / "c.yaml", text))
    pace = threading.Event()
    try:
        with caplog.at_level(logging.WARNING, logger="exporter.polling.poller"):
            start = time.monotonic()
            while time.monotonic() - start < 7.5:  # scrapes every 0.2 s, as a busy Prometheus
                exporter.refresh(0.2)
                pace.wait(0.2)
        healthy = [r.at for r in sim.requests if r.task_id == "h1"]
        gaps = [b - a for a, b in zip([start, *healthy], healthy, strict=False)]
        assert len(healthy) >= 5 and max(gaps) <= 2.0, gaps
        text = scrape(App(exporter))
        # every stalled request ended as a timeout at its deadline, counted and logged
        timeouts = sample(text, "shoplazza_api_requests_total", store="stalled", code="timeout")
        assert timeouts is not None and timeouts >= 16
        errors = sample(text, "shoplazza_api_errors_total", store="stalled", code="timeout")
        assert errors == timeouts
        logged = [r for r in caplog.records if getattr(r, "code", None) == "timeout"]
        assert logged and all(getattr(r, "store", None) == "stalled" for r in logged)
    finally:
        exporter.close()
