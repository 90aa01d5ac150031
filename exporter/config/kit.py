"""The validation kit both configuration parsers share (config.yaml, store files, web config).

It holds what every strict parser needs and nothing about any one file: key paths
(``stores[0].tls_config.ca_file``), describing a bad value without echoing a secret,
"did you mean" suggestions for unknown keys, and typed checks that report into one
:class:`Checker` per file, so that all problems of a file come out at once
(docs/design.md, "Configuration").
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from typing import Any

from exporter.config.yamlfile import YamlInt, quoted

__all__ = [
    "Checker",
    "index",
    "join",
    "kind",
    "number_text",
    "quoted",
    "scalar_text",
    "show",
    "suggest",
]

_PLAIN_KEY_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def number_text(value: int | float) -> str:
    """A number as written in the file, shortened; never the digits of a huge integer."""
    if isinstance(value, YamlInt):
        return value.text if len(value.text) <= 40 else value.text[:40] + "..."
    if isinstance(value, int) and abs(value) > 10**40:
        return "a very large number"
    return repr(value) if isinstance(value, float) else str(value)


def show(value: object, secret: bool = False) -> str:
    """Describe a YAML value for a message (``string "x"``); a secret shows its type only."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        name, text = "boolean", "true" if value else "false"
    elif isinstance(value, int):
        name, text = "integer", number_text(value)
    elif isinstance(value, float):
        name, text = "number", number_text(value)
    elif isinstance(value, str):
        name, text = "string", quoted(value)
    elif isinstance(value, Mapping):
        return "a mapping"
    elif isinstance(value, list | tuple):
        return "a list"
    else:
        return f"a value of type {type(value).__name__}"
    return name if secret else f"{name} {text}"


def kind(value: object) -> str:
    """The kind of a value with its article (``a number``), never the value itself."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return type(value).__name__


def scalar_text(value: object) -> str | None:
    """The text of a string or of an integer as written in YAML, else None."""
    if isinstance(value, str):
        return value
    if isinstance(value, YamlInt):
        return value.text
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 10**40:
        return str(value)
    return None


def _key_text(key: object) -> str:
    if isinstance(key, str) and _PLAIN_KEY_RE.fullmatch(key):
        return key
    if isinstance(key, str):
        return quoted(key, 64)
    if isinstance(key, bool | int | float) or key is None:
        return show(key).split(" ", 1)[-1]
    return f"<{type(key).__name__}>"


def join(path: str, key: object) -> str:
    """The key path of mapping key ``key`` under ``path``: ``tls_config.ca_file``."""
    return _key_text(key) if not path else f"{path}.{_key_text(key)}"


def index(path: str, position: int) -> str:
    """The key path of list item ``position`` under ``path``: ``task_ids[2]``."""
    return f"{path}[{position}]"


def suggest(key: object, known: Sequence[str]) -> str | None:
    """The known key the user probably meant, if any."""
    if not isinstance(key, str):
        return None
    close = difflib.get_close_matches(key.lower(), known, n=1)
    if close:
        return close[0]
    if len(key) < 4:
        return None
    return next((name for name in known if name.startswith(key.lower())), None)


class Checker:
    """Collects every error and warning of one file, each line naming the file and key path.

    The typed checks report a wrong type as ``expected <what>, got <value>``; a subclass
    may phrase it differently by overriding :meth:`type_message` (the web configuration
    says ``must be <what>, got <kind>``, as exporter-toolkit users know it).
    """

    list_known_keys = False  # name the allowed keys when no suggestion fits

    def __init__(self, source: str) -> None:
        self.source = source
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def error(self, path: str, message: str) -> None:
        """Record a problem at ``path`` ("" for the whole file)."""
        self.errors.append(
            f"{self.source}: {path}: {message}" if path else f"{self.source}: {message}"
        )

    def warn(self, path: str, message: str) -> None:
        """Record a warning at ``path``."""
        self.warnings.append(
            f"{self.source}: {path}: {message}" if path else f"{self.source}: {message}"
        )

    def type_message(self, expected: str, value: object, secret: bool = False) -> str:
        """The message for a value of the wrong type."""
        return f"expected {expected}, got {show(value, secret)}"

    def wrong_type(self, path: str, expected: str, value: object, secret: bool = False) -> None:
        """Record a value of the wrong type."""
        self.error(path, self.type_message(expected, value, secret))

    def unknown_keys(self, mapping: Mapping[Any, Any], path: str, known: Sequence[str]) -> None:
        """Report every key of ``mapping`` not in ``known``, with a suggestion when one fits."""
        for key in mapping:
            if key not in known:
                self.unknown_key(join(path, key), key, known)

    def unknown_key(self, where: str, key: object, known: Sequence[str]) -> None:
        """Report one unknown key."""
        close = suggest(key, known)
        if close is not None:
            self.error(where, f"unknown key (did you mean {close}?)")
        elif self.list_known_keys:
            self.error(where, f"unknown key (allowed: {', '.join(known)})")
        else:
            self.error(where, "unknown key")

    def mapping(
        self, value: object, path: str, known: Sequence[str] | None = None
    ) -> dict[Any, Any] | None:
        """``value`` as a mapping (null is empty), its unknown keys reported; None if not one."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.wrong_type(path, "a mapping", value)
            return None
        if known is not None:
            self.unknown_keys(value, path, known)
        return value

    def string(self, value: object, path: str, expected: str = "a string") -> str | None:
        """A string (null is None)."""
        if value is None:
            return None
        if not isinstance(value, str):
            self.wrong_type(path, expected, value)
            return None
        return value

    def strings(self, value: object, path: str) -> tuple[str, ...]:
        """A list of strings (null is empty); bad items are reported and left out."""
        if value is None:
            return ()
        if not isinstance(value, list):
            self.wrong_type(path, "a list of strings", value)
            return ()
        out = (self.string(item, index(path, i)) for i, item in enumerate(value))
        return tuple(text for text in out if text is not None)

    def boolean(self, value: object, path: str, default: bool, expected: str = "a boolean") -> bool:
        """A boolean (null is ``default``)."""
        if value is None:
            return default
        if not isinstance(value, bool):
            self.wrong_type(path, expected, value)
            return default
        return value

    def choice(self, value: object, path: str, choices: Sequence[str]) -> str | None:
        """One of ``choices`` (null is None)."""
        text = self.string(value, path)
        if text is not None and text not in choices:
            self.error(path, f"must be one of {', '.join(choices)}")
            return None
        return text

    def integer(self, value: object, path: str, minimum: int, maximum: int) -> int | None:
        """An integer in [minimum, maximum]."""
        if isinstance(value, bool) or not isinstance(value, int):
            self.wrong_type(path, f"an integer >= {minimum}", value)
        elif value < minimum:
            self.error(path, f"must be >= {minimum}, got {number_text(value)}")
        elif value > maximum:
            self.error(path, f"must be at most {maximum}, got {number_text(value)}")
        else:
            return int(value)
        return None

    def positive_number(self, value: object, path: str, maximum: float) -> float | None:
        """A number > 0 and at most ``maximum``."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.wrong_type(path, "a number > 0", value)
        elif not value > 0:  # also catches NaN
            self.error(path, f"must be > 0, got {number_text(value)}")
        elif value > maximum:
            self.error(path, f"must be at most {maximum:g}, got {number_text(value)}")
        else:
            return float(value)
        return None
