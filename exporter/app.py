"""The running exporter: configuration, reloads, poller, state file and registry together."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry

from exporter.client import StoreClient
from exporter.clock import Clock, SystemClock
from exporter.collector import TaskCollector
from exporter.config import Config, ConfigError, StoreConfig, load_config
from exporter.model import ExporterView, ReloadStatus
from exporter.poller import Poller
from exporter.state import StateData, StateWriter, read_state, retention_for

log = logging.getLogger("exporter")


class Exporter:
    """Owns the live configuration and everything built from it."""

    def __init__(
        self,
        config_path: str,
        *,
        environ: Mapping[str, str] | None = None,
        clock: Clock | None = None,
        client_factory: Callable[[StoreConfig], StoreClient] | None = None,
    ) -> None:
        self.config_path = config_path
        self._environ = environ
        self.clock = clock or SystemClock()
        self.reload_status = ReloadStatus()
        self._reload_lock = threading.Lock()
        self.config: Config | None = None
        self.state_writer: StateWriter | None = None
        self._last_watched: dict[tuple[str, str], float] = {}  # from the state file
        self.poller = Poller(clock=self.clock, client_factory=client_factory, on_change=self._dirty)
        self.collector = TaskCollector(self.views)
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(self.collector)

    def start(self) -> Config:
        """Load the configuration and the state file; raises ConfigError when invalid."""
        config = load_config(self.config_path, self._environ)
        saved = read_state(config.state_file) if config.state_file else StateData()
        self.poller.restore(saved.tasks, saved.forgotten)
        self._last_watched = saved.last_watched
        self._apply(config)
        return config

    def reload(self) -> tuple[bool, str]:
        """Re-read the configuration; on error keep the old one. Returns (ok, message)."""
        with self._reload_lock:
            try:
                config = load_config(self.config_path, self._environ)
            except ConfigError as exc:
                self.reload_status.successful = False
                log.error("configuration reload failed, keeping the previous configuration")
                for line in exc.errors:
                    log.error("configuration error", extra={"err": line})
                return False, str(exc)
            self._apply(config)
            log.info("configuration reloaded", extra={"stores": len(config.stores)})
            return True, "configuration reloaded"

    def _apply(self, config: Config) -> None:
        for warning in config.warnings:
            log.warning("configuration warning", extra={"err": warning})
        self.poller.apply_config(config)
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
                )
                self.state_writer.mark_dirty()
        if self.state_writer is not None:
            self.state_writer.retention = retention_for(config.forget_completed_after)
        self.config = config
        self.reload_status.successful = True
        self.reload_status.last_success = self.clock.time()

    def _dirty(self) -> None:
        writer = self.state_writer
        if writer is not None:
            writer.mark_dirty()

    def refresh(self, timeout: float) -> None:
        """Fetch due tasks, waiting at most ``timeout`` seconds (contract section 6)."""
        self.poller.refresh(timeout)

    def views(self) -> ExporterView:
        """A consistent copy of what the exporter knows, for metrics and pages."""
        status = ReloadStatus(self.reload_status.successful, self.reload_status.last_success)
        return ExporterView(
            stores=tuple(self.poller.view()),
            now=self.clock.time(),
            version=self.collector.version,
            reload=status,
            state_file_ok=self.state_writer.last_write_ok if self.state_writer else None,
        )

    @property
    def ready(self) -> bool:
        """A valid configuration is loaded."""
        return self.config is not None

    def close(self) -> None:
        """Stop polling (requests in flight are abandoned) and flush the state file."""
        self.poller.stop()
        if self.state_writer is not None:
            self.state_writer.close()
