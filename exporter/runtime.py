"""Process-wide tuning done once at start: the open-files limit and the allocator.

Both are facts of the platform the exporter runs on, not of its logic (docs/design.md,
"The HTTP server" and "Exposition").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import resource

log = logging.getLogger("exporter")

# glibc's mallopt() parameters: the size from which allocations are mmap()ed, and the
# number of malloc arenas threads may spread over.
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
MMAP_THRESHOLD = 1 << 20
MALLOC_ARENAS = 2


def raise_open_files_limit() -> int:
    """Raise the soft open-files limit to the hard one, as Go programs do; the new soft limit.

    Each connection the server holds is a file descriptor; Python keeps the soft limit it
    was given (often 1024), far below what the hard limit allows (docs/design.md,
    "The HTTP server").
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        log.info("open files limit", extra={"limit": soft})
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        log.warning(
            "cannot raise the open files limit",
            extra={"limit": soft, "hard_limit": hard, "err": str(exc)},
        )
        return soft
    log.info("open files limit raised", extra={"limit": hard, "previous": soft})
    return hard


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library, looked up once (``find_library`` runs ``ldconfig`` on Linux)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def release_free_memory() -> bool:
    """Give memory the allocator holds but nobody uses back to the system (glibc only).

    Rendering a large fleet for the first time leaves freed pieces spread over the heap;
    ``malloc_trim`` returns their pages and costs little when there is nothing to return
    (docs/design.md, "Exposition"; docs/performance.md#design-measurements).
    """
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return False
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int
    trim(0)
    return True


def return_large_buffers_to_the_system(threshold: int = MMAP_THRESHOLD) -> bool:
    """Have glibc mmap() every allocation from ``threshold`` bytes on; True when it took.

    A scrape builds bodies of megabytes on one of several worker threads. glibc's default
    threshold grows after such a buffer is freed, so the next ones come from per-thread
    arenas that keep the memory: steady scrapes of 10,000 tasks then held about twice as much
    (docs/performance.md#design-measurements). A fixed threshold gives big buffers back to the
    system when they are freed. Elsewhere than glibc this does nothing.
    """
    return _mallopt("mmap_threshold", _M_MMAP_THRESHOLD, threshold)


def limit_malloc_arenas(count: int = MALLOC_ARENAS) -> bool:
    """Have glibc's threads share ``count`` malloc arenas; True when it took.

    glibc gives threads that allocate at the same time arenas of their own, up to eight per
    core, and each keeps what it once held. The 32 fetch workers of a fleet's first round
    spread their buffers that way; two arenas keep less of it (`bench/fleet.py`,
    docs/performance.md#design-measurements). Python's own
    objects do not use these arenas, and the workers wait on the network, not on malloc.
    ``MALLOC_ARENA_MAX`` set in the environment wins; elsewhere than glibc this does
    nothing.
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    return _mallopt("malloc_arenas", _M_ARENA_MAX, count)


def _mallopt(name: str, param: int, value: int) -> bool:
    """glibc's ``mallopt(param, value)``; True when it took, False without glibc."""
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(param, value))
    log.debug("allocator tuned", extra={name: value, "ok": ok})
    return ok
