"""The main configuration file: YAML text -> a frozen Config, every problem with its key path.

Parsing is strict (unknown keys, wrong types, duplicate YAML keys are errors) and collects
every error of a file before raising one `ConfigError`, whose lines look like
``config.yaml: stores[0].task_ids[2]: invalid task id "../x"``. Access tokens are read at
load time but never appear in a message, a warning or a ``repr``. The stores themselves are
checked in :mod:`exporter.config.stores`; files matched by ``store_files`` are read by
:mod:`exporter.config.storefile` (docs/design.md, "Configuration").
"""

from __future__ import annotations

import glob
import os
import tempfile
from collections.abc import Mapping
from typing import Any

from exporter.config.files import file_kind_problem, read_regular
from exporter.config.kit import join, quoted, show
from exporter.config.model import Config, StoreConfig, StoreDefaults
from exporter.config.stores import (
    DEFAULTS_KEYS,
    STORE_ONLY_KEYS,
    TOKEN_HINT,
    TOKEN_KEYS,
    StoreParser,
    shared_budget_warnings,
)
from exporter.config.yamlfile import YamlError, load_yaml
from exporter.errors import ConfigError

_TOP_KEYS = ("defaults", "stores", "store_files", "forget_completed_after", "state_file")


def state_file_problem(path: str) -> str | None:
    """Why the exporter could not write ``path`` (its directory missing or read-only)."""
    if os.path.isdir(path):
        return f"{quoted(path)} is a directory"
    kind = file_kind_problem(path)  # a FIFO would block the start, /dev/zero never end
    if kind is not None:
        return f"{quoted(path)} {kind}"
    # A symlink is followed: its target is what is replaced (docs/design.md, "State file").
    directory = os.path.dirname(os.path.realpath(path)) or "."
    if not os.path.isdir(directory):
        return f"directory {quoted(directory)} does not exist"
    try:  # the honest test: create a file there (root ignores mode bits; mounts may be ro)
        handle, probe = tempfile.mkstemp(prefix=".state-check-", dir=directory)
    except OSError as exc:
        return f"directory {quoted(directory)} is not writable: {exc.strerror or exc}"
    os.close(handle)
    os.unlink(probe)
    return None


class _Parser(StoreParser):
    """Walks the main file's YAML data once, collecting every error and warning."""

    def parse(self, text: str) -> Config:
        try:
            data = load_yaml(text)
        except YamlError as exc:
            raise ConfigError([f"{self.source}: invalid YAML: {exc}"]) from None
        if data is None:
            raise ConfigError([f"{self.source}: empty configuration"])
        if not isinstance(data, dict):
            raise ConfigError(
                [f"{self.source}: expected a mapping at the top level, got {show(data)}"]
            )
        self.unknown_keys(data, "", _TOP_KEYS)
        self.defaults = self.parse_defaults(data.get("defaults"))
        store_files = self.store_file_patterns(data.get("store_files"))
        stores = self.main_stores(data, required=not store_files)
        forget = 0.0
        if "forget_completed_after" in data:
            seconds = self.duration(data["forget_completed_after"], "forget_completed_after", 0.0)
            forget = seconds or 0.0
        state_file = self.optional_path(data.get("state_file"), "state_file")
        if state_file is not None and (problem := state_file_problem(state_file)):
            self.error("state_file", problem)
        if self.errors:
            raise ConfigError(self.errors)
        where = [(f"{self.source}: stores[{i}]", store) for i, store in enumerate(stores)]
        return Config(
            stores=tuple(stores),
            forget_completed_after=forget,
            state_file=state_file,
            store_files=store_files,
            source=self.source,
            warnings=(*self.warnings, *shared_budget_warnings(where)),
            defaults=self.defaults,
        )

    def parse_defaults(self, value: object) -> StoreDefaults:
        base = StoreDefaults(base_dir=self.base_dir)
        if value is None:
            return base
        if not isinstance(value, dict):
            self.wrong_type("defaults", "a mapping", value)
            return base
        for key in value:
            if key in STORE_ONLY_KEYS:
                self.error(join("defaults", key), "not allowed in defaults (set it in each store)")
            elif key not in DEFAULTS_KEYS:
                self.unknown_key(join("defaults", key), key, DEFAULTS_KEYS)
        token = None
        present = [key for key in TOKEN_KEYS if key in value]
        if len(present) > 1:
            self.error("defaults", f"set only one of {TOKEN_HINT}, not {' and '.join(present)}")
            self.default_token_broken = True
        elif present:
            key, raw = present[0], value[present[0]]
            if isinstance(raw, str) and raw.strip():
                token = (key, raw)
            else:  # checked now even if no store uses it; read only when one does
                self.wrong_type(f"defaults.{key}", "a non-empty string", raw, secret=True)
                self.default_token_broken = True
        files = self.task_id_files(value.get("task_id_files"), "defaults.task_id_files")
        settings = self.parse_settings(value, "defaults")
        return StoreDefaults(tuple(settings.items()), token, files, self.base_dir)

    def store_file_patterns(self, value: object) -> tuple[str, ...]:
        patterns = self.task_id_files(value, "store_files")
        return tuple(os.path.join(glob.escape(self.base_dir), pattern) for pattern in patterns)

    def main_stores(self, data: dict[Any, Any], required: bool) -> list[StoreConfig]:
        value = data.get("stores")
        if "stores" not in data:
            if required:
                self.error("stores", "missing: at least one store is required")
            return []
        if not isinstance(value, list):
            self.wrong_type("stores", "a list of stores", value)
            return []
        if not value and required:
            self.error("stores", "at least one store is required")
        return self.parse_stores(value, {})


def parse_config(
    text: str,
    source: str = "config.yaml",
    environ: Mapping[str, str] | None = None,
    base_dir: str | None = None,
) -> Config:
    """Parse and validate configuration text; raise ConfigError listing every problem.

    Relative paths are resolved against base_dir (default: the directory of source),
    token files and variables are read from the file system and environ (default
    os.environ). Files matched by ``store_files`` are not read here.
    """
    if base_dir is None:
        base_dir = os.path.dirname(os.path.abspath(source))
    env = os.environ if environ is None else environ
    return _Parser(source, env, os.path.abspath(base_dir), main_file=True).parse(text)


def read_text(path: str, error: type[ConfigError] = ConfigError) -> str:
    """The UTF-8 text of a configuration file; ``error`` (one line) if it cannot be read."""
    try:
        data = read_regular(path)  # a FIFO or a device is refused, never waited on
    except OSError as exc:
        raise error([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except ValueError:
        raise error([f"{path}: cannot read: invalid path"]) from None
    return decode_text(path, data, error)


def decode_text(path: str, data: bytes, error: type[ConfigError] = ConfigError) -> str:
    """``data`` read from ``path`` as UTF-8 text; ``error`` (one line) if it is not."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error([f"{path}: not valid UTF-8 (byte {exc.start})"]) from None


def load_config(path: str, environ: Mapping[str, str] | None = None) -> Config:
    """Read and parse a configuration file; raise ConfigError on any problem."""
    text = read_text(path)
    return parse_config(text, path, environ, os.path.dirname(os.path.abspath(path)))
