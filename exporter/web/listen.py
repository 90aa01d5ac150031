"""The listen addresses (``[HOST]:PORT``) and the listening sockets, bound here or passed by
systemd (``--web.systemd-socket``)."""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import socket
from collections.abc import MutableMapping

__all__ = ["LISTEN_BACKLOG", "bind", "parse_listen_address", "systemd_sockets"]

#: The kernel caps it at net.core.somaxconn; wsgiref's 5 made bursts wait for SYN retries.
LISTEN_BACKLOG = 4096
_HOST_RE = re.compile(r"[A-Za-z0-9._-]*")


def parse_listen_address(value: str) -> tuple[str, int]:
    """Parse ``[HOST]:PORT`` (``:9877``, ``127.0.0.1:0``, ``[::1]:9877``) into host and port."""
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or not value[end + 1 :].startswith(":"):
            raise ValueError(
                f"invalid listen address {value!r}: expected [IPV6]:PORT, e.g. [::1]:9877"
            )
        host, port_text = value[1:end], value[end + 2 :]
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise ValueError(
                f"invalid listen address {value!r}: {host!r} is not an IPv6 address"
            ) from None
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep:
            raise ValueError(f"invalid listen address {value!r}: expected [HOST]:PORT, e.g. :9877")
        if ":" in host:
            raise ValueError(
                f"invalid listen address {value!r}: put an IPv6 address in brackets, "
                "e.g. [::1]:9877"
            )
        if not _HOST_RE.fullmatch(host):
            raise ValueError(f"invalid listen address {value!r}: invalid host {host!r}")
    if not port_text.isascii() or not port_text.isdigit():
        raise ValueError(f"invalid listen address {value!r}: port must be a number 0-65535")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"invalid listen address {value!r}: port must be a number 0-65535")
    return host, port


def bind(host: str, port: int) -> socket.socket:
    """Create the listening socket; "" means every interface, dual-stack when possible."""
    if host == "":
        if socket.has_dualstack_ipv6():
            try:
                return socket.create_server(
                    ("::", port),
                    family=socket.AF_INET6,
                    backlog=LISTEN_BACKLOG,
                    dualstack_ipv6=True,
                )
            except OSError as exc:
                if exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                    raise
        return socket.create_server(("0.0.0.0", port), backlog=LISTEN_BACKLOG)
    infos = socket.getaddrinfo(
        host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
    )
    last: OSError | None = None
    for family, _type, _proto, _name, sockaddr in infos:
        try:
            return socket.create_server(sockaddr, family=family, backlog=LISTEN_BACKLOG)
        except OSError as exc:
            last = exc
    raise last if last is not None else OSError(f"cannot resolve {host!r}")


#: The first descriptor systemd passes (``SD_LISTEN_FDS_START`` in sd-daemon.h).
SD_LISTEN_FDS_START = 3


def systemd_sockets(environ: MutableMapping[str, str] | None = None) -> list[socket.socket]:
    """The listening sockets systemd passed (``LISTEN_FDS``, ``LISTEN_PID``), as
    ``sd_listen_fds(1)`` reads them: for this process only, the variables unset afterwards
    so that children do not take the sockets for theirs. ValueError when there are none."""
    env = os.environ if environ is None else environ
    pid_text = env.pop("LISTEN_PID", "")
    count_text = env.pop("LISTEN_FDS", "")
    env.pop("LISTEN_FDNAMES", None)
    if not count_text:
        raise ValueError("no sockets passed by systemd (LISTEN_FDS is not set)")
    if not pid_text.isascii() or not pid_text.isdigit() or int(pid_text) != os.getpid():
        raise ValueError(
            f"the sockets systemd passed are for process {pid_text or '?'} (LISTEN_PID), "
            f"not this one ({os.getpid()})"
        )
    if not count_text.isascii() or not count_text.isdigit() or int(count_text) < 1:
        raise ValueError(f"invalid LISTEN_FDS {count_text!r}: expected a number >= 1")
    sockets = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count_text)):
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise ValueError(f"descriptor {fd} from systemd is not a socket: {exc}") from None
        os.set_inheritable(fd, False)
        if sock.type != socket.SOCK_STREAM or not sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_ACCEPTCONN
        ):
            sock.detach()
            raise ValueError(
                f"descriptor {fd} from systemd is not a listening stream socket "
                "(the socket unit needs ListenStream=)"
            )
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            sock.detach()
            raise ValueError(
                f"descriptor {fd} from systemd is not a TCP socket (Unix sockets are not "
                "supported: give ListenStream= a port or an address and port)"
            )
        sockets.append(sock)
    return sockets
