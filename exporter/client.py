"""One Shoplazza "Get Upload File Task" request -> a TaskSnapshot or a classified error.

Every outcome is classified into the contract's ``code`` values: the HTTP status as a
decimal string, or ``timeout``, ``connection_error``, ``invalid_response``. Redirects are
never followed (the ``access-token`` header would travel to another host), bodies over
10 MiB are refused without being held, and task ids are validated before they reach a URL.
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import json
import math
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter

from exporter import __version__
from exporter.config import (
    MIN_TOKEN_LENGTH,
    TASK_ID_RE,
    ConfigError,
    StoreConfig,
    TokenSource,
    read_token,
)
from exporter.model import (
    CONNECTION_ERROR,
    INVALID_RESPONSE,
    MAX_KEPT_FAILURES,
    TIMEOUT,
    FailedFile,
    TaskSnapshot,
)

MAX_BODY_BYTES = 10 * 1024 * 1024
MAX_RETRY_AFTER = 600.0
REDACTED = "<redacted>"
DEFAULT_RETRY_AFTER = 1.0
USER_AGENT = f"shoplazza-upload-exporter/{__version__}"

_DIGITS = re.compile(r"[0-9]{1,18}")


class InvalidResponse(ValueError):
    """A 2xx body that is not the task shape the contract describes."""


@dataclass(frozen=True)
class FetchResult:
    """What one request yielded: ``snapshot`` is set exactly when ``ok``."""

    code: str
    snapshot: TaskSnapshot | None
    duration: float
    detail: str = ""
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        """True when the request yielded valid task data."""
        return self.snapshot is not None


def _integer(data: Mapping[str, Any], key: str) -> int:
    value = data.get(key)
    if value is None:
        raise InvalidResponse(f"{key}: missing")
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        value = int(value)  # an integral numeric string such as "3" is accepted
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidResponse(f"{key}: expected a non-negative integer, got {_brief(value)}")
    if value < 0:
        raise InvalidResponse(f"{key}: negative value {value}")
    return value


def _list(data: Mapping[str, Any], key: str) -> list[Any]:
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidResponse(f"{key}: expected an array, got {_brief(value)}")
    return value


def _brief(value: object) -> str:
    text = json.dumps(value)[:40] if not isinstance(value, str) else repr(value[:40])
    return f"{type(value).__name__} {text}"


def _text(value: object, limit: int = 2048) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text[:limit]


def _failed_file(entry: object) -> FailedFile:
    if isinstance(entry, Mapping):
        link = entry.get("origin_link") or entry.get("file_uri") or entry.get("url") or ""
        reason = ""
        for key in ("reason", "error", "error_message", "message", "msg", "errors"):
            if entry.get(key):
                reason = _text(entry[key])
                break
        return FailedFile(origin_link=_text(link), reason=reason)
    return FailedFile(origin_link=_text(entry), reason="")


def parse_task(body: object) -> TaskSnapshot:
    """Parse a decoded JSON body of either shape; raise InvalidResponse when off-shape."""
    if not isinstance(body, Mapping):
        raise InvalidResponse(f"expected a JSON object, got {type(body).__name__}")
    data: Mapping[str, Any] = body
    if "code" in body and not any(k in body for k in ("total", "finished", "status")):
        inner = body.get("data")
        if not isinstance(inner, Mapping):
            raise InvalidResponse("wrapped response without a data object")
        data = inner
    total = _integer(data, "total")
    finished = _integer(data, "finished")
    status = _integer(data, "status")
    successes = _list(data, "success_list")
    failures = _list(data, "failure_list")
    _list(data, "origin_list")
    return TaskSnapshot(
        total=total,
        finished=finished,
        status=status,
        succeeded=len(successes),
        failed=len(failures),
        failures=tuple(_failed_file(entry) for entry in failures[:MAX_KEPT_FAILURES]),
    )


def parse_retry_after(value: str | None, now: float | None = None) -> float:
    """Seconds to pause after a 429: ``Retry-After`` as seconds or HTTP date, capped."""
    if value is None or not value.strip():
        return DEFAULT_RETRY_AFTER
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return DEFAULT_RETRY_AFTER
        if when.tzinfo is None:
            return DEFAULT_RETRY_AFTER
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return DEFAULT_RETRY_AFTER
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _error_detail(response: requests.Response, body: bytes) -> str:
    """A short, loggable description of an error answer (never the request headers)."""
    try:
        decoded = json.loads(body)
    except ValueError:
        decoded = None
    if isinstance(decoded, Mapping):
        for key in ("error", "errors", "message"):
            if key in decoded:
                return f"HTTP {response.status_code}: {_text(decoded[key], 200)}"
    return f"HTTP {response.status_code} {response.reason or ''}".strip()


class StoreClient:
    """Fetches upload tasks of one store over one pooled ``requests.Session``."""

    def __init__(
        self,
        store: StoreConfig,
        *,
        token_reader: Callable[[TokenSource], str] = read_token,
    ) -> None:
        self.store = store
        self._token_reader = token_reader
        # Request timing is physical (socket timeouts are real seconds): always the real
        # clock, whatever clock schedules the polls.
        self._clock = time.monotonic
        self._token = store.token.value
        self.session = requests.Session()
        self.session.trust_env = False  # no ~/.netrc credentials, no env proxies by surprise
        adapter = HTTPAdapter(
            pool_connections=1, pool_maxsize=max(store.max_concurrency, 1), max_retries=0
        )
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        if store.tls.insecure_skip_verify:
            self.session.verify = False
            # The configuration warned once; urllib3 would warn on stderr at every request.
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        elif store.tls.ca_file:
            self.session.verify = store.tls.ca_file
        self.session.headers.update({"Accept": "application/json", "User-Agent": USER_AGENT})

    def url(self, task_id: str) -> str:
        """The task's URL; refuses ids that are not plain task ids."""
        if not TASK_ID_RE.fullmatch(task_id):
            raise ValueError(f"invalid task id {task_id!r}")
        return f"{self.store.base_url}/openapi/{self.store.api_version}/file/task/{task_id}"

    def token(self) -> str:
        """The current token: re-read from its file or variable, the last good one on error."""
        # A rotation in progress must not stop polling: keep the last good token.
        with contextlib.suppress(ConfigError, OSError, UnicodeDecodeError):
            self._token = self._token_reader(self.store.token)
        return self._token

    def fetch(self, task_id: str) -> FetchResult:
        """Send one request and classify its outcome; never raises for network trouble.

        Whatever the API sends back (error texts, a redirect's Location, failed files) is
        logged and shown on pages; an API that echoes the token must not publish it.
        """
        token = self.token()
        return _redact(self._fetch(task_id, token), token)

    def _fetch(self, task_id: str, token: str) -> FetchResult:
        url = self.url(task_id)
        timeout = self.store.timeout
        start = self._clock()
        try:
            response = self.session.get(
                url,
                headers={"access-token": token},
                timeout=timeout,
                allow_redirects=False,
                stream=True,
            )
        except requests.Timeout:
            return FetchResult(TIMEOUT, None, self._clock() - start, f"no answer within {timeout}s")
        except requests.RequestException as exc:
            return FetchResult(
                CONNECTION_ERROR, None, self._clock() - start, _describe_exception(exc)
            )
        try:
            return self._classify(response, start, timeout)
        finally:
            response.close()

    def _classify(self, response: requests.Response, start: float, timeout: float) -> FetchResult:
        code = str(response.status_code)
        try:
            body = self._read_body(response, start, timeout)
        except _BodyTooLarge as exc:
            return FetchResult(INVALID_RESPONSE, None, self._clock() - start, str(exc))
        except requests.Timeout:
            return FetchResult(TIMEOUT, None, self._clock() - start, "body not read in time")
        except requests.RequestException as exc:
            return FetchResult(
                CONNECTION_ERROR, None, self._clock() - start, _describe_exception(exc)
            )
        duration = self._clock() - start
        status = response.status_code
        if not 200 <= status < 300:
            retry_after = None
            if status == 429:
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if 300 <= status < 400:
                detail = f"HTTP {status} redirect to {response.headers.get('Location', '?')!r}"
                detail += " not followed"
            else:
                detail = _error_detail(response, body)
            return FetchResult(code, None, duration, detail, retry_after)
        try:
            snapshot = parse_task(json.loads(body))
        except (ValueError, RecursionError) as exc:
            reason = str(exc) if isinstance(exc, InvalidResponse) else "body is not JSON"
            return FetchResult(INVALID_RESPONSE, None, duration, reason)
        return FetchResult(code, snapshot, duration)

    def _read_body(self, response: requests.Response, start: float, timeout: float) -> bytes:
        length = response.headers.get("Content-Length")
        if length is not None and length.strip().isdigit() and int(length) > MAX_BODY_BYTES:
            raise _BodyTooLarge(f"body of {int(length)} bytes exceeds {MAX_BODY_BYTES}")
        # Socket timeouts apply to each read, so a body dripping a byte at a time would hold
        # the request (and a max_concurrency slot) far past `timeout`: cut the connection
        # when the request's time is up.
        remaining = timeout - (self._clock() - start)
        watchdog = threading.Timer(max(remaining, 0.0), _cut, args=(response,))
        watchdog.daemon = True
        watchdog.start()
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in response.iter_content(chunk_size=65536):
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise _BodyTooLarge(f"body exceeds {MAX_BODY_BYTES} bytes")
                chunks.append(chunk)
        except requests.RequestException:
            if self._clock() - start >= timeout:
                raise requests.Timeout("body not read within the timeout") from None
            raise
        finally:
            watchdog.cancel()
        if self._clock() - start >= timeout:
            raise requests.Timeout("body not read within the timeout")
        return b"".join(chunks)

    def close(self) -> None:
        """Close pooled connections."""
        self.session.close()


class _BodyTooLarge(Exception):
    pass


def _cut(response: requests.Response) -> None:
    """Shut the response's socket down, waking a read blocked on it."""
    connection = getattr(response.raw, "connection", None)
    sock = getattr(connection, "sock", None)
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _redact(result: FetchResult, token: str) -> FetchResult:
    """``result`` with every occurrence of ``token`` in API-supplied text replaced."""
    if len(token) < MIN_TOKEN_LENGTH:
        return result  # config rejects such tokens (docs/design.md, "Configuration")

    def clean(text: str) -> str:
        return text.replace(token, REDACTED) if token in text else text

    snapshot = result.snapshot
    if snapshot is not None and any(
        token in f.origin_link or token in f.reason for f in snapshot.failures
    ):
        failures = tuple(
            FailedFile(clean(f.origin_link), clean(f.reason)) for f in snapshot.failures
        )
        snapshot = dataclasses.replace(snapshot, failures=failures)
    elif token not in result.detail:
        return result  # the usual case: nothing to redact, nothing to copy
    return dataclasses.replace(result, detail=clean(result.detail), snapshot=snapshot)


def _describe_exception(exc: requests.RequestException) -> str:
    """A short description that never carries request headers (the token)."""
    name = type(exc).__name__
    reason = str(exc.args[0]) if exc.args else ""
    # urllib3 messages embed the pool and URL, never headers; keep them short all the same.
    return f"{name}: {reason[:300]}" if reason else name
