"""Rate limit, basic auth and extra response headers from the web configuration, around
any WSGI app.

Like exporter-toolkit's ``handler.go``: the rate limit comes first and counts every request
(``429`` when the bucket is empty); every path except ``auth_excluded_paths`` is protected,
a refused request gets ``401`` with ``WWW-Authenticate``; the configured headers are added
to every answer (docs/design.md, "The HTTP server").
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from exporter.web.auth import BasicAuthVerifier
from exporter.web.ratelimit import RequestLimiter
from exporter.web.webconfig import RateLimit, WebConfigWatcher

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

    from _typeshed import OptExcInfo

__all__ = ["REALM", "WebConfigMiddleware"]

REALM = "shoplazza-upload-exporter"


class WebConfigMiddleware:
    """Applies the web configuration in force (re-read by the watcher) to each request."""

    def __init__(self, app: WSGIApplication, watcher: WebConfigWatcher) -> None:
        self._app = app
        self._watcher = watcher
        self._auth = BasicAuthVerifier()
        self._limit_lock = threading.Lock()
        self._limit: tuple[RateLimit | None, RequestLimiter | None] = (None, None)

    def _limiter(self, limit: RateLimit | None) -> RequestLimiter | None:
        """The bucket of the configuration in force; a changed ``rate_limit`` starts a new one."""
        with self._limit_lock:
            if self._limit[0] != limit:
                bucket = RequestLimiter(limit.interval, limit.burst) if limit else None
                self._limit = (limit, bucket)
            return self._limit[1]

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """WSGI entry point."""
        config = self._watcher.current()
        extra = list(config.headers.items())
        limiter = self._limiter(config.rate_limit)
        if limiter is not None and not limiter.allow():
            start_response(
                "429 Too Many Requests",
                [
                    ("Content-Type", "text/plain; charset=utf-8"),
                    ("Retry-After", str(limiter.retry_after())),
                    *extra,
                ],
            )
            return [b"Too Many Requests\n"]
        if config.needs_auth(environ.get("PATH_INFO") or "/"):
            user = self._auth.verify(config.basic_auth_users, environ.get("HTTP_AUTHORIZATION"))
            if user is None:
                start_response(
                    "401 Unauthorized",
                    [
                        ("Content-Type", "text/plain; charset=utf-8"),
                        ("WWW-Authenticate", f'Basic realm="{REALM}"'),
                        *extra,
                    ],
                )
                return [b"Unauthorized\n"]
            environ["REMOTE_USER"] = user
            environ.pop("HTTP_AUTHORIZATION", None)
        if not extra:
            return self._app(environ, start_response)

        def start_with_headers(
            status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None
        ) -> Callable[[bytes], object]:
            present = {name.lower() for name, _ in headers}
            headers = headers + [(n, v) for n, v in extra if n.lower() not in present]
            return start_response(status, headers, exc_info)

        return self._app(environ, start_with_headers)
