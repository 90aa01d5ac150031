"""Logging to stderr, one event a line, as logfmt or JSON.

Fields travel in ``extra=``: ``log.warning("poll failed", extra={"store": "acme"})`` becomes
``ts=2026-11-28T16:00:00.000Z level=warn logger=exporter.polling.poller msg="poll failed"
store=acme`` (one line).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import unicodedata
from typing import Any, TextIO

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}
_NAMES = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warn"}
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        + f".{int(record.msecs):03d}Z",
        "level": _NAMES.get(record.levelno, "error"),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    for key, value in vars(record).items():
        if key not in _STANDARD and not key.startswith("_"):
            fields[key] = value
    if record.exc_info and record.exc_info[1] is not None:
        # The exception's text only: a traceback is a developer's tool, not an operator's.
        exc = record.exc_info[1]
        fields["err"] = f"{type(exc).__name__}: {exc}"
    return fields


# What a log line must not carry raw: C0 and C1 controls and DEL (a NUL, an ESC sequence
# that recolours a terminal, a newline that forges a second event), the line and paragraph
# separators some readers split on, lone surrogates (not encodable: the line would be
# lost), and format characters (Unicode category Cf: U+202E and the other bidirectional
# controls reorder what a reader sees, U+200B hides). Written as \uXXXX instead
# (docs/design.md, "Values from outside").
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
# Every character outside printable ASCII is a candidate; its category decides.
_CANDIDATE = re.compile("[^\x20-\x7e]")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if unicodedata.category(char) not in _UNSAFE_CATEGORIES:
        return char
    code = ord(char)
    if code > 0xFFFF:  # U+E0001 (a Cf tag character): as JSON writes it, a surrogate pair
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
    return f"\\u{code:04x}"


def _escape_unsafe(text: str) -> str:
    if text.isprintable():  # False for every character of the unsafe categories
        return text
    return _CANDIDATE.sub(_escape, text)


def _logfmt_value(value: object) -> str:
    text = str(value)
    if text and not any(c in text for c in ' ="\\') and text.isprintable():
        return text
    return '"' + _escape_unsafe(text.replace("\\", "\\\\").replace('"', '\\"')) + '"'


class LogfmtFormatter(logging.Formatter):
    """``key=value`` pairs, values quoted when needed."""

    def format(self, record: logging.LogRecord) -> str:
        """One line of logfmt."""
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in _fields(record).items())


class JSONFormatter(logging.Formatter):
    """One JSON object a line."""

    def format(self, record: logging.LogRecord) -> str:
        """One line of JSON."""
        # json escapes C0 controls itself; DEL, C1, separators, surrogates and Cf are left.
        return _escape_unsafe(json.dumps(_fields(record), default=str, ensure_ascii=False))


def setup_logging(level: str = "info", fmt: str = "logfmt", stream: TextIO | None = None) -> None:
    """Route every logger to ``stream`` (stderr) with the chosen format and level."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
    logging.captureWarnings(True)  # Python warnings become log lines too
    # urllib3 logs every new connection at debug with the full URL; keep it out of debug logs.
    logging.getLogger("urllib3").setLevel(max(LEVELS[level], logging.INFO))
