"""Hostile and huge files: what they cost the exporter (docs/design.md, "Rules for files").

Scenarios (pick with ``--scenario``, default all):

- ``loop``: links ``a -> .`` and ``b -> .`` under a ``**`` glob; prints how long one walk
  takes and what it matched (the walk never enters a directory through a link).
- ``million``: a task id file of ``--lines`` lines (default 1,000,000), watched by one
  store of a poller: the first reading (file, ids, tasks), then one line appended (what
  the discovery thread does each second), then a scrape while a bigger append is read
  (it answers from memory instead of waiting), with the process's peak RSS.

Run: ``python -m bench.abuse_files [--scenario loop|million] [--lines N]``.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

from exporter.config import parse_config
from exporter.config.watch import expand_task_id_files
from exporter.polling.poller import Poller

TOKEN = "bench-token-not-a-secret"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def loop(root: Path) -> None:
    """A loop of directory links under ``**``."""
    (root / "sub").mkdir()
    (root / "ids.txt").write_text("t1\n")
    (root / "sub" / "more.txt").write_text("t2\n")
    os.symlink(".", root / "a")
    os.symlink(".", root / "b")
    start = time.perf_counter()
    found = expand_task_id_files([f"{root}/**/*.txt"])
    took = time.perf_counter() - start
    print(f"loop: one walk of {root}/**/*.txt: {took * 1000:.2f} ms, {len(found)} files matched")


def million(root: Path, lines: int) -> None:
    """A task id file of ``lines`` lines, then appends."""
    path = root / "ids.txt"
    with path.open("w") as handle:
        for i in range(lines):
            handle.write(f"task-{i:08d}\n")
    config = parse_config(
        "stores:\n"
        "  - name: shop\n"
        "    base_url: http://127.0.0.1:9\n"
        f"    access_token: {TOKEN}\n"
        "    min_poll_interval: 1h\n"
        f"    task_id_files: ['{root}/*.txt']\n",
        environ={},
    )
    rss_before = _rss_mb()
    poller = Poller(housekeeping_every=3600.0)  # the appends below are read by this script
    start = time.perf_counter()
    poller.apply_config(config)
    first = time.perf_counter() - start
    watched = sum(len(view.tasks) for view in poller.views())
    print(
        f"million: first reading of {lines:,} lines: {first:.2f} s, {watched:,} tasks watched, "
        f"peak RSS {rss_before:.0f} -> {_rss_mb():.0f} MB"
    )
    with path.open("a") as handle:
        handle.write("appended-1\n")
    start = time.perf_counter()
    poller._discover()  # what the discovery thread does each second
    one = time.perf_counter() - start
    watched = sum(len(view.tasks) for view in poller.views())
    print(f"million: one appended line read and watched: {one * 1000:.2f} ms ({watched:,} tasks)")
    with path.open("a") as handle:
        for i in range(lines // 10):
            handle.write(f"more-{i:08d}\n")
    store = poller.stores["shop"]
    store.active.clear()  # nothing due: the scrape's own time is the discovery wait alone
    time.sleep(1.1)  # a task file is looked at once a second at most
    start = time.perf_counter()
    poller.refresh(2.0)
    scrape = time.perf_counter() - start
    with poller.cond:
        read = len(store.tasks) - watched
    print(
        f"million: a scrape (2 s budget) while {lines // 10:,} appended lines are read: "
        f"{scrape * 1000:.0f} ms ({read:,} of them watched when it answered)"
    )
    poller.stop()


def main() -> None:
    """Run the chosen scenarios and print their figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=["loop", "million"], default=None)
    parser.add_argument("--lines", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-abuse-") as directory:
        if args.scenario in (None, "loop"):
            (Path(directory) / "loop").mkdir()
            loop(Path(directory) / "loop")
        if args.scenario in (None, "million"):
            (Path(directory) / "million").mkdir()
            million(Path(directory) / "million", args.lines)


if __name__ == "__main__":
    main()
