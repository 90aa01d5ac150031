"""Values as text for the pages: ratios, ages, huge integers, invisible characters.

Nothing here raises on a stored value: integers beyond 64 bits become ``~10^N``, ratios
are computed by shifting both integers into float range, non-finite times are "never",
and control, format and surrogate characters are written as ``\\uXXXX``.
"""

from __future__ import annotations

import math
import unicodedata

from exporter.model import TaskSnapshot

# Integers beyond this many bits are shown as an order of magnitude, never converted to
# float or to a decimal string of thousands of digits (both can raise).
_MAX_EXACT_BITS = 64


def ratio(part: int, whole: int) -> float:
    """``part/whole`` between 0 and 1, whatever the sizes (no OverflowError)."""
    if whole <= 0 or part <= 0:
        return 0.0
    if part >= whole:
        return 1.0
    shift = max(whole.bit_length() - 60, 0)  # both fit a float after the same shift
    return (part >> shift) / max(whole >> shift, 1)


def progress(snap: TaskSnapshot) -> float:
    """The task's progress from 0 to 1 (1 for a completed task of no files)."""
    return ratio(snap.finished, snap.total) if snap.total else float(snap.completed)


def json_int(value: int) -> int | str:
    return value if value.bit_length() <= _MAX_EXACT_BITS else int_text(value)


def int_text(value: int) -> str:
    """An integer as text; beyond 64 bits as ``~10^N``."""
    if value.bit_length() <= _MAX_EXACT_BITS:
        return str(value)
    sign = "-" if value < 0 else ""
    return f"{sign}~10^{math.floor(math.log10(abs(value)))}"


def visible(text: str) -> str:
    """``text`` with control, format and surrogate characters written as ``\\uXXXX``."""
    if text.isprintable():
        return text
    out = []
    for char in text:
        if char.isprintable() or char == " " or unicodedata.category(char) not in _HIDDEN:
            out.append(char)
        elif ord(char) > 0xFFFF:
            out.append(f"\\U{ord(char):08x}")
        else:
            out.append(f"\\u{ord(char):04x}")
    return "".join(out)


_HIDDEN = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def format_age(seconds: float | None) -> str:
    """A short age such as ``45s``, ``3m 20s``, ``2h 5m`` or ``4d 1h``; ``never`` for None."""
    if seconds is None or not math.isfinite(seconds):
        return "never"
    total = int(max(seconds, 0.0))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m {secs}s" if secs else f"{minutes}m"
    return f"{secs}s"


def eta(when: float | None, now: float) -> str:
    """The estimated completion as a line under the state ("" without an estimate)."""
    if when is None or not math.isfinite(when):
        return ""
    left = when - now
    text = f"in {format_age(left)}" if left >= 0 else f"{format_age(-left)} overdue"
    return f'<br><span class="muted">ETA {text}</span>'
