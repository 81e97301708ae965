"""How a program finds its table and the names it reads it under.

What it does: the common start of every program: the table path
(`--config`, then `NETPERM_TABLE`, then the FWTK default), the name(s)
under which it reads its lines (the basename of argv[0], so that `smap`
installed as `smmap` reads `smmap:` lines, unless a trailing name
argument is given), and loading the settings or exiting with every
error as file:line.

What it trusts: argv and the environment of the operator who started it.

What it must never do: start serving with a table that has errors for
this program.
"""

from __future__ import annotations

import os
import stat
import sys

from . import DEFAULT_TABLE, config
from .netperm import ConfigError, Table

#: Exit statuses shared by the suite (each man page lists them).
EXIT_OK, EXIT_RUNTIME, EXIT_CONFIG = 0, 1, 2


class Unusable(Exception):
    """A configuration that reads without error but cannot be used on
    this machine (a key that will not load, a password file with bad
    lines): the text names the file and the reason."""


def table_path(option=None) -> str:
    return option or os.environ.get("NETPERM_TABLE") or DEFAULT_TABLE


def invoked_name(argv0: str, explicit=None) -> str:
    return explicit or os.path.basename(argv0) or "smap"


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


def load_settings(program: str, names, path: str, prog: str, inetd_refusal: bytes = None):
    """The program's settings, or exit 2 after reporting every error: on
    stderr, or under inetd (`inetd_refusal` given) in the log (with the
    defaults: facility mail, the usual syslog socket), the client getting
    only `inetd_refusal` (a protocol's own "try later") on fd 0."""
    try:
        table = Table.read(path)
        loaded = config.load_or_die(table, program, names)
    except ConfigError as e:
        if inetd_refusal is not None:
            from . import log
            logger = log.setup(prog)
            for d in e.diagnostics:
                logger.error("%s", str(d))
            if inetd_refusal:
                try:
                    os.write(0, inetd_refusal)  # fd 0 is the connection; 1 and 2 are silenced
                except OSError:
                    pass
        else:
            for d in e.diagnostics:
                print(f"{prog}: {d}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    return loaded.settings


def pidfile_path(settings, option=None, detached=True):
    """The pid file of a daemon: --pidfile, else the table's `pidfile`;
    the default (/var/run/NAME.pid) only when it detaches, so that a
    foreground run by an ordinary user needs no /var/run."""
    if option:
        return option
    if detached or settings.is_set("pidfile"):
        return settings["pidfile"]
    return None
