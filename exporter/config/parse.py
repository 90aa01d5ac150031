"""Configuration: YAML text -> frozen dataclasses, every problem reported with its key path.

Parsing is strict (unknown keys, wrong types, duplicate YAML keys are errors) and collects
every error of a file before raising one `ConfigError`, whose lines look like
``config.yaml: stores[0].task_ids[2]: invalid task id "../x"``. Access tokens are read at
load time but never appear in a message, a warning or a ``repr``.
"""

from __future__ import annotations

import difflib
import glob
import math
import os
import re
import ssl
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from exporter.config.yamlfile import YamlError, YamlInt, load_yaml, quoted

TASK_ID_RE = re.compile(r"\A[A-Za-z0-9_-]{1,128}\Z")
STORE_NAME_RE = re.compile(r"\A[A-Za-z0-9_.-]{1,64}\Z")
_API_VERSION_RE = re.compile(r"\A[A-Za-z0-9._-]{1,32}\Z")
_ENV_NAME_RE = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*\Z")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN_RE = re.compile(rf"\A(?P<host>{_LABEL}(?:\.{_LABEL})*)(?::(?P<port>[0-9]{{1,5}}))?\Z")
_DURATION_RE = re.compile(
    r"\A(?:([0-9]+)y)?(?:([0-9]+)w)?(?:([0-9]+)d)?(?:([0-9]+)h)?"
    r"(?:([0-9]+)m)?(?:([0-9]+)s)?(?:([0-9]+)ms)?\Z"
)
_NUMBER_RE = re.compile(r"\A[0-9]+(?:\.[0-9]+)?\Z")
_UNITS_MS = (
    ("y", 365 * 86_400_000),
    ("w", 7 * 86_400_000),
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
)

MAX_DURATION = 10 * 365 * 86400.0  # an upper bound for every duration in a config file
MAX_REQUESTS_PER_SECOND = 10_000.0
MAX_BURST = 100_000
MAX_CONCURRENCY = 1_000
_MAX_TOKEN_FILE = 64 * 1024

_TOKEN_KEYS = ("access_token_file", "access_token_env", "access_token")
_STORE_ONLY_KEYS = ("name", "domain", "base_url", "task_ids", "task_id_files")
_SETTING_KEYS = (
    "api_version",
    "timeout",
    "min_poll_interval",
    "requests_per_second",
    "burst",
    "max_concurrency",
    "tls_config",
)
_STORE_KEYS = _STORE_ONLY_KEYS + _TOKEN_KEYS + _SETTING_KEYS
_DEFAULTS_KEYS = _TOKEN_KEYS + _SETTING_KEYS
_TOP_KEYS = ("defaults", "stores", "forget_completed_after", "state_file")
_TLS_KEYS = ("ca_file", "insecure_skip_verify")
_TOKEN_HINT = "access_token_file / access_token_env / access_token"


class ConfigError(Exception):
    """An invalid configuration; `errors` holds one complete message line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = list(errors)

    def __str__(self) -> str:
        return "\n".join(self.errors)


@dataclass(frozen=True)
class TLSConfig:
    """TLS settings for the connections to one store's API."""

    ca_file: str | None = None
    insecure_skip_verify: bool = False


@dataclass(frozen=True)
class TokenSource:
    """Where a store's access token comes from, plus the value read at load time."""

    kind: str  # "file" | "env" | "inline"
    ref: str  # the absolute file path, the variable name, or "" for inline
    value: str = field(repr=False)

    def describe(self) -> str:
        """Say where the token comes from, safe to log: "file /path", "env NAME", "inline"."""
        return "inline" if self.kind == "inline" else f"{self.kind} {self.ref}"

    def __str__(self) -> str:
        return self.describe()


@dataclass(frozen=True)
class StoreConfig:
    """One watched Shoplazza store, with the defaults already applied."""

    name: str
    base_url: str
    token: TokenSource
    task_ids: tuple[str, ...]
    task_id_files: tuple[str, ...]
    api_version: str = "2022-01"
    timeout: float = 5.0
    min_poll_interval: float = 10.0
    requests_per_second: float = 2.0
    burst: int = 10
    max_concurrency: int = 4
    tls: TLSConfig = TLSConfig()
    stuck_after: float = 900.0
    # Context labels of configured task ids: (task_id, ((name, value), ...)) pairs.
    task_labels: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()


@dataclass(frozen=True)
class Config:
    """A whole, valid configuration file."""

    stores: tuple[StoreConfig, ...]
    forget_completed_after: float = 0.0
    state_file: str | None = None
    store_files: tuple[str, ...] = ()
    source: str = "config.yaml"
    warnings: tuple[str, ...] = ()


# --- durations -------------------------------------------------------------------------


def parse_duration(value: object) -> float:
    """Parse "500ms", "1m30s", "1d", "0s" or a number of seconds; raise ValueError if invalid."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f'expected a duration such as "5s" or "1m30s", got {_show(value)}')
    if isinstance(value, str):
        text = value.strip()
        if len(text) <= 64 and _NUMBER_RE.match(text):
            return float(text)
        match = _DURATION_RE.match(text) if len(text) <= 64 else None
        if not text or match is None:
            raise ValueError(
                f"invalid duration {quoted(value)} (use e.g. "
                '"500ms", "5s", "1m30s", "24h", "1d" or a number of seconds)'
            )
        millis = sum(
            int(n) * size for n, (_, size) in zip(match.groups(), _UNITS_MS, strict=True) if n
        )
        return millis / 1000
    if value < 0:
        raise ValueError(f"a duration must not be negative, got {_number_text(value)}")
    try:
        seconds = float(value)
    except OverflowError:
        raise ValueError("duration is too large") from None
    if not math.isfinite(seconds):
        raise ValueError(f"a duration must be finite, got {_number_text(value)}")
    return seconds


def format_duration(seconds: float) -> str:
    """Render seconds the Prometheus way: 90 -> "1m30s", 0.5 -> "500ms", 0 -> "0s"."""
    if not math.isfinite(seconds):
        return str(seconds)
    if seconds < 0:
        return "-" + format_duration(-seconds)
    millis = round(seconds * 1000)
    if millis == 0:
        return "0s" if seconds == 0 else f"{seconds:g}s"
    parts = []
    for unit, size in _UNITS_MS:
        count, millis = divmod(millis, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


# --- tokens and task id files ------------------------------------------------------------


class _TokenProblem(Exception):
    """Why a token could not be read; the message never contains the token."""


def _check_token(token: str, where: str, what: str = "") -> str:
    if not token:
        raise _TokenProblem(f"{where} is empty")
    if any(not "\x21" <= char <= "\x7e" for char in token):
        what = what or f"the token in {where}"
        raise _TokenProblem(f"{what} contains spaces or non-printable characters")
    return token


def _read_token_file(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            data = handle.read(_MAX_TOKEN_FILE + 1)
    except OSError as exc:
        raise _TokenProblem(f"cannot read {quoted(path)}: {exc.strerror or exc}") from None
    except ValueError:
        raise _TokenProblem(f"cannot read {quoted(path)}: invalid path") from None
    if len(data) > _MAX_TOKEN_FILE:
        raise _TokenProblem(f"file {quoted(path)} is too large to hold a token")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _TokenProblem(f"file {quoted(path)} is not valid UTF-8") from None
    return _check_token(text.strip(), f"file {quoted(path)}")


def _read_token_env(name: str, environ: Mapping[str, str]) -> str:
    value = environ.get(name)
    if value is None:
        raise _TokenProblem(f"environment variable {name} is not set")
    return _check_token(value.strip(), f"environment variable {name}")


def read_token(source: TokenSource, environ: Mapping[str, str] | None = None) -> str:
    """Read the token again now (token files are rotated in place); raise ConfigError."""
    try:
        if source.kind == "file":
            return _read_token_file(source.ref)
        if source.kind == "env":
            return _read_token_env(source.ref, os.environ if environ is None else environ)
    except _TokenProblem as exc:
        raise ConfigError([f"access token: {exc}"]) from None
    return source.value


# --- value helpers -----------------------------------------------------------------------


def _number_text(value: int | float) -> str:
    if isinstance(value, YamlInt):
        return value.text if len(value.text) <= 40 else value.text[:40] + "..."
    if isinstance(value, int) and abs(value) > 10**40:
        return "a very large number"
    return repr(value) if isinstance(value, float) else str(value)


def _show(value: object, secret: bool = False) -> str:
    """Describe a YAML value for an error message; a secret's value is never shown."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        kind, text = "boolean", "true" if value else "false"
    elif isinstance(value, int):
        kind, text = "integer", _number_text(value)
    elif isinstance(value, float):
        kind, text = "number", _number_text(value)
    elif isinstance(value, str):
        kind, text = "string", quoted(value)
    elif isinstance(value, Mapping):
        return "a mapping"
    elif isinstance(value, list | tuple):
        return "a list"
    else:
        return f"a value of type {type(value).__name__}"
    return kind if secret else f"{kind} {text}"


def _key_text(key: object) -> str:
    if isinstance(key, str) and re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", key):
        return key
    if isinstance(key, str):
        return quoted(key, 64)
    if isinstance(key, bool | int | float) or key is None:
        return _show(key).split(" ", 1)[-1]
    return f"<{type(key).__name__}>"


def _scalar_text(value: object) -> str | None:
    """The text of a string or of an integer as written in YAML, else None."""
    if isinstance(value, str):
        return value
    if isinstance(value, YamlInt):
        return value.text
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 10**40:
        return str(value)
    return None


def _looks_like_token(value: str, key: str = "access_token_env") -> bool:
    """Whether a file or variable name is more likely a pasted token (never echo it)."""
    if "/" in value or "." in value:
        return False
    if key == "access_token_file":
        # A token file is named by a path; a long run of letters and digits is a token
        # (lower-case hex included).
        return (
            len(value) >= 16 and any(c.isdigit() for c in value) and any(c.isalpha() for c in value)
        )
    kinds = (str.isupper, str.islower, str.isdigit)
    return len(value) >= 20 and all(any(kind(char) for char in value) for kind in kinds)


def _suggest(key: str, known: Sequence[str]) -> list[str]:
    """The known key the user probably meant, if any."""
    close = difflib.get_close_matches(key.lower(), known, n=1)
    if close or len(key) < 4:
        return close
    return [name for name in known if name.startswith(key.lower())][:1]


def _join(path: str, key: object) -> str:
    return _key_text(key) if not path else f"{path}.{_key_text(key)}"


# --- the parser --------------------------------------------------------------------------


class _Parser:
    """Walks the YAML data once, collecting every error and warning with its key path."""

    def __init__(self, source: str, environ: Mapping[str, str], base_dir: str) -> None:
        self.source = source
        self.environ = environ
        self.base_dir = base_dir
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.default_token: tuple[str, object, str] | None = None  # key, value, path
        self.default_token_broken = False
        self.default_token_source: TokenSource | None = None
        self.default_token_read = False

    def error(self, path: str, message: str) -> None:
        self.errors.append(
            f"{self.source}: {path}: {message}" if path else f"{self.source}: {message}"
        )

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(f"{self.source}: {path}: {message}")

    def path(self, value: str) -> str:
        return os.path.normpath(os.path.join(self.base_dir, value))

    def parse(self, text: str) -> Config:
        try:
            data = load_yaml(text)
        except YamlError as exc:
            raise ConfigError([f"{self.source}: invalid YAML: {exc}"]) from None
        if data is None:
            raise ConfigError([f"{self.source}: empty configuration"])
        if not isinstance(data, dict):
            raise ConfigError(
                [f"{self.source}: expected a mapping at the top level, got {_show(data)}"]
            )
        self.check_keys(data, "", _TOP_KEYS)
        defaults = self.parse_defaults(data.get("defaults"))
        stores = self.parse_stores(data, defaults)
        forget = 0.0
        if "forget_completed_after" in data:
            seconds = self.duration(data["forget_completed_after"], "forget_completed_after", 0.0)
            forget = seconds or 0.0
        state_file = self.optional_path(data.get("state_file"), "state_file")
        if self.errors:
            raise ConfigError(self.errors)
        return Config(
            stores=tuple(stores),
            forget_completed_after=forget,
            state_file=state_file,
            source=self.source,
            warnings=tuple(self.warnings),
        )

    def check_keys(self, mapping: dict[Any, Any], path: str, known: Sequence[str]) -> None:
        for key in mapping:
            if key in known:
                continue
            where = _join(path, key)
            if path == "defaults" and key in _STORE_ONLY_KEYS:
                self.error(where, "not allowed in defaults (set it in each store)")
                continue
            close = _suggest(key, known) if isinstance(key, str) else []
            self.error(where, "unknown key" + (f" (did you mean {close[0]}?)" if close else ""))

    def parse_defaults(self, value: object) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error("defaults", f"expected a mapping, got {_show(value)}")
            return {}
        self.check_keys(value, "defaults", _DEFAULTS_KEYS)
        present = [key for key in _TOKEN_KEYS if key in value]
        if len(present) > 1:
            self.error("defaults", f"set only one of {_TOKEN_HINT}, not {' and '.join(present)}")
            self.default_token_broken = True
        elif present:
            key, token = present[0], value[present[0]]
            if isinstance(token, str) and token.strip():
                self.default_token = (key, token, f"defaults.{key}")
            else:  # checked now even if no store uses it; read only when one does
                self.error(
                    f"defaults.{key}", f"expected a non-empty string, got {_show(token, True)}"
                )
                self.default_token_broken = True
        return self.parse_settings(value, "defaults")

    def parse_stores(self, data: dict[Any, Any], defaults: dict[str, Any]) -> list[StoreConfig]:
        value = data.get("stores")
        if "stores" not in data:
            self.error("stores", "missing: at least one store is required")
            return []
        if not isinstance(value, list):
            self.error("stores", f"expected a list of stores, got {_show(value)}")
            return []
        if not value:
            self.error("stores", "at least one store is required")
            return []
        stores: list[StoreConfig] = []
        names: dict[str, str] = {}
        for index, item in enumerate(value):
            path = f"stores[{index}]"
            if not isinstance(item, dict):
                self.error(path, f"expected a mapping, got {_show(item)}")
                continue
            name = self.name(item, path)
            if name is not None and name in names:
                self.error(
                    f"{path}.name",
                    f"duplicate store name {quoted(name)} (first at {names[name]})",
                )
            elif name is not None:
                names[name] = path
            store = self.parse_store(item, path, name, defaults)
            if store is not None:
                stores.append(store)
        return stores

    def parse_store(
        self, store: dict[Any, Any], path: str, name: str | None, defaults: dict[str, Any]
    ) -> StoreConfig | None:
        errors_before = len(self.errors)
        self.check_keys(store, path, _STORE_KEYS)
        base_url = self.location(store, path)
        token = self.store_token(store, path)
        task_ids = self.task_ids(store.get("task_ids"), f"{path}.task_ids")
        task_id_files = self.task_id_files(store.get("task_id_files"), f"{path}.task_id_files")
        settings = {**defaults, **self.parse_settings(store, path)}
        if len(self.errors) > errors_before or name is None or base_url is None or token is None:
            return None
        return StoreConfig(
            name=name,
            base_url=base_url,
            token=token,
            task_ids=task_ids,
            task_id_files=task_id_files,
            **settings,
        )

    def name(self, store: dict[Any, Any], path: str) -> str | None:
        if "name" not in store:
            self.error(f"{path}.name", "missing: every store needs a name")
            return None
        text = _scalar_text(store["name"])
        if text is None:
            self.error(f"{path}.name", f"expected a string, got {_show(store['name'])}")
        elif not STORE_NAME_RE.match(text):
            self.error(
                f"{path}.name",
                f"invalid store name {quoted(text)} (use [A-Za-z0-9_.-], 1 to 64)",
            )
        else:
            return text
        return None

    def location(self, store: dict[Any, Any], path: str) -> str | None:
        if "domain" in store and "base_url" in store:
            self.error(path, "set only one of domain / base_url, not both")
            return None
        if "domain" in store:
            return self.domain(store["domain"], f"{path}.domain")
        if "base_url" in store:
            return self.base_url(store["base_url"], f"{path}.base_url")
        self.error(path, "missing domain or base_url: set exactly one of them")
        return None

    def domain(self, value: object, path: str) -> str | None:
        if not isinstance(value, str):
            self.error(path, f"expected a host name, got {_show(value)}")
            return None
        match = _DOMAIN_RE.match(value)
        if "://" in value or "/" in value:
            self.error(path, f"expected a host name, not a URL, got {quoted(value)} (use base_url)")
        elif match is None or len(match["host"]) > 253 or not 0 < int(match["port"] or 443) < 65536:
            self.error(path, f"invalid host name {quoted(value)}")
        else:
            return f"https://{value}"
        return None

    def base_url(self, value: object, path: str) -> str | None:
        if not isinstance(value, str):
            self.error(path, f"expected an http(s) URL, got {_show(value)}")
            return None
        problem = None
        try:
            parts = urllib.parse.urlsplit(value)
            port = parts.port
        except ValueError as exc:
            parts, port, problem = None, None, str(exc)
        if any(char.isspace() or not char.isprintable() for char in value):
            problem = "spaces or control characters"
        elif parts is None or problem:
            pass
        elif parts.scheme.lower() not in ("http", "https") or not parts.netloc:
            problem = "it is not an http:// or https:// URL"
        elif not parts.hostname or port == 0:
            problem = "no host"
        elif parts.username is not None or parts.password is not None:
            problem = "credentials in a URL are not supported"
        elif "?" in value or "#" in value:
            problem = "a query or fragment is not allowed"
        if problem:
            self.error(path, f"invalid URL {quoted(value)}: {problem}")
            return None
        return value.rstrip("/")

    def store_token(self, store: dict[Any, Any], path: str) -> TokenSource | None:
        present = [key for key in _TOKEN_KEYS if key in store]
        if len(present) > 1:
            self.error(path, f"set only one of {_TOKEN_HINT}, not {' and '.join(present)}")
            return None
        if present:
            return self.token(present[0], store[present[0]], f"{path}.{present[0]}")
        if self.default_token_broken:
            return None
        if self.default_token is None:
            self.error(
                path, f"missing access token: set one of {_TOKEN_HINT} (here or in defaults)"
            )
            return None
        if not self.default_token_read:  # read once, and only if some store uses it
            self.default_token_read = True
            self.default_token_source = self.token(*self.default_token)
        return self.default_token_source

    def token(self, key: str, value: object, path: str) -> TokenSource | None:
        if not isinstance(value, str) or not value.strip():
            self.error(path, f"expected a non-empty string, got {_show(value, secret=True)}")
            return None
        try:
            if key == "access_token_file":
                file = self.path(value)
                return TokenSource("file", file, _read_token_file(file))
            if key == "access_token_env":
                if not _ENV_NAME_RE.match(value) and not _looks_like_token(value):
                    raise _TokenProblem(f"invalid environment variable name {quoted(value)}")
                return TokenSource("env", value, _read_token_env(value, self.environ))
            token = _check_token(value.strip(), "access_token", "the inline token")
        except _TokenProblem as exc:
            message = str(exc)
            if key != "access_token" and _looks_like_token(value, key):
                # a token where its file or variable name belongs
                what = "a file holding" if key == "access_token_file" else "a variable holding"
                message = f"this looks like a token itself; give the name of {what} it"
            self.error(path, message)
            return None
        self.warn(path, "inline tokens are discouraged; use access_token_file or access_token_env")
        return TokenSource("inline", "", token)

    def task_ids(self, value: object, path: str) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            self.error(path, f"expected a list of task ids, got {_show(value)}")
            return ()
        ids: dict[str, str] = {}
        for index, item in enumerate(value):
            where = f"{path}[{index}]"
            text = _scalar_text(item)
            if text is None:
                self.error(where, f"expected a task id string, got {_show(item)}")
            elif not TASK_ID_RE.match(text):
                self.error(where, f"invalid task id {quoted(text)}")
            elif text in ids:
                self.warn(where, f"duplicate task id {quoted(text)} (also at {ids[text]}), ignored")
            else:
                ids[text] = where
        return tuple(ids)

    def task_id_files(self, value: object, path: str) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            self.error(path, f"expected a list of glob patterns, got {_show(value)}")
            return ()
        patterns: dict[str, None] = {}
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item or "\0" in item:
                self.error(f"{path}[{index}]", f"expected a file name or glob, got {_show(item)}")
                continue
            patterns.setdefault(os.path.join(glob.escape(self.base_dir), item))
        return tuple(patterns)

    def parse_settings(self, mapping: dict[Any, Any], path: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in _SETTING_KEYS:
            if key not in mapping:
                continue
            value, where = mapping[key], f"{path}.{key}"
            parsed: object
            if key == "api_version":
                parsed = self.api_version(value, where)
            elif key == "timeout":
                parsed = self.duration(value, where, None)
            elif key == "min_poll_interval":
                parsed = self.duration(value, where, 0.0)
            elif key == "requests_per_second":
                parsed = self.rate(value, where)
            elif key == "tls_config":
                parsed = self.tls(value, where)
            else:
                limit = MAX_BURST if key == "burst" else MAX_CONCURRENCY
                parsed = self.integer(value, where, 1, limit)
            if parsed is not None:
                out["tls" if key == "tls_config" else key] = parsed
        return out

    def api_version(self, value: object, path: str) -> str | None:
        text = _scalar_text(value)
        if text is None:
            self.error(path, f'expected a string such as "2022-01", got {_show(value)}')
        elif not _API_VERSION_RE.match(text) or text in (".", ".."):
            self.error(path, f"invalid API version {quoted(text)} (use [A-Za-z0-9._-])")
        else:
            return text
        return None

    def duration(self, value: object, path: str, minimum: float | None) -> float | None:
        """Parse a duration that must be >= minimum, or > 0 when minimum is None."""
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            self.error(path, str(exc))
            return None
        if minimum is None and seconds <= 0:
            self.error(path, f"must be > 0, got {format_duration(seconds)}")
        elif seconds > MAX_DURATION:
            self.error(path, f"must be at most {format_duration(MAX_DURATION)}")
        else:
            return seconds
        return None

    def rate(self, value: object, path: str) -> float | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.error(path, f"expected a number > 0, got {_show(value)}")
        elif not value > 0:  # also catches NaN
            self.error(path, f"must be > 0, got {_number_text(value)}")
        elif value > MAX_REQUESTS_PER_SECOND:
            self.error(
                path, f"must be at most {MAX_REQUESTS_PER_SECOND:g}, got {_number_text(value)}"
            )
        else:
            return float(value)
        return None

    def integer(self, value: object, path: str, minimum: int, maximum: int) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(path, f"expected an integer >= {minimum}, got {_show(value)}")
        elif value < minimum:
            self.error(path, f"must be >= {minimum}, got {_number_text(value)}")
        elif value > maximum:
            self.error(path, f"must be at most {maximum}, got {_number_text(value)}")
        else:
            return int(value)
        return None

    def tls(self, value: object, path: str) -> TLSConfig | None:
        if value is None:
            return TLSConfig()
        if not isinstance(value, dict):
            self.error(path, f"expected a mapping, got {_show(value)}")
            return None
        errors_before = len(self.errors)
        self.check_keys(value, path, _TLS_KEYS)
        ca_file = self.optional_path(value.get("ca_file"), f"{path}.ca_file")
        if ca_file is not None:
            self.check_ca_file(ca_file, f"{path}.ca_file")
        skip = value.get("insecure_skip_verify", False)
        if not isinstance(skip, bool):
            self.error(f"{path}.insecure_skip_verify", f"expected true or false, got {_show(skip)}")
        elif skip:
            self.warn(f"{path}.insecure_skip_verify", "TLS certificates will not be verified")
        if len(self.errors) > errors_before:
            return None
        return TLSConfig(ca_file=ca_file, insecure_skip_verify=bool(skip))

    def check_ca_file(self, path: str, where: str) -> None:
        try:
            with open(path, "rb") as handle:
                handle.read(1)
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
        except ssl.SSLError as exc:
            reason = exc.reason or exc.strerror or "no certificate found"
            self.error(where, f"cannot load CA certificates from {quoted(path)}: {reason}")
        except OSError as exc:
            self.error(where, f"cannot read {quoted(path)}: {exc.strerror or exc}")
        except ValueError:
            self.error(where, f"cannot read {quoted(path)}: invalid path")

    def optional_path(self, value: object, path: str) -> str | None:
        if value is None or value == "":
            return None
        if not isinstance(value, str) or "\0" in value:
            self.error(path, f"expected a file name, got {_show(value)}")
            return None
        return self.path(value)


def parse_config(
    text: str,
    source: str = "config.yaml",
    environ: Mapping[str, str] | None = None,
    base_dir: str | None = None,
) -> Config:
    """Parse and validate configuration text; raise ConfigError listing every problem.

    Relative paths are resolved against base_dir (default: the directory of source),
    token files and variables are read from the file system and environ (default
    os.environ).
    """
    if base_dir is None:
        base_dir = os.path.dirname(os.path.abspath(source))
    env = os.environ if environ is None else environ
    return _Parser(source, env, os.path.abspath(base_dir)).parse(text)


def load_config(path: str, environ: Mapping[str, str] | None = None) -> Config:
    """Read and parse a configuration file; raise ConfigError on any problem."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except ValueError:
        raise ConfigError([f"{path}: cannot read: invalid path"]) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not valid UTF-8 (byte {exc.start})"]) from None
    return parse_config(text, path, environ, os.path.dirname(os.path.abspath(path)))
