"""Redaction of an access token, whole or in part, from text the API sent.

An API that echoes the token (an error message, a redirect's ``Location``, a failed file's
link) must not publish it through logs, pages or JSON, nor most of it: an echo of the
token minus its last character is as good as the token. Any run of ``WINDOW`` (12) or more
consecutive characters of the token is replaced, wherever it stands in the text
(docs/design.md, "Values from outside").
"""

from __future__ import annotations

import functools
import re

REDACTED = "<redacted>"
#: The shortest run of a token's characters that is redacted. Tokens have at least 16.
WINDOW = 12
_PROBE = WINDOW // 2
#: Redactors kept, for the tokens used last (about 5 KB each): a fleet of stores holds no
#: more than these, whatever its number of stores and tokens.
KEPT = 128


class Redactor:
    """Finds and replaces runs of a token's characters in text; one per token, reusable.

    Every ``WINDOW``-character substring of the token is kept in a set. Only a stretch of 12
    or more characters that each occur in the token can hold one, and a regular expression
    finds those stretches. A run of ``WINDOW`` or more token characters covers a whole aligned
    ``WINDOW // 2`` block (positions 0, 6, 12, ... from the run's start), so a run is probed
    at every sixth position only, with the token's 6-character substrings, and the
    12-character windows around a hit are checked: n characters cost at most about n/6 set
    lookups.
    """

    __slots__ = ("_probes", "_runs", "_windows", "token")

    def __init__(self, token: str) -> None:
        if len(token) < WINDOW:
            raise ValueError(f"a token shorter than {WINDOW} characters cannot be redacted")
        self.token = token
        self._windows = frozenset(token[i : i + WINDOW] for i in range(len(token) - WINDOW + 1))
        self._probes = frozenset(token[i : i + _PROBE] for i in range(len(token) - _PROBE + 1))
        # A run to redact lies inside a run of the token's characters: the regex engine
        # finds those (in C), and only they are probed.
        alphabet = "".join(re.escape(char) for char in sorted(set(token)))
        self._runs = re.compile(f"[{alphabet}]{{{WINDOW},}}")

    def spans(self, text: str) -> list[tuple[int, int]]:
        """The ``[start, end)`` ranges of ``text`` to redact, in order, not touching."""
        spans: list[tuple[int, int]] = []
        for run in self._runs.finditer(text):
            self._scan(text, run.start(), run.end(), spans)
        return spans

    def _scan(self, text: str, begin: int, end: int, spans: list[tuple[int, int]]) -> None:
        """Add the spans inside ``text[begin:end]`` (a run of the token's characters)."""
        windows, probes = self._windows, self._probes
        last = end - WINDOW
        for probe in range(begin, end - _PROBE + 1, _PROBE):
            if text[probe : probe + _PROBE] not in probes:
                continue
            # The windows that hold the whole block [probe, probe + 6).
            for start in range(max(begin, probe + _PROBE - WINDOW), min(probe, last) + 1):
                if text[start : start + WINDOW] in windows:
                    stop = start + WINDOW
                    if spans and start <= spans[-1][1]:
                        spans[-1] = (spans[-1][0], max(stop, spans[-1][1]))
                    else:
                        spans.append((start, stop))

    def clean(self, text: str) -> str:
        """``text`` with every run of 12 or more of the token's characters redacted."""
        spans = self.spans(text)
        if not spans:
            return text
        parts: list[str] = []
        done = 0
        for start, end in spans:
            parts.append(text[done:start])
            parts.append(REDACTED)
            done = end
        parts.append(text[done:])
        return "".join(parts)


@functools.lru_cache(maxsize=KEPT)
def redactor_for(token: str) -> Redactor:
    """The token's redactor, shared by every store with that token.

    Only answers with text need one (most answers have none). The :data:`KEPT` used last
    are kept: one per store would hold 5,000 x 5 KB for a fleet of 5,000 stores; a token
    used again after falling out costs a new one (about 60 us).
    """
    return Redactor(token)
