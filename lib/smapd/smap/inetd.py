"""smap in inetd mode: one session on the socket inetd passes as fd 0.

What it does: connects the log and hands the connection to the
skeleton's stand-alone path (prefork/standalone.py) with the service a
daemon's children run (service.py), in the same order: prepare as root
(the TLS key of `ssl`, the spam database, the password file, the
resolver and what the jail lacks), chroot into the spool and drop to
`userid`/`groupid` with no other group (verified), and only then look the
client's name up, apply the `hosts` rules and serve one SMTP session
(with `--smtps` it begins with the TLS handshake).  Started by a non-root
user (a test) it cannot jail itself: it says so loudly in the log and
serves from the spool directory.

What it trusts: the table, as read by root before the jail.

What it must never do: read a byte of SMTP, or parse a DNS answer about
the client, before it is in the jail (when started as root), or serve
when the jail could not be entered: then the client gets 421 and the
process exits with EXIT_BOOT.
"""

from __future__ import annotations

from smapd import log as slog
from smapd.exits import EXIT_RUNTIME
from smapd.prefork.standalone import serve_one
from smapd.smap.service import SmapService


def main(settings, prog: str, name: str, table: str, debug: bool, allow_root: bool, smtps: bool = False) -> int:
    # fds 1 and 2 were silenced at start-up under inetd (main.py); a
    # failure goes to the log.
    slog.setup(prog, settings["log-facility"], debug, settings["log-socket"])
    problems = ["--smtps needs ssl PEM in the table"] if smtps and settings["ssl"] is None else []
    try:
        return serve_one(SmapService(prog, name, table), settings, allow_root, "smtps" if smtps else None, problems)
    except KeyboardInterrupt:
        return EXIT_RUNTIME
    except Exception:
        slog.logger.exception("internal error")
        return EXIT_RUNTIME
