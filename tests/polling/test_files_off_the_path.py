"""Files never hold a scrape, and a store that leaves the configuration is kept a while.

docs/design.md, "Rules for files".
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from exporter.app import Exporter
from exporter.config.watch import StoreFiles, TaskFiles
from exporter.demo.simulator import Simulator
from exporter.polling.poller import ADD_CHUNK, DEPARTED_GRACE, Poller
from exporter.polling.statefile import load_state
from tests.helpers import TOKEN, TOKEN_ENV, FakeClock, make_exporter, store_yaml, wait_until, write


def _blocked(monkeypatch: pytest.MonkeyPatch, cls: type, release: threading.Event) -> None:
    """``cls.refresh`` hangs until ``release``: a file system that never answers."""
    real = cls.refresh  # type: ignore[attr-defined]

    def refresh(self: object, force: bool = False) -> bool:
        release.wait()
        return bool(real(self, force))

    monkeypatch.setattr(cls, "refresh", refresh)


@pytest.mark.parametrize("kind", ["task files", "store files"])
def test_a_scrape_never_waits_for_a_hung_file_system(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    sim.add_task("t1", total=3, finished=1)
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "ids.txt").write_text("t1\n")
    (tmp_path / "stores.d").mkdir()
    cfg = write(
        tmp_path / "c.yaml",
        "store_files: ['stores.d/*.yaml']\nstores:\n"
        + store_yaml("shop", sim.url, task_id_files="['tasks/*.txt']"),
    )
    exporter = make_exporter(cfg)
    release = threading.Event()
    try:
        _blocked(monkeypatch, TaskFiles if kind == "task files" else StoreFiles, release)
        (tmp_path / "tasks" / "ids.txt").write_text("t1\nt2\n")
        scrape = threading.Thread(target=exporter.refresh, args=(1.0,), daemon=True)
        scrape.start()
        scrape.join(10)
        assert not scrape.is_alive()  # answered from memory, the files still unread
        assert not release.is_set()
    finally:
        release.set()
        exporter.close()


def _fleet(tmp_path: Path, sim: Simulator, names: list[str]) -> None:
    text = "stores:\n" + "".join(store_yaml(n, sim.url, [f"{n}-done"]) for n in names)
    write(tmp_path / "stores.d" / "s.yaml", text)
    past = os.stat(tmp_path / "stores.d" / "s.yaml").st_mtime - 10
    os.utime(tmp_path / "stores.d" / "s.yaml", (past, past))


def test_a_store_that_leaves_and_comes_back_goes_on_where_it_was(
    sim: Simulator, tmp_path: Path
) -> None:
    for name in ("a", "b"):
        sim.add_task(f"{name}-done", total=2, finished=2, status=0)
    (tmp_path / "stores.d").mkdir()
    state = tmp_path / "state.json"
    cfg = write(tmp_path / "c.yaml", f"state_file: {state}\nstore_files: ['stores.d/*.yaml']\n")
    _fleet(tmp_path, sim, ["a", "b"])
    clock = FakeClock()
    exporter = make_exporter(cfg, clock=clock)
    store_files = exporter.store_files
    assert store_files is not None

    def apply() -> None:  # two checks a second apart, as the one-second timer makes them
        store_files.refresh(force=True)
        clock.advance(1.0)
        exporter._check_store_files()

    def names() -> list[str]:
        return sorted(s.name for s in exporter.view().stores)

    try:
        exporter.refresh(5)
        assert sim.count("b-done") == 1
        (b,) = [s for s in exporter.view().stores if s.name == "b"]
        _fleet(tmp_path, sim, ["a"])  # b leaves: not shown nor polled at once
        apply()
        assert names() == ["a"]
        assert exporter.state_writer is not None
        exporter.state_writer.flush()
        assert {t.task_id for t in load_state(str(state))[0]} == {"a-done", "b-done"}
        clock.advance(DEPARTED_GRACE - 5)
        _fleet(tmp_path, sim, ["a", "b"])  # back within the grace
        apply()
        assert names() == ["a", "b"]
        exporter.refresh(5)
        (again,) = [s for s in exporter.view().stores if s.name == "b"]
        assert again.requests == b.requests  # counters go on, no reset
        assert sim.count("b-done") == 1  # its completed task is not fetched again
        _fleet(tmp_path, sim, ["a"])  # leaves for good: dropped after the grace ...
        apply()
        clock.advance(DEPARTED_GRACE)
        exporter.poller.housekeeping()
        assert "b" not in exporter.poller.departed
        exporter.state_writer.flush()  # ... its completed task's state stays in the file
        assert {t.task_id for t in load_state(str(state))[0]} == {"a-done", "b-done"}
    finally:
        exporter.close()


def test_a_store_file_being_rewritten_is_not_applied_half_written(
    sim: Simulator, tmp_path: Path
) -> None:
    (tmp_path / "stores.d").mkdir()
    cfg = write(tmp_path / "c.yaml", "store_files: ['stores.d/*.yaml']\n")
    names = [f"s{i}" for i in range(20)]
    _fleet(tmp_path, sim, names)
    exporter = make_exporter(cfg)
    try:
        assert len(exporter.view().stores) == 20
        path = tmp_path / "stores.d" / "s.yaml"
        full = path.read_bytes()
        with path.open("r+b") as handle:  # rewritten in place: a valid prefix, for now
            handle.truncate(0)
            handle.write(full[: full.index(b"  - name: s10")])
        exporter.refresh(1.0)
        assert len(exporter.view().stores) == 20  # a prefix is never applied at once
        with path.open("ab") as handle:
            handle.write(full[full.index(b"  - name: s10") :])
        exporter.refresh(1.0)
        wait_until(
            lambda: (
                exporter.store_files is not None
                and not exporter.store_files._entries[str(path)].pending
            )
        )
        assert len(exporter.view().stores) == 20
    finally:
        exporter.close()


def test_the_start_does_not_wait_for_task_files(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim.add_task("t1", total=3, finished=1)
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "ids.txt").write_text("t1\n")
    cfg = write(
        tmp_path / "c.yaml",
        "stores:\n" + store_yaml("shop", sim.url, task_id_files="['tasks/*.txt']"),
    )
    release = threading.Event()
    _blocked(monkeypatch, TaskFiles, release)
    exporter = Exporter(cfg, environ={TOKEN_ENV: TOKEN})
    try:
        starting = threading.Thread(target=exporter.start, daemon=True)
        starting.start()
        starting.join(10)
        assert not starting.is_alive()  # started, configuration loaded: ready
        assert exporter.ready
        assert not exporter.files_read(0)  # the reader still hangs
        release.set()
        assert exporter.files_read(10)
        assert [t.task_id for s in exporter.view().stores for t in s.tasks] == ["t1"]
    finally:
        release.set()
        exporter.close()


def test_a_first_listing_is_added_in_file_order_a_chunk_at_a_time(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [f"id-{n:05d}" for n in range(3 * ADD_CHUNK + 5)][::-1]  # file order: descending
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "ids.txt").write_text("".join(f"{i}\n" for i in ids))
    cfg = write(
        tmp_path / "c.yaml",
        "stores:\n" + store_yaml("shop", sim.url, task_id_files="['tasks/*.txt']"),
    )
    chunks: list[int] = []
    real = Poller._add_listed

    def add(self: Poller, store: object, added: list[str]) -> None:
        chunks.append(len(added))
        real(self, store, added)  # type: ignore[arg-type]

    monkeypatch.setattr(Poller, "_add_listed", add)
    exporter = make_exporter(cfg)
    try:
        assert max(chunks) <= ADD_CHUNK and len(chunks) >= 4
        assert [t.task_id for s in exporter.view().stores for t in s.tasks] == ids
    finally:
        exporter.close()
