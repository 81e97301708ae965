"""ssl-gw's command line: stunnel 3.x's letters; inetd mode unless -d.

What it does: parses the letters (stunnel's usage and exit 1 on a bad
one), reads the table under the program's name, `ssl-gw` and the TCP
wrappers service name (without a table of its own, the default table may
be missing: stunnel 3 needed none, and the letters are then all), applies
the letters over the table, and relays one connection in inetd mode or
runs the master with -d (gateway.py), or on the listening sockets that
inetd (`wait`) or systemd (`Accept=no`) handed over, with or without -d
(prefork/activation.py).

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
STUNNEL_OPTS = "d:r:l:cn:p:v:A:a:s:g:N:P:fD:o:t:C:hV"

SSLGW_USAGE = """\
usage: ssl-gw [-h] [-V] [--config table] [--allow-root] [-c] [-p pemfile] [-v level] [-A certfile] [-a directory]
              [-s user] [-g group] [-t timeout] [-N service] [-n smtp|pop3|nntp] [-f] [-P pidfile|dir/|none]
              [-D [facility.]level] [-o file] [-C cipherlist] [-d [host:]port]
              -r [host:]port | -l program [-- args]
"""
#: stunnel 3's -n protocols: STARTTLS (or STLS) before the handshake.
NEGOTIATE = ("smtp", "pop3", "nntp")


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
    if rest and "-l" not in o:
        return report(f"unexpected argument {rest[0]!r}")
    if ("-r" in o) == ("-l" in o):
        return report("give -r [host:]port, or -l program" if "-r" not in o else "-r and -l: give one of them")
    if "-c" in o and "-l" in o:
        return report("-c and -l: a client connects to -r")
    if "-n" in o and o["-n"] not in NEGOTIATE:
        return report(f"-n {o['-n']}: the protocols are {', '.join(NEGOTIATE)}")
    if "-n" in o and "-c" not in o:
        return report(f"-n {o['-n']}: ssl-gw negotiates TLS as the client (-c)")
    from smapd.sslgw import gateway
    from smapd.table.netperm import ConfigError
    try:
        gateway.debug_level(o.get("-D", "5"))
    except ValueError as e:
        return report(f"-D {o['-D']}: {e}")
    # -l's argv: the program, then what follows it (after --), else its name.
    role = gateway.Role(client="-c" in o, negotiate=o.get("-n"),
                        program=(o["-l"], *(rest or [os.path.basename(o["-l"])])) if "-l" in o else ())
    service = o.get("-N") or (os.path.basename(o["-l"]) if "-l" in o else gateway.service_name(o["-r"]))
    names = tuple(dict.fromkeys((prog, SSLGW, service)))
    path = table_path(o.get("--config"))
    # stunnel 3 read no file: without --config or NETPERM_TABLE, a missing
    # default table means the defaults (and the letters).
    optional = not o.get("--config") and not os.environ.get("NETPERM_TABLE")
    try:
        settings = gateway.load_settings(path, names, o, optional)
    except ConfigError as e:
        for d in e.diagnostics:
            report(str(d), usage=False)
        # A bad letter is stunnel's usage error (1); a table error is ours (2).
        return EXIT_RUNTIME if all(d.file == "command line" for d in e.diagnostics) else EXIT_CONFIG
    allow_root = "--allow-root" in o
    svc = gateway.SslGwService(prog, names, path, o, service, role, optional)
    from smapd.prefork.activation import handed_listeners
    handed = handed_listeners()
    if daemon_mode or handed:
        return gateway.daemon_main(svc, settings, allow_root, handed)
    return gateway.inetd_main(svc, settings, allow_root)


run = run(main)
