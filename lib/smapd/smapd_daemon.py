"""smapd's start: privileges, the daemon, the pid file; then the runner.

What it does: connects the log, refuses to run as root (unless forced),
detaches with python-daemon unless -d (the log socket kept open), writes
the pid file (as root when started as root, then given to the user so
the runner can remove it), drops to `userid`/`groupid` with no other
group, makes the spool its working directory and hands over to
runner.Runner.

What it trusts: the table, read as root.

What it must never do: deliver as root, or start with a spool it cannot
use.
"""

from __future__ import annotations

import os
import sys

from . import log as slog
from . import runner
from .privsep import EXIT_BOOT, PrivsepError, enter_jail, resolve_ids
from .progname import EXIT_RUNTIME


def _write_pidfile(path, uid, gid) -> None:
    with open(path, "w") as f:
        f.write(f"{os.getpid()}\n")
    if os.geteuid() == 0:
        os.chown(path, uid, gid)


def main(settings, prog: str, name: str, table: str, debug: bool, allow_root: bool) -> int:
    logger = slog.setup(prog, settings["log-facility"], debug, settings["log-socket"])
    spool = settings["directory"]
    try:
        uid, gid = resolve_ids(settings["userid"], settings["groupid"])
    except PrivsepError as e:
        logger.error("%s", str(e))
        return EXIT_BOOT
    if not os.path.isdir(spool):
        logger.error("the spool %s is not a directory", spool)
        return EXIT_RUNTIME
    if not debug:
        import daemon
        keep = [h.socket.fileno() for h in logger.handlers if getattr(h, "socket", None)]
        ctx = daemon.DaemonContext(working_directory="/", umask=0o077, files_preserve=keep,
                                   signal_map={}, prevent_core=True)
        ctx.open()
    pidfile = settings["pidfile"]
    if pidfile:
        try:
            _write_pidfile(pidfile, uid, gid)
        except OSError as e:
            logger.error("cannot write the pid file %s: %s", pidfile, e.strerror)
            return EXIT_RUNTIME
    if os.geteuid() == 0:
        try:
            enter_jail(None, uid, gid, allow_root)
        except PrivsepError as e:
            logger.error("%s", str(e))
            return EXIT_BOOT
    else:
        logger.warning("not started as root: delivering as uid %d", os.geteuid())
    try:
        os.chdir(spool)
    except OSError as e:
        logger.error("cannot use the spool %s: %s", spool, e.strerror)
        return EXIT_RUNTIME
    try:
        return runner.Runner(settings, lambda: runner.load(table, name), prog).run()
    except Exception:
        logger.exception("internal error")
        return EXIT_RUNTIME
    finally:
        if pidfile:
            try:
                os.unlink(pidfile)
            except OSError:
                pass
        sys.stdout.flush()
