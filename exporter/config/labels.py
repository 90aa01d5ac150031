"""Task context labels: their rules, and the ``id name=value ...`` lines of task id files.

A task may carry up to 8 labels that end up on ``shoplazza_upload_task_info``; names follow
Prometheus (``[a-zA-Z_][a-zA-Z0-9_]*``, not ``store``, ``task_id`` or ``__*``), values are
at most 256 characters without control characters (docs/design.md, "Configuration").
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from exporter.config.kit import quoted
from exporter.config.model import TASK_ID_RE, Labels

LABEL_NAME_RE = re.compile(r"\A[a-zA-Z_][a-zA-Z0-9_]*\Z")
RESERVED_LABELS = ("store", "task_id")
MAX_LABELS = 8
MAX_LABEL_VALUE = 256

_ID_RE = re.compile(r"[^\s#]*")
_SPACE_RE = re.compile(r"\s*")
_PAIR_RE = re.compile(r'([^\s=#"]+)=(?:"((?:[^"\\]|\\.)*)"|([^\s"#]*))(?=\s|#|\Z)')
_ESCAPE_RE = re.compile(r"\\(.)")


def _skip_space(line: str, pos: int) -> int:
    match = _SPACE_RE.match(line, pos)
    return match.end() if match else pos


class LineProblem(ValueError):
    """Why a task id file line is skipped; the message quotes no more than the line does.

    ``reason`` says why without quoting the line: it is what the log shows, since a file
    another party writes may hold anything (docs/design.md, "Rules for files").
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


_BAD_ID = "invalid task id (use [A-Za-z0-9_-], 1 to 128 characters)"
_BAD_LABEL = 'invalid label (use name=value or name="a value")'
_BAD_LABELS = (
    "invalid labels (names [a-zA-Z_][a-zA-Z0-9_]*, not store, task_id or __*; "
    "at most 8; values at most 256 characters without control characters)"
)


def label_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a context label name, or None."""
    if not LABEL_NAME_RE.match(name):
        return f"invalid label name {quoted(name, 64)} (use [a-zA-Z_][a-zA-Z0-9_]*)"
    if name in RESERVED_LABELS or name.startswith("__"):
        return f"label name {quoted(name)} is reserved"
    return None


def label_value_problem(name: str, value: str) -> str | None:
    """Why ``value`` cannot be the value of label ``name``, or None."""
    if len(value) > MAX_LABEL_VALUE:
        return f"label {name}: value longer than {MAX_LABEL_VALUE} characters"
    if any(ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0 for char in value):
        return f"label {name}: value holds control characters"
    return None


def labels_problem(pairs: Iterable[tuple[str, str]]) -> str | None:
    """The first broken rule among ``pairs`` (names, values, count, repeats), or None."""
    seen: set[str] = set()
    for name, value in pairs:
        problem = label_name_problem(name) or label_value_problem(name, value)
        if problem is not None:
            return problem
        if name in seen:
            return f"label {name} given twice"
        seen.add(name)
    if len(seen) > MAX_LABELS:
        return f"too many labels ({len(seen)}, at most {MAX_LABELS})"
    return None


def parse_task_line(line: str) -> tuple[str, Labels] | None:
    """``id [name=value | name="a value"]... [# comment]`` -> (id, labels); None if blank.

    Raises LineProblem for a line that breaks the rules.
    """
    start = _skip_space(line, 0)
    match = _ID_RE.match(line, start)
    pos = match.end() if match else start
    task_id = line[start:pos]
    if not task_id:
        return None
    head = line[pos:].split("#", 1)[0]
    if "=" not in head and head.strip():
        # no labels: the old rule, one id a line ("two ids" is an invalid id)
        raise LineProblem(f"invalid task id {quoted(line.split('#', 1)[0].strip())}", _BAD_ID)
    if not TASK_ID_RE.match(task_id):
        raise LineProblem(f"invalid task id {quoted(task_id)}", _BAD_ID)
    pairs: list[tuple[str, str]] = []
    while True:
        pos = _skip_space(line, pos)
        if pos >= len(line) or line[pos] == "#":
            break
        pair = _PAIR_RE.match(line, pos)
        if pair is None:
            word = line[pos:].split(None, 1)[0]
            raise LineProblem(
                f'invalid label {quoted(word, 64)} (use name=value or name="a value")', _BAD_LABEL
            )
        name, quoted_value, bare = pair.groups()
        value = _ESCAPE_RE.sub(r"\1", quoted_value) if quoted_value is not None else bare
        pairs.append((name, value))
        pos = pair.end()
    problem = labels_problem(pairs)
    if problem is not None:
        raise LineProblem(problem, _BAD_LABELS)
    return task_id, tuple(sorted(pairs))
