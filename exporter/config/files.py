"""Files another party writes: bounded globs, and reads of regular files only.

A directory the exporter watches is written by someone else (an importer, a ConfigMap, an
operator's script), so nothing in it is trusted (docs/design.md, "Rules for files"):

- a glob is walked with ``os.scandir``; ``**`` never enters a directory through a symlink
  and a walk looks at :data:`MAX_WALK_ENTRIES` directory entries at most, so a loop of
  links or a huge tree costs a bounded amount;
- a matched path is used only when, with symlinks resolved, it is a regular file inside the
  glob's base directory (the part of the pattern before the first wildcard; for a pattern
  without wildcards, its directory). Kubernetes' ``..data`` links stay inside and work;
- every open is non-blocking and checked with ``fstat``: a FIFO, a device (``/dev/zero``)
  or a directory is refused before a byte is read.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass

#: Directory entries one glob looks at, at most (a loop of links costs nothing more).
MAX_WALK_ENTRIES = 100_000
#: Directories ``**`` descends at most.
MAX_DEPTH = 32

_MAGIC = re.compile(r"[*?[]")
_ESCAPED = re.compile(r"\[([*?[])\]")  # glob.escape's form of a literal * ? [


class NotRegularFile(OSError):
    """The path is a FIFO, a device, a directory or a socket: never read."""


@dataclass(frozen=True)
class Matches:
    """What one glob matched: the admitted files and what was skipped, with reasons."""

    files: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...] = ()  # (path, reason)
    truncated: bool = False  # the walk hit MAX_WALK_ENTRIES


def _literal(component: str) -> str | None:
    """The name a pattern component stands for, or None when it holds a wildcard."""
    if _MAGIC.search(_ESCAPED.sub("", component)):
        return None
    return _ESCAPED.sub(r"\1", component)


def split_pattern(pattern: str) -> tuple[str, list[str]]:
    """(base directory, wildcard components): base is the part before the first wildcard."""
    parts = os.path.normpath(pattern).split(os.sep)
    base: list[str] = []
    for position, part in enumerate(parts):
        literal = _literal(part)
        if literal is None:
            return _join(base), parts[position:]
        base.append(literal)
    path = _join(base)
    return os.path.dirname(path) or os.curdir, [glob_escape(os.path.basename(path))]


def _join(parts: list[str]) -> str:
    if parts == [""]:
        return os.sep  # the pattern's first component after "/" holds a wildcard
    return os.sep.join(parts) or os.curdir


def glob_escape(name: str) -> str:
    """``name`` as a pattern that matches only itself."""
    return re.sub(r"([*?[])", r"[\1]", name)


def glob_base(pattern: str) -> str:
    """The directory a pattern's matches must stay inside (before the first wildcard)."""
    return split_pattern(pattern)[0]


class _Walk:
    """One bounded walk of the wildcard components below a base directory."""

    def __init__(self) -> None:
        self.budget = MAX_WALK_ENTRIES
        self.truncated = False

    def entries(self, directory: str) -> list[os.DirEntry[str]]:
        if self.budget <= 0:
            self.truncated = True
            return []
        found: list[os.DirEntry[str]] = []
        try:
            with os.scandir(directory) as scan:
                for entry in scan:
                    self.budget -= 1
                    if self.budget < 0:
                        self.truncated = True
                        break
                    found.append(entry)
        except (OSError, ValueError):
            return []
        return found

    def match(self, directory: str, parts: list[str], depth: int = 0) -> Iterator[str]:
        part, rest = parts[0], parts[1:]
        if part == "**":
            while rest and rest[0] == "**":
                rest = rest[1:]
            if not rest:
                rest = ["*"]  # "dir/**" lists the files below dir
            yield from self.match(directory, rest, depth)
            if depth >= MAX_DEPTH:
                return
            for entry in self.entries(directory):
                if _hidden(entry.name) or not _is_real_dir(entry):
                    continue  # never through a symlink: a loop of links costs nothing
                yield from self.match(entry.path, parts, depth + 1)
            return
        literal = _literal(part)
        if literal is not None:
            path = os.path.join(directory, literal)
            if not rest:
                if os.path.lexists(path):
                    yield path
            elif os.path.isdir(path):
                yield from self.match(path, rest, depth)
            return
        hidden_ok = part.startswith(".")
        for entry in self.entries(directory):
            if (_hidden(entry.name) and not hidden_ok) or not fnmatch.fnmatchcase(entry.name, part):
                continue
            if not rest:
                yield entry.path
            elif _is_dir(entry):  # one level through a link: bounded by the pattern
                yield from self.match(entry.path, rest, depth)


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _is_real_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def admit(path: str, base: str) -> str | None:
    """Why ``path`` must not be read (None: it may): a regular file inside ``base``."""
    try:
        real = os.path.realpath(path)
        inside = os.path.realpath(base)
    except (OSError, ValueError):
        return "cannot resolve the path"
    if real != inside and os.path.commonpath([real, inside]) != inside:
        return "resolves outside the directory its glob starts from"
    try:
        st = os.stat(real)
    except (OSError, ValueError):
        return "gone"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    return None


def expand(patterns: tuple[str, ...] | list[str]) -> Matches:
    """The regular files the patterns match inside their bases, sorted, each once."""
    files: set[str] = set()
    skipped: dict[str, str] = {}
    truncated = False
    for pattern in patterns:
        if not pattern or "\0" in pattern:
            continue
        base, parts = split_pattern(pattern)
        walk = _Walk()
        for found in walk.match(base, parts):
            path = os.path.normpath(found)
            if path in files or path in skipped:
                continue
            reason = admit(path, base)
            if reason is None:
                files.add(path)
            elif reason != "not a regular file" or not os.path.isdir(path):
                skipped[path] = reason  # a directory matching "*.txt" is simply not a file
        truncated = truncated or walk.truncated
    return Matches(tuple(sorted(files)), tuple(sorted(skipped.items())), truncated)


def open_regular(path: str, *, follow: bool = True) -> int:
    """A read-only descriptor of ``path`` if it is a regular file; OSError otherwise.

    The open never blocks (a FIFO without a writer), and a device such as ``/dev/zero``
    is refused before a byte is read.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if not follow:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        if not stat.S_ISREG(mode):
            raise NotRegularFile(0, f"not a regular file ({_kind(mode)})", path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: str, limit: int | None = None, *, follow: bool = True) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` + 1 of them."""
    fd = open_regular(path, follow=follow)
    with os.fdopen(fd, "rb") as handle:
        return handle.read() if limit is None else handle.read(limit + 1)


def file_kind_problem(path: str) -> str | None:
    """Why ``path`` is not a regular file or absent ("a FIFO", "a directory", ...)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return f"cannot be examined: {getattr(exc, 'strerror', None) or exc}"
    if stat.S_ISREG(mode):
        return None
    return f"is {_kind(mode)}, not a regular file"


def _kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    for test, name in kinds:
        if test(mode):
            return name
    return "not a file"
