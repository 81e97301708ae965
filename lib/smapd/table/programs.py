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
import sys

from smapd import DEFAULT_TABLE
from smapd.exits import EXIT_CONFIG
from smapd.table import keywords
from smapd.table.netperm import ConfigError, Table


def table_path(option=None) -> str:
    return option or os.environ.get("NETPERM_TABLE") or DEFAULT_TABLE


def invoked_name(argv0: str, explicit=None) -> str:
    return explicit or os.path.basename(argv0) or "smap"


def load_settings(program: str, names, path: str, prog: str, inetd: bool = False, tell_client=None):
    """The program's settings, or exit 2 after reporting every error: on
    stderr, or under inetd (`inetd`) in the log (with the defaults:
    facility mail, the usual syslog socket), the client being told only
    what `tell_client()` sends (a protocol's own "try later")."""
    try:
        table = Table.read(path)
        loaded = keywords.load_or_die(table, program, names)
    except ConfigError as e:
        if inetd:
            from smapd import log
            logger = log.setup(prog)
            for d in e.diagnostics:
                logger.error("%s", str(d))
            if tell_client is not None:
                tell_client()
        else:
            for d in e.diagnostics:
                print(f"{prog}: {d}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    return loaded.settings
