"""The incremental /metrics renderer: byte-identity, cache invalidation, hostile values, memory."""

from __future__ import annotations

import dataclasses
import gzip
import math
import random
import shutil
import subprocess
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from exporter.build import PYTHON_VERSION, REVISION
from exporter.metrics.exposition import BLOCK_UNITS, SEGMENT, Exposition
from exporter.metrics.families import described, family_collectors
from exporter.model import (
    DURATION_BUCKETS,
    ERROR_CODES,
    SKIP_REASONS,
    ExporterView,
    ReloadStatus,
    StoreView,
    TaskRecord,
    TaskSnapshot,
)

ACCEPTS = (
    "",
    "text/plain;version=0.0.4",
    "text/plain;version=1.0.0;escaping=allow-utf-8",
    "text/plain;version=1.0.0;escaping=underscores",
    "text/plain;version=1.0.0;escaping=dots",
    "text/plain;version=1.0.0;escaping=values",
    "application/openmetrics-text",
    "application/openmetrics-text;version=1.0.0",
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8",
    "application/openmetrics-text;version=1.0.0;escaping=dots",
    "application/openmetrics-text;version=1.0.0;escaping=values",
    "application/openmetrics-text;version=2.0.0",
)
FILTERS = (
    frozenset({"shoplazza_api_requests_total"}),
    frozenset({"shoplazza_api_request_duration_seconds_count"}),
    frozenset({"shoplazza_upload_task_files", "shoplazza_upload_task_info"}),
    frozenset({"shoplazza_exporter_stores", "shoplazza_exporter_shard_info"}),
    frozenset({"no_such_metric"}),
)


def task(task_id: str, n: int = 0, *, store: str = "shop", done: bool = False) -> TaskRecord:
    """A task with data: n files of 10 finished, completed when ``done``."""
    snap = TaskSnapshot(total=10, finished=10 if done else n, status=0 if done else 1,
                        succeeded=n, failed=1 if n % 3 == 0 else 0)  # fmt: skip
    return TaskRecord(
        store=store,
        task_id=task_id,
        snapshot=snap,
        poll_success=True,
        last_success=1_800_000_000.5 + n,
        last_progress=1_800_000_000.25,
        completed_at=1_800_000_100.0 if done else None,
        labels=(("source", f"file{n % 2}.csv"),),
    )


def store(name: str, tasks: list[TaskRecord], requests: int = 0) -> StoreView:
    return StoreView(
        name=name,
        tasks=tuple(tasks),
        requests=(("200", requests), ("404", 1)) if requests else (),
        errors=tuple((code, 0) for code in ERROR_CODES),
        skipped=tuple((reason, 0) for reason in SKIP_REASONS),
        buckets=tuple(range(len(DURATION_BUCKETS))),
        duration_count=requests,
        duration_sum=0.125 * requests,
    )


def exporter_view(*stores: StoreView, **fields: object) -> ExporterView:
    defaults: dict[str, object] = {
        "stores": stores,
        "now": 1_800_000_200.0,
        "version": "1.2.3",
        "reload": ReloadStatus(True, 1_800_000_000.0),
        "stores_owned": len(stores),
        "state_file_ok": True,
        "web_config_ok": False,
    }
    defaults.update(fields)
    return ExporterView(**defaults)  # type: ignore[arg-type]


def sample_view() -> ExporterView:
    big = [task(f"t{i:03d}", i, done=i % 10 != 0) for i in range(SEGMENT * 2 + 5)]
    small = [task("a", 3, store="other"), TaskRecord(store="other", task_id="unpolled")]
    return exporter_view(store("shop", big, requests=7), store("other", small))


class AllFamilies(Collector):
    """Every family of the exporter from one collector: the reference the fast path is
    held to (prometheus_client filters its samples by name, keeping their order)."""

    def __init__(self, view: ExporterView) -> None:
        self._view = view

    def describe(self) -> list[Metric]:
        return described()

    def collect(self) -> Iterator[Metric]:
        for collector in family_collectors(lambda: self._view):
            yield from collector.collect()


def generic(view: ExporterView, accept: str, names: frozenset[str] | None = None) -> bytes:
    """What prometheus_client's encoder writes for the same families."""
    registry = CollectorRegistry()
    registry.register(AllFamilies(view))
    encoder, _ = choose_encoder(accept)
    return encoder(registry if names is None else registry.restricted_registry(names))


def ours(exposition: Exposition, view: ExporterView, accept: str = "", **kw: object) -> bytes:
    names = kw.get("names")
    assert names is None or isinstance(names, frozenset)
    plain = exposition.render(view, accept, names, False)[1]
    zipped = exposition.render(view, accept, names, True)[1]
    assert gzip.decompress(zipped) == plain
    return plain


@pytest.mark.parametrize("accept", ACCEPTS)
def test_byte_identical_to_prometheus_client_for_every_format(accept: str) -> None:
    view = sample_view()
    exposition = Exposition(extra=())
    assert ours(exposition, view, accept) == generic(view, accept)
    assert ours(exposition, view, accept) == generic(view, accept)  # from the cache
    for names in FILTERS:
        assert ours(exposition, view, accept, names=names) == generic(view, accept, names)


def test_content_type_follows_accept() -> None:
    exposition = Exposition(extra=())
    view = sample_view()
    for accept in ACCEPTS:
        assert exposition.render(view, accept, None, False)[0] == choose_encoder(accept)[1]


def test_process_and_python_metrics_on_its_own_registry() -> None:
    exposition = Exposition()
    body = exposition.render(sample_view(), "", None, False)[1].decode()
    assert "\nprocess_resident_memory_bytes " in body
    assert "\npython_info{" in body
    assert "\npython_gc_objects_collected_total{" in body
    # Between scrapes the registry holds no view: only prometheus_client's own metrics.
    assert exposition.registry.get_sample_value("process_resident_memory_bytes")
    assert exposition.registry.get_sample_value("shoplazza_exporter_build_info") is None
    om = exposition.render(sample_view(), "application/openmetrics-text", None, True)[1]
    assert gzip.decompress(om).endswith(b"\n# EOF\n") and om.count(b"# EOF") <= 1
    filtered = exposition.render(
        sample_view(), "", frozenset({"process_resident_memory_bytes"}), False
    )[1]
    assert filtered.startswith(b"# HELP process_resident_memory_bytes")


def _mutations() -> list[tuple[str, Callable[[ExporterView], ExporterView]]]:
    """Every kind of change a view can see, each applied to the view before it."""

    def on_task(index: int, **fields: object) -> Callable[[ExporterView], ExporterView]:
        def apply(view: ExporterView) -> ExporterView:
            shop = view.stores[0]
            tasks = list(shop.tasks)
            tasks[index] = dataclasses.replace(tasks[index], **fields)  # type: ignore[arg-type]
            return dataclasses.replace(view, stores=(replace_tasks(shop, tasks), *view.stores[1:]))

        return apply

    def on_snapshot(index: int, **fields: Any) -> Callable[[ExporterView], ExporterView]:
        def apply(view: ExporterView) -> ExporterView:
            old = view.stores[0].tasks[index].snapshot
            assert old is not None
            return on_task(index, snapshot=dataclasses.replace(old, **fields))(view)

        return apply

    def replace_tasks(view: StoreView, tasks: list[TaskRecord]) -> StoreView:
        return dataclasses.replace(view, tasks=tuple(tasks))

    def on_store(index: int, **fields: object) -> Callable[[ExporterView], ExporterView]:
        def apply(view: ExporterView) -> ExporterView:
            stores = list(view.stores)
            stores[index] = dataclasses.replace(stores[index], **fields)  # type: ignore[arg-type]
            return dataclasses.replace(view, stores=tuple(stores))

        return apply

    def fields(**kw: object) -> Callable[[ExporterView], ExporterView]:
        return lambda view: dataclasses.replace(view, **kw)  # type: ignore[arg-type]

    last = SEGMENT * 2 + 4
    steps: list[tuple[str, Callable[[ExporterView], ExporterView]]] = [
        (f"snapshot.{name}", on_snapshot(last, **{name: 4}))
        for name in ("total", "finished", "status", "succeeded", "failed")
    ]
    steps += [
        ("completed", on_snapshot(10, status=0)),
        ("poll_success", on_task(SEGMENT + 1, poll_success=False)),
        ("last_success", on_task(0, last_success=1_900_000_000.0)),
        ("last_progress", on_task(1, last_progress=1_900_000_000.0)),
        ("completed_at", on_task(2, completed_at=1_900_000_001.0)),
        ("labels", on_task(3, labels=(("importer", "nightly"), ("source", "x.csv")))),
        ("first data", on_task(SEGMENT, snapshot=None)),
        ("task_id", on_task(7, task_id="renamed")),
        ("new task", lambda v: on_store(0, tasks=(*v.stores[0].tasks, task("new", 2)))(v)),
        ("removed task", lambda v: on_store(0, tasks=v.stores[0].tasks[1:])(v)),
        ("forgotten", lambda v: on_store(0, tasks=v.stores[0].tasks[:-SEGMENT])(v)),
        ("counter", on_store(0, requests=(("200", 8), ("404", 1)))),
        ("error counter", on_store(1, errors=(("429", 1),))),
        ("skipped", on_store(1, skipped=(("deadline", 3),))),
        ("histogram", on_store(0, buckets=tuple(range(1, 13)), duration_count=13)),
        ("duration sum", on_store(0, duration_sum=9.5)),
        ("new store", lambda v: fields(stores=(*v.stores, store("third", [task("z")])))(v)),
        ("store order", lambda v: fields(stores=tuple(reversed(v.stores)))(v)),
        ("removed store", lambda v: fields(stores=v.stores[1:])(v)),
        ("reload", fields(reload=ReloadStatus(False, 1_800_000_500.0))),
        ("shard", fields(shard=2, total_shards=3, stores_owned=1, stores_other=5)),
        ("store files", fields(store_files_invalid=2)),
        ("state file", fields(state_file_ok=None)),
        ("web config", fields(web_config_ok=True)),
        ("version", fields(version="1.2.4")),
    ]
    return steps


@pytest.mark.parametrize("accept", ["", "application/openmetrics-text"])
def test_every_change_shows_in_the_next_scrape(accept: str) -> None:
    view = sample_view()
    exposition = Exposition(extra=())
    names = FILTERS[0] | FILTERS[2] | FILTERS[3]
    for step, mutate in _mutations():
        before = ours(exposition, view, accept)
        ours(exposition, view, accept, names=names)
        view = mutate(view)
        after = ours(exposition, view, accept)
        assert after == generic(view, accept), step
        assert after != before, step
        assert ours(exposition, view, accept, names=names) == generic(view, accept, names), step


@pytest.mark.parametrize("seed", [1, 2])
def test_a_fleet_over_many_blocks_stays_exact_through_random_changes(seed: int) -> None:
    """Stores and segments span several compressed blocks; any mix of changes, insertions,
    removals and reorders still renders what the encoder writes, plain and gzipped."""
    rng = random.Random(seed)
    big = store("big", [task(f"b{i}", i % 7) for i in range((BLOCK_UNITS + 2) * SEGMENT)])
    stores = [big, *(store(f"s{n:03d}", [task(f"t{n}", n)]) for n in range(3 * BLOCK_UNITS + 5))]
    exposition = Exposition(extra=())
    fresh = 0
    for step in range(20):
        kind = rng.choice(["task", "counter", "insert", "remove", "swap", "big"])
        at = rng.randrange(len(stores))
        if kind == "task":
            changed = tuple(task(t.task_id, rng.randrange(10)) for t in stores[at].tasks)
            stores[at] = dataclasses.replace(stores[at], tasks=changed)
        elif kind == "counter":
            stores[at] = dataclasses.replace(stores[at], duration_count=step + 1)
        elif kind == "insert":
            fresh += 1
            stores.insert(at, store(f"new{fresh}", [task(f"n{fresh}", step), task("x", 1)]))
        elif kind == "remove" and len(stores) > 1:
            del stores[at]
        elif kind == "swap":
            other = rng.randrange(len(stores))
            stores[at], stores[other] = stores[other], stores[at]
        else:  # one task deep in the big store (a block past the first)
            for index in [i for i, s in enumerate(stores) if s.name == "big"]:
                tasks = list(stores[index].tasks)
                n = rng.randrange(len(tasks))
                tasks[n] = task(tasks[n].task_id, step)
                stores[index] = dataclasses.replace(stores[index], tasks=tuple(tasks))
        view = exporter_view(*stores)
        assert ours(exposition, view) == generic(view, ""), (step, kind)


def test_records_are_compared_by_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Views and task records are immutable: the same objects render nothing again, a
    replaced record re-renders its segment alone."""
    import exporter.metrics.exposition as module
    from exporter.metrics.lines import render_segment as real

    rendered: list[str] = []

    def counting(store_name: str, tasks: Any) -> tuple[bytes, ...]:
        rendered.extend(t.task_id for t in tasks)
        return real(store_name, tasks)

    monkeypatch.setattr(module, "render_segment", counting)
    records = [task(f"t{i}", i) for i in range(SEGMENT + 1)]
    view = exporter_view(store("shop", records))
    exposition = Exposition(extra=())
    first = ours(exposition, view)
    assert len(rendered) == SEGMENT + 1
    rendered.clear()
    assert ours(exposition, view) == first  # the same view: nothing looked at again
    same_records = exporter_view(store("shop", records, requests=1))
    ours(exposition, same_records)  # a new view, the same records: no task re-rendered
    assert rendered == []
    records[SEGMENT] = task(f"t{SEGMENT}", 2)  # an equal id, a new record, in segment 2
    changed = exporter_view(store("shop", records))
    assert ours(exposition, changed) == generic(changed, "") != first
    assert rendered == [f"t{SEGMENT}"]


NUMBER = cast(tuple[str, str], ("n", 5))  # not a str: stored values are not trusted
HOSTILE = TaskSnapshot(total=10**400, finished=10**1000, status=-(10**500), succeeded=3, failed=0)


def hostile_view() -> ExporterView:
    odd = 'we"ird\\ \n\x00\x1b\u202e \ud800 ✓'
    tasks = [
        TaskRecord(
            store="s",
            task_id=odd,
            snapshot=HOSTILE,
            poll_success=True,
            last_success=math.nan,
            last_progress=math.inf,
            completed_at=10**400,
            labels=((odd, "x"), ("__reserved", "x"), ("store", "evil"), ("ok", odd), NUMBER),
        )
    ]
    nan, inf = cast(int, math.nan), cast(int, math.inf)
    weird = TaskSnapshot(total=0, finished=5, status=0, succeeded=nan, failed=inf)
    tasks.append(TaskRecord(store="s", task_id="w", snapshot=weird, completed_at=-0.0))
    tasks.append(
        TaskRecord(
            store="s",
            task_id="z",
            snapshot=TaskSnapshot(total=0, finished=0, status=1, succeeded=0, failed=0),
        )
    )
    view = StoreView(
        name=odd,
        tasks=tuple(tasks),
        requests=(("200", 10**400), (odd, -1)),
        errors=(("500", math.nan),),  # type: ignore[arg-type]
        skipped=(),
        buckets=(10**400,) * len(DURATION_BUCKETS),
        duration_count=10**400,
        duration_sum=math.inf,
    )
    short = dataclasses.replace(view, name="short", buckets=(1, 2))
    return exporter_view(view, short, version=odd, store_files_invalid=10**400)


@pytest.mark.parametrize("accept", ACCEPTS)
def test_hostile_values_never_raise_and_match_the_encoder(accept: str) -> None:
    view = hostile_view()
    exposition = Exposition()
    for gzipped in (False, True):
        for names in (None, *FILTERS):
            exposition.render(view, accept, names, gzipped)
    plain = Exposition(extra=())
    assert ours(plain, view, accept) == generic(view, accept)
    for names in FILTERS:
        assert ours(plain, view, accept, names=names) == generic(view, accept, names)


def test_hostile_values_pass_promtool() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is needed: scripts/test.sh installs Debian's prometheus"
    body = Exposition().render(hostile_view(), "", None, False)[1]
    assert b"shoplazza_upload_task_files{" in body and b"+Inf" in body
    result = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == b"" and result.stderr.strip() == b""


def test_memory_per_task_is_bounded() -> None:
    """The cache holds about a kilobyte per task (lines and change keys); 4 KiB is the bound."""
    count = 3000
    tasks = [task(f"{i:024x}", i % 10, done=i % 10 != 0) for i in range(count)]
    view = exporter_view(store("shop", tasks, requests=5))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        exposition = Exposition(extra=())
        exposition.render(view, "", None, True)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert exposition.generation == 1
    assert held / count < 4096, f"{held / count:.0f} bytes per task"


class _Untouchable(tuple[StoreView, ...]):
    """Stores that fail the test when anything walks them."""

    def __iter__(self) -> Iterator[StoreView]:
        raise AssertionError("the filter walked the stores")


def test_a_filter_builds_only_the_families_it_shows() -> None:
    """name[] for an exporter-wide gauge never walks the tasks of a fleet (a family each)."""
    view = dataclasses.replace(sample_view(), stores=_Untouchable())
    names = frozenset({"shoplazza_exporter_build_info"})
    body = Exposition(extra=()).render(view, "", names, False)[1]
    assert body == (
        b"# HELP shoplazza_exporter_build_info Build information; always 1.\n"
        b"# TYPE shoplazza_exporter_build_info gauge\n"
        b'shoplazza_exporter_build_info{python_version="%s",revision="%s",version="1.2.3"} 1.0\n'
        % (PYTHON_VERSION.encode(), REVISION.encode())
    )


@pytest.mark.parametrize("gzipped", [False, True])
def test_bodies_share_the_cached_part_while_one_is_alive(gzipped: bool) -> None:
    """Clients that do not read hold the same bytes, not a copy each (docs/design.md,
    "Rules for abuse: the server")."""
    exposition = Exposition(extra=())
    view = sample_view()
    first = exposition.render_body(view, "", None, gzipped)[1]
    second = exposition.render_body(view, "", None, gzipped)[1]
    assert first[0] is second[0]  # the large part: one object
    assert len(first[0]) > len(first[1])
    joined = b"".join(second)
    assert (gzip.decompress(joined) if gzipped else joined) == ours(exposition, view)
    changed = exporter_view(store("shop", [task("t000", 5)], requests=8))
    third = exposition.render_body(changed, "", None, gzipped)[1]
    assert third[0] is not first[0]
    assert b'task_id="t001"' not in (gzip.decompress(b"".join(third)) if gzipped else third[0])
