"""The exporter's configuration: YAML in, frozen settings out, every error with its key path.

Modules: ``model`` (the frozen settings), ``kit`` (the validation kit shared with the web
configuration), ``stores`` (one store's keys, through a table), ``parse`` (the main file),
``storefile`` (files matched by ``store_files``), ``labels``, ``tokens``, ``durations``,
``yamlfile``. See docs/design.md, "Configuration".
"""

from __future__ import annotations

from exporter.config.durations import format_duration, parse_duration
from exporter.config.model import (
    MAX_BURST,
    MAX_CONCURRENCY,
    MAX_DURATION,
    MAX_REGISTERED_TASKS,
    MAX_REQUESTS_PER_SECOND,
    STORE_NAME_RE,
    TASK_ID_RE,
    Config,
    Labels,
    StoreConfig,
    StoreDefaults,
    TLSConfig,
    TokenSource,
)
from exporter.config.parse import load_config, parse_config, state_file_problem
from exporter.config.storefile import StoreFile, parse_store_file
from exporter.config.tokens import MIN_TOKEN_LENGTH, read_token
from exporter.errors import ConfigError, LoadError, StoreFileError

__all__ = [
    "MAX_BURST",
    "MAX_CONCURRENCY",
    "MAX_DURATION",
    "MAX_REGISTERED_TASKS",
    "MAX_REQUESTS_PER_SECOND",
    "MIN_TOKEN_LENGTH",
    "STORE_NAME_RE",
    "TASK_ID_RE",
    "Config",
    "ConfigError",
    "Labels",
    "LoadError",
    "StoreConfig",
    "StoreDefaults",
    "StoreFile",
    "StoreFileError",
    "TLSConfig",
    "TokenSource",
    "format_duration",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_store_file",
    "read_token",
    "state_file_problem",
]
