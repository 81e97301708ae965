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


def load_settings(program: str, names, path: str, prog: str, refusal: bytes = b""):
    """The program's settings, or exit 2 after reporting every error: on
    stderr, or, when stderr is inetd's connection to a client, in the
    log (with the defaults: facility mail, the usual syslog socket) and
    with only `refusal` (a protocol's own "try later") sent to the client."""
    try:
        table = Table.read(path)
        loaded = config.load_or_die(table, program, names)
    except ConfigError as e:
        if stderr_is_socket():
            from . import log
            logger = log.setup(prog)
            for d in e.diagnostics:
                logger.error("%s", str(d))
            if refusal:
                try:
                    os.write(1, refusal)
                except OSError:
                    pass
        else:
            for d in e.diagnostics:
                print(f"{prog}: {d}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    return loaded.settings
