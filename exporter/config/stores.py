"""One store's settings: the checks of each key, the defaults, tokens and task ids.

Per-store settings go through a table (key -> field and check), the way blackbox_exporter
decodes and then validates each module: adding a setting is one line in ``SETTINGS``
(docs/design.md, "Configuration").
"""

from __future__ import annotations

import glob
import ipaddress
import os
import re
import ssl
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from exporter.config.durations import format_duration, parse_duration
from exporter.config.files import read_regular
from exporter.config.kit import Checker, index, join, quoted, scalar_text
from exporter.config.labels import label_name_problem, label_value_problem, labels_problem
from exporter.config.model import (
    MAX_BURST,
    MAX_CONCURRENCY,
    MAX_DURATION,
    MAX_REGISTERED_TASKS,
    MAX_REQUESTS_PER_SECOND,
    STORE_NAME_RE,
    TASK_ID_RE,
    Labels,
    Proxy,
    StoreConfig,
    StoreDefaults,
    TLSConfig,
    TokenSource,
)
from exporter.config.proxies import environment_proxy, parse_proxy_url
from exporter.config.tokens import (
    ENV_NAME_RE,
    TokenProblem,
    check_token,
    looks_like_token,
    read_token_env,
    read_token_file,
)

_API_VERSION_RE = re.compile(r"\A[A-Za-z0-9._-]{1,32}\Z")
_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN_RE = re.compile(
    rf"\A(?P<host>{_HOST_LABEL}(?:\.{_HOST_LABEL})*)(?::(?P<port>[0-9]{{1,5}}))?\Z"
)
PLACEHOLDER = "{store}"
TOKEN_KEYS = ("access_token_file", "access_token_env", "access_token")
STORE_ONLY_KEYS = ("name", "domain", "base_url", "task_ids")
TOKEN_HINT = " / ".join(TOKEN_KEYS)
_TLS_KEYS = ("ca_file", "insecure_skip_verify")
_TASK_KEYS = ("id", "labels")
PROXY_KEYS = ("proxy_url", "proxy_from_environment")

Check = Callable[["StoreParser", object, str], object]


@dataclass(frozen=True)
class Setting:
    """One per-store setting: the StoreConfig field it fills and the check of its value."""

    field: str
    check: Check


SETTINGS: Mapping[str, Setting] = {
    "api_version": Setting("api_version", lambda p, v, at: p.api_version(v, at)),
    "timeout": Setting("timeout", lambda p, v, at: p.duration(v, at, None)),
    "min_poll_interval": Setting("min_poll_interval", lambda p, v, at: p.duration(v, at, 0.0)),
    "requests_per_second": Setting(
        "requests_per_second",
        lambda p, v, at: p.positive_number(v, at, MAX_REQUESTS_PER_SECOND),
    ),
    "burst": Setting("burst", lambda p, v, at: p.integer(v, at, 1, MAX_BURST)),
    "max_concurrency": Setting(
        "max_concurrency", lambda p, v, at: p.integer(v, at, 1, MAX_CONCURRENCY)
    ),
    "stuck_after": Setting("stuck_after", lambda p, v, at: p.duration(v, at, None)),
    "max_registered_tasks": Setting(
        "max_registered_tasks", lambda p, v, at: p.integer(v, at, 0, MAX_REGISTERED_TASKS)
    ),
    "tls_config": Setting("tls", lambda p, v, at: p.tls(v, at)),
    # Both fill ``proxy``: a store's own key overrides either key of defaults.
    "proxy_url": Setting("proxy", lambda p, v, at: p.proxy_url(v, at)),
    "proxy_from_environment": Setting("proxy", lambda p, v, at: p.proxy_from_environment(v, at)),
}
STORE_KEYS = (*STORE_ONLY_KEYS, "task_id_files", *TOKEN_KEYS, *SETTINGS)
DEFAULTS_KEYS = ("task_id_files", *TOKEN_KEYS, *SETTINGS)


def _loopback(host: str | None) -> bool:
    """Whether ``host`` (from a URL) is this machine: localhost, 127.0.0.0/8, ::1."""
    if not host:
        return False
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def budget_key(base_url: str) -> str:
    """What Shoplazza counts one budget against: the API address, case-folded."""
    parts = urllib.parse.urlsplit(base_url)
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{parts.path}"


def shared_budget_warnings(stores: Iterable[tuple[str, StoreConfig]]) -> list[str]:
    """A warning for each store whose API address an earlier one has (``(where, store)``)."""
    first: dict[str, StoreConfig] = {}
    out = []
    for where, store in stores:
        key = budget_key(store.base_url)
        earlier = first.setdefault(key, store)
        if earlier is not store:
            out.append(
                f"{where}: store {quoted(store.name)} uses the same API address "
                f"({store.base_url}) as store {quoted(earlier.name)}: Shoplazza counts their "
                "requests against one budget"
            )
    return out


class StoreParser(Checker):
    """Checks stores of one file (the main one or a store file), with the main defaults."""

    def __init__(
        self,
        source: str,
        environ: Mapping[str, str],
        base_dir: str,
        defaults: StoreDefaults | None = None,
        *,
        main_file: bool = False,
    ) -> None:
        super().__init__(source)
        self.environ = environ
        self.base_dir = base_dir
        self.defaults = defaults or StoreDefaults(base_dir=base_dir)
        self.main_file = main_file
        self.default_token_broken = False
        self.tokens: dict[tuple[str, str], TokenSource | None] = {}
        self.files_read: list[str] = []  # token and CA files: a change may fix this file

    def path(self, value: str, base_dir: str | None = None) -> str:
        return os.path.normpath(os.path.join(base_dir or self.base_dir, value))

    # -- stores ---------------------------------------------------------------------------

    def parse_stores(self, value: list[Any], taken: Mapping[str, str]) -> list[StoreConfig]:
        """Check each store; ``taken``: names defined before, with where (duplicates)."""
        stores: list[StoreConfig] = []
        names: dict[str, str] = dict(taken)
        for position, item in enumerate(value):
            path = index("stores", position)
            if not isinstance(item, dict):
                self.wrong_type(path, "a mapping", item)
                continue
            name = self.name(item, path)
            if name is not None and name in names:
                self.error(
                    f"{path}.name",
                    f"duplicate store name {quoted(name)} (first at {names[name]})",
                )
            elif name is not None:
                names[name] = path
            store = self.parse_store(item, path, name)
            if store is not None:
                stores.append(store)
        return stores

    def parse_store(self, store: dict[Any, Any], path: str, name: str | None) -> StoreConfig | None:
        errors_before = len(self.errors)
        self.unknown_keys(store, path, STORE_KEYS)
        base_url = self.location(store, path)
        token = self.store_token(store, path, name)
        task_ids, labels = self.task_ids(store.get("task_ids"), f"{path}.task_ids")
        task_id_files = self.store_task_id_files(store, path, name)
        own = self.parse_settings(store, path)
        settings = {**dict(self.defaults.settings), **own}
        proxy = settings.get("proxy")
        if isinstance(proxy, Proxy) and proxy.from_environment and base_url is not None:
            settings["proxy"] = self.environment_proxy(base_url, path, inherited="proxy" not in own)
        if len(self.errors) > errors_before or name is None or base_url is None or token is None:
            return None
        return StoreConfig(
            name=name,
            base_url=base_url,
            token=token,
            task_ids=task_ids,
            task_id_files=task_id_files,
            task_labels=labels,
            **settings,
        )

    def name(self, store: dict[Any, Any], path: str) -> str | None:
        if "name" not in store:
            self.error(f"{path}.name", "missing: every store needs a name")
            return None
        text = scalar_text(store["name"])
        if text is None:
            self.wrong_type(f"{path}.name", "a string", store["name"])
        elif not STORE_NAME_RE.match(text):
            self.error(
                f"{path}.name",
                f"invalid store name {quoted(text)} (use [A-Za-z0-9_.-], 1 to 64)",
            )
        elif text in (".", ".."):  # {store} in a path would name a directory
            self.error(f"{path}.name", f"invalid store name {quoted(text)} (not . or ..)")
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
            self.wrong_type(path, "a host name", value)
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
            self.wrong_type(path, "an http(s) URL", value)
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
        if parts is not None and parts.scheme.lower() == "http" and not _loopback(parts.hostname):
            self.warn(
                path,
                f"plain http:// to {parts.hostname}, which is not loopback: the access token "
                "travels in clear text",
            )
        return value.rstrip("/")

    # -- tokens ---------------------------------------------------------------------------

    def store_token(self, store: dict[Any, Any], path: str, name: str | None) -> TokenSource | None:
        present = [key for key in TOKEN_KEYS if key in store]
        if len(present) > 1:
            self.error(path, f"set only one of {TOKEN_HINT}, not {' and '.join(present)}")
            return None
        if present:
            key = present[0]
            return self.token(key, self.placed(key, store[key], name), f"{path}.{key}")
        if self.default_token_broken:
            return None
        if self.defaults.token is None:
            self.error(path, f"missing access token: set one of {TOKEN_HINT} (here or in defaults)")
            return None
        key, raw = self.defaults.token
        value = self.placed(key, raw, name)
        if self.main_file and value == raw:  # one shared token: read and reported once
            return self.token(key, raw, f"defaults.{key}", self.defaults.base_dir, cached=True)
        if name is None:
            return None
        return self.token(
            key, value, path, self.defaults.base_dir, f"{key} from defaults: ", cached=True
        )

    @staticmethod
    def placed(key: str, value: object, name: str | None) -> object:
        """``value`` with ``{store}`` replaced by the store's name (token files only)."""
        if key != "access_token_file" or not isinstance(value, str) or name is None:
            return value
        return value.replace(PLACEHOLDER, name)

    def token(
        self,
        key: str,
        value: object,
        path: str,
        base_dir: str | None = None,
        prefix: str = "",
        *,
        cached: bool = False,
    ) -> TokenSource | None:
        """The token named by ``key: value``; a defaults token is read (and reported) once."""
        if not isinstance(value, str) or not value.strip():
            self.wrong_type(path, "a non-empty string", value, secret=True)
            return None
        if not cached:
            return self.read_token(key, value, path, base_dir, prefix)
        cache_key = (key, value if key != "access_token_file" else self.path(value, base_dir))
        if cache_key in self.tokens:
            return self.tokens[cache_key]
        source = self.read_token(key, value, path, base_dir, prefix)
        self.tokens[cache_key] = source
        return source

    def read_token(
        self, key: str, value: str, path: str, base_dir: str | None, prefix: str
    ) -> TokenSource | None:
        try:
            if key == "access_token_file":
                file = self.path(value, base_dir)
                self.files_read.append(file)
                return TokenSource("file", file, read_token_file(file))
            if key == "access_token_env":
                if not ENV_NAME_RE.match(value) and not looks_like_token(value):
                    raise TokenProblem(f"invalid environment variable name {quoted(value)}")
                return TokenSource("env", value, read_token_env(value, self.environ))
            token = check_token(value.strip(), "access_token", "the inline token")
        except TokenProblem as exc:
            message = str(exc)
            if key != "access_token" and looks_like_token(value, key):
                # a token where its file or variable name belongs
                what = "a file holding" if key == "access_token_file" else "a variable holding"
                message = f"this looks like a token itself; give the name of {what} it"
            self.error(path, prefix + message)
            return None
        self.warn(path, "inline tokens are discouraged; use access_token_file or access_token_env")
        return TokenSource("inline", "", token)

    # -- task ids -------------------------------------------------------------------------

    def task_ids(
        self, value: object, path: str
    ) -> tuple[tuple[str, ...], tuple[tuple[str, Labels], ...]]:
        if value is None:
            return (), ()
        if not isinstance(value, list):
            self.wrong_type(path, "a list of task ids", value)
            return (), ()
        ids: dict[str, str] = {}
        labelled: dict[str, Labels] = {}
        for position, item in enumerate(value):
            where = index(path, position)
            labels: Labels = ()
            if isinstance(item, dict):
                item, labels = self.task_entry(item, where)
                if item is None:
                    continue
                where = f"{where}.id"
            text = scalar_text(item)
            if text is None:
                self.wrong_type(where, "a task id string", item)
            elif not TASK_ID_RE.match(text):
                self.error(where, f"invalid task id {quoted(text)}")
            elif text in ids:
                self.warn(where, f"duplicate task id {quoted(text)} (also at {ids[text]}), ignored")
            else:
                ids[text] = where
                if labels:
                    labelled[text] = labels
        return tuple(ids), tuple(labelled.items())

    def task_entry(self, item: dict[Any, Any], path: str) -> tuple[object, Labels]:
        """``{id: ..., labels: {name: value}}`` -> (the id value, its labels)."""
        self.unknown_keys(item, path, _TASK_KEYS)
        if "id" not in item:
            self.error(f"{path}.id", "missing: a task entry needs an id")
            return None, ()
        raw = self.mapping(item.get("labels"), f"{path}.labels")
        pairs: list[tuple[str, str]] = []
        for name, value in (raw or {}).items():
            where = join(f"{path}.labels", name)
            text = scalar_text(value)
            if not isinstance(name, str):
                self.error(where, "a label name must be a string")
            elif text is None:
                self.wrong_type(where, "a label value string", value)
            elif problem := label_name_problem(name) or label_value_problem(name, text):
                self.error(where, problem)
            else:
                pairs.append((name, text))
        problem = labels_problem(pairs)
        if problem is not None:
            self.error(f"{path}.labels", problem)
        return item["id"], tuple(sorted(pairs))

    def store_task_id_files(
        self, store: dict[Any, Any], path: str, name: str | None
    ) -> tuple[str, ...]:
        if "task_id_files" in store:
            patterns = self.task_id_files(store["task_id_files"], f"{path}.task_id_files")
            base_dir = self.base_dir
        else:
            patterns, base_dir = self.defaults.task_id_files, self.defaults.base_dir
        found: dict[str, None] = {}
        for pattern in patterns:
            if name is not None:
                pattern = pattern.replace(PLACEHOLDER, name)
            found.setdefault(os.path.join(glob.escape(base_dir), pattern))
        return tuple(found)

    def task_id_files(self, value: object, path: str) -> tuple[str, ...]:
        """Raw glob patterns, in order, each once."""
        if value is None:
            return ()
        if not isinstance(value, list):
            self.wrong_type(path, "a list of glob patterns", value)
            return ()
        patterns: dict[str, None] = {}
        for position, item in enumerate(value):
            if not isinstance(item, str) or not item or "\0" in item:
                self.wrong_type(index(path, position), "a file name or glob", item)
                continue
            patterns.setdefault(item)
        return tuple(patterns)

    # -- the settings table ---------------------------------------------------------------

    def parse_settings(self, mapping: dict[Any, Any], path: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        both_proxies = all(key in mapping for key in PROXY_KEYS)
        if both_proxies:
            self.error(path, f"set only one of {' / '.join(PROXY_KEYS)}, not both")
        for key, setting in SETTINGS.items():
            if key in PROXY_KEYS and both_proxies:
                continue
            if key in mapping:
                parsed = setting.check(self, mapping[key], f"{path}.{key}")
                if parsed is not None:
                    out[setting.field] = parsed
        return out

    def api_version(self, value: object, path: str) -> str | None:
        text = scalar_text(value)
        if text is None:
            self.wrong_type(path, 'a string such as "2022-01"', value)
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

    def tls(self, value: object, path: str) -> TLSConfig | None:
        if value is None:
            return TLSConfig()
        mapping = self.mapping(value, path, _TLS_KEYS)
        if mapping is None:
            return None
        errors_before = len(self.errors)
        ca_file = self.optional_path(mapping.get("ca_file"), f"{path}.ca_file")
        if ca_file is not None:
            self.check_ca_file(ca_file, f"{path}.ca_file")
        skip = self.boolean(
            mapping.get("insecure_skip_verify"),
            f"{path}.insecure_skip_verify",
            False,
            "true or false",
        )
        if skip:
            self.warn(f"{path}.insecure_skip_verify", "TLS certificates will not be verified")
        if len(self.errors) > errors_before:
            return None
        return TLSConfig(ca_file=ca_file, insecure_skip_verify=skip)

    def proxy_url(self, value: object, path: str) -> Proxy | None:
        """A forward proxy's URL ("" or null: none); its credentials are never echoed."""
        if value is None:
            return Proxy()
        if not isinstance(value, str):
            self.wrong_type(path, "an http(s) URL", value, secret=True)
            return None
        try:
            return parse_proxy_url(value)
        except ValueError as exc:
            self.error(path, str(exc))
            return None

    def proxy_from_environment(self, value: object, path: str) -> Proxy | None:
        if not isinstance(value, bool):
            self.wrong_type(path, "true or false", value)
            return None
        return Proxy(from_environment=True) if value else Proxy()

    def environment_proxy(self, base_url: str, path: str, *, inherited: bool) -> Proxy | None:
        """The proxy ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``NO_PROXY`` name for ``base_url``,
        read now (at load), never per request."""
        try:
            proxy, _ = environment_proxy(base_url, self.environ)
        except ValueError as exc:
            if inherited:
                self.error(path, f"proxy_from_environment from defaults: {exc}")
            else:
                self.error(f"{path}.proxy_from_environment", str(exc))
            return None
        return proxy

    def check_ca_file(self, path: str, where: str) -> None:
        self.files_read.append(path)
        try:
            read_regular(path, 0)  # a FIFO or a device is refused before OpenSSL reads it
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
            self.wrong_type(path, "a file name", value)
            return None
        return self.path(value)
