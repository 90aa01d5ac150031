"""One HTTP session for every store of a process, with per-host pools it can let go.

A ``requests.Session`` per store (a session, an adapter, a pool manager, a pool) cost
thousands of small objects per store, and making and dropping them by the thousand left
the heap fragmented (docs/performance.md#design-measurements). So the process has one
session; urllib3 keeps a connection pool per host in it, and a store that goes idle lets
its host's pool go (``Transport.release``), so idle stores hold no socket.
"""

from __future__ import annotations

import contextlib
import http.cookiejar
import os
import ssl
import threading
import urllib.parse
from typing import Any

import requests
import urllib3
from requests import PreparedRequest
from requests.adapters import HTTPAdapter
from requests.utils import DEFAULT_CA_BUNDLE_PATH
from urllib3.connectionpool import HTTPConnectionPool
from urllib3.poolmanager import PoolKey
from urllib3.util.ssl_ import create_urllib3_context

from exporter import __version__

USER_AGENT = f"shoplazza-upload-exporter/{__version__}"
#: Host pools kept at most; past it, the least recently used host's connections close.
#: A first round opens every store's pool before any store is idle (one task of each store
#: in turn), and a kept-alive TLS connection costs far more than a plain one: the bound
#: caps a first round's memory (docs/performance.md#design-measurements).
MAX_HOSTS = 128

Origin = tuple[str, str, int]  # scheme, host (lower case, no brackets), port


def _new_context(path: str) -> ssl.SSLContext:
    """A client TLS context verifying against the CAs at ``path`` ("": no verification)."""
    if not path:
        context = create_urllib3_context(cert_reqs=ssl.CERT_NONE)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    context = create_urllib3_context(cert_reqs=ssl.CERT_REQUIRED)
    try:
        if os.path.isdir(path):
            context.load_verify_locations(capath=path)
        else:
            context.load_verify_locations(cafile=path)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise requests.exceptions.SSLError(f"CA file {path}: {exc}") from None
    return context


def origin_of(url: str) -> Origin:
    """The pool a request to ``url`` goes through, as requests and urllib3 key it."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, (parts.hostname or "").lower(), port


class _PoolManager(urllib3.PoolManager):
    """A pool manager that tells its transport which pools each host has."""

    def __init__(self, transport: Transport, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._transport = transport

    def connection_from_pool_key(
        self, pool_key: PoolKey, request_context: dict[str, Any]
    ) -> HTTPConnectionPool:
        self._transport._saw(pool_key)
        return super().connection_from_pool_key(pool_key, request_context)


class _Adapter(HTTPAdapter):
    def __init__(self, transport: Transport, **kwargs: Any) -> None:
        self._transport = transport
        super().__init__(**kwargs)

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        # What HTTPAdapter.init_poolmanager does, with the pool manager that reports its pools
        # (the base class would make a pool manager only to have it replaced).
        self._pool_connections = connections
        self._pool_maxsize = maxsize
        self._pool_block = block
        self.poolmanager = _PoolManager(
            self._transport, num_pools=connections, maxsize=maxsize, block=block, **pool_kwargs
        )

    def build_connection_pool_key_attributes(
        self, request: PreparedRequest, verify: bool | str, cert: Any = None
    ) -> tuple[Any, Any]:
        """HTTPS pools get the transport's shared TLS context for ``verify``."""
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(
            request, verify, cert
        )
        if host_params["scheme"] == "https":
            pool_kwargs.pop("ca_certs", None)
            pool_kwargs.pop("ca_cert_dir", None)
            pool_kwargs["ssl_context"] = self._transport.tls_context(verify)
        return host_params, pool_kwargs

    def cert_verify(self, conn: Any, url: str, verify: bool | str, cert: Any) -> None:
        """As requests does, but the CA file stays off the pool: its shared context holds
        the certificates, and urllib3 would load them into it again for every connection."""
        super().cert_verify(conn, url, verify, cert)  # type: ignore[no-untyped-call]
        if getattr(conn, "conn_kw", {}).get("ssl_context") is not None:
            conn.ca_certs = None  # urllib3 keeps the context among the connections' kwargs
            conn.ca_cert_dir = None


class Transport:
    """The session the stores of a process send their requests through.

    Requests are sent between ``begin(origin, store)`` and ``end(origin)``; a store that
    goes idle calls ``release(origin, store)``, which closes the host's kept-alive
    connections once no store uses the host any more and no request to it is in flight.
    ``pool_size`` is how many idle connections a host keeps: no more requests than that are
    ever in flight in the process, so none is dropped for want of room.
    """

    def __init__(self, *, pool_size: int, max_hosts: int = MAX_HOSTS) -> None:
        self._lock = threading.Lock()
        self._in_flight: dict[Origin, int] = {}
        self._users: dict[Origin, set[str]] = {}  # stores that requested and did not release
        self._contexts: dict[str, tuple[tuple[int, ...], ssl.SSLContext]] = {}  # by CA path
        self._keys: dict[Origin, set[PoolKey]] = {}
        session = requests.Session()
        session.trust_env = False  # no ~/.netrc credentials, no env proxies by surprise
        # Shared by stores, so nothing one answer sets may travel with another's request.
        session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        self._adapter = _Adapter(
            self, pool_connections=max_hosts, pool_maxsize=max(pool_size, 1), max_retries=0
        )
        session.mount("http://", self._adapter)
        session.mount("https://", self._adapter)
        session.headers.update({"Accept": "application/json", "User-Agent": USER_AGENT})
        self.session = session

    def tls_context(self, verify: bool | str) -> ssl.SSLContext:
        """The one TLS context for connections that verify against ``verify`` (True: the
        CA bundle requests uses, a path: that CA file or directory, False: no verification).

        urllib3 makes a context per connection when none is given, loading a whole CA bundle
        into each (docs/design.md, "HTTP client"; docs/performance.md#design-measurements).
        A CA file is read again when it changes (new connections use it; pools keyed on the
        old context age out); a missing or broken one fails the request, never the process.
        """
        identity: tuple[int, ...] = ()
        path = ""
        if verify is not False:
            path = DEFAULT_CA_BUNDLE_PATH if verify is True else verify
            try:
                st = os.stat(path)
            except OSError as exc:
                raise requests.exceptions.SSLError(
                    f"CA file {path}: {exc.strerror or exc}"
                ) from None
            identity = (st.st_ino, st.st_mtime_ns, st.st_size)
        with self._lock:
            known = self._contexts.get(path)
            if known is not None and known[0] == identity:
                return known[1]
            context = _new_context(path)
            self._contexts[path] = (identity, context)
            return context

    def _saw(self, key: PoolKey) -> None:
        port = key.key_port or (443 if key.key_scheme == "https" else 80)
        origin = (key.key_scheme, key.key_host, port)
        with self._lock:
            self._keys.setdefault(origin, set()).add(key)

    def begin(self, origin: Origin, user: str) -> None:
        """A request of ``user`` (a store) to ``origin`` starts; the store now uses the host."""
        with self._lock:
            self._in_flight[origin] = self._in_flight.get(origin, 0) + 1
            self._users.setdefault(origin, set()).add(user)

    def end(self, origin: Origin) -> None:
        """A request to ``origin`` is over (its response closed)."""
        with self._lock:
            left = self._in_flight.get(origin, 0) - 1
            if left > 0:
                self._in_flight[origin] = left
            else:
                self._in_flight.pop(origin, None)

    def holds(self, origin: Origin) -> bool:
        """A pool (and maybe kept-alive connections) is held for ``origin``."""
        with self._lock:
            return origin in self._keys

    def release(self, origin: Origin, user: str) -> bool:
        """``user`` no longer needs ``origin``: close its pools if no other store uses the
        host and no request to it is in flight; True if they were closed."""
        with self._lock:
            users = self._users.get(origin)
            if users is not None:
                users.discard(user)
                if users:
                    return False  # another store of this host still polls it
                del self._users[origin]
            if self._in_flight.get(origin) or origin not in self._keys:
                return False
            keys = self._keys.pop(origin)
            pools = self._adapter.poolmanager.pools
            for key in keys:
                with contextlib.suppress(KeyError):  # urllib3 may have let it go (LRU)
                    del pools[key]  # the container closes the pool it lets go
        return True

    @property
    def hosts(self) -> int:
        """Host pools held now."""
        return len(self._adapter.poolmanager.pools)

    def close(self) -> None:
        """Close every pooled connection."""
        with self._lock:
            self._keys.clear()
            self._users.clear()
        self.session.close()
