"""Serving under a sub-path: ``--web.external-url`` and ``--web.route-prefix`` (docs/web.md).

As in Prometheus: the external URL is where users reach the exporter (behind a reverse
proxy, say ``https://example.com/upload-exporter/``); the route prefix is the path the
requests arrive with, the external URL's path unless given (``/`` when the proxy strips
the path). Requests under the route prefix reach the app with the prefix moved to
``SCRIPT_NAME`` (the external path, for links); the prefix itself and ``/`` redirect to the
landing page under the external path; anything else is 404. The pages link relatively,
so their links follow the external path wherever the proxy puts it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["Prefixes", "RoutePrefix", "parse_prefixes"]


@dataclass(frozen=True)
class Prefixes:
    """Paths without a trailing slash; "" is the root."""

    route: str = ""
    external: str = ""

    def path(self, route: str) -> str:
        """The request path of one of the app's routes (``/-/healthy`` -> ``/sub/-/healthy``)."""
        return self.route + route


def _clean(path: str, flag: str) -> str:
    if not path.startswith("/") or path.startswith("//"):
        raise ValueError(f"{flag} {path!r}: must be a path starting with a single '/'")
    if any(c in path for c in "?#") or any(ord(c) < 0x21 or ord(c) == 0x7F for c in path):
        raise ValueError(f"{flag} {path!r}: must be a plain path (no query, spaces or controls)")
    return path.rstrip("/")


def parse_prefixes(external_url: str | None, route_prefix: str | None) -> Prefixes:
    """The prefixes from the two flags; ValueError for a malformed one."""
    external = ""
    if external_url:
        parts = urlsplit(external_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(
                f"--web.external-url {external_url!r}: must be an absolute http:// or "
                "https:// URL, e.g. https://example.com/upload-exporter/"
            )
        if parts.query or parts.fragment:
            raise ValueError(f"--web.external-url {external_url!r}: no query or fragment")
        external = _clean(parts.path or "/", "--web.external-url path")
    route = external if route_prefix is None else _clean(route_prefix, "--web.route-prefix")
    return Prefixes(route=route, external=external)


def _text(
    start_response: StartResponse, status: str, body: bytes, *extra: tuple[str, str]
) -> list[bytes]:
    start_response(
        status,
        [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            *extra,
        ],
    )
    return [body]


class RoutePrefix:
    """Serves ``app`` under ``prefixes.route``; links and redirects use the external path."""

    def __init__(self, app: WSGIApplication, prefixes: Prefixes) -> None:
        self._app = app
        self.prefixes = prefixes

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """WSGI entry point."""
        route, external = self.prefixes.route, self.prefixes.external
        environ["SCRIPT_NAME"] = external
        path = environ.get("PATH_INFO") or "/"
        if not route:
            return self._app(environ, start_response)
        if path.startswith(route + "/"):
            environ["PATH_INFO"] = path[len(route) :]
            return self._app(environ, start_response)
        if path in (route, "/"):
            # Relative links need the landing page's URL to end in '/'.
            query = environ.get("QUERY_STRING", "")
            location = external + "/" + ("?" + query if query else "")
            return _text(start_response, "302 Found", b"", ("Location", location))
        return _text(start_response, "404 Not Found", b"404 page not found\n")
