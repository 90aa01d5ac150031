"""Stores spread over processes by rendezvous hashing (docs/design.md, "Sharding")."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import pytest

from exporter.app import Exporter
from exporter.cli import main
from exporter.demo.simulator import Simulator
from exporter.sharding import Shard, owner, score
from tests.helpers import TOKEN, TOKEN_ENV, ExporterProcess, sample, store_yaml, wait_until, write

NAMES = [f"store-{i:05d}" for i in range(10_000)]


def _reference_owner(store: str, total: int) -> int:
    """The formula, written out independently of the module under test."""
    scores = [
        int.from_bytes(hashlib.sha256(f"{store}\x00{i}".encode()).digest()[:8], "big")
        for i in range(total)
    ]
    return scores.index(max(scores))  # index() finds the lowest i on a tie


def test_owner_follows_the_formula() -> None:
    for name in NAMES[:500]:
        for total in (1, 2, 3, 7):
            assert owner(name, total) == _reference_owner(name, total)


def test_owner_is_stable() -> None:
    """Fixed values: a change of the hash would move stores between running shards."""
    assert score("acme", 0) == 0xCE9AC662DFE72247  # sha256(b"acme\x000")[:8]
    assert [owner(f"shop-{i}", 5) for i in range(10)] == [3, 4, 2, 3, 0, 4, 1, 4, 4, 3]


def test_tie_goes_to_the_lowest_shard(monkeypatch: pytest.MonkeyPatch) -> None:
    import exporter.sharding as sharding

    monkeypatch.setattr(sharding, "score", lambda store, shard: 7)
    assert sharding.owner("any", 5) == 0


def test_balance() -> None:
    counts = Counter(owner(name, 4) for name in NAMES)
    assert set(counts) == {0, 1, 2, 3}
    assert all(abs(n - 2_500) < 250 for n in counts.values())


@pytest.mark.parametrize("total", [1, 2, 3, 4, 8])
def test_adding_a_shard_moves_about_one_in_m_plus_one(total: int) -> None:
    moved = [name for name in NAMES if owner(name, total) != owner(name, total + 1)]
    assert abs(len(moved) / len(NAMES) - 1 / (total + 1)) < 0.03
    assert all(owner(name, total + 1) == total for name in moved)  # only to the new shard


@pytest.mark.parametrize(("index", "total"), [(0, 0), (1, 1), (-1, 2), (3, 2)])
def test_shard_out_of_range_is_refused(index: int, total: int) -> None:
    with pytest.raises(ValueError, match="want 0 <= shard < total shards"):
        Shard(index, total)


@pytest.mark.parametrize(
    "argv",
    [
        ["--shard", "2", "--total-shards", "2"],
        ["--shard", "-1"],
        ["--total-shards", "0"],
        ["--shard", "x"],
    ],
)
def test_cli_shard_flags_out_of_range_are_a_usage_error(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err
    assert "Traceback" not in err


def _fleet(sim: Simulator, tmp_path: Path, stores: int) -> tuple[list[str], str]:
    """``stores`` stores of one completed task ``<store>-t`` each; their names and config."""
    names = [f"shop{i:02d}" for i in range(stores)]
    for name in names:
        sim.add_task(f"{name}-t", total=2, finished=2, status=0)
    text = "stores:\n" + "".join(store_yaml(n, sim.url, [f"{n}-t"]) for n in names)
    return names, write(tmp_path / "c.yaml", text)


def test_exporter_serves_only_its_stores(sim: Simulator, tmp_path: Path) -> None:
    names, path = _fleet(sim, tmp_path, 30)
    seen: list[str] = []
    for index in range(3):
        exporter = Exporter(path, environ={TOKEN_ENV: TOKEN}, shard=Shard(index, 3))
        exporter.start()
        exporter.refresh(10)
        view = exporter.view()
        mine = [store.name for store in view.stores]
        assert mine == [n for n in names if owner(n, 3) == index]
        assert (view.shard, view.total_shards) == (index, 3)
        assert (view.stores_owned, view.stores_other) == (len(mine), len(names) - len(mine))
        seen.extend(mine)
        exporter.close()
    assert sorted(seen) == names
    assert all(sim.count(f"{n}-t") == 1 for n in names)  # each task fetched by one shard


def test_two_processes_split_the_stores(sim: Simulator, tmp_path: Path) -> None:
    names, path = _fleet(sim, tmp_path, 12)
    procs = [
        ExporterProcess(["--config.file", path, "--shard", str(i), "--total-shards", "2"], tmp_path)
        for i in range(2)
    ]
    try:
        served: list[set[str]] = []
        for proc in procs:
            proc.wait_ready()
            body = proc.get("/metrics").text
            stores = {n for n in names if sample(body, "shoplazza_upload_task_files", store=n)}
            served.append(stores)
        assert served[0] | served[1] == set(names)
        assert not served[0] & served[1]
        assert served[0] == {n for n in names if owner(n, 2) == 0}
        wait_until(lambda: sim.in_flight == 0, timeout=5)
        assert all(sim.count(f"{n}-t") == 1 for n in names)
    finally:
        for proc in procs:
            assert proc.stop() == 0
