"""What watching store files costs: 1,000 store files, one store and one token file each.

Prints the time of the first read (every file parsed, every token read), of a steady check
(nothing changed: a glob and a stat per file), and of a check after one file changed.
Run: ``python -m bench.store_files [--files N] [--rounds N]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

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


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        path = _setup(root, args.files)
        config = parse_config(Path(path).read_text(), path)
        watcher = StoreFiles(config, clock=time.monotonic)
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
            assert watcher.refresh(force=True) is True
            changed.append(time.perf_counter() - start)
    print(f"store files: {args.files}, one store and one token file each")
    print(f"first read (parse all, read all tokens): {first * 1000:8.1f} ms")
    print(f"steady check, nothing changed (median): {statistics.median(steady) * 1000:8.1f} ms")
    print(f"check after one file changed (median):  {statistics.median(changed) * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
