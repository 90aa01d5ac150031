"""The web configuration around any WSGI app: extra response headers, and the answers that
refuse a request before it reaches the app (docs/design.md, "The HTTP server").

Like exporter-toolkit's ``handler.go``: every path is protected, a refused request gets
``401`` with ``WWW-Authenticate``, and the configured headers are added to every answer.
The credentials themselves are checked by the server before a request is handed to the
app's threads (``exporter.web.auth``; docs/design.md, "Rules for abuse: the server"), so
bcrypt never runs on the threads that answer probes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from exporter.web.webconfig import WebConfigWatcher
from exporter.web.wsgi import Answer

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

    from _typeshed import OptExcInfo

__all__ = [
    "REALM",
    "WebConfigMiddleware",
    "rate_limited",
    "too_many_checks",
    "unauthorized",
    "unsent_full",
]

REALM = "shoplazza-upload-exporter"
_TEXT = ("Content-Type", "text/plain; charset=utf-8")


def unauthorized(headers: Mapping[str, str]) -> Answer:
    """401 with ``WWW-Authenticate`` and the configured headers."""
    return Answer(
        401,
        "Unauthorized",
        [_TEXT, ("WWW-Authenticate", f'Basic realm="{REALM}"'), *headers.items()],
        b"Unauthorized\n",
    )


def rate_limited(headers: Mapping[str, str], retry_after: int) -> Answer:
    """429: the web configuration's ``rate_limit`` bucket is empty."""
    return Answer(
        429,
        "Too Many Requests",
        [_TEXT, ("Retry-After", str(retry_after)), *headers.items()],
        b"Too Many Requests\n",
    )


def too_many_checks(headers: Mapping[str, str]) -> Answer:
    """429: the queue of password checks is full (a flood of credentials not yet known)."""
    return Answer(
        429,
        "Too Many Requests",
        [_TEXT, ("Retry-After", "1"), *headers.items()],
        b"Too many password checks under way, retry later\n",
    )


def unsent_full(headers: Mapping[str, str]) -> Answer:
    """503 for a request that waited ``request_timeout`` for room in the budget of unsent
    answers (never for a probe: probes do not wait)."""
    return Answer(
        503,
        "Service Unavailable",
        [_TEXT, ("Retry-After", "1"), *headers.items()],
        b"Too many answers wait for clients that do not read them, retry later\n",
    )


class WebConfigMiddleware:
    """Adds the headers of the web configuration in force (re-read by the watcher)."""

    def __init__(self, app: WSGIApplication, watcher: WebConfigWatcher) -> None:
        self._app = app
        self._watcher = watcher

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """WSGI entry point."""
        extra = list(self._watcher.current().headers.items())
        if not extra:
            return self._app(environ, start_response)

        def start_with_headers(
            status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None
        ) -> Callable[[bytes], object]:
            present = {name.lower() for name, _ in headers}
            headers = headers + [(n, v) for n, v in extra if n.lower() not in present]
            return start_response(status, headers, exc_info)

        return self._app(environ, start_with_headers)
