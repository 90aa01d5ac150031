"""The /metrics body, rendered incrementally and cached (docs/design.md, "Exposition").

Between two scrapes almost nothing changes: completed tasks never do, a task in progress at
most once per ``min_poll_interval``, a store's counters only when requests were made. So
:class:`Exposition` renders the lines of a segment of up to :data:`SEGMENT` tasks, or of a
store's counters, again only when the values they show changed, and keeps them only
compressed: per family, the lines of :data:`BLOCK_UNITS` consecutive units in one
raw-deflate block. The body is assembled in a stable order (families in
:mod:`exporter.metrics.families` order, stores and tasks in view order): a gzip body (one standard
gzip member) concatenates the blocks as they are, a plain body inflates them. Only the
small tail (exporter-wide gauges, ``process_*``, ``python_*``) is encoded on every scrape,
by prometheus_client itself.

The result is byte-identical to prometheus_client's encoders over the registry
(:attr:`Exposition.registry`), which the tests check for every format; formats whose name
escaping would change our names (``escaping=dots``/``values``) and ``name[]`` filters go
through that registry, which holds one collector per family, so that a filter builds only
the families it shows (as ``restricted_registry`` selects them, in a stable order).
"""

from __future__ import annotations

import array
import functools
import itertools
import struct
import threading
import time
import weakref
import zlib
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client import exposition as text_format
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as om_format
from prometheus_client.registry import Collector

from exporter.metrics.families import (
    STORE_FAMILIES,
    described,
    family_collectors,
    global_families,
    store_families,
)
from exporter.metrics.lines import SEGMENT, TASK_NAMES, render_segment
from exporter.model import ExporterView, StoreView, TaskRecord

__all__ = ["BLOCK_UNITS", "SEGMENT", "Body", "Exposition", "default_collectors"]

Render = Callable[[], tuple[bytes, ...]]  # a unit's lines, one chunk per family

#: Units (a store's counters, or a segment of a store's tasks) per compressed block.
BLOCK_UNITS = 32
#: Seconds to render one task not rendered before, until renders measured it (about what
#: a first render of 1,000,000 tasks took on the benchmark machine, docs/performance.md).
FIRST_TASK_COST = 10e-6
#: Renders of fewer new tasks than this are too small to measure the cost per task.
_MEASURED_FROM = 1000

_FAST_ESCAPINGS = frozenset({om_format.UNDERSCORES, om_format.ALLOWUTF8})
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no mtime, unknown OS
_FINAL_BLOCK = b"\x03\x00"  # an empty final deflate block


class _Shared:
    """The cached part of a body, findable again while a :class:`Body` holds it."""

    __slots__ = ("__weakref__", "data")

    def __init__(self, data: bytes) -> None:
        self.data = data


class Body(list[bytes]):
    """A /metrics body as chunks (join them for the bytes); while it lives, the next
    render of the same format and cached content reuses its first chunk, the same object
    (docs/design.md, "Rules for abuse: the server")."""

    __slots__ = ("_holds",)

    def __init__(self, chunks: Iterable[bytes], holds: _Shared | None = None) -> None:
        super().__init__(chunks)
        self._holds = holds


class _Families:
    """A collector of ready families (what the encoders need)."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        """The families."""
        return self._families


class _Piece:
    """A part of the body: its chunks (cached lines, never joined) and, once a gzip scrape
    asked, their raw deflate, flushed to a byte boundary and not final."""

    __slots__ = ("_deflated", "chunks")

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self._deflated: bytes | None = None

    @property
    def deflated(self) -> bytes:
        """The chunks' raw deflate, made once."""
        if self._deflated is None:
            compressor = zlib.compressobj(1, zlib.DEFLATED, -15)
            out = [compressor.compress(chunk) for chunk in self.chunks]
            out.append(compressor.flush(zlib.Z_SYNC_FLUSH))
            self._deflated = b"".join(out)
        return self._deflated


class _Block:
    """One family's lines of up to :data:`BLOCK_UNITS` consecutive units (a store's counters,
    or a segment of a store's tasks), held only as raw deflate, flushed to a byte boundary
    and not final: blocks concatenate into a gzip body as they are, and the text is inflated
    when a plain scrape or a change needs it (docs/design.md, "Exposition")."""

    __slots__ = ("adjust", "deflated", "ends")

    def __init__(self, chunks: Sequence[bytes]) -> None:
        text = b"".join(chunks)
        self.ends = array.array("L", itertools.accumulate(map(len, chunks)))
        compressor = zlib.compressobj(1, zlib.DEFLATED, -15)
        self.deflated = compressor.compress(text) + compressor.flush(zlib.Z_SYNC_FLUSH)
        # crc32(prefix + text) = crc32(len(text) zeros, crc32(prefix)) ^ adjust (_chain)
        self.adjust = zlib.crc32(text) ^ _crc_of_zeros(len(text), 0)

    @property
    def size(self) -> int:
        """Bytes of text."""
        return self.ends[-1] if self.ends else 0

    def text(self) -> bytes:
        """The lines, inflated."""
        return zlib.decompressobj(-15).decompress(self.deflated)

    def chunks(self) -> list[bytes]:
        """Each unit's lines."""
        text = self.text()
        starts = itertools.chain((0,), self.ends)
        return [text[start:end] for start, end in zip(starts, self.ends, strict=False)]


class _Section:
    """The cached families of one kind of unit: the units in body order and, per family,
    the blocks of their lines."""

    __slots__ = ("blocks", "index", "units")

    def __init__(self, families: int) -> None:
        self.units: list[Hashable] = []
        self.index: dict[Hashable, int] = {}
        self.blocks: list[list[_Block]] = [[] for _ in range(families)]

    def update(self, units: list[Hashable], fresh: dict[Hashable, Render]) -> bool:
        """Take ``units`` in this order, with new lines for the units in ``fresh`` (every
        unit not in the previous order is); True when anything changed.

        Lines are rendered a block at a time, as they are compressed, so that a first
        render never holds the whole text of a fleet (docs/design.md, "Exposition").
        """
        if units == self.units:
            dirty: dict[int, list[tuple[int, Render]]] = {}
            for unit, render in fresh.items():
                block, at = divmod(self.index[unit], BLOCK_UNITS)
                dirty.setdefault(block, []).append((at, render))
            for block, changes in dirty.items():
                rendered = [(at, render()) for at, render in changes]
                for family, blocks in enumerate(self.blocks):
                    parts = blocks[block].chunks()
                    for at, chunks in rendered:
                        parts[at] = chunks[family]
                    blocks[block] = _Block(parts)
            return bool(dirty)
        old = _OldLines(self.blocks)
        new_blocks: list[list[_Block]] = [[] for _ in self.blocks]
        for start in range(0, len(units), BLOCK_UNITS):
            group = units[start : start + BLOCK_UNITS]
            lines = [make() if (make := fresh.get(unit)) is not None else None for unit in group]
            for family, blocks in enumerate(new_blocks):
                parts = [
                    old.get(family, self.index[unit]) if chunks is None else chunks[family]
                    for unit, chunks in zip(group, lines, strict=True)
                ]
                blocks.append(_Block(parts))
        self.blocks = new_blocks
        self.units = units
        self.index = {unit: i for i, unit in enumerate(units)}
        return True


class _OldLines:
    """Units' lines from the blocks of a previous layout, a few inflated blocks at a time
    (units mostly keep their order, so a block is rarely inflated twice)."""

    KEPT = 4

    def __init__(self, blocks: list[list[_Block]]) -> None:
        self._blocks = blocks
        self._inflated: list[dict[int, list[bytes]]] = [{} for _ in blocks]

    def get(self, family: int, index: int) -> bytes:
        """The lines of the unit at ``index`` of the previous layout, for ``family``."""
        number, at = divmod(index, BLOCK_UNITS)
        inflated = self._inflated[family]
        chunks = inflated.get(number)
        if chunks is None:
            if len(inflated) >= self.KEPT:
                del inflated[next(iter(inflated))]
            chunks = inflated[number] = self._blocks[family][number].chunks()
        return chunks[at]


class _Store:
    """What is remembered of one store to tell what changed: the view last rendered and
    each segment's task records. Views and records are immutable and replaced on every
    change, so identity tells what changed (docs/design.md, "Exposition")."""

    __slots__ = ("segments", "view")

    def __init__(self) -> None:
        self.view: StoreView | None = None
        self.segments: list[Sequence[TaskRecord]] = []


def default_collectors() -> tuple[Collector, ...]:
    """prometheus_client's process_* and python_* collectors, not on the global registry."""
    scratch = CollectorRegistry()  # GCCollector insists on registering somewhere
    return (ProcessCollector(registry=None), PlatformCollector(registry=None), GCCollector(scratch))


def _stats_changed(old: StoreView | None, new: StoreView) -> bool:
    """True when the store's counters, histogram or watched-task count differ."""
    return (
        old is None
        or old.requests != new.requests
        or old.errors != new.errors
        or old.skipped != new.skipped
        or old.buckets != new.buckets
        or old.duration_count != new.duration_count
        or old.duration_sum != new.duration_sum
        or len(old.tasks) != len(new.tasks)
        or old.registered != new.registered
    )


def _encoding(encoder: Callable[..., bytes]) -> str | None:
    """ "text" or "om" when the fast path writes what ``encoder`` would; None otherwise."""
    func = getattr(encoder, "func", encoder)
    keywords = getattr(encoder, "keywords", None) or {}
    if keywords.get("escaping", om_format.UNDERSCORES) not in _FAST_ESCAPINGS:
        return None
    if func is text_format.generate_latest:
        return "text"
    if func is om_format.generate_latest:
        return "om"
    return None


_ENCODERS: dict[str, Callable[[_Families], bytes]] = {
    "text": text_format.generate_latest,
    "om": om_format.generate_latest,
}


def _header(fmt: str, family: Metric) -> bytes:
    return _ENCODERS[fmt](_Families([family])).removesuffix(b"# EOF\n")


class Exposition:
    """Renders an :class:`ExporterView` for /metrics; one per app, safe to share by threads."""

    def __init__(self, extra: Sequence[Collector] | None = None) -> None:
        self._lock = threading.Lock()
        self._view: ExporterView | None = None
        # Outside render() the registry holds no view: it then yields only process_/python_*.
        self.registry = CollectorRegistry(auto_describe=True)
        self._extra = tuple(default_collectors() if extra is None else extra)
        # Each collector also on a registry of its own, in registration order: a name[]
        # filter asks each one's restricted_registry in turn (see _generic).
        self._each: list[CollectorRegistry] = []
        for collector in (*family_collectors(lambda: self._view), *self._extra):
            self.registry.register(collector)
            alone = CollectorRegistry(auto_describe=True)
            alone.register(collector)
            self._each.append(alone)
        families = described()
        cached = families[: len(TASK_NAMES) + len(STORE_FAMILIES)]  # the rest is the tail
        self._headers = {fmt: [_Piece([_header(fmt, f)]) for f in cached] for fmt in _ENCODERS}
        self._text_headers = [h.chunks[0] for h in self._headers["text"]]
        self._stores: dict[str, _Store] = {}
        self._tasks = _Section(len(TASK_NAMES))  # units: (store, segment number)
        self._stats = _Section(len(STORE_FAMILIES))  # units: store names
        self.generation = 0  # grows whenever a cached section changes
        self._tasks_rendered = 0  # tasks of the view last brought into the cache
        self.task_cost = FIRST_TASK_COST  # seconds per new task, learned from renders
        self._prefix_crc: dict[str, tuple[int, int, int]] = {}  # fmt: (generation, crc, size)
        # (fmt, gzipped): (generation, the cached part while a body holds it)
        self._shared: dict[tuple[str, bool], tuple[int, weakref.ref[_Shared]]] = {}

    def render(
        self, view: ExporterView, accept: str, names: frozenset[str] | None, gzipped: bool
    ) -> tuple[str, bytes]:
        """(Content-Type, body) for one scrape; the body is gzip-compressed when ``gzipped``."""
        content_type, body = self.render_body(view, accept, names, gzipped)
        return content_type, b"".join(body)

    def render_body(
        self, view: ExporterView, accept: str, names: frozenset[str] | None, gzipped: bool
    ) -> tuple[str, Body]:
        """Like :meth:`render`, the body as chunks: while any :class:`Body` of the same
        format and cached content is alive, its large first chunk is the same object, so
        clients that do not read share one rendered body (docs/design.md, "Rules for abuse:
        the server")."""
        encoder, content_type = choose_encoder(accept)
        fmt = _encoding(encoder)
        with self._lock:
            self._view = view
            try:
                if names is None and fmt is not None:
                    self._timed_update(view)
                    return content_type, self._assemble(view, fmt, gzipped)
                # A filter builds only the families it shows (one collector per family): no
                # cache to bring up to date, nothing worth caching (docs/design.md).
                return content_type, Body([self._generic(view, encoder, names, gzipped)])
            finally:
                self._view = None

    # ---- cache ---------------------------------------------------------------------------

    def unrendered(self, view: ExporterView) -> int:
        """About how many of ``view``'s tasks are not in the cache (added since the last
        render): what a render of it would cost beyond the usual, in tasks."""
        return max(sum(len(store.tasks) for store in view.stores) - self._tasks_rendered, 0)

    def estimate(self, view: ExporterView) -> float:
        """Seconds that rendering the tasks of ``view`` not yet cached would take."""
        return self.unrendered(view) * self.task_cost

    def warm(self, view: ExporterView) -> None:
        """Bring the cache up to date with ``view`` without answering anyone: the first
        render of many new tasks happens here, off the scrape's path (docs/design.md,
        "Exposition")."""
        with self._lock:
            self._view = view
            try:
                self._timed_update(view)
            finally:
                self._view = None

    def _timed_update(self, view: ExporterView) -> None:
        """:meth:`_update`, learning the cost of a new task from the larger renders."""
        new = self.unrendered(view)
        started = time.monotonic()
        self._update(view)
        if new >= _MEASURED_FROM:
            took = (time.monotonic() - started) / new
            self.task_cost = 0.5 * self.task_cost + 0.5 * took
        self._tasks_rendered = sum(len(store.tasks) for store in view.stores)

    def _update(self, view: ExporterView) -> None:
        """Bring the cached sections up to date with ``view``."""
        stores: dict[str, _Store] = {}
        task_units: list[Hashable] = []
        fresh_tasks: dict[Hashable, Render] = {}
        fresh_stats: dict[Hashable, Render] = {}
        for store_view in view.stores:
            name = store_view.name
            cached = stores[name] = self._stores.get(name) or _Store()
            if store_view is not cached.view and _stats_changed(cached.view, store_view):
                fresh_stats[name] = functools.partial(self._store_lines, store_view)
            segments = self._update_store(cached, store_view)
            for n, lines in enumerate(segments):
                task_units.append((name, n))
                if lines is not None:
                    fresh_tasks[(name, n)] = lines
        self._stores = stores
        tasks_changed = self._tasks.update(task_units, fresh_tasks)
        stats_changed = self._stats.update(list(stores), fresh_stats)
        if tasks_changed or stats_changed:
            self.generation += 1

    def _update_store(self, cached: _Store, view: StoreView) -> list[Render | None]:
        """Per segment of the store's tasks: how to render it, or None when it is unchanged."""
        if view is cached.view:
            return [None] * len(cached.segments)
        segments: list[Render | None] = []
        kept: list[Sequence[TaskRecord]] = []
        tasks = view.tasks
        for n, start in enumerate(range(0, len(tasks), SEGMENT)):
            part = tasks[start : start + SEGMENT]
            old = cached.segments[n] if n < len(cached.segments) else None
            unchanged = (
                old is not None
                and len(old) == len(part)
                and all(a is b for a, b in zip(old, part, strict=True))
            )
            segments.append(
                None if unchanged else functools.partial(render_segment, view.name, part)
            )
            kept.append(part)
        cached.segments = kept
        cached.view = view
        return segments

    def _store_lines(self, view: StoreView) -> tuple[bytes, ...]:
        """One store's counter, histogram and gauge lines, as prometheus_client writes them."""
        first = len(TASK_NAMES)
        return tuple(
            text_format.generate_latest(_Families([family])).removeprefix(
                self._text_headers[first + i]
            )
            for i, family in enumerate(store_families(view))
        )

    # ---- bodies --------------------------------------------------------------------------

    def _tail(self, view: ExporterView, fmt: str) -> bytes:
        """Exporter-wide gauges and the process/python collectors (OpenMetrics: and # EOF)."""

        def families() -> Iterator[Metric]:
            yield from global_families(view)
            for collector in self._extra:
                yield from collector.collect()

        return _ENCODERS[fmt](_Families(families()))

    def _sections(self) -> Iterator[list[_Block]]:
        """Each cached family's blocks, in body order."""
        yield from self._tasks.blocks
        yield from self._stats.blocks

    def _inflated(self, headers: list[_Piece]) -> bytes:
        """The plain body but its tail, each block inflated straight into it.

        One block's text is alive at a time: inflating them all first, then joining, left a
        100,000-task store's heap with a hundred megabytes of freed blocks after each scrape
        (docs/design.md, "Exposition").
        """
        sections = list(zip(headers, self._sections(), strict=True))
        size = sum(
            sum(map(len, header.chunks)) + sum(block.size for block in blocks)
            for header, blocks in sections
        )
        body = bytearray(size)
        with memoryview(body) as out:
            at = 0
            for header, blocks in sections:
                for text in itertools.chain(header.chunks, (block.text() for block in blocks)):
                    out[at : at + len(text)] = text
                    at += len(text)
        return bytes(body)

    def _deflated(self, headers: list[_Piece]) -> bytes:
        """The gzip body but its tail: the header, then every cached block as it is."""
        deflated = [_GZIP_HEADER]
        for header, blocks in zip(headers, self._sections(), strict=True):
            deflated.append(header.deflated)
            deflated += (block.deflated for block in blocks)
        return b"".join(deflated)

    def _assemble(self, view: ExporterView, fmt: str, gzipped: bool) -> Body:
        """The cached part, shared while a body holding it lives, then the fresh tail."""
        headers = self._headers[fmt]
        tail = self._tail(view, fmt)
        held = self._shared.get((fmt, gzipped))
        shared = held[1]() if held is not None and held[0] == self.generation else None
        if shared is None:
            shared = _Shared(self._deflated(headers) if gzipped else self._inflated(headers))
            self._shared[(fmt, gzipped)] = (self.generation, weakref.ref(shared))
        if not gzipped:
            return Body((shared.data, tail), shared)
        cached = self._prefix_crc.get(fmt)
        if cached is None or cached[0] != self.generation:
            crc = size = 0
            for header, blocks in zip(headers, self._sections(), strict=True):
                for chunk in header.chunks:
                    crc = zlib.crc32(chunk, crc)
                    size += len(chunk)
                for block in blocks:
                    crc = _chain(crc, block)
                    size += block.size
            cached = self._prefix_crc[fmt] = (self.generation, crc, size)
        trailer = struct.pack(
            "<II", zlib.crc32(tail, cached[1]), (cached[2] + len(tail)) & 0xFFFFFFFF
        )
        return Body((shared.data, _Piece([tail]).deflated + _FINAL_BLOCK + trailer), shared)

    def _generic(
        self,
        view: ExporterView,
        encoder: Callable[..., bytes],
        names: frozenset[str] | None,
        gzipped: bool,
    ) -> bytes:
        """Through the registry: name[] filters and unusual escapings."""
        source = self.registry
        if names is not None:
            source = CollectorRegistry(auto_describe=False)
            source.register(_Selected(self._each, names))
        body = encoder(source)
        return _gzip(body) if gzipped else body


class _Selected(Collector):
    """The families a ``name[]`` filter wants, in registration order, as one collector.

    prometheus_client's ``restricted_registry`` gathers the collectors it asks from a set,
    so with one collector per family (docs/design.md, "Exposition") the order of families
    would change from run to run. Asked of one registry per collector, in the order the
    collectors were registered, it keeps the order and still filters the samples.
    """

    def __init__(self, each: Sequence[CollectorRegistry], names: frozenset[str]) -> None:
        self._each = each
        self._names = names

    def collect(self) -> Iterator[Metric]:
        """The wanted families of each collector, in registration order."""
        for alone in self._each:
            yield from alone.restricted_registry(self._names).collect()


_ZEROS = memoryview(bytes(1 << 16))


def _crc_of_zeros(count: int, crc: int) -> int:
    """crc32 of ``count`` zero bytes, continuing ``crc``."""
    while count > 0:
        step = min(count, len(_ZEROS))
        crc = zlib.crc32(_ZEROS[:step], crc)
        count -= step
    return crc


def _chain(crc: int, block: _Block) -> int:
    """crc32 of a prefix whose crc32 is ``crc`` followed by the block's text, not inflated.

    crc32 is affine in (initial value, data), so crc32(text, crc) = crc32(zeros, crc) ^
    crc32(text, 0) ^ crc32(zeros, 0), zeros being len(text) zero bytes; the last two terms
    are the block's ``adjust``.
    """
    return _crc_of_zeros(block.size, crc) ^ block.adjust


def _gzip(data: bytes) -> bytes:
    piece = _Piece([data])
    trailer = struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)
    return b"".join([_GZIP_HEADER, piece.deflated, _FINAL_BLOCK, trailer])
