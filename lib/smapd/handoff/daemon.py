"""smapd's start: privileges, the daemon, the pid file; then the runner.

What it does: connects the log, refuses to run as root (unless forced),
detaches with python-daemon unless -d or -f (the log socket kept open;
never with nowhere to log), writes
the pid file (as whoever started smapd, never through a symlink),
drops to `userid`/`groupid` with no other group, makes the spool its
working directory, checks that baddir is usable, and hands over to
runner.Runner; at stop it removes the pid file where it may.

What it trusts: the table, read as root.

What it must never do: deliver as root, or start with a spool it cannot
use.
"""

from __future__ import annotations

import os
import sys

from smapd import log as slog
from smapd.handoff import deliver, runner
from smapd.prefork.privsep import EXIT_BOOT, PrivsepError, enter_jail, resolve_ids
from smapd.prefork.pidfile import PidFile
from smapd.exits import EXIT_RUNTIME
from smapd.prefork.pidfile import pidfile_path


def main(settings, prog: str, name: str, table: str, debug: bool, allow_root: bool, pidfile_option=None,
         foreground: bool = False) -> int:
    logger = slog.setup(prog, settings["log-facility"], debug, settings["log-socket"])
    detach = not (debug or foreground)
    spool = settings["directory"]
    try:
        uid, gid = resolve_ids(settings["userid"], settings["groupid"])
    except PrivsepError as e:
        logger.error("%s", str(e))
        return EXIT_BOOT
    if not os.path.isdir(spool):
        logger.error("the spool %s is not a directory", spool)
        return EXIT_RUNTIME
    if detach and slog.lost_when_detached(logger):
        print(f"{prog}: {slog.REFUSE_DETACH}", file=sys.stderr)
        return EXIT_RUNTIME
    path = pidfile_path(settings, pidfile_option, detached=detach)
    pidfile = PidFile(path) if path else None
    if pidfile:
        # Locked before detaching (a second smapd is refused), written
        # after, as whoever started smapd.
        try:
            pidfile.lock()
        except OSError as e:
            logger.error("%s", e.strerror)
            if not debug:  # the log is elsewhere; the operator is still here
                print(f"{prog}: {e.strerror}", file=sys.stderr)
            return EXIT_RUNTIME
    if detach:
        import daemon
        keep = [h.socket.fileno() for h in logger.handlers if getattr(h, "socket", None)]
        if pidfile:
            keep.append(pidfile.fd)
        ctx = daemon.DaemonContext(working_directory="/", umask=0o077, files_preserve=keep,
                                   signal_map={}, prevent_core=True)
        ctx.open()
    if pidfile:
        pidfile.write()
    if os.geteuid() == 0:
        try:
            # Not confined: the MTA's sendmail may need its setgid bit
            # (Postfix's postdrop), which no_new_privs would ignore.
            enter_jail(None, uid, gid, allow_root, confine=False)
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
    # Files go to bad/ by link and unlink: it must be a directory (never a
    # symbolic link: deliver.open_baddir says why) on the spool's file
    # system, and writable, or a refused message would be retried forever.
    try:
        os.close(deliver.open_baddir(settings["baddir"]))
        writable = os.access(settings["baddir"], os.W_OK | os.X_OK)
    except OSError as e:
        logger.error("baddir %s (%s) cannot be used: %s", settings["baddir"], settings.where("baddir"), e.strerror)
        return EXIT_RUNTIME
    if not writable:
        logger.error("baddir %s (%s) must be a writable directory on the file system of the spool %s",
                     settings["baddir"], settings.where("baddir"), spool)
        return EXIT_RUNTIME
    try:
        return runner.Runner(settings, lambda: runner.load(table, name), prog,
                             close_in_children=[pidfile.fd] if pidfile else []).run()
    except Exception:
        logger.exception("internal error")
        return EXIT_RUNTIME
    finally:
        if pidfile:
            pidfile.remove()
        sys.stdout.flush()
