"""The running exporter: configuration, reloads, poller and state file together."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Mapping

from exporter import __version__
from exporter.clock import Clock, SystemClock
from exporter.config import Config, ConfigError, Labels, StoreConfig, load_config
from exporter.config.watch import StoreFiles
from exporter.jobs import OnDemand
from exporter.model import ExporterView, ReloadStatus, TaskRecord
from exporter.polling.client import StoreClient
from exporter.polling.poller import Poller
from exporter.polling.statefile import (
    StateData,
    StateFileInUse,
    StateLock,
    StateWriter,
    read_state,
    retention_for,
)
from exporter.runtime import release_free_memory
from exporter.sharding import Shard, owner

log = logging.getLogger("exporter")

# Seconds between two returns of unused allocator memory (docs/design.md, "Exposition").
TRIM_INTERVAL = 30.0
# Share of a scrape's time it may wait for the store files to be looked at.
STORE_FILES_SHARE = 0.25


class Exporter:
    """Owns the live configuration and everything built from it."""

    def __init__(
        self,
        config_path: str,
        *,
        environ: Mapping[str, str] | None = None,
        clock: Clock | None = None,
        client_factory: Callable[[StoreConfig], StoreClient] | None = None,
        shard: Shard | None = None,
    ) -> None:
        self.config_path = config_path
        self.shard = shard or Shard()
        self._stores_owned = 0
        self._stores_other = 0
        self._other_stores: frozenset[str] = frozenset()  # configured, another shard's
        self._task_api_lock = threading.Lock()
        self._task_api_requests: dict[tuple[str, str], int] = {}
        self._closed = False
        self._environ = environ
        self.clock = clock or SystemClock()
        self.reload_status = ReloadStatus()
        self._reload_lock = threading.Lock()
        self.config: Config | None = None
        self.state_writer: StateWriter | None = None
        self.store_files: StoreFiles | None = None
        self.state_lock: StateLock | None = None
        self._store_files_job: OnDemand | None = None
        self._stopped = threading.Event()
        self._last_watched: dict[tuple[str, str], float] = {}  # from the state file
        self.poller = Poller(clock=self.clock, client_factory=client_factory, on_change=self._dirty)
        # Set by cli: did the last (re)load of --web.config.file succeed (None: no file).
        self.web_config_status: Callable[[], bool | None] = lambda: None

    def start(self) -> Config:
        """Load the configuration and the state file; raises ConfigError when invalid."""
        config = load_config(self.config_path, self._environ)
        self.state_lock = _lock(config)  # before reading: the file may be another's
        saved = read_state(config.state_file) if config.state_file else StateData()
        self.poller.restore(saved.tasks, saved.forgotten)
        self.poller.restore_registered(saved.registered)
        self._last_watched = saved.last_watched
        self.store_files = StoreFiles(config, environ=self._environ, clock=self.clock.monotonic)
        self.store_files.refresh(force=True)
        # Task id files are read after the start, by the poller's discovery thread: the
        # server listens and is ready once the configuration is valid, whatever their size
        # (docs/design.md, "Rules for files"); files_read() waits for that first reading.
        self._apply(config, read_files=False)
        threading.Thread(target=self._housekeeping, name="housekeeping", daemon=True).start()
        # Store files are looked at each second and on scrapes, on a thread of their own.
        self._store_files_job = OnDemand(self._check_store_files, "store-files", period=1.0)
        return config

    def reload(self) -> tuple[bool, str]:
        """Re-read the configuration; on error keep the old one. Returns (ok, message)."""
        with self._reload_lock:
            try:
                config = load_config(self.config_path, self._environ)
                lock = None
                if config.state_file != (self.config.state_file if self.config else None):
                    lock = _lock(config)
            except ConfigError as exc:
                self.reload_status.successful = False
                log.error("configuration reload failed, keeping the previous configuration")
                for line in exc.errors:
                    log.error("configuration error", extra={"err": line})
                return False, str(exc)
            if lock is not None or not config.state_file:
                if self.state_lock is not None:
                    self.state_lock.release()
                self.state_lock = lock
            if self.store_files is not None:
                self.store_files.configure(config)
                self.store_files.refresh(force=True)
            self._apply(config)
            log.info("configuration reloaded", extra={"stores": len(config.stores)})
            return True, "configuration reloaded"

    def _apply(self, config: Config, read_files: bool = True) -> None:
        for warning in config.warnings:
            log.warning("configuration warning", extra={"err": warning})
        self._watch(self._with_store_files(config), read_files)
        previous = self.config.state_file if self.config else None
        if config.state_file != previous:
            if self.state_writer is not None:
                self.state_writer.close()
                self.state_writer = None
            if config.state_file:
                self.state_writer = StateWriter(
                    config.state_file,
                    self.poller.persistent_state,
                    watched=self.poller.watched_keys,
                    last_watched=self._last_watched,
                    clock=self.clock.time,
                    registered=self.poller.registrations,
                )
                self.state_writer.mark_dirty()
        if self.state_writer is not None:
            self.state_writer.retention = retention_for(config.forget_completed_after)
        self.config = config
        self.reload_status.successful = True
        self.reload_status.last_success = self.clock.time()

    def _with_store_files(self, config: Config) -> Config:
        """``config`` with the stores of its store files after its own (docs/design.md)."""
        if self.store_files is None or not self.store_files.stores:
            return config
        return dataclasses.replace(config, stores=config.stores + self.store_files.stores)

    def _check_store_files(self) -> None:
        """Apply the store files' stores when they changed (each second and each scrape)."""
        files = self.store_files
        if files is not None and files.refresh(force=True):
            with self._reload_lock:
                if self.config is not None:
                    self._watch(self._with_store_files(self.config))

    def _housekeeping(self) -> None:
        """Every ``TRIM_INTERVAL`` s: free memory to the system."""
        last_trim = self.clock.monotonic()
        while not self._stopped.wait(1.0):
            if self.clock.monotonic() - last_trim >= TRIM_INTERVAL:
                release_free_memory()
                last_trim = self.clock.monotonic()

    def _watch(self, config: Config, read_files: bool = True) -> None:
        """Hand the poller the stores of ``config`` that this shard owns, only those.

        Every path that changes the watched stores goes through here (docs/design.md,
        "Sharding"): this process polls, exports and lists only the stores it owns.
        """
        owned = tuple(store for store in config.stores if self.shard.owns(store.name))
        # Every configured token, other shards' included: never a task id from a file.
        self.poller.secrets = frozenset(store.token.value for store in config.stores)
        self.poller.apply_config(dataclasses.replace(config, stores=owned), read_files=read_files)
        self._stores_owned = len(owned)
        self._stores_other = len(config.stores) - len(owned)
        self._other_stores = frozenset(s.name for s in config.stores) - {s.name for s in owned}

    def _dirty(self) -> None:
        writer = self.state_writer
        if writer is not None:
            writer.mark_dirty()

    def refresh(self, timeout: float) -> None:
        """Fetch due tasks, waiting at most ``timeout`` seconds (docs/design.md, "The model").

        The store files are looked at first, for at most a share of the time: a slow or
        hostile file system never holds the answer past its deadline.
        """
        job = self._store_files_job
        if job is not None and self.config is not None and self.config.store_files:
            started = self.clock.monotonic()
            job.run_within(timeout * STORE_FILES_SHARE)
            timeout = max(timeout - (self.clock.monotonic() - started), 0.0)
        self.poller.refresh(timeout)

    def files_read(self, timeout: float) -> bool:
        """Wait at most ``timeout`` s for the first reading of the task id files."""
        return self.poller.files_read(timeout)

    def view(self) -> ExporterView:
        """A consistent copy of what the exporter knows, for metrics and pages."""
        status = ReloadStatus(self.reload_status.successful, self.reload_status.last_success)
        return ExporterView(
            web_config_ok=self.web_config_status(),
            stores=tuple(self.poller.views()),
            now=self.clock.time(),
            version=__version__,
            reload=status,
            store_files_invalid=self.store_files.invalid if self.store_files else 0,
            shard=self.shard.index,
            total_shards=self.shard.total,
            stores_owned=self._stores_owned,
            stores_other=self._stores_other,
            state_file_ok=self.state_writer.last_write_ok if self.state_writer else None,
            task_api_requests=self._task_api_counts(),
        )

    # ---- the task API (exporter/web/taskapi.py, docs/task-api.md) -------------------------

    @property
    def shard_index(self) -> int:
        """This process's shard."""
        return self.shard.index

    def store_owner(self, store: str) -> int | None:
        """The shard serving ``store``; None when no configuration names it."""
        if store in self.poller.stores:
            return self.shard.index
        if store in self._other_stores:
            return owner(store, self.shard.total)
        return None

    def register_tasks(
        self, store: str, items: list[tuple[str, Labels]]
    ) -> list[tuple[str, bool, TaskRecord | None]] | str:
        """Register ``items`` on a store this process serves (all or none)."""
        try:
            return self.poller.register(store, items)
        except KeyError:
            return f"store {store} is not served here"

    def unregister_task(self, store: str, task_id: str) -> str:
        """``removed``, ``not_registered`` or ``configured``."""
        try:
            return self.poller.unregister(store, task_id)
        except KeyError:
            return "not_registered"

    def persist(self) -> bool:
        """Registrations on disk now (no state_file: memory only, True)."""
        writer = self.state_writer
        return True if writer is None else writer.flush_now()

    def task(self, store: str, task_id: str) -> tuple[TaskRecord, float] | None:
        """A watched task's record and its store's stuck_after."""
        return self.poller.task(store, task_id)

    def add_waiter(self, store: str, task_id: str) -> None:
        """Someone waits for the task."""
        self.poller.add_waiter(store, task_id)

    def view_task(self, store: str, task_id: str) -> None:
        """Someone looks at the task: polled before the others when due."""
        self.poller.view_task(store, task_id)

    def remove_waiter(self, store: str, task_id: str) -> None:
        """A wait ended."""
        self.poller.remove_waiter(store, task_id)

    def on_task_polled(self, callback: Callable[[str, str], None]) -> None:
        """Call ``callback(store, task_id)`` when a waited-for task was polled or dropped."""
        self.poller.on_task = callback

    def wall_time(self) -> float:
        """Unix time now."""
        return self.clock.time()

    def count_task_api(self, method: str, code: int) -> None:
        """Count one answered task API request (unknown methods as ``other``)."""
        known = method if method in ("GET", "HEAD", "PUT", "POST", "DELETE") else "other"
        key = (known, str(code))
        with self._task_api_lock:
            self._task_api_requests[key] = self._task_api_requests.get(key, 0) + 1

    def _task_api_counts(self) -> tuple[tuple[tuple[str, str], int], ...]:
        with self._task_api_lock:
            return tuple(sorted(self._task_api_requests.items()))

    @property
    def ready(self) -> bool:
        """A valid configuration is loaded."""
        return self.config is not None

    def close(self) -> None:
        """Stop polling (requests in flight are abandoned) and flush the state file, once."""
        if self._closed:
            return
        self._closed = True
        self._stopped.set()
        if self._store_files_job is not None:
            self._store_files_job.stop()
        self.poller.stop()
        if self.state_writer is not None:
            self.state_writer.close()
        if self.state_lock is not None:
            self.state_lock.release()


def _lock(config: Config) -> StateLock | None:
    """The lock of ``config``'s state file; ConfigError when another process holds it."""
    if not config.state_file:
        return None
    try:
        return StateLock(config.state_file)
    except StateFileInUse as exc:
        raise ConfigError([f"{config.source}: state_file: {exc}"]) from None
    except OSError as exc:
        raise ConfigError(
            [f"{config.source}: state_file: cannot lock {config.state_file}: {exc.strerror or exc}"]
        ) from None
