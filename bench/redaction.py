"""Cost of redacting the token (any run of 12 of its characters) from API texts.

Times ``Redactor.clean`` on the texts of one answer, in this process, for:

- a typical answer: 100 failed files, ~60-character links and short reasons, no echo;
- the largest answer kept: 1,000 failed files (the kept maximum) with link and reason of
  2,048 characters each (the kept maximum), random printable ASCII, no echo;
- the same with the token minus its last character in every text;
- the naive scan (every position, a 12-character slice looked up in a set) on the largest
  answer, for comparison.

Usage::

    .venv/bin/python -m bench.redaction [--repeat 5] [--markdown | --write-docs]
"""

from __future__ import annotations

import argparse
import random
import string
import time
from collections.abc import Callable

from bench.common import Report, add_output_flags, emit, markdown_table
from exporter.polling.redaction import WINDOW, Redactor

TOKEN = "shpat-0123456789abcdef0123456789abcdef"


def _naive_spans(token: str) -> Callable[[str], int]:
    windows = {token[i : i + WINDOW] for i in range(len(token) - WINDOW + 1)}

    def count(text: str) -> int:
        return sum(text[i : i + WINDOW] in windows for i in range(len(text) - WINDOW + 1))

    return count


def _best(repeat: int, texts: list[str], clean: Callable[[str], object]) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for text in texts:
            clean(text)
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    """Print the time to redact the texts of one answer, per workload."""
    parser = argparse.ArgumentParser(prog="python -m bench.redaction", description=__doc__)
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure; best is shown")
    add_output_flags(parser)
    args = parser.parse_args(argv)
    rng = random.Random(20240601)
    alphabet = string.ascii_letters + string.digits + "/-_.:?=&% "
    typical = [f"https://images.example.com/cat/{i:05d}-{'x' * 20}.jpg" for i in range(100)]
    typical += ["download timeout"] * 100
    largest = ["".join(rng.choices(alphabet, k=2048)) for _ in range(2000)]
    echoed = [text[:1000] + TOKEN[:-1] + text[1000 + len(TOKEN) - 1 :] for text in largest]
    redactor = Redactor(TOKEN)
    assert all(redactor.clean(t).count("<redacted>") == 1 for t in echoed)
    rows = [
        ("typical answer (100 failed files)", typical, redactor.clean),
        ("largest kept (1,000 x 2 x 2,048 chars)", largest, redactor.clean),
        ("largest kept, token echoed in each text", echoed, redactor.clean),
        ("largest kept, naive scan of every position", largest, _naive_spans(TOKEN)),
    ]
    table = markdown_table(
        ["workload", "characters", "time"],
        [
            [name, f"{sum(map(len, texts)):,}", f"{_best(args.repeat, texts, clean) * 1000:.2f} ms"]
            for name, texts, clean in rows
        ],
    )
    setup = (
        f"`Redactor.clean` over the texts of one answer (a token of {len(TOKEN)} characters), "
        f"in this process; best of {args.repeat} runs."
    )
    emit(Report("redaction", "Redaction", f"{setup}\n\n{table}"), parser, args, argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
