"""One Shoplazza "Get Upload File Task" request -> a TaskSnapshot or a classified error.

Every outcome is classified into the contract's ``code`` values: the HTTP status as a
decimal string, or ``timeout``, ``connection_error``, ``invalid_response``. Redirects are
never followed (the ``access-token`` header would travel to another host), bodies over
10 MiB are refused without being held, and task ids are validated before they reach a URL.
"""

from __future__ import annotations

import dataclasses
import email.utils
import json
import logging
import math
import re
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import urllib3
from urllib3.response import BaseHTTPResponse

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
    MAX_EXACT_INTEGER,
    MAX_KEPT_FAILURES,
    TIMEOUT,
    FailedFile,
    TaskSnapshot,
)
from exporter.polling.redaction import redactor_for
from exporter.polling.transport import CAFileError, Deadline, Transport, origin_of

log = logging.getLogger("exporter.polling.client")

MAX_BODY_BYTES = 10 * 1024 * 1024
MAX_RETRY_AFTER = 600.0
MIN_RETRY_AFTER = 1.0
ACCEPT_ENCODING = "gzip, deflate"
USER_AGENT = f"shoplazza-upload-exporter/{__version__}"
DEFAULT_RETRY_AFTER = 1.0

_DIGITS = re.compile(r"[0-9]{1,18}")
# Retry-After is ASCII digits (RFC 9110 delay-seconds) or an HTTP date; float() would take
# "1e3", "1_0", " nan" and Arabic-Indic digits.
_DELAY_SECONDS = re.compile(r"[0-9]+")
_ASCII_DIGITS = re.compile(r"[0-9]+")
_SURROGATE = re.compile("[\ud800-\udfff]")


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


class _OutOfRange:
    """A JSON number no exact integer or finite float holds, kept as its description.

    ``int()`` refuses more than 4300 digits (``json.loads`` would fail as "not JSON") and
    ``float()`` turns ``1e400`` into infinity: neither says what the API sent.
    """

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text  # what follows the key in a message: "has 5000 digits"

    def __str__(self) -> str:
        return f"<a number that {self.text}>"


# More digits than this are far above 2^53 (16 digits): never converted.
_MAX_INT_DIGITS = 30


def _parse_int(text: str) -> int | _OutOfRange:
    digits = len(text.lstrip("-"))
    if digits > _MAX_INT_DIGITS:
        return _OutOfRange(f"has {digits} digits")
    return int(text)


def _parse_float(text: str) -> float | _OutOfRange:
    value = float(text)
    if not math.isfinite(value):  # 1e400, or a 500-digit number with a fraction
        return _OutOfRange(f"is out of range ({text[:40]}{'...' if len(text) > 40 else ''})")
    return value


def _parse_constant(text: str) -> float:
    # Python's json takes NaN, Infinity and -Infinity; JSON has no such numbers.
    raise InvalidResponse(f"body is not JSON: {text} is not a JSON number")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object; a key repeated in it is an invalid response, at any depth.

    Parsers disagree on ``{"status": 1, "status": 0}`` (Python keeps the last value):
    an answer that can be read two ways is not trusted either way.
    """
    data = dict(pairs)
    if len(data) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise InvalidResponse(f"key {key[:40]!r} repeated in one object")
            seen.add(key)
    return data


def decode_json(body: bytes | str) -> Any:
    """The API's JSON, strictly: no repeated keys, no NaN, huge numbers kept described.

    Raises InvalidResponse for what JSON parsers would read differently, ValueError for
    what is not JSON, RecursionError for nesting too deep.
    """
    return json.loads(
        body,
        object_pairs_hook=_object,
        parse_int=_parse_int,
        parse_float=_parse_float,
        parse_constant=_parse_constant,
    )


def _integer(data: Mapping[str, Any], key: str) -> int:
    value = data.get(key)
    if value is None:
        raise InvalidResponse(f"{key}: missing")
    if isinstance(value, _OutOfRange):
        raise InvalidResponse(f"{key} {value.text}, expected a non-negative integer up to 2^53")
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        value = int(value)  # an integral numeric string such as "3" is accepted
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        if abs(value) > MAX_EXACT_INTEGER:  # 1e308: an integral float, but not exactly
            raise InvalidResponse(f"{key} is not an exact integer ({value!r} is above 2^53)")
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidResponse(f"{key}: expected a non-negative integer, got {_brief(value)}")
    if value < 0:
        raise InvalidResponse(f"{key}: negative value {_brief(value)}")
    if value > MAX_EXACT_INTEGER:
        raise InvalidResponse(f"{key}: {_brief(value)} is above 2^53")
    return value


def _list(data: Mapping[str, Any], key: str) -> list[Any]:
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidResponse(f"{key}: expected an array, got {_brief(value)}")
    return value


def _dumps(value: object) -> str:
    """JSON text of a decoded value (an out-of-range number as its description)."""
    return json.dumps(value, ensure_ascii=False, default=str)


def _brief(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**40:
        return "an integer above 10^40"  # str() of it is slow, and refused past 4300 digits
    text = _dumps(value)[:40] if not isinstance(value, str) else repr(value[:40])
    return f"{type(value).__name__} {text}"


def _text(value: object, limit: int = 2048) -> str:
    """API-supplied text as kept: at most ``limit`` characters, no lone surrogates."""
    if value is None:
        return ""
    text = str(value) if isinstance(value, (str, _OutOfRange)) else _dumps(value)
    # JSON may carry "\ud800" alone: no encoder can write it (a page, a log line, a file).
    return _SURROGATE.sub("\ufffd", text[:limit])


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


def parse_task(body: object, task_id: str | None = None) -> TaskSnapshot:
    """Parse a decoded JSON body of either shape; raise InvalidResponse when off-shape.

    With ``task_id``, an answer that names another task (``task_id``, flat or in ``data``)
    is invalid: it must never complete the task asked for.
    """
    if not isinstance(body, Mapping):
        raise InvalidResponse(f"expected a JSON object, got {type(body).__name__}")
    data: Mapping[str, Any] = body
    if "code" in body and not any(k in body for k in ("total", "finished", "status")):
        inner = body.get("data")
        if not isinstance(inner, Mapping):
            message = _api_message(body)  # e.g. {"code": "Unauthorized", "message": "..."}
            raise InvalidResponse(
                "wrapped response without a data object" + (f" ({message})" if message else "")
            )
        if task_id is not None:
            _check_task_id(body, task_id)
        data = inner
    if task_id is not None:
        _check_task_id(data, task_id)
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


def _check_task_id(data: Mapping[str, Any], task_id: str) -> None:
    """Raise InvalidResponse when ``data`` names a task other than ``task_id``.

    An absent or null ``task_id`` names none (the simulator's scripted bodies, older APIs).
    """
    named = data.get("task_id")
    if named is not None and named != task_id:
        raise InvalidResponse(f"answer for another task: task_id {_brief(named)}")


def parse_retry_after(value: str | None, now: float | None = None) -> float:
    """Seconds to pause after a 429: ``Retry-After`` as ASCII digits or an HTTP date.

    Absent or anything else is 1 s; the pause is at least 1 s and at most 10 minutes.
    """
    if value is None:
        return DEFAULT_RETRY_AFTER
    value = value.strip(" \t")
    if _DELAY_SECONDS.fullmatch(value):
        # A long run of digits is far above the cap (and int() refuses over 4300 digits).
        digits = value.lstrip("0") or "0"
        seconds = MAX_RETRY_AFTER if len(digits) > 6 else min(float(digits), MAX_RETRY_AFTER)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
            seconds = when.timestamp() - (time.time() if now is None else now)
        except (TypeError, ValueError, IndexError, OverflowError, OSError):
            return DEFAULT_RETRY_AFTER
        if when.tzinfo is None or not math.isfinite(seconds):
            return DEFAULT_RETRY_AFTER
    return min(max(seconds, MIN_RETRY_AFTER), MAX_RETRY_AFTER)


def _api_message(body: Mapping[str, Any]) -> str:
    """The error text of an API body: ``error``, ``errors``, or 2025-06 ``code`` + ``message``."""
    for key in ("error", "errors"):
        if body.get(key):
            return _text(body[key], 200)
    message, code = body.get("message"), body.get("code")
    parts = [_text(v, 200) for v in (code, message) if v not in (None, "")]
    return ": ".join(parts)


def _error_detail(response: BaseHTTPResponse, body: bytes) -> str:
    """A short, loggable description of an error answer (never the request headers)."""
    try:
        decoded = decode_json(body)
    except (ValueError, RecursionError):
        decoded = None
    message = _api_message(decoded) if isinstance(decoded, Mapping) else ""
    if message:
        return f"HTTP {response.status}: {message}"
    return f"HTTP {response.status} {_text(response.reason, 200)}".strip()


class StoreClient:
    """Fetches upload tasks of one store through the process's shared ``Transport``."""

    __slots__ = (
        "_clock",
        "_origin",
        "_owns_transport",
        "_proxy",
        "_token",
        "_token_lock",
        "_token_reader",
        "_token_unreadable",
        "_transport",
        "_verify",
        "store",
    )

    def __init__(
        self,
        store: StoreConfig,
        *,
        transport: Transport | None = None,
        token_reader: Callable[[TokenSource], str] = read_token,
    ) -> None:
        self.store = store
        self._token_reader = token_reader
        # Request timing is physical (socket timeouts are real seconds): always the real
        # clock, whatever clock schedules the polls.
        self._clock = time.monotonic
        self._token = store.token.value
        self._token_lock = threading.Lock()
        self._token_unreadable = False
        # A client made alone (tests, benchmarks) gets a transport of its own.
        self._owns_transport = transport is None
        self._transport = transport or Transport(pool_size=store.max_concurrency)
        self._origin = origin_of(store.base_url)
        # The proxy was looked up (environment included) when the store was loaded.
        self._proxy = (store.proxy.url, store.proxy.auth) if store.proxy.url else None
        self._verify: bool | str = True
        if store.tls.insecure_skip_verify:
            self._verify = False
            # The configuration warned once; urllib3 would warn on stderr at every request.
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        elif store.tls.ca_file:
            self._verify = store.tls.ca_file

    @property
    def holds_connections(self) -> bool:
        """A pool (and maybe kept-alive connections) is held for the store's host."""
        return self._transport.holds(self._origin)

    def release(self) -> bool:
        """The store no longer needs its host: its kept-alive connections close once no
        other store uses that host and no request to it is in flight (True if they did)."""
        return self._transport.release(self._origin, self.store.name)

    def url(self, task_id: str) -> str:
        """The task's URL; refuses ids that are not plain task ids."""
        if not TASK_ID_RE.fullmatch(task_id):
            raise ValueError(f"invalid task id {task_id!r}")
        return f"{self.store.base_url}/openapi/{self.store.api_version}/file/task/{task_id}"

    def token(self) -> str:
        """The current token: re-read from its file or variable, the last good one on error.

        A rotation in progress must not stop polling: the last good token is kept. A token
        that stays unreadable (a deleted file) is logged once when that starts, and again
        only after it was readable in between.
        """
        try:
            token = self._token_reader(self.store.token)
        except (ConfigError, OSError, UnicodeDecodeError) as exc:
            with self._token_lock:
                report, self._token_unreadable = not self._token_unreadable, True
            if report:
                log.warning(
                    "cannot read the access token, using the last good one",
                    extra={"store": self.store.name, "err": str(exc).replace("\n", "; ")},
                )
            return self._token
        with self._token_lock:
            recovered, self._token_unreadable = self._token_unreadable, False
            self._token = token
        if recovered:
            log.info("access token readable again", extra={"store": self.store.name})
        return token

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
        deadline = Deadline(timeout)
        try:
            with self._transport.exchange(
                url,
                headers=self._headers(token),
                verify=self._verify,
                deadline=deadline,
                user=self.store.name,
                proxy=self._proxy,
            ) as response:
                return self._classify(response, start, deadline, task_id)
        except CAFileError as exc:
            return FetchResult(CONNECTION_ERROR, None, self._clock() - start, f"TLS error: {exc}")
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            if deadline.expired or _timed_out(exc):
                detail = f"no answer within {timeout}s"
                return FetchResult(TIMEOUT, None, self._clock() - start, detail)
            return FetchResult(
                CONNECTION_ERROR, None, self._clock() - start, _describe_exception(exc)
            )

    @staticmethod
    def _headers(token: str) -> dict[str, str]:
        # The token is a header of this request only (a pool's headers are shared by stores).
        return {
            "Accept": "application/json",
            "Accept-Encoding": ACCEPT_ENCODING,
            "User-Agent": USER_AGENT,
            "access-token": token,
        }

    def _classify(
        self, response: BaseHTTPResponse, start: float, deadline: Deadline, task_id: str
    ) -> FetchResult:
        code = str(response.status)
        status = response.status
        try:
            body = self._read_body(response)
        except _BodyTooLarge as exc:
            return FetchResult(INVALID_RESPONSE, None, self._clock() - start, str(exc))
        except urllib3.exceptions.DecodeError as exc:
            if deadline.expired:
                return FetchResult(TIMEOUT, None, self._clock() - start, "body not read in time")
            encoding = response.headers.get("Content-Encoding", "")
            detail = f"body cannot be decoded (Content-Encoding: {encoding!r}): {_brief_error(exc)}"
            if 200 <= status < 300:
                return FetchResult(INVALID_RESPONSE, None, self._clock() - start, detail)
            body = b""  # an error answer keeps its code; its text is lost
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            if deadline.expired or _timed_out(exc):
                return FetchResult(TIMEOUT, None, self._clock() - start, "body not read in time")
            return FetchResult(
                CONNECTION_ERROR, None, self._clock() - start, _describe_exception(exc)
            )
        duration = self._clock() - start
        if deadline.expired:  # the whole answer came, but too late
            return FetchResult(TIMEOUT, None, duration, "body not read in time")
        if not 200 <= status < 300:
            retry_after = None
            if status == 429:
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if 300 <= status < 400:
                location = _text(response.headers.get("Location", "?"), 300)
                detail = f"HTTP {status} redirect to {location!r}"
                detail += " not followed"
            else:
                detail = _error_detail(response, body)
            return FetchResult(code, None, duration, detail, retry_after)
        try:
            snapshot = parse_task(decode_json(body), task_id)
        except InvalidResponse as exc:
            return FetchResult(INVALID_RESPONSE, None, duration, str(exc))
        except ValueError:
            return FetchResult(INVALID_RESPONSE, None, duration, "body is not JSON")
        except RecursionError:
            return FetchResult(INVALID_RESPONSE, None, duration, "body nests too deep")
        return FetchResult(code, snapshot, duration)

    @staticmethod
    def _read_body(response: BaseHTTPResponse) -> bytes:
        """The decoded body, at most ``MAX_BODY_BYTES``, read before the deadline.

        Socket timeouts apply to each read: a body dripping a byte at a time is cut by the
        request's deadline (the transport shuts its connection down), not by them.
        """
        _check_declared_length(response.headers.get("Content-Length"))
        chunks: list[bytes] = []
        size = 0
        # urllib3 hands out at most this much decoded data per read (a small compressed
        # body can decode to gigabytes; the size check below runs between reads).
        for chunk in response.stream(65536, decode_content=True):
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise _BodyTooLarge(f"body exceeds {MAX_BODY_BYTES} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        """Close the transport if the client made its own, else its host's idle connections."""
        if self._owns_transport:
            self._transport.close()
        else:
            self.release()


class _BodyTooLarge(Exception):
    pass


def _check_declared_length(value: str | None) -> None:
    """Raise _BodyTooLarge when ``Content-Length`` says more than the body limit.

    Only ASCII digits count (``str.isdigit`` takes "²", which ``int()`` refuses, and
    ``int()`` refuses more than 4300 digits); anything else is left to the read's limit.
    """
    digits = (value or "").strip(" \t")
    if not _ASCII_DIGITS.fullmatch(digits):
        return
    digits = digits.lstrip("0") or "0"
    if len(digits) > 18:
        raise _BodyTooLarge(f"declared body length of {len(digits)} digits exceeds the limit")
    if int(digits) > MAX_BODY_BYTES:
        raise _BodyTooLarge(f"body of {int(digits)} bytes exceeds {MAX_BODY_BYTES}")


def _redact(result: FetchResult, token: str) -> FetchResult:
    """``result`` with every run of 12 or more of the token's characters in API text replaced."""
    snapshot = result.snapshot
    if not result.detail and (snapshot is None or not snapshot.failures):
        return result  # no API text: the usual answer, and no redactor needed
    if len(token) < MIN_TOKEN_LENGTH:
        return result  # config rejects such tokens (docs/design.md, "Configuration")
    # Shared and bounded, not one per store (docs/design.md, "Values from outside")
    redactor = redactor_for(token)
    clean, spans = redactor.clean, redactor.spans
    if snapshot is not None and any(
        spans(f.origin_link) or spans(f.reason) for f in snapshot.failures
    ):
        failures = tuple(
            FailedFile(clean(f.origin_link), clean(f.reason)) for f in snapshot.failures
        )
        snapshot = dataclasses.replace(snapshot, failures=failures)
    detail = clean(result.detail)
    if detail == result.detail and snapshot is result.snapshot:
        return result  # the usual case: nothing to redact, nothing to copy
    return dataclasses.replace(result, detail=detail, snapshot=snapshot)


def _timed_out(exc: BaseException) -> bool:
    """urllib3 gave up waiting (a connection refused is no time-out, though urllib3 files
    it under one)."""
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        return False
    return isinstance(exc, urllib3.exceptions.TimeoutError | TimeoutError)


def _brief_error(exc: BaseException) -> str:
    return _OBJECT_REPR.sub("", str(exc))[:200]


def _describe_exception(exc: BaseException) -> str:
    """A short description of the root cause that never carries request headers (the token).

    urllib3 may wrap the cause ("Max retries exceeded", which misleads: nothing is
    retried): name the cause, and a TLS problem as such.
    """
    tls = _find(exc, ssl.SSLError)
    if tls is not None:
        if isinstance(tls, ssl.SSLCertVerificationError) and tls.verify_message:
            return f"TLS error: certificate verify failed: {tls.verify_message}"
        return f"TLS error: {tls.reason or tls.strerror or type(tls).__name__}"[:300]
    cause: BaseException = exc
    prefix = ""
    while True:  # MaxRetryError -> its reason (NewConnectionError, ProtocolError, ...)
        if isinstance(cause, urllib3.exceptions.ProxyError):  # "Unable to connect to proxy"
            prefix = "proxy: "  # and why: refused, or its answer to CONNECT (407, 403, ...)
            if isinstance(cause.original_error, BaseException):
                cause = cause.original_error
                continue
        inner = getattr(cause, "reason", None)
        if not isinstance(inner, BaseException) and cause.args:
            inner = cause.args[0]
        if not isinstance(inner, BaseException) or inner is cause:
            break
        cause = inner
    reason = str(cause.args[0]) if cause.args else ""
    reason = _OBJECT_REPR.sub("", reason)  # "<...HTTPConnection object at 0x7f..>: "
    name = type(cause).__name__
    return prefix + (f"{name}: {reason[:300]}" if reason else name)


_OBJECT_REPR = re.compile(r"<[^<>]* object at 0x[0-9a-f]+>:? ?")


def _find(exc: BaseException, kind: type[ssl.SSLError]) -> ssl.SSLError | None:
    """The first ``kind`` in the chain of reasons, args and causes of ``exc``."""
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo and len(seen) < 50:
        item = todo.pop(0)
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, kind):
            return item
        todo.extend((getattr(item, "reason", None), *item.args, item.__cause__, item.__context__))
    return None
