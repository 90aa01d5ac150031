"""One file matched by ``store_files``: ``stores:`` and nothing else, with the main defaults.

A store file is checked on its own (its own names, keys, tokens); that a name is defined
twice across files is decided when all files are combined (exporter.config.watch.StoreFiles).
A broken store file never stops the exporter: its problems come back as data
(docs/design.md, "Configuration").
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from exporter.config.kit import show
from exporter.config.model import StoreConfig, StoreDefaults
from exporter.config.parse import decode_text, read_text
from exporter.config.stores import StoreParser
from exporter.config.yamlfile import YamlError, load_yaml
from exporter.errors import StoreFileError

_KEYS = ("stores",)


@dataclass(frozen=True)
class StoreFile:
    """What one store file holds: its stores when valid, else the errors (never both)."""

    path: str
    stores: tuple[StoreConfig, ...] = ()
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    files_read: tuple[str, ...] = ()  # token and CA files: when one changes, read again

    @property
    def ok(self) -> bool:
        """No error."""
        return not self.errors


def parse_store_file(
    path: str,
    defaults: StoreDefaults,
    environ: Mapping[str, str] | None = None,
    content: bytes | None = None,
) -> StoreFile:
    """Read (or take ``content``) and check one store file; problems are returned, never raised."""
    env = os.environ if environ is None else environ
    parser = StoreParser(path, env, os.path.dirname(os.path.abspath(path)), defaults)
    try:
        text = (
            read_text(path, StoreFileError)
            if content is None
            else decode_text(path, content, StoreFileError)
        )
        data = load_yaml(text)
    except StoreFileError as exc:
        return StoreFile(path, errors=tuple(exc.errors))
    except YamlError as exc:
        return StoreFile(path, errors=(f"{path}: invalid YAML: {exc}",))
    stores: list[StoreConfig] = []
    if data is None:
        parser.error("", "empty store file (it must hold stores:)")
    elif not isinstance(data, dict):
        parser.error("", f"expected a mapping with stores: at the top level, got {show(data)}")
    elif "stores" not in data:
        parser.unknown_keys(data, "", _KEYS)
        parser.error("stores", "missing: a store file holds stores:")
    else:
        parser.unknown_keys(data, "", _KEYS)
        value = data["stores"]
        if isinstance(value, list):
            stores = parser.parse_stores(value, {})
        elif value is not None:
            parser.wrong_type("stores", "a list of stores", value)
    if parser.errors:
        return StoreFile(path, errors=tuple(parser.errors), files_read=tuple(parser.files_read))
    return StoreFile(path, tuple(stores), (), tuple(parser.warnings), tuple(parser.files_read))
