"""Access tokens: read from a file, a variable or inline, checked, never shown.

A token file is read again when the client asks (Kubernetes rotates mounted secrets in
place); every message here names where the token comes from, never the token itself.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from exporter.config.files import read_regular
from exporter.config.kit import quoted
from exporter.config.model import TokenSource
from exporter.errors import ConfigError

# No Shoplazza token is shorter, and redacting a very short string from API texts would
# mangle them (docs/design.md, "Configuration").
MIN_TOKEN_LENGTH = 16
ENV_NAME_RE = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*\Z")
_MAX_TOKEN_FILE = 64 * 1024


class TokenProblem(Exception):
    """Why a token could not be read; the message never contains the token."""


def check_token(token: str, where: str, what: str = "") -> str:
    """``token`` if it is usable; TokenProblem saying why not (``where``: its source)."""
    if not token:
        raise TokenProblem(f"{where} is empty")
    what = what or f"the token in {where}"
    if any(not "\x21" <= char <= "\x7e" for char in token):
        raise TokenProblem(f"{what} contains spaces or non-printable characters")
    if len(token) < MIN_TOKEN_LENGTH:
        raise TokenProblem(
            f"{what} is too short to be a Shoplazza access token "
            f"({len(token)} characters, at least {MIN_TOKEN_LENGTH} expected)"
        )
    return token


def read_token_file(path: str) -> str:
    """The token held in ``path``, stripped; TokenProblem if unreadable or unusable."""
    try:
        data = read_regular(path, _MAX_TOKEN_FILE)  # a FIFO would block, /dev/zero never end
    except OSError as exc:
        raise TokenProblem(f"cannot read {quoted(path)}: {exc.strerror or exc}") from None
    except ValueError:
        raise TokenProblem(f"cannot read {quoted(path)}: invalid path") from None
    if len(data) > _MAX_TOKEN_FILE:
        raise TokenProblem(f"file {quoted(path)} is too large to hold a token")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise TokenProblem(f"file {quoted(path)} is not valid UTF-8") from None
    return check_token(text.strip(), f"file {quoted(path)}")


def read_token_env(name: str, environ: Mapping[str, str]) -> str:
    """The token held in the environment variable ``name``; TokenProblem if unusable."""
    value = environ.get(name)
    if value is None:
        raise TokenProblem(f"environment variable {name} is not set")
    return check_token(value.strip(), f"environment variable {name}")


def read_token(source: TokenSource, environ: Mapping[str, str] | None = None) -> str:
    """Read the token again now (token files are rotated in place); raise ConfigError."""
    try:
        if source.kind == "file":
            return read_token_file(source.ref)
        if source.kind == "env":
            return read_token_env(source.ref, os.environ if environ is None else environ)
    except TokenProblem as exc:
        raise ConfigError([f"access token: {exc}"]) from None
    return source.value


def looks_like_token(value: str, key: str = "access_token_env") -> bool:
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
