"""The FWTK command line of smap and smapd.

What it does: parses `[-daemon] [-f] [-d] [--allow-root] [--config FILE]
[--pidfile FILE] [--smtps] [name]`, finds the name the program reads the
table under and loads its settings (exit 2 with file:line on any error).
Under inetd (smap without -d and with its socket on fd 2) a usage error
can only be logged, and the client hears only `refusal`.

What it trusts: argv and the environment.

What it must never do: touch a socket or the spool.
"""

from __future__ import annotations

import argparse
import os
import sys

from smapd import __version__
from smapd.exits import EXIT_CONFIG
from smapd.prefork.activation import answer_stdin
from smapd.prefork.standalone import silence_inetd_output
from smapd.table.programs import invoked_name, load_settings, table_path


def fwtk_parser(prog: str, daemon_flag: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, allow_abbrev=False)
    if daemon_flag:
        p.add_argument("-daemon", action="store_true", help="run the standalone prefork master")
        p.add_argument("-f", "--foreground", action="store_true",
                       help="with -daemon: do not detach; log to syslog all the same")
    else:
        p.add_argument("-f", "--foreground", action="store_true",
                       help="do not detach; log to syslog all the same")
    p.add_argument("-d", "--debug", action="store_true", help="stay in the foreground and log to stderr")
    p.add_argument("--allow-root", action="store_true", help="let userid or groupid be 0 (refused otherwise)")
    p.add_argument("--config", metavar="FILE", help="the netperm-table")
    p.add_argument("--pidfile", metavar="FILE", help="the daemon's pid file (overrides the table's pidfile)")
    if daemon_flag:
        p.add_argument("--smtps", action="store_true",
                       help="inetd mode: the connection begins with TLS (an smtps service, port 465)")
    p.add_argument("-V", "--version", action="version", version=f"{prog} (smapd suite) {__version__}")
    p.add_argument("name", nargs="?", help="read the table's lines for NAME instead of the program's name")
    return p


def fwtk_start(argv, program: str, daemon_flag: bool, refusal: bytes = None):
    """(prog, args, settings) of smap or smapd.  `refusal`: what smap
    tells a client under inetd when its table cannot be used."""
    argv = sys.argv if argv is None else argv
    prog = os.path.basename(argv[0]) or program
    parser = fwtk_parser(prog, daemon_flag)
    inetd = (refusal is not None and "-d" not in argv[1:] and "--debug" not in argv[1:]
             and silence_inetd_output(prog))
    if inetd:
        # Under inetd a usage error can only be logged.
        def error(message):
            from smapd import log
            log.setup(prog).error("bad arguments %s: %s", " ".join(argv[1:]), message)
            sys.exit(EXIT_CONFIG)
        parser.error = error
    args = parser.parse_args(argv[1:])
    name = invoked_name(argv[0], args.name)
    # fd 0 is the connection (or inetd's listener); 1 and 2 are silenced.
    tell = (lambda: answer_stdin(refusal)) if inetd and refusal else None
    return prog, args, load_settings(program, (name,), table_path(args.config), prog, bool(inetd), tell)
