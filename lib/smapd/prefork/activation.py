"""Listening sockets handed to a program by its starter: inetd's `wait`
(xinetd `wait = yes`, inetd.conf `wait`: the listening socket is fds 0,
1 and 2) and systemd's socket activation with `Accept=no` (LISTEN_FDS
descriptors from fd 3, LISTEN_PID naming this process).

What it does: tells whether the program was started so, and gives the
master (master.py) those sockets as its listeners, non-blocking, each
with a ListenSpec made from its own address and the service's tag (for
smap, systemd's `FileDescriptorName=smtps` in LISTEN_FDNAMES tags one
socket for TLS on accept, and --smtps all of them).  The variables
are removed from the environment once read, as sd_listen_fds(3) does
with unset_environment, so that nothing the program runs (sendmail, an
`-l` program) takes the sockets for its own.

What it trusts: the descriptors and the environment it was started
with; a descriptor is used only when the kernel says it is a listening
TCP socket.

What it must never do: accept a connection (children do), or close a
descriptor it did not take (the starter keeps its own copy: when this
program exits, xinetd or systemd listen again and start it at the next
connection, and nothing in the kernel's queue is lost).
"""

from __future__ import annotations

import os
import socket

#: systemd's first passed descriptor (SD_LISTEN_FDS_START).
LISTEN_FDS_START = 3


def _listening(fd: int):
    """A socket object on a duplicate of `fd` when it is a listening TCP
    socket, else None."""
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return None
    try:
        if (sock.type == socket.SOCK_STREAM and sock.family in (socket.AF_INET, socket.AF_INET6)
                and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)):
            return sock
    except OSError:
        pass
    sock.close()
    return None


def _systemd_fds():
    """[(fd, name)] of systemd's LISTEN_FDS for this process, removing the
    variables; [] when there are none or they are another process's."""
    env = os.environ
    pid, count, names = env.get("LISTEN_PID"), env.get("LISTEN_FDS"), env.get("LISTEN_FDNAMES", "")
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(var, None)
    if not (pid and count and pid.isdigit() and count.isdigit()) or int(pid) != os.getpid():
        return []
    labels = names.split(":") if names else []
    return [(LISTEN_FDS_START + i, labels[i] if i < len(labels) else "") for i in range(int(count))]


def handed_listeners(tag=None, named=None):
    """{ListenSpec: [socket]} of the listening sockets the starter handed
    over (systemd's, else inetd's fd 0), or None when it handed none;
    each spec has `tag`, or named[its FileDescriptorName] when there is one.
    systemd's descriptors that are no listening socket are left alone:
    with `Accept=yes` the one descriptor is the connection (the unit puts
    it on stdin too, for inetd mode)."""
    taken = [(fd, name, _listening(fd)) for fd, name in _systemd_fds()]
    taken = [(fd, name, sock) for fd, name, sock in taken if sock is not None]
    if not taken:
        sock = _listening(0)
        if sock is None:
            return None
        taken = [(0, "", sock)]
    # Only now: under inetd's `nowait`, every import is paid per connection.
    from smapd.prefork.master import ListenSpec
    out = {}
    for fd, name, sock in taken:
        # Ours now, as its duplicate: nothing else in the process (a
        # child, a program it runs) holds the listener by chance.
        if fd >= LISTEN_FDS_START:
            os.close(fd)
        else:
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, fd)
            os.close(null)
        host, port = sock.getsockname()[:2]
        sock.setblocking(False)  # children poll, then accept without waiting
        spec = ListenSpec(host, port, (named or {}).get(name, tag), handed=True)
        out.setdefault(spec, []).append(sock)
    return out


def defers_accept(sock) -> bool:
    """Does the kernel hold this listener's connections until the client
    has sent something (TCP_DEFER_ACCEPT, systemd's DeferAcceptSec=)?"""
    try:
        return bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT))
    except (OSError, AttributeError):
        return False


def answer_stdin(data: bytes) -> None:
    """Send `data` (a protocol's "try later") to the client on fd 0; when
    fd 0 is inetd's listening socket (`wait`), to the connection waiting
    on it, so that the client is answered and the starter does not start
    the program again at once for the same connection."""
    sock = _listening(0)
    try:
        if sock is None:
            os.write(0, data)
            return
        sock.settimeout(1.0)
        conn, _ = sock.accept()
        with conn:
            conn.settimeout(5.0)
            conn.sendall(data)
    except OSError:
        pass
    finally:
        if sock is not None:
            sock.setblocking(True)  # the flag is shared with the starter's copy
            sock.close()
