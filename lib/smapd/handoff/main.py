"""smapd's command line: the spool runner, detached unless -f or -d.

What it trusts: argv and the environment.

What it must never do: touch the spool before the configuration has been
read without error.
"""

from __future__ import annotations

import sys

from smapd.exits import run
from smapd.prefork.command_line import fwtk_start
from smapd.table.keywords import SMAPD
from smapd.table.programs import invoked_name, table_path


def main(argv=None) -> int:
    prog, args, settings = fwtk_start(argv, SMAPD, False)
    name = invoked_name(sys.argv[0] if argv is None else argv[0], args.name)
    from smapd.handoff import daemon
    return daemon.main(settings, prog, name, table_path(args.config), args.debug, args.allow_root,
                       args.pidfile, args.foreground)


run = run(main)
