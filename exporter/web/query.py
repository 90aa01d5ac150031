"""The query of a listing (``/`` and ``/api/v1/tasks``): filters, limit and cursor, checked.

Every problem is a :class:`QueryError` with a message that names the parameter and says
what it takes; the routes answer it with 400.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

from exporter.web.states import PROBLEMS_FIRST

DEFAULT_HTML_LIMIT = 200
DEFAULT_JSON_LIMIT = 1000
MAX_LIMIT = 10_000
MAX_LABEL_FILTERS = 8
MAX_LABEL_VALUE = 256

_STORE_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_TASK_PART_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")
_LABEL_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_DIGITS_RE = re.compile(r"[0-9]{1,6}")
_PARAMS = ("state", "store", "label", "q", "limit", "after")


class QueryError(ValueError):
    """A filter, limit or cursor that is not valid; the message says which and why."""


@dataclass(frozen=True)
class Query:
    """What a listing asks for: filters (ANDed), how many rows, and where to continue."""

    states: frozenset[str] = frozenset()  # empty: every state
    store: str | None = None
    labels: tuple[tuple[str, str], ...] = ()  # value "": the task has no such label
    q: str | None = None  # part of a task id
    limit: int = DEFAULT_JSON_LIMIT
    after: str | None = None  # the opaque cursor, checked by the listing

    @property
    def filtered(self) -> bool:
        """Any filter is set."""
        return bool(self.states or self.store or self.labels or self.q)

    def params(self, after: str | None, default_limit: int) -> list[tuple[str, str]]:
        """The filters as URL parameters, with ``limit`` (when not the default) and ``after``."""
        out = [("state", s) for s in PROBLEMS_FIRST if s in self.states]
        if self.store:
            out.append(("store", self.store))
        out += [("label", f"{k}={v}") for k, v in self.labels]
        if self.q:
            out.append(("q", self.q))
        if self.limit != default_limit:
            out.append(("limit", str(self.limit)))
        if after:
            out.append(("after", after))
        return out

    def url(self, after: str | None, default_limit: int) -> str:
        """``?`` and the URL-encoded :meth:`params` (just ``?`` when there are none)."""
        return "?" + urlencode(self.params(after, default_limit))


def parse_query(text: str, default_limit: int) -> Query:
    """The query string of a listing; :class:`QueryError` for anything it cannot mean.

    An empty value counts as absent (a form sends ``store=`` for an empty field); ``state``
    and ``label`` may repeat, the others may not; unknown parameters are errors, so a typo
    never silently widens a filter.
    """
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False, errors="strict")
    except (UnicodeDecodeError, ValueError) as exc:
        raise QueryError(f"query string is not valid: {exc}") from None
    seen: dict[str, list[str]] = {}
    for key, value in pairs:
        if key not in _PARAMS:
            raise QueryError(
                f"unknown parameter {_show(key)}: the filters are "
                "state, store, label, q, limit and after"
            )
        if value != "":
            seen.setdefault(key, []).append(value)
    for key in ("store", "q", "limit", "after"):
        if len(seen.get(key, ())) > 1:
            raise QueryError(f"{key}: given more than once")
    states = seen.get("state", [])
    for state in states:
        if state not in PROBLEMS_FIRST:
            known = ", ".join(PROBLEMS_FIRST)
            raise QueryError(f"state: {_show(state)} is not a state; one of {known}")
    [store] = seen.get("store", [None])
    if store is not None and not _STORE_RE.fullmatch(store):
        raise QueryError(f"store: {_show(store)} is not a store name ([A-Za-z0-9_.-]{{1,64}})")
    labels = seen.get("label", [])
    if len(labels) > MAX_LABEL_FILTERS:
        raise QueryError(f"label: at most {MAX_LABEL_FILTERS} label filters")
    parsed_labels = []
    for item in labels:
        name, sep, value = item.partition("=")
        if not sep or not _LABEL_RE.fullmatch(name):
            raise QueryError(f"label: {_show(item)} is not name=value (a label name, then =)")
        if len(value) > MAX_LABEL_VALUE:
            raise QueryError(f"label: the value of {name} is over {MAX_LABEL_VALUE} characters")
        parsed_labels.append((name, value))
    [q] = seen.get("q", [None])
    if q is not None and not _TASK_PART_RE.fullmatch(q):
        raise QueryError(f"q: {_show(q)} is not part of a task id ([A-Za-z0-9_-]{{1,128}})")
    [limit_text] = seen.get("limit", [None])
    limit = default_limit
    if limit_text is not None:
        if not _DIGITS_RE.fullmatch(limit_text) or not 1 <= int(limit_text) <= MAX_LIMIT:
            raise QueryError(f"limit: {_show(limit_text)} is not a number from 1 to {MAX_LIMIT}")
        limit = int(limit_text)
    [after] = seen.get("after", [None])
    return Query(frozenset(states), store, tuple(parsed_labels), q, limit, after)


def _show(value: str) -> str:
    """A value quoted for a message, cut short and with anything unprintable escaped."""
    text = value if len(value) <= 80 else value[:77] + "..."
    return ascii(text) if not text.isprintable() else repr(text)
