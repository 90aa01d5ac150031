"""Sizes and times of the status pages at 1k, 10k and 100k tasks, and a fleet to look at.

For each workload (one store with 1k, 10k and 100k tasks, and 1,000 stores x 100 tasks;
90 % completed, 7 % in progress, the rest problems: failing, stuck, unknown status,
completed with failed files) it builds the task records the poller would hold and calls
the real WSGI app (``exporter.web.routes.App``, no socket) through a stand-in for the
exporter whose ``refresh`` does nothing, and measures:

- the default ``/``: its size, the first answer (every index built from nothing), the
  steady answer (nothing changed), and the answer after 100 tasks changed (as a poll
  would: new records, and each 10th of them changing state);
- ``/api/v1/tasks?state=completed&limit=1000`` (a filtered JSON page of 1,000 rows) and
  ``?q=...`` (a filter that looks at every task id);
- a page of 1,000 rows after a cursor (the second page of a pass through ``/api/v1/tasks``);
- ``/tasks/{store}/{task_id}`` of a task with 1,000 kept failed files;
- with tracemalloc, the bytes per task the listing's indexes hold.

Times are medians of ``--repeat`` answers, in this process, on whatever CPU it gets. Usage::

    .venv/bin/python -m bench.pages [--tasks 1000,10000,100000] [--fleet 1000x100] [--repeat 15]
    .venv/bin/python -m bench.pages --serve 8080 --fleet 1000x10   # a fleet to look at

``--serve`` answers on 127.0.0.1 with the fleet of ``--fleet`` (1,000 stores, a handful of
problems) until interrupted; scripts/screenshot-fleet.sh photographs it.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, replace
from wsgiref.simple_server import WSGIRequestHandler, make_server

from bench.common import WALL_START, Report, add_output_flags, emit, markdown_table
from exporter import __version__
from exporter.model import (
    MAX_KEPT_FAILURES,
    ExporterView,
    FailedFile,
    ReloadStatus,
    StoreView,
    TaskRecord,
    TaskSnapshot,
)
from exporter.web.routes import App

REASONS = ("download timeout", "unsupported image format", "image larger than 20 MB")
ERRORS = (
    ("404", "task not found"),
    ("500", "internal server error"),
    ("timeout", "no answer in 5s"),
)


@dataclass
class Fleet:
    """Task records per store, with views rebuilt for the stores that change (as the poller)."""

    now: float
    stores: dict[str, dict[str, TaskRecord]]
    views: dict[str, StoreView]

    def view(self) -> ExporterView:
        """What ``Exporter.view()`` would return."""
        for name, tasks in self.stores.items():
            if name not in self.views:
                self.views[name] = StoreView(name, tuple(tasks.values()), (), (), (), (), 0, 0.0)
        views = tuple(self.views[name] for name in self.stores)
        return ExporterView(views, self.now, __version__, ReloadStatus(True, WALL_START))

    def refresh(self, timeout: float) -> None:
        """Nothing is due: the pages are measured, not the API."""

    def reload(self) -> tuple[bool, str]:
        """Not used here."""
        return True, ""

    @property
    def ready(self) -> bool:
        """Always."""
        return True


def _failures(task_id: str, count: int) -> tuple[FailedFile, ...]:
    return tuple(
        FailedFile(
            f"https://images.example.com/catalogue/{task_id[:6]}/product-{i:04d}.jpg",
            REASONS[i % len(REASONS)],
        )
        for i in range(min(count, MAX_KEPT_FAILURES))
    )


def make_task(store: str, task_id: str, kind: str, now: float, rng: random.Random) -> TaskRecord:
    """A task record of one kind, with plausible numbers."""
    total = rng.randint(20, 400)
    labels = (("source", f"catalogue-{rng.randint(1, 40)}.csv"),) if rng.random() < 0.5 else ()
    if kind == "not_polled":
        return TaskRecord(store, task_id, labels=labels)
    done = kind in ("completed", "completed_with_failures")
    failed = rng.randint(1, total // 4) if kind == "completed_with_failures" else 0
    finished = total if done else rng.randint(0, total - 1)
    status = 7 if kind == "unknown_status" else 0 if done else 1
    snap = TaskSnapshot(
        total=total,
        finished=finished,
        succeeded=finished - failed,
        failed=failed,
        status=status,
        failures=_failures(task_id, failed),
    )
    progress = now - (rng.uniform(3600, 7200) if kind == "stuck" else rng.uniform(0, 600))
    record = TaskRecord(
        store,
        task_id,
        snapshot=snap,
        poll_success=True,
        last_code="200",
        last_success=now - rng.uniform(0, 30),
        last_progress=progress,
        completed_at=progress if done else None,
        labels=labels,
    )
    if kind == "failing":
        code, text = ERRORS[rng.randrange(len(ERRORS))]
        record = replace(
            record, poll_success=False, last_code=code, last_error_code=code, last_error=text
        )
    return record


# Share of each kind, out of 1,000 tasks.
MIX = (
    ("completed", 900),
    ("in_progress", 70),
    ("not_polled", 5),
    ("completed_with_failures", 15),
    ("failing", 5),
    ("stuck", 4),
    ("unknown_status", 1),
)


def make_fleet(stores: int, per_store: int, problems: int | None = None, seed: int = 7) -> Fleet:
    """``stores`` stores of ``per_store`` tasks in the :data:`MIX`; with ``problems``, only
    that many problem tasks in all (spread over a few stores), the rest fine."""
    rng = random.Random(seed)
    now = WALL_START
    kinds = [kind for kind, share in MIX for _ in range(share)]
    fine = [k for k in kinds if k in ("completed", "in_progress", "not_polled")]
    names = [f"store-{i:04d}" for i in range(stores)]
    troubled = set(rng.sample(names, min(len(names), max(1, (problems or 0) // 2))))
    bad = ["failing", "stuck", "unknown_status", "completed_with_failures"]
    left = problems or 0
    fleet = Fleet(now, {}, {})
    for name in names:
        tasks: dict[str, TaskRecord] = {}
        for _ in range(per_store):
            task_id = f"{rng.getrandbits(96):024x}"
            if problems is None:
                kind = rng.choice(kinds)
            elif name in troubled and left > 0 and rng.random() < 0.5:
                kind, left = bad[left % len(bad)], left - 1
            else:
                kind = rng.choice(fine)
            tasks[task_id] = make_task(name, task_id, kind, now, rng)
        fleet.stores[name] = tasks
    return fleet


def change(fleet: Fleet, rng: random.Random, count: int = 100) -> None:
    """``count`` tasks get new records, as after a poll; every 10th changes state."""
    names = list(fleet.stores)
    fleet.now += 1.0
    for i in range(count):
        name = rng.choice(names)
        tasks = fleet.stores[name]
        task_id = rng.choice(list(tasks))
        kind = rng.choice(["completed", "failing", "in_progress"]) if i % 10 == 0 else None
        old = tasks[task_id]
        tasks[task_id] = (
            make_task(name, task_id, kind, fleet.now, rng)
            if kind
            else replace(old, last_success=fleet.now)
        )
        fleet.views.pop(name, None)


def timed(
    action: Callable[[], object], repeat: int, before: Callable[[], object] | None = None
) -> float:
    """Median seconds of ``action`` (``before`` runs untimed ahead of each)."""
    times = []
    for _ in range(repeat):
        if before is not None:
            before()
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def get(app: App, path: str) -> bytes:
    """The body of a 200 answer of the WSGI app, called without a socket."""
    path, _, query = path.partition("?")
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_NAME": "bench",
        "SERVER_PORT": "80",
        "wsgi.input": io.BytesIO(),
        "wsgi.url_scheme": "http",
    }
    seen: list[str] = []
    body = b"".join(app(environ, lambda status, headers, exc_info=None: seen.append(status)))  # type: ignore[arg-type]
    assert seen[0].startswith("200"), (path, seen, body[:200])
    return body


def measure(name: str, fleet: Fleet, repeat: int) -> list[str]:
    """One workload's row of figures."""
    rng = random.Random(11)
    app = App(fleet)
    tasks = sum(map(len, fleet.stores.values()))
    tracemalloc.start()
    started = time.perf_counter()
    page = get(app, "/")
    cold = time.perf_counter() - started
    index_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    steady = timed(lambda: get(app, "/"), repeat)
    changed = timed(lambda: get(app, "/"), repeat, before=lambda: change(fleet, rng))
    filtered = "/api/v1/tasks?state=completed&limit=1000"
    json_body = get(app, filtered)
    json_time = timed(lambda: get(app, filtered), repeat)
    some_id = next(iter(fleet.stores[next(iter(fleet.stores))]))
    q_time = timed(lambda: get(app, f"/api/v1/tasks?q={some_id[2:8]}"), repeat)
    first = get(app, "/api/v1/tasks?limit=500")
    cursor = json.loads(first)["next"]
    next_time = timed(lambda: get(app, f"/api/v1/tasks?limit=1000&after={cursor}"), repeat)
    store, tasks_of = next(iter(fleet.stores.items()))
    big = next(iter(tasks_of))
    tasks_of[big] = make_task(store, big, "completed_with_failures", fleet.now, rng)
    snap = tasks_of[big].snapshot
    assert snap is not None
    tasks_of[big] = replace(
        tasks_of[big],
        snapshot=replace(
            snap, total=5000, finished=5000, failed=1200, failures=_failures(big, 1200)
        ),
    )
    fleet.views.pop(store, None)
    task_path = f"/tasks/{store}/{big}"
    task_body = get(app, task_path)
    task_time = timed(lambda: get(app, task_path), repeat)
    return [
        name,
        f"{tasks:,}",
        f"{len(page) / 1000:,.0f} KB",
        _ms(cold),
        _ms(steady),
        _ms(changed),
        f"{len(json_body) / 1000:,.0f} KB",
        _ms(json_time),
        _ms(q_time),
        _ms(next_time),
        f"{len(task_body) / 1000:,.0f} KB / {_ms(task_time)}",
        f"{index_bytes / tasks:,.0f} B",
    ]


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"


HEADER = (
    "workload",
    "tasks",
    "/ size",
    "/ first",
    "/ steady",
    "/ after 100 changes",
    "JSON 1,000 rows",
    "JSON state filter",
    "JSON q filter",
    "JSON next page",
    "task page (1,000 failed files)",
    "index per task",
)


def serve(port: int, stores: int, per_store: int) -> None:
    """Answer on 127.0.0.1:``port`` with a fleet of a handful of problems, until interrupted."""
    fleet = make_fleet(stores, per_store, problems=12)
    # One task with many failed files for the task page's picture.
    store = sorted(fleet.stores)[0]
    task_id = sorted(fleet.stores[store])[0]
    rng = random.Random(3)
    record = make_task(store, task_id, "completed_with_failures", fleet.now, rng)
    assert record.snapshot is not None
    record = replace(
        record,
        snapshot=replace(
            record.snapshot,
            total=120,
            finished=120,
            succeeded=104,
            failed=16,
            failures=_failures(task_id, 16),
        ),
        labels=(("source", "catalogue-7.csv"), ("importer", "nightly sync")),
    )
    fleet.stores[store][task_id] = record
    app = App(
        fleet, dashboard_url="https://grafana.example.com/d/shoplazza-upload/shoplazza-uploads"
    )

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    with make_server("127.0.0.1", port, app, handler_class=Quiet) as server:
        print(f"serving http://127.0.0.1:{port}/ ; task page: /tasks/{store}/{task_id}", flush=True)
        server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    """Measure (or ``--serve``) and print the figures."""
    parser = argparse.ArgumentParser(prog="bench.pages", description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default="1000,10000,100000", help="one-store sizes")
    parser.add_argument("--fleet", default="1000x100", help="STORESxTASKS, or '' for none")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--serve", type=int, metavar="PORT", help="serve a fleet to look at")
    add_output_flags(parser)
    args = parser.parse_args(argv)
    if args.serve:
        stores, per_store = (int(x) for x in (args.fleet or "1000x10").split("x"))
        serve(args.serve, stores, per_store)
        return 0
    rows = []
    for size in (int(x) for x in args.tasks.split(",") if x):
        rows.append(measure(f"1 store x {size:,}", make_fleet(1, size), args.repeat))
        print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    if args.fleet:
        stores, per_store = (int(x) for x in args.fleet.split("x"))
        rows.append(
            measure(
                f"{stores:,} stores x {per_store:,}", make_fleet(stores, per_store), args.repeat
            )
        )
    setup = (
        "The real WSGI app over task records held in memory (no socket, no poller), "
        f"median of {args.repeat} answers; 90 % of the tasks completed, 7 % in progress, "
        "the rest problems. *First* builds every index from nothing; the exporter keeps them "
        "built in the background once pages are in use, and from the start from 20,000 tasks "
        '(docs/design.md, "Status pages"), so a person\'s page is a *steady* one.'
    )
    emit(Report("pages", "Pages", f"{setup}\n\n{markdown_table(HEADER, rows)}"), parser, args, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
