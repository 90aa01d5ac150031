"""The exporter's configuration: YAML in, frozen settings out, every error with its key path.

See docs/design.md (configuration) for the model and the validation rules.
"""

from __future__ import annotations

from exporter.config.parse import (
    MAX_BURST,
    MAX_CONCURRENCY,
    MAX_DURATION,
    MAX_REQUESTS_PER_SECOND,
    STORE_NAME_RE,
    TASK_ID_RE,
    Config,
    ConfigError,
    StoreConfig,
    TLSConfig,
    TokenSource,
    format_duration,
    load_config,
    parse_config,
    parse_duration,
    read_token,
)

__all__ = [
    "MAX_BURST",
    "MAX_CONCURRENCY",
    "MAX_DURATION",
    "MAX_REQUESTS_PER_SECOND",
    "STORE_NAME_RE",
    "TASK_ID_RE",
    "Config",
    "ConfigError",
    "StoreConfig",
    "TLSConfig",
    "TokenSource",
    "format_duration",
    "load_config",
    "parse_config",
    "parse_duration",
    "read_token",
]
