"""The connection pools every store of a process shares, and a deadline on every request.

urllib3 is used directly, through its public classes (docs/design.md, "HTTP client"): the
transport owns one ``HTTPConnectionPool`` per host and TLS setting, at most ``MAX_HOSTS`` of
them, and closes a host's pools (``pool.close()``, then drops them) once no store uses the
host and no request to it is in flight. urllib3 keeps no cookies, reads no ``~/.netrc`` and
no proxy variables, and follows no redirect with ``redirect=False``.

A store with a forward proxy gets a ``urllib3.ProxyManager`` of its own per origin, TLS
context and proxy (in the same dictionary, under the same bound), made to build the
transport's pools (``pool_classes_by_scheme``): plain http goes to the proxy with the
absolute URL, https through a CONNECT tunnel with the store's TLS context, so verification
is the same as without a proxy, and the deadline cuts the connection to the proxy.

urllib3's timeouts bound each socket operation, so an answer trickled a byte at a time would
never time out. Each request carries a :class:`Deadline`; the connections of the transport's
pools tell it which socket the request uses, and one watchdog thread shuts that socket down
when the deadline passes, whatever phase the request is in (TLS handshake, sending, the
answer's head or its body).
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import itertools
import os
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from typing import Any

import certifi
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.response import BaseHTTPResponse
from urllib3.util import create_urllib3_context

#: Host pools kept at most; past it, the least recently used host's connections close.
#: A first round opens every store's pool before any store is idle (one task of each store
#: in turn), and a kept-alive TLS connection costs far more than a plain one
#: (docs/design.md, "HTTP client").
MAX_HOSTS = 128
#: After a deadline passed, its connection is shut down again this often until the request
#: ends (a connection still being made when the deadline passed has no socket yet).
_RECUT = 0.25

Origin = tuple[str, str, int]  # scheme, host (lower case, no brackets), port
# The origin, its TLS context and its proxy (URL and credentials; None: direct).
_PoolKey = tuple[str, str, int, ssl.SSLContext | None, tuple[str, str] | None]
_Opener = urllib3.HTTPConnectionPool | urllib3.ProxyManager


class CAFileError(Exception):
    """A store's CA file or directory cannot be read: the request fails, not the process."""


def origin_of(url: str) -> Origin:
    """The scheme, host and port a request to ``url`` connects to."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, (parts.hostname or "").lower(), port


def _target(url: str) -> str:
    """The request target of ``url``: its path and query."""
    parts = urllib.parse.urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


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
        raise CAFileError(f"CA file {path}: {exc}") from None
    return context


class Deadline:
    """The moment a request must be over by; past it, its connection is shut down.

    The request's thread sets the deadline as current (:meth:`Transport.exchange`); the
    transport's connections attach themselves to it when they connect or send, so the
    watchdog knows the socket to shut down.
    """

    __slots__ = ("_conn", "_done", "_lock", "at", "expired", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.at = time.monotonic() + timeout
        self.expired = False
        self._done = False
        self._conn: _Connection | _TLSConnection | None = None
        self._lock = threading.Lock()

    def remaining(self) -> float:
        """Seconds left, never below a millisecond (a socket timeout of 0 means no wait)."""
        return max(self.at - time.monotonic(), 0.001)

    def attach(self, conn: _Connection | _TLSConnection) -> None:
        """``conn`` carries the request from now on."""
        with self._lock:
            self._conn = conn
            conn.owner = self
            if self.expired:
                _cut(conn)

    def expire(self) -> bool:
        """Shut the request's connection down; False once the request is over."""
        with self._lock:
            if self._done:
                return False
            self.expired = True
            # The last read of a body puts the connection back in its pool before the
            # request ends: once another request took it, it is not this deadline's to cut.
            if self._conn is not None and self._conn.owner is self:
                _cut(self._conn)
            return True

    def finish(self) -> None:
        """The request is over: its connection is no longer the deadline's to cut."""
        with self._lock:
            self._done = True
            self._conn = None


def _cut(conn: HTTPConnection) -> None:
    """Shut ``conn``'s socket down, waking a read or write blocked on it in another thread.

    The plain socket's ``shutdown`` is called even on a TLS socket: ``SSLSocket.shutdown``
    would also drop the TLS state the blocked thread is using.
    """
    sock = conn.sock
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Watchdog:
    """One daemon thread for the process that expires deadlines as they pass."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Deadline]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, deadline: Deadline) -> None:
        with self._cond:
            self._push(deadline.at, deadline)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="request-deadlines", daemon=True
                )
                self._thread.start()

    def _push(self, when: float, deadline: Deadline) -> None:
        entry = (when, next(self._seq), deadline)
        heapq.heappush(self._heap, entry)
        if self._heap[0] is entry:
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    _, _, deadline = heapq.heappop(self._heap)
                    if deadline.expire():  # the request goes on: cut again until it ends
                        self._push(now + _RECUT, deadline)
                self._cond.wait(self._heap[0][0] - now if self._heap else None)


_WATCHDOG = _Watchdog()
_current = threading.local()  # .deadline: the Deadline of the request this thread sends


def _attach(conn: _Connection | _TLSConnection) -> None:
    deadline: Deadline | None = getattr(_current, "deadline", None)
    if deadline is not None:
        deadline.attach(conn)


class _Connection(HTTPConnection):
    """urllib3's connection, attaching itself to the deadline of the request it carries."""

    owner: Deadline | None = None

    def connect(self) -> None:
        _attach(self)
        super().connect()

    def request(self, *args: Any, **kwargs: Any) -> None:
        _attach(self)
        super().request(*args, **kwargs)


class _TLSConnection(HTTPSConnection):
    """As :class:`_Connection`, over TLS."""

    owner: Deadline | None = None

    def connect(self) -> None:
        _attach(self)  # the TCP socket is set before the handshake, which can stall too
        super().connect()

    def request(self, *args: Any, **kwargs: Any) -> None:
        _attach(self)
        super().request(*args, **kwargs)


class _Pool(urllib3.HTTPConnectionPool):
    ConnectionCls = _Connection


class _TLSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _TLSConnection


class _ProxyManager(urllib3.ProxyManager):
    """urllib3's proxy manager, building the transport's pools (so its connections have
    deadlines); the transport holds one per origin, TLS context and proxy."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # urllib3 sets the pool classes per manager "so other PoolManagers can override them".
        self.pool_classes_by_scheme = {"http": _Pool, "https": _TLSPool}


def _close(opener: _Opener) -> None:
    if isinstance(opener, urllib3.ProxyManager):
        opener.clear()  # closes its pool
    else:
        opener.close()


class Transport:
    """The connection pools the stores of a process send their requests through.

    Requests are sent with :meth:`exchange`; a store that goes idle calls
    ``release(origin, store)``, which closes the host's kept-alive connections once no store
    uses the host any more and no request to it is in flight. ``pool_size`` is how many idle
    connections a pool keeps: no more requests than that are ever in flight in the process,
    so none is dropped for want of room.
    """

    def __init__(self, *, pool_size: int, max_hosts: int = MAX_HOSTS) -> None:
        self._lock = threading.Lock()
        self._pool_size = max(pool_size, 1)
        self._max_hosts = max(max_hosts, 1)
        self._in_flight: dict[Origin, int] = {}
        self._users: dict[Origin, set[str]] = {}  # stores that requested and did not release
        self._contexts: dict[str, tuple[tuple[int, ...], ssl.SSLContext]] = {}  # by CA path
        # Least recently used first.
        self._pools: collections.OrderedDict[_PoolKey, _Opener] = collections.OrderedDict()

    def tls_context(self, verify: bool | str) -> ssl.SSLContext:
        """The one TLS context for connections that verify against ``verify`` (True: the
        certifi CA bundle, a path: that CA file or directory, False: no verification).

        urllib3 makes a context per connection when none is given, loading a whole CA bundle
        into each (docs/design.md, "HTTP client"). A CA file is read again when it changes
        (new connections use it; pools keyed on the old context age out); a missing or
        broken one raises :class:`CAFileError`.
        """
        identity: tuple[int, ...] = ()
        path = ""
        if verify is not False:
            path = certifi.where() if verify is True else verify
            try:
                st = os.stat(path)
            except OSError as exc:
                raise CAFileError(f"CA file {path}: {exc.strerror or exc}") from None
            identity = (st.st_ino, st.st_mtime_ns, st.st_size)
        with self._lock:
            known = self._contexts.get(path)
            if known is not None and known[0] == identity:
                return known[1]
            context = _new_context(path)
            self._contexts[path] = (identity, context)
            return context

    @contextlib.contextmanager
    def exchange(
        self,
        url: str,
        *,
        headers: Mapping[str, str],
        verify: bool | str,
        deadline: Deadline,
        user: str,
        proxy: tuple[str, str] | None = None,
    ) -> Iterator[BaseHTTPResponse]:
        """A GET of ``url`` for ``user`` (a store) within ``deadline``: its answer, with the
        body left to read. Redirects are not followed; nothing is retried. ``proxy``:
        the forward proxy's URL (no credentials) and its ``user:password`` ("" for none).

        Raises urllib3's errors, :class:`CAFileError`, or ``OSError``. Once the block ends
        the answer is closed, and its connection goes back to its pool only if the whole
        body was read before the deadline.
        """
        origin = origin_of(url)
        self.begin(origin, user)
        _WATCHDOG.watch(deadline)
        try:
            tls = origin[0] == "https" or (proxy is not None and proxy[0].startswith("https:"))
            context = self.tls_context(verify) if tls else None
            opener = self._opener(origin, context, proxy)
            remaining = deadline.remaining()
            _current.deadline = deadline
            try:
                response = opener.urlopen(
                    "GET",
                    url if isinstance(opener, urllib3.ProxyManager) else _target(url),
                    headers=dict(headers),
                    redirect=False,
                    retries=False,
                    assert_same_host=False,
                    preload_content=False,
                    decode_content=True,
                    timeout=urllib3.Timeout(connect=remaining, read=remaining),
                )
            finally:
                _current.deadline = None
            try:
                yield response
            finally:
                if deadline.expired or not response.closed:
                    response.close()  # not read to its end: the connection is not reused
                response.release_conn()
        finally:
            deadline.finish()
            self.end(origin)

    def _opener(
        self, origin: Origin, context: ssl.SSLContext | None, proxy: tuple[str, str] | None
    ) -> _Opener:
        """The pool for ``origin`` (or the proxy manager holding it), made on first use."""
        key: _PoolKey = (*origin, context, proxy)
        with self._lock:
            opener = self._pools.get(key)
            if opener is not None:
                self._pools.move_to_end(key)
                return opener
            scheme, host, port = origin
            common: dict[str, Any] = {
                "maxsize": self._pool_size,
                "block": False,
                "retries": False,
            }
            if proxy is not None:
                proxy_url, auth = proxy
                opener = _ProxyManager(
                    proxy_url,
                    num_pools=1,  # this origin's pool only (or the proxy's, for plain http)
                    proxy_headers=urllib3.make_headers(proxy_basic_auth=auth) if auth else None,
                    proxy_ssl_context=context if proxy_url.startswith("https:") else None,
                    ssl_context=context,
                    **common,
                )
            elif scheme == "https":
                opener = _TLSPool(host, port, ssl_context=context, **common)
            else:
                opener = _Pool(host, port, **common)
            self._pools[key] = opener
            evicted = None
            if len(self._pools) > self._max_hosts:
                _, evicted = self._pools.popitem(last=False)
        if evicted is not None:
            _close(evicted)  # its connections in use close when they come back
        return opener

    def begin(self, origin: Origin, user: str) -> None:
        """A request of ``user`` (a store) to ``origin`` starts; the store now uses the host."""
        with self._lock:
            self._in_flight[origin] = self._in_flight.get(origin, 0) + 1
            self._users.setdefault(origin, set()).add(user)

    def end(self, origin: Origin) -> None:
        """A request to ``origin`` is over (its answer closed)."""
        with self._lock:
            left = self._in_flight.get(origin, 0) - 1
            if left > 0:
                self._in_flight[origin] = left
            else:
                self._in_flight.pop(origin, None)

    def holds(self, origin: Origin) -> bool:
        """A pool (and maybe kept-alive connections) is held for ``origin``."""
        with self._lock:
            return any(key[:3] == origin for key in self._pools)

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
            if self._in_flight.get(origin):
                return False
            pools = [(key, pool) for key, pool in self._pools.items() if key[:3] == origin]
            for key, _ in pools:
                del self._pools[key]
        for _, pool in pools:
            _close(pool)
        return bool(pools)

    @property
    def hosts(self) -> int:
        """Pools held now (one per host and TLS setting)."""
        with self._lock:
            return len(self._pools)

    def contexts(self) -> list[ssl.SSLContext | None]:
        """The TLS context of each pool held (None for plain HTTP), least recently used
        first."""
        with self._lock:
            return [key[3] for key in self._pools]

    def close(self) -> None:
        """Close every pooled connection."""
        with self._lock:
            pools = list(self._pools.values())
            self._pools.clear()
            self._users.clear()
        for pool in pools:
            _close(pool)
