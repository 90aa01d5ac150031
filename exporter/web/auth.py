"""HTTP basic auth against bcrypt hashes, as the exporter-toolkit web configuration has them.

Timing does not tell users apart: an unknown user costs a bcrypt check like a wrong
password, and names are compared in constant time. Successful checks are cached, so a
scrape does not pay bcrypt (tens of milliseconds) every time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping

import bcrypt

#: What ``htpasswd -nB`` and bcrypt libraries make: $2y$, $2b$ or $2a$, a cost, 53 chars.
BCRYPT_RE = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")
_DUMMY_HASH = "$2b$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi"


def parse_basic_auth(header: str | None) -> tuple[str, bytes] | None:
    """Split an ``Authorization: Basic ...`` value into user and password, None if invalid."""
    if not header:
        return None
    scheme, _, param = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        raw = base64.b64decode(param.strip().encode("ascii"), validate=True)
        user, sep, password = raw.partition(b":")
        if not sep:
            return None
        return user.decode("utf-8"), password
    except (ValueError, binascii.Error):  # UnicodeError is a ValueError
        return None


class BasicAuthVerifier:
    """Checks basic-auth credentials against bcrypt hashes, caching successes.

    Timing: an unknown user costs a bcrypt check like a wrong password (against a dummy
    hash of the same cost), and user names are compared with ``hmac.compare_digest``.
    The cache key is (user, sha256(password), hash), so a changed hash or password misses;
    only successes are cached, at most ``cache_size`` of them (least recently used out).
    """

    def __init__(self, cache_size: int = 256) -> None:
        self._cache: OrderedDict[tuple[str, bytes, str], None] = OrderedDict()
        self._size = cache_size
        self._lock = threading.Lock()

    def verify(self, users: Mapping[str, str], authorization: str | None) -> str | None:
        """The authenticated user name, or None (missing, malformed or wrong credentials)."""
        creds = parse_basic_auth(authorization)
        if creds is None:
            return None
        user, password = creds
        wanted = user.encode("utf-8")
        hashed: str | None = None
        for name, candidate in users.items():
            if hmac.compare_digest(name.encode("utf-8"), wanted):
                hashed = candidate
        if hashed is None:
            costs = [h[4:6] for h in users.values()] or ["10"]
            _checkpw(password, _DUMMY_HASH[:4] + max(costs) + _DUMMY_HASH[6:])
            return None
        key = (user, hashlib.sha256(password).digest(), hashed)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return user
        if not _checkpw(password, hashed):
            return None
        with self._lock:
            self._cache[key] = None
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return user


def _checkpw(password: bytes, hashed: str) -> bool:
    try:
        return bcrypt.checkpw(password, hashed.encode("ascii"))
    except ValueError:  # bcrypt 5: passwords over 72 bytes; or a hash it cannot use
        return False
