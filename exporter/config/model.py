"""The frozen settings a configuration file turns into, and the rules their names follow."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

TASK_ID_RE = re.compile(r"\A[A-Za-z0-9_-]{1,128}\Z")
STORE_NAME_RE = re.compile(r"\A[A-Za-z0-9_.-]{1,64}\Z")

MAX_DURATION = 10 * 365 * 86400.0  # an upper bound for every duration in a config file
MAX_REQUESTS_PER_SECOND = 10_000.0
MAX_BURST = 100_000
MAX_CONCURRENCY = 1_000
MAX_REGISTERED_TASKS = 1_000_000

# One task's context labels, sorted by name: ((name, value), ...).
Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """TLS settings for the connections to one store's API."""

    ca_file: str | None = None
    insecure_skip_verify: bool = False


@dataclass(frozen=True, slots=True)
class Proxy:
    """The forward proxy one store's requests go through; ``url`` "" means none.

    ``url`` is ``scheme://host:port`` without credentials, safe to log; the credentials of
    the configured URL (percent-decoded ``user:password``) are kept apart in ``auth``.
    ``from_environment`` is set by ``proxy_from_environment: true``: the URL is looked up
    in the environment for the store's address when the store is loaded.
    """

    url: str = ""
    auth: str = field(default="", repr=False)
    from_environment: bool = False


@dataclass(frozen=True, slots=True)
class TokenSource:
    """Where a store's access token comes from, plus the value read at load time."""

    kind: str  # "file" | "env" | "inline"
    ref: str  # the absolute file path, the variable name, or "" for inline
    value: str = field(repr=False)

    def describe(self) -> str:
        """Say where the token comes from, safe to log: "file /path", "env NAME", "inline"."""
        return "inline" if self.kind == "inline" else f"{self.kind} {self.ref}"

    def __str__(self) -> str:
        return self.describe()


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """One watched Shoplazza store, with the defaults already applied."""

    name: str
    base_url: str
    token: TokenSource
    task_ids: tuple[str, ...]
    task_id_files: tuple[str, ...]
    api_version: str = "2022-01"
    timeout: float = 5.0
    min_poll_interval: float = 10.0
    requests_per_second: float = 2.0
    burst: int = 10
    max_concurrency: int = 4
    tls: TLSConfig = TLSConfig()
    proxy: Proxy = Proxy()
    stuck_after: float = 900.0
    # Tasks the task API may register for the store (docs/task-api.md).
    max_registered_tasks: int = 10_000
    # Context labels of configured task ids: (task_id, ((name, value), ...)) pairs.
    task_labels: tuple[tuple[str, Labels], ...] = ()


@dataclass(frozen=True)
class StoreDefaults:
    """The main file's ``defaults``, kept so that store files can apply them too.

    ``settings`` are already checked; the token key and ``task_id_files`` stay raw because
    ``{store}`` in them is replaced per store (docs/design.md, "Configuration").
    """

    settings: tuple[tuple[str, object], ...] = ()
    token: tuple[str, str] | None = field(default=None, repr=False)  # (key, raw value)
    task_id_files: tuple[str, ...] = ()  # raw patterns
    base_dir: str = ""


@dataclass(frozen=True)
class Config:
    """A whole, valid configuration file (store files are read by discovery.StoreFiles)."""

    stores: tuple[StoreConfig, ...]
    forget_completed_after: float = 0.0
    state_file: str | None = None
    store_files: tuple[str, ...] = ()  # absolute glob patterns
    source: str = "config.yaml"
    warnings: tuple[str, ...] = ()
    defaults: StoreDefaults = field(default=StoreDefaults(), compare=False, repr=False)
