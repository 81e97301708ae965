"""Two socket helpers shared by smap, ssl-gw and smapd.

What it does: `readable()` waits for input with poll(2) (no descriptor
limit, unlike select(2)); `no_delay()` turns Nagle off on a TCP socket,
so that a small last write goes out at once instead of waiting for the
peer's delayed ACK.

What it trusts: the socket it is given.

What it must never do: read or write a byte.
"""

from __future__ import annotations

import select
import socket


def readable(sock, seconds: float) -> bool:
    """Has `sock` input (or an end) within `seconds`?  False on a socket
    that cannot be polled (closed meanwhile)."""
    p = select.poll()
    p.register(sock, select.POLLIN | select.POLLPRI)
    try:
        return bool(p.poll(max(0, int(seconds * 1000))))
    except (OSError, ValueError):
        return False


def no_delay(sock) -> None:
    """TCP_NODELAY on a TCP socket; anything else (a UNIX socket, an
    inetd descriptor that is no TCP after all) is left as it is."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
