"""smap in inetd mode: one session on the socket inetd passes as fd 0.

What it does, in this order, once main.py has read the table under the
invoked name: connects the log, looks up the client's forward-confirmed name, applies
the `hosts` rules, prepares what the jail lacks (DNS record types, the
time zone, the host name, the TLS context of `ssl`, whose key is root's),
chroots into the spool and drops to `userid`/`groupid` with no other group
(verified), serves one SMTP session (smtp/session.py; with `--smtps` it
begins with the TLS handshake) and exits.  Started by a non-root user (a
test) it cannot jail itself: it says so loudly in the log and serves from
the spool directory.

What it trusts: the table, as read by root before the jail.

What it must never do: read a byte of SMTP before it is in the jail (when
started as root), or serve when the jail could not be entered: then the
client gets 421 and the process exits with EXIT_BOOT.
"""

from __future__ import annotations

import os
import socket

from smapd import log as slog
from smapd.addresses import client_address
from smapd.prefork.privsep import EXIT_BOOT, PrivsepError, enter_jail, resolve_ids
from smapd.exits import EXIT_OK, EXIT_RUNTIME
from smapd.smap.service import (admitted, client_name, make_resolver, policy_setup, prepare_for_jail, protocol_settings, refuse,
                    run_session, tls_context)
from smapd.smap.protocol import Protocol


def serve_inetd(settings, prog: str, debug: bool = False, allow_root: bool = False, smtps: bool = False) -> int:
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
    addr = str(client_address(peer[0]))
    resolver = make_resolver(settings)
    name = client_name(addr, resolver)
    proto = Protocol(protocol_settings(settings), name, addr)
    if not admitted(settings, proto, sock, name, addr):
        return EXIT_OK

    prepare_for_jail(settings)
    try:
        context = tls_context(settings)
    except Exception as e:  # tls.TlsError: the file and the reason
        logger.error("cannot serve host=%s/%s: ssl: %s", name, addr, e)
        refuse(sock, proto.unavailable(f"ssl: {e}"), name, addr)
        return EXIT_RUNTIME
    try:
        setup = policy_setup(settings, resolver)
    except Exception as e:  # OSError, auth.AuthFileError: the file and the reason
        logger.error("cannot serve host=%s/%s: %s", name, addr, e)
        refuse(sock, proto.unavailable(str(e)), name, addr)
        return EXIT_RUNTIME
    if smtps and context is None:
        logger.error("cannot serve host=%s/%s: --smtps needs ssl PEM in the table", name, addr)
        refuse(sock, proto.unavailable("--smtps without ssl"), name, addr)
        return EXIT_RUNTIME
    directory = settings["directory"]
    if os.geteuid() == 0:
        try:
            uid, gid = resolve_ids(settings["userid"], settings["groupid"])
            enter_jail(directory, uid, gid, allow_root)
        except PrivsepError as e:
            logger.error("cannot serve host=%s/%s: %s", name, addr, e)
            refuse(sock, proto.unavailable(str(e)), name, addr)
            return EXIT_BOOT
        spool_dir = "/"
    else:
        logger.warning("NOT ROOT (uid %d): no chroot and no privilege drop; serving from %s for testing only",
                       os.geteuid(), directory)
        try:
            os.chdir(directory)
        except OSError as e:
            logger.error("cannot use the spool %s: %s", directory, e.strerror)
            refuse(sock, proto.unavailable(f"spool {directory}: {e.strerror}"), name, addr)
            return EXIT_RUNTIME
        spool_dir = directory
    run_session(sock, proto, settings, spool_dir, name, addr, tls_context=context, smtps=smtps, setup=setup)
    return EXIT_OK


def main(settings, prog: str, debug: bool, allow_root: bool, smtps: bool = False) -> int:
    # fds 1 and 2 were silenced at start-up under inetd (main.py); a
    # failure goes to the log.
    try:
        return serve_inetd(settings, prog, debug, allow_root, smtps)
    except KeyboardInterrupt:
        return EXIT_RUNTIME
    except Exception:
        slog.logger.exception("internal error")
        return EXIT_RUNTIME
