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

from . import DEFAULT_TABLE, config
from .netperm import ConfigError, Table

#: Exit statuses shared by the suite (each man page lists them).
EXIT_OK, EXIT_RUNTIME, EXIT_CONFIG = 0, 1, 2


def table_path(option=None) -> str:
    return option or os.environ.get("NETPERM_TABLE") or DEFAULT_TABLE


def invoked_name(argv0: str, explicit=None) -> str:
    return explicit or os.path.basename(argv0) or "smap"


def load_settings(program: str, names, path: str, prog: str):
    """The program's settings, or exit 2 after printing every error."""
    try:
        table = Table.read(path)
        loaded = config.load_or_die(table, program, names)
    except ConfigError as e:
        for d in e.diagnostics:
            print(f"{prog}: {d}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)
    return loaded.settings
