"""The /metrics body, rendered incrementally and cached (docs/design.md, "Exposition").

Between two scrapes almost nothing changes: completed tasks never do, a task in progress at
most once per ``min_poll_interval``, a store's counters only when requests were made. So
:class:`Exposition` keeps, per store, the exposition lines of each segment of up to
:data:`SEGMENT` tasks and of the store's counters, renders a part again only when the
values it shows changed, and assembles the body by concatenating cached parts in a stable
order (families in :mod:`exporter.collector` order, stores and tasks in view order). The
gzip body is assembled the same way from cached raw-deflate parts (one standard gzip
member). Only the small tail (exporter-wide gauges, ``process_*``, ``python_*``) is encoded
on every scrape, by prometheus_client itself.

The result is byte-identical to prometheus_client's encoders over the registry
(:attr:`Exposition.registry`), which the tests check for every format; formats whose name
escaping would change our names (``escaping=dots``/``values``) and ``name[]`` filters go
through that registry, which holds one collector per family, so that a filter builds only
the families it shows (as ``restricted_registry`` selects them, in a stable order).
"""

from __future__ import annotations

import struct
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence

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
from prometheus_client.registry import Collector, RestrictedRegistry

from exporter.collector import (
    STORE_FAMILIES,
    described,
    family_collectors,
    global_families,
    store_families,
)
from exporter.model import ExporterView, StoreView
from exporter.render_cache import SEGMENT, TASK_NAMES, render_segment, task_key

__all__ = ["SEGMENT", "Exposition", "default_collectors"]

_FAST_ESCAPINGS = frozenset({om_format.UNDERSCORES, om_format.ALLOWUTF8})
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no mtime, unknown OS
_FINAL_BLOCK = b"\x03\x00"  # an empty final deflate block


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


class _Segment:
    """Up to SEGMENT consecutive tasks of a store: their keys and rendered lines per family."""

    __slots__ = ("chunks", "keys")

    def __init__(self, keys: list[tuple[object, ...]], chunks: tuple[bytes, ...]) -> None:
        self.keys = keys
        self.chunks = chunks


class _Store:
    """What is cached of one store."""

    __slots__ = ("count", "revision", "segments", "stats", "stats_key")

    def __init__(self) -> None:
        self.revision = -1
        self.count = -1
        self.segments: list[_Segment] = []
        self.stats_key: tuple[object, ...] | None = None
        self.stats: tuple[bytes, ...] = ()


def default_collectors() -> tuple[Collector, ...]:
    """prometheus_client's process_* and python_* collectors, not on the global registry."""
    scratch = CollectorRegistry()  # GCCollector insists on registering somewhere
    return (ProcessCollector(registry=None), PlatformCollector(registry=None), GCCollector(scratch))


def _stats_key(view: StoreView) -> tuple[object, ...]:
    return (
        view.requests,
        view.errors,
        view.skipped,
        view.buckets,
        view.duration_count,
        view.duration_sum,
        len(view.tasks),
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
        for family in family_collectors(lambda: self._view):
            self.registry.register(family)
        self._extra = tuple(default_collectors() if extra is None else extra)
        for collector in self._extra:
            self.registry.register(collector)
        families = described()
        cached = families[: len(TASK_NAMES) + len(STORE_FAMILIES)]  # the rest is the tail
        self._headers = {fmt: [_Piece([_header(fmt, f)]) for f in cached] for fmt in _ENCODERS}
        self._text_headers = [h.chunks[0] for h in self._headers["text"]]
        self._stores: dict[str, _Store] = {}
        self._order: tuple[str, ...] = ()
        self._sections = [_Piece([]) for _ in cached]
        self.generation = 0  # grows whenever a cached section changes
        self._prefix_crc: dict[str, tuple[int, int, int]] = {}  # fmt: (generation, crc, size)

    def render(
        self, view: ExporterView, accept: str, names: frozenset[str] | None, gzipped: bool
    ) -> tuple[str, bytes]:
        """(Content-Type, body) for one scrape; the body is gzip-compressed when ``gzipped``."""
        encoder, content_type = choose_encoder(accept)
        fmt = _encoding(encoder)
        with self._lock:
            self._view = view
            try:
                if names is None and fmt is not None:
                    self._update(view)
                    return content_type, self._assemble(view, fmt, gzipped)
                # A filter builds only the families it shows (one collector per family): no
                # cache to bring up to date, nothing worth caching (docs/design.md).
                return content_type, self._generic(view, encoder, names, gzipped)
            finally:
                self._view = None

    # ---- cache ---------------------------------------------------------------------------

    def _update(self, view: ExporterView) -> None:
        """Bring the cached sections up to date with ``view``."""
        order = tuple(store.name for store in view.stores)
        tasks_changed = stats_changed = order != self._order
        if tasks_changed:
            self._stores = {name: self._stores.get(name) or _Store() for name in order}
            self._order = order
        for store_view in view.stores:
            cached = self._stores[store_view.name]
            changed = self._update_store(cached, store_view)
            tasks_changed |= changed[0]
            stats_changed |= changed[1]
        stores = [self._stores[name] for name in order]
        if tasks_changed:
            for i in range(len(TASK_NAMES)):
                chunks = [seg.chunks[i] for store in stores for seg in store.segments]
                self._sections[i] = _Piece(chunks)
        if stats_changed:
            for i in range(len(STORE_FAMILIES)):
                chunks = [store.stats[i] for store in stores]
                self._sections[len(TASK_NAMES) + i] = _Piece(chunks)
        if tasks_changed or stats_changed:
            self.generation += 1

    def _update_store(self, cached: _Store, view: StoreView) -> tuple[bool, bool]:
        """Re-render the changed parts of one store: (tasks changed, counters changed)."""
        stats_key = _stats_key(view)
        stats_changed = stats_key != cached.stats_key
        if stats_changed:
            cached.stats_key = stats_key
            cached.stats = self._store_lines(view)
        tracked = view.revision >= 0 and view.revision == cached.revision
        if tracked and cached.count == len(view.tasks):
            return False, stats_changed
        tasks_changed = False
        segments: list[_Segment] = []
        tasks = view.tasks
        for n, start in enumerate(range(0, len(tasks), SEGMENT)):
            part = tasks[start : start + SEGMENT]
            keys = [task_key(task) for task in part]
            old = cached.segments[n] if n < len(cached.segments) else None
            if old is not None and old.keys == keys:
                segments.append(old)
            else:
                segments.append(_Segment(keys, render_segment(view.name, part)))
                tasks_changed = True
        tasks_changed |= len(segments) != len(cached.segments)
        cached.segments = segments
        cached.revision = view.revision
        cached.count = len(tasks)
        return tasks_changed, stats_changed

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

    def _assemble(self, view: ExporterView, fmt: str, gzipped: bool) -> bytes:
        pieces: list[_Piece] = []
        for header, section in zip(self._headers[fmt], self._sections, strict=True):
            pieces += (header, section)
        tail = self._tail(view, fmt)
        if not gzipped:
            return b"".join([*(chunk for p in pieces for chunk in p.chunks), tail])
        cached = self._prefix_crc.get(fmt)
        if cached is None or cached[0] != self.generation:
            crc = size = 0
            for chunk in (chunk for p in pieces for chunk in p.chunks):
                crc = zlib.crc32(chunk, crc)
                size += len(chunk)
            cached = self._prefix_crc[fmt] = (self.generation, crc, size)
        trailer = struct.pack(
            "<II", zlib.crc32(tail, cached[1]), (cached[2] + len(tail)) & 0xFFFFFFFF
        )
        deflated = [p.deflated for p in pieces]
        return b"".join([_GZIP_HEADER, *deflated, _Piece([tail]).deflated, _FINAL_BLOCK, trailer])

    def _generic(
        self,
        view: ExporterView,
        encoder: Callable[..., bytes],
        names: frozenset[str] | None,
        gzipped: bool,
    ) -> bytes:
        """Through the registry: name[] filters and unusual escapings."""
        source: CollectorRegistry | RestrictedRegistry = self.registry
        if names is not None:
            one = CollectorRegistry(auto_describe=False)
            one.register(_Selected(self.registry, names))
            source = one.restricted_registry(names)
        body = encoder(source)
        return _gzip(body) if gzipped else body


class _Selected(Collector):
    """The collectors of ``registry`` that describe a name a ``name[]`` filter wants, as one.

    prometheus_client's ``restricted_registry`` gathers the collectors it asks from a set,
    so with one collector per family (docs/design.md, "Exposition") the order of families
    would change from run to run. Wrapped in this one collector, in registration order, the
    families keep their order and ``restricted_registry`` still filters the samples.
    """

    def __init__(self, registry: CollectorRegistry, names: frozenset[str]) -> None:
        with registry._lock:
            chosen = {registry._names_to_collectors.get(name) for name in names}
            self._collectors = [c for c in registry._collector_to_names if c in chosen]
            described = registry._collector_to_names
            self._names = sorted({name for c in self._collectors for name in described[c]})

    def describe(self) -> Iterable[Metric]:
        """The sample names of the chosen collectors, as bare families."""
        return [Metric(name, "", "untyped") for name in self._names]

    def collect(self) -> Iterator[Metric]:
        """The chosen collectors' families, in registration order."""
        for collector in self._collectors:
            yield from collector.collect()


def _gzip(data: bytes) -> bytes:
    piece = _Piece([data])
    trailer = struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)
    return b"".join([_GZIP_HEADER, piece.deflated, _FINAL_BLOCK, trailer])
