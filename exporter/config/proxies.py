"""Outbound proxies: ``proxy_url`` checked, and ``proxy_from_environment`` looked up.

A proxy URL may carry credentials (``http://user:secret@proxy:3128``); they never appear in
a message: :func:`hide_credentials` is applied to every URL a message shows, and the
:class:`~exporter.config.model.Proxy` keeps them apart from the URL it logs. The
environment is read when a store is loaded, the way curl and Go read it (lower-case
variables first, ``NO_PROXY`` with domain suffixes, ``host:port``, IP addresses, CIDR
ranges and ``*``), never per request (docs/configuration.md, "Proxies").
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from collections.abc import Mapping

from exporter.config.model import Proxy
from exporter.config.yamlfile import quoted

__all__ = ["bypassed", "environment_proxy", "hide_credentials", "parse_proxy_url"]

_USERINFO_RE = re.compile(r"\A(?P<scheme>[^:/?#]*://)?(?P<userinfo>[^/?#]*)@")


def hide_credentials(url: str) -> str:
    """``url`` with what precedes the host's last ``@`` replaced by ``***``."""
    match = _USERINFO_RE.match(url)
    if match is None:
        return url
    return f"{match['scheme'] or ''}***@{url[match.end() :]}"


def parse_proxy_url(value: str) -> Proxy:
    """The proxy at ``value`` ("" is none); ValueError with a message free of credentials."""
    if not value:
        return Proxy()
    shown = quoted(hide_credentials(value))
    if any(char.isspace() or not char.isprintable() for char in value):
        raise ValueError(f"invalid proxy URL {shown}: spaces or control characters")
    try:
        parts = urllib.parse.urlsplit(value)
        port = parts.port
    except ValueError:
        raise ValueError(f"invalid proxy URL {shown}: bad host or port") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"invalid proxy URL {shown}: it is not an http:// or https:// URL")
    if not parts.hostname or port == 0:
        raise ValueError(f"invalid proxy URL {shown}: no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment or "#" in value:
        raise ValueError(f"invalid proxy URL {shown}: a path, query or fragment is not allowed")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    url = f"{scheme}://{host}:{port or (443 if scheme == 'https' else 80)}"
    auth = ""
    if parts.username is not None or parts.password is not None:
        user = urllib.parse.unquote(parts.username or "")
        auth = f"{user}:{urllib.parse.unquote(parts.password or '')}"
    return Proxy(url=url, auth=auth)


def _variable(environ: Mapping[str, str], name: str) -> tuple[str, str]:
    """The value of ``name`` in the environment, lower case first: (variable, value)."""
    for variable in (name.lower(), name.upper()):
        value = environ.get(variable, "").strip()
        if value:
            return variable, value
    return "", ""


def bypassed(host: str, port: int, no_proxy: str) -> bool:
    """Whether ``NO_PROXY`` (``no_proxy``) exempts ``host:port`` from the proxy."""
    host = host.lower().strip("[]").rstrip(".")
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for raw in re.split(r"[,\s]+", no_proxy.lower()):
        entry = raw.strip()
        if entry == "*":
            return True
        if not entry:
            continue
        entry_port: str | None = None
        if entry.startswith("["):  # [v6]:port
            name, _, rest = entry[1:].partition("]")
            entry_port = rest[1:] if rest.startswith(":") else None
        elif entry.count(":") == 1:  # host:port
            name, _, entry_port = entry.partition(":")
        else:  # a host, or a bare IPv6 address (its colons are no port)
            name = entry
        if entry_port is not None and (
            not re.fullmatch(r"[0-9]{1,5}", entry_port) or int(entry_port) != port
        ):
            continue
        if address is not None:
            try:
                if address in ipaddress.ip_network(name, strict=False):
                    return True
            except ValueError:
                pass
            continue
        name = name.lstrip(".").rstrip(".")
        if name and (host == name or host.endswith("." + name)):
            return True
    return False


def environment_proxy(base_url: str, environ: Mapping[str, str]) -> tuple[Proxy, str]:
    """The proxy the environment names for ``base_url``, and the variable it came from.

    ``HTTPS_PROXY`` for an https:// address, ``HTTP_PROXY`` for http://, none when
    ``NO_PROXY`` exempts the host. ValueError (naming the variable) for a bad URL.
    """
    parts = urllib.parse.urlsplit(base_url)
    scheme = parts.scheme.lower()
    variable, value = _variable(environ, f"{scheme}_proxy")
    if not value:
        return Proxy(from_environment=True), ""
    _, no_proxy = _variable(environ, "no_proxy")
    port = parts.port or (443 if scheme == "https" else 80)
    if no_proxy and bypassed(parts.hostname or "", port, no_proxy):
        return Proxy(from_environment=True), "NO_PROXY"
    if "://" not in value:  # curl and Go take a bare host:port as an http proxy
        value = f"http://{value}"
    try:
        proxy = parse_proxy_url(value)
    except ValueError as exc:
        raise ValueError(f"{variable}: {exc}") from None
    return Proxy(url=proxy.url, auth=proxy.auth, from_environment=True), variable
