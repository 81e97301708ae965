"""smap in inetd mode: one session on the socket inetd passes as fd 0.

What it does, in this order, once entry.py has read the table under the
invoked name: connects the log, looks up the client's forward-confirmed name, applies
the `hosts` rules, prepares what the jail lacks (DNS record types, the
time zone, the host name), chroots into the spool and drops to
`userid`/`groupid` with no other group (verified), serves one SMTP
session (smtp/session.py) and exits.  Started by a non-root user (a test, `make run`) it cannot jail
itself: it says so loudly in the log and serves from the spool directory.

What it trusts: the table, as read by root before the jail.

What it must never do: read a byte of SMTP before it is in the jail (when
started as root), or serve when the jail could not be entered: then the
client gets 421 and the process exits with EXIT_BOOT.
"""

from __future__ import annotations

import os
import socket
import time

from . import dns as sdns
from . import log as slog
from .netperm import check_hosts
from .privsep import EXIT_BOOT, PrivsepError, enter_jail, resolve_ids
from .progname import EXIT_OK, EXIT_RUNTIME
from .smtp.protocol import Protocol, Settings as ProtocolSettings
from .smtp.session import Limits, Session, lingering_close

#: Seconds the client's name may take to look up.
LOOKUP_LIFETIME = 10.0


def protocol_settings(settings) -> ProtocolSettings:
    return ProtocolSettings(hostname=settings["hostname"], maxbytes=settings["maxbytes"],
                            maxrecip=settings["maxrecip"], errors_max=settings["errors-max"],
                            banner=settings["banner"])


def limits(settings) -> Limits:
    return Limits(idle=settings["timeout"], session=settings["session-timeout"],
                  min_rate=settings["min-data-rate"], crlf=settings["crlf"])


def prepare_for_jail() -> None:
    """Load now what cannot be loaded inside the jail."""
    sdns.prepare_types()
    time.localtime()            # the time zone, from /etc/localtime
    "x".encode("idna")          # the codec, from the standard library


def serve_inetd(settings, prog: str, debug: bool = False, allow_root: bool = False) -> int:
    logger = slog.setup(prog, settings["log-facility"], debug, settings["log-socket"])
    try:
        sock = socket.socket(fileno=os.dup(0))
        peer = sock.getpeername()
    except OSError:
        logger.error("standard input is not a connected socket: run %s from inetd, or as %s -daemon", prog, prog)
        return EXIT_RUNTIME
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        logger.error("standard input is not a TCP socket")
        return EXIT_RUNTIME
    addr = peer[0]
    hostname = settings["hostname"]
    resolver = sdns.make_resolver(settings["resolver"], lifetime=LOOKUP_LIFETIME)
    name = sdns.confirmed_name(addr, resolver) or "unknown"
    proto = Protocol(protocol_settings(settings), name, addr)

    def refuse(result):
        for why in result.log:
            logger.info("host=%s/%s refused: %s", name, addr, why)
        try:
            sock.settimeout(10)
            sock.sendall(b"".join(r.render() for r in result.replies))
        except OSError:
            pass
        lingering_close(sock)

    permitted, rule = check_hosts(settings["hosts"], addr, None if name == "unknown" else name)
    if not permitted:
        refuse(proto.refuse_client(f"deny use of gateway ({rule.where if rule else 'no hosts rule matches'})"))
        return EXIT_OK

    prepare_for_jail()
    directory = settings["directory"]
    if os.geteuid() == 0:
        try:
            uid, gid = resolve_ids(settings["userid"], settings["groupid"])
            enter_jail(directory, uid, gid, allow_root)
        except PrivsepError as e:
            logger.error("cannot serve host=%s/%s: %s", name, addr, e)
            refuse(proto.unavailable(str(e)))
            return EXIT_BOOT
        spool_dir = "/"
    else:
        logger.warning("NOT ROOT (uid %d): no chroot and no privilege drop; serving from %s for testing only",
                       os.geteuid(), directory)
        try:
            os.chdir(directory)
        except OSError as e:
            logger.error("cannot use the spool %s: %s", directory, e.strerror)
            refuse(proto.unavailable(f"spool {directory}: {e.strerror}"))
            return EXIT_RUNTIME
        spool_dir = directory
    session = Session(sock, proto, limits(settings), spool_dir, hostname, name, addr,
                      greet_delay=settings["greet-delay"])
    session.serve()  # closes the connection
    return EXIT_OK


def main(settings, prog: str, debug: bool, allow_root: bool) -> int:
    # fds 1 and 2 were silenced at start-up under inetd (entry.py); a
    # failure goes to the log.
    try:
        return serve_inetd(settings, prog, debug, allow_root)
    except KeyboardInterrupt:
        return EXIT_RUNTIME
    except Exception:
        slog.logger.exception("internal error")
        return EXIT_RUNTIME
