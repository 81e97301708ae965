"""Stand-alone (inetd) mode: one connection on fd 0, as inetd, xinetd or
systemd's Accept=yes hand it to a program.

What it does: tells whether the program was started so
(`stderr_is_socket`), and then points fds 1 and 2 away from the client
(`silence_inetd_output`), so that nothing but the protocol reaches it.
`serve_one()` serves that connection the way a daemon's child serves
one it accepted (master.py), with the same `Service`: prepare as root
(keys, resolvers, what the jail lacks), enter the jail, and only then
`service.serve()`, which looks the client up and reads its first byte.

What it trusts: the descriptors it was started with; the settings, read
by root.

What it must never do: write to fd 1 or 2 under inetd, or read a byte of
the client's before the jail (when started as root).
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import sys

from smapd.addresses import client_address
from smapd.exits import EXIT_OK, EXIT_RUNTIME, Unusable
from smapd.prefork.privsep import EXIT_BOOT, PrivsepError, enter_jail, jail_for

log = logging.getLogger("smapd")


def stderr_is_socket() -> bool:
    """Started by inetd: fds 0, 1 and 2 are the client's connection."""
    try:
        return stat.S_ISSOCK(os.fstat(2).st_mode)
    except OSError:
        return False


def silence_inetd_output(prog: str) -> bool:
    """Under inetd, fds 1 and 2 are the client's connection: nothing but
    the protocol may reach it, not a usage message, not a traceback.
    Point them at /dev/null (fd 0 still holds the connection) and report
    whether we are under inetd; an argument error is then logged."""
    if not stderr_is_socket():
        return False
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)
    return True


def _tell(prog: str, message: str) -> None:
    """An error before any connection: to the log, and to a terminal too
    (typed at a shell, the program is no inetd service: its user reads
    stderr, and syslog may be elsewhere or nowhere)."""
    log.error("%s", message)
    if stderr_is_socket():
        return
    if any(isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is sys.stderr
           for h in log.handlers):
        return  # the log is stderr already
    print(f"{prog}: {message}", file=sys.stderr)


class One:
    """What a service's serve() sees of its process in stand-alone mode:
    no scoreboard (inetd's per_source, xinetd's or systemd's limits count
    the connections of a host), no title to keep."""

    def __init__(self, settings):
        self.settings = settings

    def stage(self, text: str) -> None:
        pass

    def sessions_from(self, addr: str) -> int:
        return 1  # this one

    def sessions_from_net(self, addr: str) -> int:
        return 1

    # No `stressed()`: there is no pool to be under stress (inetd has its
    # own limits: xinetd's instances and per_source).

    # No pool, no scoreboard: a session's AUTH failures are its own
    # (errors-max ends it), none are counted across connections.
    def auth_failed(self, addr: str, window: float) -> None:
        pass

    def auth_failures(self, addr: str, window: float) -> int:
        return 0


def serve_one(service, settings, allow_root: bool = False, tag=None, problems=()) -> int:
    """Serve the connection on fd 0 with `service` (master.Service); the
    log is the caller's, set up already.  Returns the exit status."""
    try:
        conn = socket.socket(fileno=os.dup(0))
        peer = conn.getpeername()
    except OSError:
        _tell(service.prog, f"standard input is not a connected socket: run {service.prog} from inetd, "
                            "or as a daemon")
        return EXIT_RUNTIME
    if conn.family not in (socket.AF_INET, socket.AF_INET6):
        _tell(service.prog, "standard input is not a TCP socket")
        return EXIT_RUNTIME
    addr = str(client_address(peer[0]))
    problems = list(problems) + service.problems(settings, standalone=True)
    try:
        if problems:
            raise Unusable("; ".join(problems))
        prepared = service.prepare(settings)
    except Unusable as e:
        log.error("cannot serve %s: %s", addr, str(e))
        service.unavailable(conn, addr, settings, str(e))
        return EXIT_RUNTIME
    try:
        jail = jail_for(settings, allow_root)
        if jail is not None:
            enter_jail(*jail, allow_root)
    except PrivsepError as e:
        log.error("cannot serve %s: %s", addr, str(e))
        service.unavailable(conn, addr, settings, str(e))
        return EXIT_BOOT
    if jail is None:
        log.warning("NOT ROOT (uid %d): no chroot and no privilege drop; for testing only", os.geteuid())
    service.serve(conn, addr, tag, prepared, One(settings))
    return EXIT_OK
