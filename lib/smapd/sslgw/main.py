"""ssl-gw's command line: stunnel 3.x's letters; inetd mode unless -d.

What it does: parses the letters (stunnel's usage and exit 1 on a bad
one), reads the table under the program's name, `ssl-gw` and the TCP
wrappers service name, applies the letters over the table, and relays one
connection in inetd mode or runs the master with -d (gateway.py).

What it trusts: argv and the environment.

What it must never do: touch a socket before the configuration has been
read without error.
"""

from __future__ import annotations

import getopt
import os
import sys

from smapd import __version__
from smapd.exits import EXIT_CONFIG, EXIT_RUNTIME, run
from smapd.prefork.standalone import silence_inetd_output
from smapd.table.keywords import SSLGW
from smapd.table.programs import table_path


#: stunnel 3.x letters; a colon marks a letter that takes an argument.
STUNNEL_OPTS = "d:r:p:v:A:a:s:g:N:P:fD:o:t:C:hV"

SSLGW_USAGE = """\
usage: ssl-gw [-h] [-V] [--config table] [--allow-root] [-p pemfile] [-v level] [-A certfile] [-a directory]
              [-s user] [-g group] [-t timeout] [-N service] [-f] [-P pidfile]
              [-D level] [-o file] [-C cipherlist] [-d [host:]port] -r [host:]port
"""


def main(argv=None) -> int:
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
            from smapd import log
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
    from smapd.sslgw import gateway
    from smapd.table.netperm import ConfigError
    service = o.get("-N") or gateway.service_name(o["-r"])
    names = tuple(dict.fromkeys((prog, SSLGW, service)))
    path = table_path(o.get("--config"))
    try:
        settings = gateway.load_settings(path, names, o)
    except ConfigError as e:
        for d in e.diagnostics:
            report(str(d), usage=False)
        # A bad letter is stunnel's usage error (1); a table error is ours (2).
        return EXIT_RUNTIME if all(d.file == "command line" for d in e.diagnostics) else EXIT_CONFIG
    allow_root = "--allow-root" in o
    if daemon_mode:
        return gateway.daemon_main(settings, prog, names, path, o, service, allow_root)
    return gateway.inetd_main(settings, prog, names, path, o, service, allow_root)


run = run(main)
