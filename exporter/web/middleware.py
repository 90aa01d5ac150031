"""Basic auth and extra response headers from the web configuration, around any WSGI app.

Like exporter-toolkit's ``handler.go``: every path is protected, a refused request gets
``401`` with ``WWW-Authenticate``, and the configured headers are added to every answer
(docs/design.md, "The HTTP server").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from exporter.web.auth import BasicAuthVerifier
from exporter.web.webconfig import WebConfigWatcher

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

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """WSGI entry point."""
        config = self._watcher.current()
        extra = list(config.headers.items())
        if config.basic_auth_users:
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
