"""smap's command line: inetd mode (one session on fd 0), the prefork
master with -daemon, or the master on the listening sockets that inetd
(`wait`) or systemd (`Accept=no`) handed over (prefork/activation.py).

What it trusts: argv and the environment.

What it must never do: touch a socket or the spool before the
configuration has been read without error; import more than the mode
needs (under inetd, every import is paid by every connection).
"""

from __future__ import annotations

import sys

from smapd.exits import run
from smapd.prefork.command_line import fwtk_start
from smapd.table.keywords import SMAP
from smapd.table.programs import invoked_name, table_path


def main(argv=None) -> int:
    # A client of smap under inetd hears "try later", never the errors.
    prog, args, settings = fwtk_start(argv, SMAP, True,
                                       b"421 4.3.0 Service temporarily unavailable (configuration error)\r\n")
    name = invoked_name(sys.argv[0] if argv is None else argv[0], args.name)
    from smapd.prefork.activation import handed_listeners
    handed = handed_listeners("smtps" if args.smtps else None, {"smtps": "smtps"})
    if args.daemon or handed:
        from smapd.smap import service
        return service.daemon_main(settings, prog, name, table_path(args.config), args, handed)
    from smapd.smap import inetd
    return inetd.main(settings, prog, name, table_path(args.config), args.debug, args.allow_root, args.smtps)


run = run(main)
