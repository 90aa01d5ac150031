"""Prometheus-style durations: "500ms", "1m30s", "24h", or a plain number of seconds."""

from __future__ import annotations

import math
import re

from exporter.config.kit import number_text, quoted, show

_DURATION_RE = re.compile(
    r"\A(?:([0-9]+)y)?(?:([0-9]+)w)?(?:([0-9]+)d)?(?:([0-9]+)h)?"
    r"(?:([0-9]+)m)?(?:([0-9]+)s)?(?:([0-9]+)ms)?\Z"
)
_NUMBER_RE = re.compile(r"\A[0-9]+(?:\.[0-9]+)?\Z")
_UNITS_MS = (
    ("y", 365 * 86_400_000),
    ("w", 7 * 86_400_000),
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
)


def parse_duration(value: object) -> float:
    """Parse "500ms", "1m30s", "1d", "0s" or a number of seconds; raise ValueError if invalid."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f'expected a duration such as "5s" or "1m30s", got {show(value)}')
    if isinstance(value, str):
        text = value.strip()
        if len(text) <= 64 and _NUMBER_RE.match(text):
            return float(text)
        match = _DURATION_RE.match(text) if len(text) <= 64 else None
        if not text or match is None:
            raise ValueError(
                f"invalid duration {quoted(value)} (use e.g. "
                '"500ms", "5s", "1m30s", "24h", "1d" or a number of seconds)'
            )
        millis = sum(
            int(n) * size for n, (_, size) in zip(match.groups(), _UNITS_MS, strict=True) if n
        )
        return millis / 1000
    if value < 0:
        raise ValueError(f"a duration must not be negative, got {number_text(value)}")
    try:
        seconds = float(value)
    except OverflowError:
        raise ValueError("duration is too large") from None
    if not math.isfinite(seconds):
        raise ValueError(f"a duration must be finite, got {number_text(value)}")
    return seconds


def format_duration(seconds: float) -> str:
    """Render seconds the Prometheus way: 90 -> "1m30s", 0.5 -> "500ms", 0 -> "0s"."""
    if not math.isfinite(seconds):
        return str(seconds)
    if seconds < 0:
        return "-" + format_duration(-seconds)
    millis = round(seconds * 1000)
    if millis == 0:
        return "0s" if seconds == 0 else f"{seconds:g}s"
    parts = []
    for unit, size in _UNITS_MS:
        count, millis = divmod(millis, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
