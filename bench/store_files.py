"""What watching store files costs: 1,000 store files, one store and one token file each.

Prints the time of the first read (every file parsed, every token read), of a steady check
(nothing changed: a glob and a stat per file), and of a check after one file changed.
Run: ``python -m bench.store_files [--files N] [--rounds N] [--markdown | --write-docs]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import Report, add_output_flags, emit, markdown_table
from exporter.config import parse_config
from exporter.config.watch import StoreFiles


def _setup(root: Path, files: int) -> str:
    (root / "stores.d").mkdir()
    (root / "secrets").mkdir()
    for i in range(files):
        name = f"store-{i:05d}"
        (root / "secrets" / name).write_text(f"token-of-{name}-0123456789\n")
        (root / "stores.d" / f"{name}.yaml").write_text(
            f"stores:\n  - name: {name}\n    domain: {name}.myshoplaza.com\n"
        )
    config = root / "config.yaml"
    config.write_text(
        'store_files: ["stores.d/*.yaml"]\n'
        'defaults:\n  access_token_file: "secrets/{store}"\n'
        '  task_id_files: ["tasks/{store}/*.txt"]\n'
    )
    return str(config)


def main(argv: list[str] | None = None) -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(prog="python -m bench.store_files", description=__doc__)
    parser.add_argument("--files", type=int, default=1000, help="store files (1000)")
    parser.add_argument("--rounds", type=int, default=20, help="checks timed, each kind (20)")
    add_output_flags(parser)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        path = _setup(root, args.files)
        config = parse_config(Path(path).read_text(), path)
        # A clock moved by hand: a changed file applies once its content held for a second.
        clock = [0.0]
        watcher = StoreFiles(config, clock=lambda: clock[0])
        start = time.perf_counter()
        watcher.refresh(force=True)
        first = time.perf_counter() - start
        assert len(watcher.stores) == args.files and watcher.invalid == 0
        steady, changed = [], []
        for i in range(args.rounds):
            start = time.perf_counter()
            assert watcher.refresh(force=True) is False
            steady.append(time.perf_counter() - start)
            target = root / "stores.d" / f"store-{i:05d}.yaml"
            target.write_text(target.read_text() + "    timeout: 3s\n")
            start = time.perf_counter()
            assert watcher.refresh(force=True) is False  # seen, not applied before it settles
            clock[0] += 1.5
            assert watcher.refresh(force=True) is True
            changed.append((time.perf_counter() - start) / 2)
    rows = [
        ["first read (parse all, read all tokens)", f"{first * 1000:.1f} ms"],
        ["steady check, nothing changed (median)", f"{statistics.median(steady) * 1000:.1f} ms"],
        [
            "check after one file changed (median)",
            f"{statistics.median(changed) * 1000:.1f} ms",
        ],
    ]
    setup = (
        f"{args.files:,} store files, one store and one token file each, in one process; "
        f"{args.rounds} checks of each kind. A check is a glob and a `stat` per file; a "
        "changed file is read by two checks a second apart (it applies once its content "
        "held), and the time is per check."
    )
    table = markdown_table(["figure", "time"], rows)
    emit(Report("store_files", "Store files", f"{setup}\n\n{table}"), parser, args, argv)


if __name__ == "__main__":
    main()
