"""The exporter-toolkit web configuration file (``--web.config.file``): TLS, basic auth,
headers and a rate limit.

Format: https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md

Supported::

    tls_server_config:
      cert_file: server.crt            # relative paths are relative to the web config file
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert
      client_ca_file: ca.crt
      client_allowed_sans: [prometheus.example.com]
      min_version: TLS12               # TLS10 TLS11 TLS12 TLS13
      max_version: TLS13
      cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]   # TLS <= 1.2 only
      prefer_server_cipher_suites: true
    http_server_config:
      headers: {X-Content-Type-Options: nosniff}
    basic_auth_users:
      prometheus: $2y$10$...           # bcrypt, e.g. htpasswd -nBC 10 "" | tr -d ':\\n'
    auth_excluded_paths: [/-/healthy, /-/ready]   # served without basic auth (exact paths)
    rate_limit:                        # a token bucket over all requests; 429 when empty
      interval: 100ms                  # one token per interval; 0 turns the limit off
      burst: 20                        # tokens the bucket holds

``client_auth_type``: ``NoClientCert`` (default), ``VerifyClientCertIfGiven`` and
``RequireAndVerifyClientCert``. ``RequestClientCert`` and ``RequireAnyClientCert`` ask for
a certificate without verifying it; Python's ``ssl`` cannot do that, so they are rejected
rather than silently made weaker or stricter. Inline ``cert``/``key``/``client_ca``
and ``curve_preferences`` are not supported and rejected as well. ``auth_excluded_paths``
(not in exporter-toolkit itself: its pull request 106) lists request paths, as the
server receives them (with ``--web.route-prefix``), that basic auth does not cover; TLS
and client certificates still apply, since the handshake comes before any path is known.

Loading is strict: unknown keys, wrong types, unreadable files, certificates or keys that
do not load and malformed bcrypt hashes are all reported at once in one ``WebConfigError``.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from exporter.config.durations import parse_duration
from exporter.config.kit import Checker, index, kind, quoted
from exporter.config.yamlfile import YamlError, load_yaml
from exporter.errors import WebConfigError
from exporter.web.auth import BCRYPT_RE

__all__ = [
    "SUPPORTED_CLIENT_AUTH_TYPES",
    "RateLimit",
    "TLSServerConfig",
    "WebConfig",
    "WebConfigError",
    "WebConfigWatcher",
    "build_ssl_context",
    "load_web_config",
]

_log = logging.getLogger("exporter.web.webconfig")

SUPPORTED_CLIENT_AUTH_TYPES: Mapping[str, ssl.VerifyMode] = MappingProxyType(
    {
        "NoClientCert": ssl.CERT_NONE,
        "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
        "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
    }
)
_UNSUPPORTED_CLIENT_AUTH_TYPES = ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert")
_TLS_VERSIONS: Mapping[str, ssl.TLSVersion] = MappingProxyType(
    {
        "TLS10": ssl.TLSVersion.TLSv1,
        "TLS11": ssl.TLSVersion.TLSv1_1,
        "TLS12": ssl.TLSVersion.TLSv1_2,
        "TLS13": ssl.TLSVersion.TLSv1_3,
    }
)
# Go's tls.CipherSuites() names -> OpenSSL names. TLS 1.3 suites are accepted and, as in
# Go, not configurable.
_CIPHERS: Mapping[str, str | None] = MappingProxyType(
    {
        "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
        "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
        "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
        "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
        "TLS_AES_128_GCM_SHA256": None,
        "TLS_AES_256_GCM_SHA384": None,
        "TLS_CHACHA20_POLY1305_SHA256": None,
    }
)
# The headers exporter-toolkit allows, with their allowed values (None: any).
_HEADERS: Mapping[str, tuple[str, ...] | None] = MappingProxyType(
    {
        "Content-Security-Policy": None,
        "X-Frame-Options": ("deny", "sameorigin"),
        "X-Content-Type-Options": ("nosniff",),
        "X-XSS-Protection": None,
        "Strict-Transport-Security": None,
    }
)
_TOP_KEYS = (
    "tls_server_config",
    "http_server_config",
    "basic_auth_users",
    "auth_excluded_paths",
    "rate_limit",
)
#: An interval above this (a day) is a typo, not a limit.
_MAX_RATE_INTERVAL = 86_400.0
_TLS_KEYS = (
    "cert_file", "key_file", "client_auth_type", "client_ca_file", "client_allowed_sans",
    "min_version", "max_version", "cipher_suites", "prefer_server_cipher_suites",
    "curve_preferences", "cert", "key", "client_ca",
)  # fmt: skip


@dataclass(frozen=True)
class TLSServerConfig:
    """``tls_server_config``: file paths are absolute or relative to the working directory."""

    cert_file: str
    key_file: str
    client_auth_type: str = "NoClientCert"
    client_ca_file: str | None = None
    client_allowed_sans: tuple[str, ...] = ()
    min_version: str = "TLS12"
    max_version: str = "TLS13"
    cipher_suites: tuple[str, ...] = ()
    prefer_server_cipher_suites: bool = True

    @property
    def files(self) -> tuple[str, ...]:
        """The files this configuration reads."""
        return (self.cert_file, self.key_file) + (
            (self.client_ca_file,) if self.client_ca_file else ()
        )


def _frozen_map() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True)
class RateLimit:
    """``rate_limit``: one request per ``interval`` seconds on average, ``burst`` at once."""

    interval: float
    burst: int


@dataclass(frozen=True)
class WebConfig:
    """A loaded web configuration; the empty one serves plain HTTP without auth."""

    tls: TLSServerConfig | None = None
    basic_auth_users: Mapping[str, str] = field(default_factory=_frozen_map)
    headers: Mapping[str, str] = field(default_factory=_frozen_map)
    auth_excluded_paths: frozenset[str] = frozenset()
    rate_limit: RateLimit | None = None

    def needs_auth(self, path: str) -> bool:
        """True when a request for ``path`` (as received) must bring basic-auth credentials."""
        return bool(self.basic_auth_users) and path not in self.auth_excluded_paths


# -- loading ---------------------------------------------------------------------------

_FileStat = tuple[int, int, int, int] | None


def _stat(path: str) -> _FileStat:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)


@dataclass
class _Loaded:
    config: WebConfig | None
    context: ssl.SSLContext | None
    errors: list[str]
    seen: tuple[tuple[str, _FileStat], ...]


class _Parser(Checker):
    """Turns the YAML document into a WebConfig, collecting every error with its key path.

    It uses the configuration's validation kit (docs/design.md, "Configuration"), phrased
    the way exporter-toolkit users know it: ``must be a mapping, got a number``, and an
    unknown key lists the allowed ones.
    """

    list_known_keys = True

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path
        self.base = os.path.dirname(path)
        self.seen: list[tuple[str, _FileStat]] = [(path, _stat(path))]

    def type_message(self, expected: str, value: object, secret: bool = False) -> str:
        """``must be <expected>, got <kind>``: never the value (it may be a hash)."""
        return f"must be {expected}, got {kind(value)}"

    def known(self, value: object, path: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        """The allowed keys of a mapping (null is empty); the others are reported."""
        mapping = self.mapping(value, path, allowed) or {}
        return {key: item for key, item in mapping.items() if key in allowed}

    def file(self, value: object, path: str) -> str | None:
        text = self.string(value, path)
        if text is None or text == "":
            return None
        file = os.path.join(self.base, text)
        self.seen.append((file, _stat(file)))
        try:
            with open(file, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            self.error(path, f"cannot read {quoted(file)}: {exc.strerror or exc}")
            return None
        if b"-----BEGIN " not in data:
            self.error(path, f"{file} holds no PEM data")
            return None
        return file

    def parse(self, data: object) -> WebConfig:
        top = self.known(data, "", _TOP_KEYS)
        return WebConfig(
            tls=self.tls(top.get("tls_server_config")),
            basic_auth_users=MappingProxyType(self.users(top.get("basic_auth_users"))),
            headers=MappingProxyType(self.http(top.get("http_server_config"))),
            auth_excluded_paths=self.excluded(top.get("auth_excluded_paths")),
            rate_limit=self.rate_limit(top.get("rate_limit")),
        )

    def excluded(self, value: object) -> frozenset[str]:
        key = "auth_excluded_paths"
        paths = self.strings(value, key)
        for i, path in enumerate(paths):
            if not path.startswith("/") or "?" in path or "#" in path:
                self.error(index(key, i), f"{path!r} must be a request path starting with '/'")
        return frozenset(paths)

    def rate_limit(self, value: object) -> RateLimit | None:
        key = "rate_limit"
        raw = self.known(value, key, ("interval", "burst"))
        interval = 0.0
        if raw.get("interval") is not None:
            try:
                interval = parse_duration(raw["interval"])
            except ValueError as exc:
                self.error(f"{key}.interval", str(exc))
            else:
                if interval > _MAX_RATE_INTERVAL:
                    self.error(f"{key}.interval", "must be at most 1d")
        burst = 0
        if raw.get("burst") is not None:
            burst = self.integer(raw["burst"], f"{key}.burst", 0, 1_000_000_000) or 0
        if interval <= 0:
            return None  # as in exporter-toolkit: interval 0 (or none) turns the limit off
        if burst < 1:
            self.error(
                f"{key}.burst", "must be >= 1 when interval is set (0 refuses every request)"
            )
            return None
        return RateLimit(interval=interval, burst=burst)

    def tls(self, value: object) -> TLSServerConfig | None:
        key = "tls_server_config"
        raw = self.known(value, key, _TLS_KEYS)
        if not any(v not in (None, "", []) for v in raw.values()):
            return None  # as in exporter-toolkit: an empty tls_server_config serves plain HTTP
        for inline in ("cert", "key", "client_ca"):
            if raw.get(inline) not in (None, ""):
                self.error(f"{key}.{inline}", f"inline PEM is not supported, use {inline}_file")
        if raw.get("curve_preferences") not in (None, []):
            self.error(f"{key}.curve_preferences", "not supported by this exporter")
        cert = self.file(raw.get("cert_file"), f"{key}.cert_file")
        tls_key = self.file(raw.get("key_file"), f"{key}.key_file")
        for name in ("cert_file", "key_file"):
            if raw.get(name) in (None, ""):
                self.error(f"{key}.{name}", "required when tls_server_config is set")
        ca = self.file(raw.get("client_ca_file"), f"{key}.client_ca_file")
        auth = self.string(raw.get("client_auth_type"), f"{key}.client_auth_type")
        auth = auth or "NoClientCert"
        sans = self.strings(raw.get("client_allowed_sans"), f"{key}.client_allowed_sans")
        self.check_client_auth(auth, raw, sans)
        min_version = self.choice(
            raw.get("min_version"), f"{key}.min_version", tuple(_TLS_VERSIONS)
        )
        max_version = self.choice(
            raw.get("max_version"), f"{key}.max_version", tuple(_TLS_VERSIONS)
        )
        versions = (min_version or "TLS12", max_version or "TLS13")
        if _TLS_VERSIONS[versions[0]] > _TLS_VERSIONS[versions[1]]:
            self.error(f"{key}.min_version", f"{versions[0]} is above max_version {versions[1]}")
        ciphers = self.strings(raw.get("cipher_suites"), f"{key}.cipher_suites")
        for i, name in enumerate(ciphers):
            if name not in _CIPHERS:
                self.error(
                    index(f"{key}.cipher_suites", i), f"unknown or insecure cipher suite {name!r}"
                )
        prefer = self.boolean(
            raw.get("prefer_server_cipher_suites"), f"{key}.prefer_server_cipher_suites", True
        )
        if cert is None or tls_key is None:
            return None
        return TLSServerConfig(
            cert_file=cert,
            key_file=tls_key,
            client_auth_type=auth,
            client_ca_file=ca,
            client_allowed_sans=sans,
            min_version=versions[0],
            max_version=versions[1],
            cipher_suites=ciphers,
            prefer_server_cipher_suites=prefer,
        )

    def check_client_auth(self, auth: str, raw: dict[str, Any], sans: tuple[str, ...]) -> None:
        key = "tls_server_config.client_auth_type"
        if auth in _UNSUPPORTED_CLIENT_AUTH_TYPES:
            self.error(
                key,
                f"{auth} is not supported: Python's ssl module cannot request a client "
                "certificate without verifying it; use RequireAndVerifyClientCert "
                "(or VerifyClientCertIfGiven) with client_ca_file",
            )
            return
        if auth not in SUPPORTED_CLIENT_AUTH_TYPES:
            self.error(
                key, f"unknown value {auth!r} (supported: {', '.join(SUPPORTED_CLIENT_AUTH_TYPES)})"
            )
            return
        has_ca = raw.get("client_ca_file") not in (None, "")
        if auth == "NoClientCert" and has_ca:
            self.error(key, "client_ca_file is set but client_auth_type is NoClientCert")
        if auth != "NoClientCert" and not has_ca:
            self.error("tls_server_config.client_ca_file", f"required with client_auth_type {auth}")
        if sans and auth != "RequireAndVerifyClientCert":
            self.error(
                "tls_server_config.client_allowed_sans",
                "requires client_auth_type RequireAndVerifyClientCert",
            )

    def users(self, value: object) -> dict[str, str]:
        key = "basic_auth_users"
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.wrong_type(key, "a mapping of user names to bcrypt hashes", value)
            return {}
        users: dict[str, str] = {}
        for name, hashed in value.items():
            if isinstance(name, int) and not isinstance(name, bool):
                name = str(name)
            where = f"{key}.{name}"  # as written: user names are shown as given
            if not isinstance(name, str) or not name or ":" in name:
                self.error(where, "user name must be a non-empty string without ':'")
                continue
            if not isinstance(hashed, str):
                self.wrong_type(where, "a bcrypt hash string", hashed)
                continue
            match = BCRYPT_RE.fullmatch(hashed.strip())
            if match is None or not 4 <= int(match.group(1)) <= 31:
                self.error(
                    where,
                    "not a bcrypt hash ($2y$/$2b$/$2a$ and cost 04-31, as made by "
                    "htpasswd -nBC 10 \"\" | tr -d ':\\n')",
                )
                continue
            users[name] = hashed.strip()
        return users

    def http(self, value: object) -> dict[str, str]:
        key = "http_server_config"
        raw = self.known(value, key, ("headers", "http2"))
        self.boolean(raw.get("http2"), f"{key}.http2", False)
        headers = self.known(raw.get("headers"), f"{key}.headers", tuple(_HEADERS))
        out: dict[str, str] = {}
        for name, header_value in headers.items():
            where = f"{key}.headers.{name}"
            text = self.string(header_value, where)
            if not text:
                continue
            allowed = _HEADERS[name]
            if "\r" in text or "\n" in text:
                self.error(where, "must be a single line")
            elif allowed is not None and text.lower() not in allowed:
                self.error(where, f"must be one of {', '.join(allowed)}")
            else:
                out[name] = text
        return out


class _EncryptedKeyError(Exception):
    pass


def _no_password() -> bytes:
    raise _EncryptedKeyError


def _ssl_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc.strerror or exc).replace("_", " ").lower()
    return str(exc)


def _build_context(tls: TLSServerConfig, err: Callable[[str, str], None]) -> ssl.SSLContext:
    key = "tls_server_config"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _TLS_VERSIONS[tls.min_version]
    ctx.maximum_version = _TLS_VERSIONS[tls.max_version]
    try:
        ctx.load_cert_chain(tls.cert_file, tls.key_file, password=_no_password)
    except _EncryptedKeyError:
        err(f"{key}.key_file", f"{tls.key_file} is encrypted; a key without passphrase is needed")
    except (ssl.SSLError, OSError) as exc:
        reason = _ssl_reason(exc)
        if "mismatch" in reason:
            err(f"{key}.key_file", f"{tls.key_file} does not match cert_file {tls.cert_file}")
        else:
            err(f"{key}.cert_file", f"cannot load {tls.cert_file} with {tls.key_file}: {reason}")
    if tls.client_ca_file:
        try:
            ctx.load_verify_locations(cafile=tls.client_ca_file)
        except (ssl.SSLError, OSError) as exc:
            err(f"{key}.client_ca_file", f"cannot load {tls.client_ca_file}: {_ssl_reason(exc)}")
    ctx.verify_mode = SUPPORTED_CLIENT_AUTH_TYPES.get(tls.client_auth_type, ssl.CERT_REQUIRED)
    openssl_ciphers = [c for c in (_CIPHERS.get(n) for n in tls.cipher_suites) if c]
    if openssl_ciphers:
        try:
            ctx.set_ciphers(":".join(openssl_ciphers))
        except ssl.SSLError as exc:
            err(f"{key}.cipher_suites", f"not available here: {_ssl_reason(exc)}")
    if tls.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    return ctx


def build_ssl_context(tls: TLSServerConfig) -> ssl.SSLContext:
    """Build the server SSLContext for ``tls``; WebConfigError if files do not load."""
    errors: list[str] = []
    ctx = _build_context(tls, lambda key, message: errors.append(f"{key}: {message}"))
    if errors:
        raise WebConfigError(errors)
    return ctx


def _load(path: str) -> _Loaded:
    parser = _Parser(path)
    try:
        with open(path, "rb") as fh:
            text = fh.read()
    except OSError as exc:
        parser.error("", f"cannot read web config file: {exc.strerror or exc}")
        return _Loaded(None, None, parser.errors, tuple(parser.seen))
    try:
        data = load_yaml(text)
    except YamlError as exc:
        parser.error("", f"invalid YAML: {exc}")
        return _Loaded(None, None, parser.errors, tuple(parser.seen))
    config = parser.parse(data)
    context = None
    if config.tls is not None:  # also with other errors: report them all at once
        context = _build_context(config.tls, parser.error)
    if parser.errors:
        return _Loaded(None, None, parser.errors, tuple(parser.seen))
    return _Loaded(config, context, [], tuple(parser.seen))


def load_web_config(path: str) -> WebConfig:
    """Load and validate a web configuration file; WebConfigError lists every problem."""
    loaded = _load(path)
    if loaded.config is None:
        raise WebConfigError(loaded.errors)
    return loaded.config


# -- rotation --------------------------------------------------------------------------


class WebConfigWatcher:
    """Holds the current good web configuration and re-reads it when its files change.

    The check (a ``stat`` of the web config file and the certificate, key and CA files it
    names) runs on demand, at most once per ``check_interval`` seconds. A changed but
    invalid file is logged and the last good configuration stays in force; it is read
    again when one of its files changes again.
    """

    def __init__(
        self,
        path: str,
        clock: Callable[[], float] = time.monotonic,
        *,
        logger: logging.Logger | None = None,
        check_interval: float = 1.0,
    ) -> None:
        loaded = _load(path)
        if loaded.config is None:
            raise WebConfigError(loaded.errors)
        self.path = path
        self._clock = clock
        self._logger = logger or _log
        self._interval = check_interval
        self._lock = threading.Lock()
        self._state: tuple[WebConfig, ssl.SSLContext | None] = (loaded.config, loaded.context)
        self._seen = loaded.seen
        self._next_check = clock() + check_interval
        self.generation = 1
        self.last_reload_successful = True  # False while a changed file is invalid

    def current(self) -> WebConfig:
        """The configuration in force (re-read first if due and changed)."""
        return self.snapshot()[0]

    def ssl_context(self) -> ssl.SSLContext | None:
        """The SSLContext of the configuration in force, None for plain HTTP."""
        return self.snapshot()[1]

    def snapshot(self) -> tuple[WebConfig, ssl.SSLContext | None]:
        """The configuration in force and its SSLContext, consistent with each other."""
        if self._clock() >= self._next_check:
            self._check(force=False)
        return self._state

    def check(self) -> bool:
        """Look for changes now, ignoring the interval; True if a new configuration loaded."""
        return self._check(force=True)

    def _check(self, *, force: bool) -> bool:
        if not self._lock.acquire(blocking=force):
            return False  # another thread is checking; use the current state meanwhile
        try:
            now = self._clock()
            if not force and now < self._next_check:
                return False
            self._next_check = now + self._interval
            if all(_stat(path) == stat for path, stat in self._seen):
                return False
            loaded = _load(self.path)
            self._seen = loaded.seen
            self.last_reload_successful = loaded.config is not None
            if loaded.config is None:
                self._logger.error(
                    "web config changed but is invalid, keeping the last good one",
                    extra={"file": self.path, "err": "; ".join(loaded.errors)},
                )
                return False
            self._state = (loaded.config, loaded.context)
            self.generation += 1
            self._logger.info("web config reloaded", extra={"file": self.path})
            return True
        finally:
            self._lock.release()
