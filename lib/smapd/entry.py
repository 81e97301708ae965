"""The command lines of smap, smapd and ssl-gw.

What it does: parses each program's arguments (FWTK style for smap and
smapd, stunnel 3.x style for ssl-gw), finds the names it reads the table
under and loads its settings, exiting 2 with file:line on any error.
smap without -daemon then serves one session in inetd mode (inetd.py),
with -daemon it starts the prefork master (serve.py, master.py); smapd
runs its daemon (smapd_daemon.py, runner.py); ssl-gw relays one
connection in inetd mode or runs the master with -d (sslgw.py).

What it trusts: argv and the environment.

What it must never do: touch a socket or the spool before the
configuration has been read without error.
"""

from __future__ import annotations

import argparse
import getopt
import os
import sys

from . import __version__
from .config import SMAP, SMAPD, SSLGW
from .progname import EXIT_CONFIG, EXIT_RUNTIME, invoked_name, load_settings, silence_inetd_output, table_path


def _fwtk_parser(prog: str, daemon_flag: bool) -> argparse.ArgumentParser:
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


def _fwtk_start(argv, program: str, daemon_flag: bool, refusal: bytes = None):
    """(prog, args, settings) of smap or smapd.  `refusal`: what smap
    tells a client under inetd when its table cannot be used."""
    argv = sys.argv if argv is None else argv
    prog = os.path.basename(argv[0]) or program
    parser = _fwtk_parser(prog, daemon_flag)
    inetd = (refusal is not None and "-d" not in argv[1:] and "--debug" not in argv[1:]
             and silence_inetd_output(prog))
    if inetd:
        # Under inetd a usage error can only be logged.
        def error(message):
            from . import log
            log.setup(prog).error("bad arguments %s: %s", " ".join(argv[1:]), message)
            sys.exit(EXIT_CONFIG)
        parser.error = error
    args = parser.parse_args(argv[1:])
    name = invoked_name(argv[0], args.name)
    return prog, args, load_settings(program, (name,), table_path(args.config), prog,
                                     refusal if inetd else None)


def smap_main(argv=None) -> int:
    # A client of smap under inetd hears "try later", never the errors.
    prog, args, settings = _fwtk_start(argv, SMAP, True,
                                       b"421 4.3.0 Service temporarily unavailable (configuration error)\r\n")
    if args.daemon:
        from . import serve
        name = invoked_name(sys.argv[0] if argv is None else argv[0], args.name)
        return serve.daemon_main(settings, prog, name, table_path(args.config), args)
    from . import inetd
    return inetd.main(settings, prog, args.debug, args.allow_root, args.smtps)


def smapd_main(argv=None) -> int:
    prog, args, settings = _fwtk_start(argv, SMAPD, False)
    name = invoked_name(sys.argv[0] if argv is None else argv[0], args.name)
    from . import smapd_daemon
    return smapd_daemon.main(settings, prog, name, table_path(args.config), args.debug, args.allow_root,
                             args.pidfile, args.foreground)


#: stunnel 3.x letters; a colon marks a letter that takes an argument.
STUNNEL_OPTS = "d:r:p:v:A:a:s:g:N:P:fD:o:t:C:hV"

SSLGW_USAGE = """\
usage: ssl-gw [-h] [-V] [--config table] [--allow-root] [-p pemfile] [-v level] [-A certfile] [-a directory]
              [-s user] [-g group] [-t timeout] [-N service] [-f] [-P pidfile]
              [-D level] [-o file] [-C cipherlist] [-d [host:]port] -r [host:]port
"""


def sslgw_main(argv=None) -> int:
    argv = sys.argv if argv is None else argv
    prog = os.path.basename(argv[0]) or SSLGW
    try:
        opts, rest = getopt.getopt(argv[1:], STUNNEL_OPTS, ["config=", "allow-root"])
        bad = None
    except getopt.GetoptError as e:
        opts, rest, bad = [], [], str(e)
    daemon_mode = any(letter == "-d" for letter, _ in opts)
    inetd = not daemon_mode and silence_inetd_output(prog)

    def report(message: str, usage: bool = True) -> int:
        # stunnel prints its usage and exits 1; under inetd only the log can tell.
        if inetd:
            from . import log
            log.setup(prog).error("bad arguments %s: %s", " ".join(argv[1:]), message)
        else:
            print(f"{prog}: {message}", file=sys.stderr)
            if usage:
                print(SSLGW_USAGE, end="", file=sys.stderr)
        return EXIT_RUNTIME

    if bad:
        return report(bad)
    o = dict(opts)
    if "-h" in o:
        print(SSLGW_USAGE, end="")
        return 0
    if "-V" in o:
        print(f"{prog} (smapd suite) {__version__}")
        return 0
    if rest:
        return report(f"unexpected argument {rest[0]!r}")
    if "-r" not in o:
        return report("the -r option must be used")
    if "-D" in o and o["-D"] not in [str(i) for i in range(8)]:
        return report(f"-D {o['-D']}: the debug level is 0 to 7")
    from . import config, sslgw
    from .netperm import ConfigError, Table
    service = o.get("-N") or sslgw.service_name(o["-r"])
    names = tuple(dict.fromkeys((prog, SSLGW, service)))
    path = table_path(o.get("--config"))
    try:
        loaded = config.load_or_die(Table.read(path), SSLGW, names)
        errors = sslgw.apply_options(loaded.settings, o)
        if errors:
            raise ConfigError(errors)
    except ConfigError as e:
        for d in e.diagnostics:
            report(str(d), usage=False)
        # A bad letter is stunnel's usage error (1); a table error is ours (2).
        return EXIT_RUNTIME if all(d.file == "command line" for d in e.diagnostics) else EXIT_CONFIG
    allow_root = "--allow-root" in o
    if daemon_mode:
        return sslgw.daemon_main(loaded.settings, prog, names, path, o, service, allow_root)
    return sslgw.inetd_main(loaded.settings, prog, service, o, allow_root)


def _run(main):
    def wrapper():
        try:
            sys.exit(main())
        except KeyboardInterrupt:
            sys.exit(130)
    return wrapper


smap = _run(smap_main)
smapd = _run(smapd_main)
sslgw = _run(sslgw_main)
