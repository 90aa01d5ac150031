"""The errors raised when a file the exporter reads cannot be loaded.

One hierarchy, so that a caller that only needs to know "this file is not usable" catches
the base once::

    LoadError                 a file could not be loaded; .errors lists every problem
    ├── ConfigError           the configuration file (--config.file), or a token read
    │   └── StoreFileError    one file matched by store_files (never fatal: it is isolated)
    └── WebConfigError        the web configuration file (--web.config.file)

Every line of ``errors`` is complete on its own and names the file and the key path, e.g.
``config.yaml: stores[0].task_ids[2]: invalid task id "../x"``; no line ever holds a token
(docs/design.md, "Configuration").
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["ConfigError", "LoadError", "StoreFileError", "WebConfigError"]


class LoadError(Exception):
    """A file could not be loaded; ``errors`` holds one complete message line per problem."""

    def __init__(self, errors: Iterable[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))

    def __str__(self) -> str:
        return "\n".join(self.errors)


class ConfigError(LoadError):
    """An invalid configuration file, or a token that cannot be read."""


class StoreFileError(ConfigError):
    """An invalid store file (``store_files``): its stores keep their last good version."""


class WebConfigError(LoadError):
    """An invalid web configuration file."""
