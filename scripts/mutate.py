"""Mutation testing, small and by hand: change one line of a module the way a maintainer's
slip would, run a chosen test selection, and count the mutants the tests catch.

Not part of CI (it runs the tests once per mutant). Usage::

    python scripts/mutate.py exporter/polling/store.py -- tests/polling/test_store.py ...
    python scripts/mutate.py MODULE --list              # the mutants, numbered
    python scripts/mutate.py MODULE --sample 30 --seed 1 -- TESTS...
    python scripts/mutate.py MODULE --only 12,40 -- TESTS...

Each mutant changes one operator, constant or call on one line (``<`` to ``<=``, ``and`` to
``or``, ``max`` to ``min``, ``not`` dropped, ``+ 1`` to ``- 1``, a statement replaced by
``pass``...); docstrings, comments, logging and imports are left alone. A mutant is
*killed* when the tests fail or time out, *survived* when they pass. The module is restored
after every run, also on Ctrl-C. Prints one line per mutant and the kill ratio.
"""

from __future__ import annotations

import argparse
import ast
import os
import random
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

SWAPS: list[tuple[str, str]] = [
    (" <= ", " < "),
    (" >= ", " > "),
    (" < ", " <= "),
    (" > ", " >= "),
    (" == ", " != "),
    (" != ", " == "),
    (" is not ", " is "),
    (" is ", " is not "),
    (" not in ", " in "),
    (" and ", " or "),
    (" or ", " and "),
    ("max(", "min("),
    ("min(", "max("),
    (" + ", " - "),
    (" - ", " + "),
    (" * ", " / "),
    ("True", "False"),
    ("False", "True"),
    ("+= 1", "-= 1"),
    ("-= 1", "+= 1"),
    ("if not ", "if "),
    ("and not ", "and "),
    ("or not ", "or "),
    ("return not ", "return "),
]
_SKIP = re.compile(
    r"^\s*(#|import |from |@|def |class |log\.|self\.logger\.|self\._debug\(|self\._warn\("
    r"|logger\.|\"|')"
)
_SIMPLE = re.compile(r"^\s*(self\.)?[\w.\[\]]+\s*(=|\+=|-=)\s*[^=]|^\s*[\w.]+\(.*\)\s*$")


@dataclass(frozen=True)
class Mutant:
    number: int
    line: int  # 1-based
    before: str
    after: str


def _docstring_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            value = body[0].value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                end = body[0].end_lineno or body[0].lineno
                lines.update(range(body[0].lineno, end + 1))
    return lines


def _complete(source: str) -> bool:
    try:
        compile(source, "<mutant>", "exec")
    except SyntaxError:
        return False
    return True


def mutants(path: Path) -> list[Mutant]:
    """Every single-line mutant of ``path`` that still compiles."""
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines(keepends=True)
    skip = _docstring_lines(ast.parse(source))
    found: list[Mutant] = []
    for index, text in enumerate(lines):
        number = index + 1
        code = text.split("  #", 1)[0]
        if number in skip or not code.strip() or _SKIP.match(code) or "__slots__" in code:
            continue
        candidates: list[str] = []
        for old, new in SWAPS:
            if old in code and not (old == " in " and code.lstrip().startswith("for ")):
                candidates.append(text.replace(old, new, 1))
        for match in re.finditer(r"(?<![\w.])(\d+(?:\.\d+)?)(?![\w.])", code):
            value = match.group(1)
            bumped = str(float(value) + 1) if "." in value else str(int(value) + 1)
            candidates.append(text[: match.start()] + bumped + text[match.end() :])
        stripped = code.strip()
        if (
            _SIMPLE.match(code)
            and not stripped.endswith(("(", "[", "{", ",", "\\", ":"))
            and stripped.count("(") == stripped.count(")")
        ):
            indent = text[: len(text) - len(text.lstrip())]
            candidates.append(f"{indent}pass  # mutant: statement removed\n")
        if stripped in ("continue", "break", "return"):
            indent = text[: len(text) - len(text.lstrip())]
            candidates.append(f"{indent}pass  # mutant: {stripped} removed\n")
        for after in dict.fromkeys(candidates):
            if after == text:
                continue
            mutated = "".join([*lines[:index], after, *lines[index + 1 :]])
            if _complete(mutated):
                found.append(Mutant(len(found) + 1, number, text.rstrip("\n"), after.rstrip("\n")))
    return found


def run(path: Path, mutant: Mutant, tests: list[str], timeout: float) -> tuple[str, float]:
    """Apply ``mutant``, run the tests, restore; returns (killed|survived|timeout, seconds)."""
    original = path.read_bytes()
    lines = original.decode("utf-8").splitlines(keepends=True)
    lines[mutant.line - 1] = mutant.after + "\n"
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    started = time.monotonic()
    try:
        path.write_text("".join(lines), encoding="utf-8")
        command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
        try:
            done = subprocess.run(command, env=env, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return "timeout", time.monotonic() - started
        outcome = "survived" if done.returncode == 0 else "killed"
        if done.returncode not in (0, 1):
            outcome = f"error({done.returncode})"
        return outcome, time.monotonic() - started
    finally:
        path.write_bytes(original)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("module", type=Path)
    parser.add_argument("--list", action="store_true", help="print the mutants and exit")
    parser.add_argument("--only", default="", help="comma-separated mutant numbers")
    parser.add_argument("--sample", type=int, default=0, help="run this many, chosen at random")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per mutant")
    argv = sys.argv[1:] if argv is None else argv
    tests: list[str] = []
    if "--" in argv:  # the tests to run: test files or node ids
        at = argv.index("--")
        argv, tests = argv[:at], argv[at + 1 :]
    args = parser.parse_args(argv)
    found = mutants(args.module)
    if args.list:
        for m in found:
            print(f"{m.number:4d} L{m.line:<4d} {m.after.strip()}")
        print(f"{len(found)} mutants")
        return 0
    chosen = found
    if args.only:
        wanted = {int(n) for n in args.only.split(",")}
        chosen = [m for m in found if m.number in wanted]
    elif args.sample:
        chosen = sorted(random.Random(args.seed).sample(found, min(args.sample, len(found))),
                        key=lambda m: m.number)  # fmt: skip
    if not tests:
        parser.error("name the tests to run after --")
    killed = 0
    for m in chosen:
        outcome, seconds = run(args.module, m, tests, args.timeout)
        killed += outcome in ("killed", "timeout")
        print(f"{outcome:9s} {seconds:6.1f}s #{m.number} L{m.line}: {m.after.strip()}", flush=True)
    print(f"{args.module}: {killed}/{len(chosen)} killed of {len(found)} mutants", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
