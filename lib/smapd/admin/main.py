"""smapctl: the operator's tool.

What it does: `smapctl check` validates the netperm-table for every
program of the suite and the files and accounts it names (see check.py);
`smapctl queue`, `requeue` and `flush` administer smapd's spool
(queue.py); `smapctl maildrop` is the demo's local delivery agent
(maildrop.py).
`smapctl stats` prints the scoreboard of a running master and smapd's status
(stats.py).
`smapctl mkcert` makes a key and its certificate in one PEM file, as
stunnel's `make stunnel.pem` did, and `smapctl certinfo` describes the
certificates of PEM files (certs.py).
`smapctl passwd` sets or deletes a user's password in smap's SMTP AUTH
password file, the table's `md5file` (password_file.py).

What it trusts: the operator who runs it.

What it must never do: change the table, the spool or any file when
asked only to look; echo, print or log a password.
"""

from __future__ import annotations

import argparse
import sys

from smapd import __version__
from smapd.smap import password_file
from smapd.admin import check
from smapd.exits import EXIT_CONFIG, EXIT_OK, EXIT_RUNTIME
from smapd.table.programs import table_path


def cmd_check(args) -> int:
    path = table_path(args.config)
    report = check.check_table(path, args.names, files=not args.syntax_only)
    errors, warnings = report.count("error"), report.count("warning")
    if args.json:
        import json
        json.dump({"table": path, "errors": errors, "warnings": warnings,
                   "diagnostics": [d.as_json() for d in report.unique()]}, sys.stdout, indent=1)
        print()
        return EXIT_RUNTIME if errors else EXIT_OK
    for line in report.lines():
        print(line)
    plural = lambda n, w: f"{n} {w}" + ("" if n == 1 else "s")
    print(f"{path}: {plural(errors, 'error')}, {plural(warnings, 'warning')}")
    return EXIT_RUNTIME if errors else EXIT_OK


def cmd_queue(args) -> int:
    """queue, show and the commands that change the queue (surgery.py)."""
    from smapd.admin import queue, surgery
    from smapd.table.netperm import ConfigError
    try:
        s = queue.settings(table_path(args.config), args.name)
    except ConfigError as e:
        for d in e.diagnostics:
            print(f"smapctl: {d}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "queue":
        if args.shape:
            return queue.shape(s, sys.stdout, args.json, args.shape)
        return queue.list_queue(s, sys.stdout, args.json)
    ids = surgery.expand_ids(getattr(args, "ids", []))
    if args.command == "show":
        return queue.show(s, ids, sys.stdout, sys.stderr, args.message_only, args.json)
    if args.command == "flush" and not ids:
        return surgery.flush_all(s, sys.stdout, sys.stderr)
    if not ids:
        print(f"smapctl {args.command}: no queue id given", file=sys.stderr)
        return EXIT_RUNTIME
    from smapd import log
    logger = log.setup("smapctl", s["log-facility"], False, s["log-socket"])
    return surgery.run(args.command, s, ids, sys.stdout, sys.stderr, args.wait, args.reason, logger)


def cmd_show_config(args) -> int:
    from smapd.admin import check, effective
    from smapd.table.keywords import PROGRAMS
    from smapd.table.netperm import ConfigError
    program = args.program
    if program and program not in PROGRAMS:
        role = check.role_of(program)
        if role is None:
            print(f"smapctl: cannot tell which program {program!r} is: name smap, smapd or ssl-gw, or a name "
                  "they are installed under (smmap, smapd-in...)", file=sys.stderr)
            return EXIT_CONFIG
        args.name, program = args.name or program, role
    try:
        return effective.show_config(table_path(args.config), program, args.name, args.service, args.n, args.json,
                                     sys.stdout, sys.stderr)
    except ConfigError as e:
        for d in e.diagnostics:
            print(f"smapctl: {d}", file=sys.stderr)
        return EXIT_CONFIG


def cmd_maildrop(args) -> int:
    from smapd.admin import maildrop
    return maildrop.main(args.directory, args.sendmail_args)


def cmd_mkcert(args) -> int:
    from smapd.admin import certs
    return certs.mkcert(args.output, cn=args.cn, subject=args.subject,
                        sans=[name for names in args.san for name in names], days=args.days, key_spec=args.key,
                        ca_path=args.ca, make_ca=args.make_ca, client=args.client, force=args.force,
                        out=sys.stdout, err=sys.stderr)


def cmd_certinfo(args) -> int:
    from smapd.admin import certs
    return certs.certinfo(args.files, sys.stdout, sys.stderr)


def _password_file(args):
    """The file `passwd` edits: --file, else the table's md5file for
    --name.  (path, None) or (None, exit status) after saying why."""
    if args.file:
        return args.file, None
    from smapd.table import keywords
    from smapd.table.netperm import ConfigError, Table
    path = table_path(args.config)
    try:
        # Only md5file is wanted: the rules between keywords are for smap's
        # start (auth without md5file is what passwd may be here to mend).
        settings = keywords.load_or_die(Table.read(path), keywords.SMAP, (args.name,), rules=False).settings
    except ConfigError as e:
        for d in e.diagnostics:
            print(f"smapctl: {d}", file=sys.stderr)
        return None, EXIT_CONFIG
    if settings["md5file"] is None:
        print(f"smapctl: {path}: no '{args.name}: md5file PATH' line: the table names no password file "
              f"for {args.name} (add the line, or give --file)", file=sys.stderr)
        return None, EXIT_RUNTIME
    return settings["md5file"], None


def _read_password(user: str, from_stdin: bool) -> bytes:
    """The new password: asked twice, unechoed, on a terminal; else one
    line of standard input without its newline (nothing after it is
    read).  ValueError when the two differ or none is given."""
    if not from_stdin and sys.stdin.isatty():
        import getpass
        try:
            first = getpass.getpass(f"New password for {user}: ")
            second = getpass.getpass(f"Retype the password for {user}: ")
        except EOFError:
            raise ValueError("no password given") from None
        if first != second:
            raise ValueError("the two passwords differ")
        # surrogateescape: bytes the terminal's encoding could not decode
        # come back as they were typed, for check_password to refuse.
        return first.encode("utf-8", "surrogateescape")
    line = sys.stdin.buffer.readline()
    return line[:-1] if line.endswith(b"\n") else line


def cmd_passwd(args) -> int:
    def fail(message, status):
        print(f"smapctl: {message}", file=sys.stderr)
        return status

    if args.delete and (args.stdin or args.iterations is not None):
        return fail("passwd: --delete takes no password (no --stdin, no --iterations)", EXIT_CONFIG)
    try:
        password_file.check_user(args.user)
    except ValueError as e:
        return fail(f"passwd: {e}", EXIT_CONFIG)
    path, status = _password_file(args)
    if path is None:
        return status
    try:
        if args.delete:
            if not password_file.delete_user(path, args.user):
                return fail(f"{path}: no user {args.user}: nothing deleted", EXIT_RUNTIME)
            print(f"smapctl: {path}: deleted {args.user}")
            return EXIT_OK
        password_file.check_path(path)     # before asking for a password that could not be written
        try:
            password = password_file.check_password(_read_password(args.user, args.stdin))
        except ValueError as e:
            return fail(f"passwd: {e}: {path} not changed", EXIT_CONFIG)
        password_file.set_password(path, args.user, password,
                          password_file.DEFAULT_ITERATIONS if args.iterations is None else args.iterations)
    except password_file.AuthFileError as e:
        for problem in e.problems:
            print(f"smapctl: {problem}", file=sys.stderr)
        return EXIT_RUNTIME
    print(f"smapctl: {path}: set the password of {args.user}")
    # The other lines were kept as they were: say so if smap will refuse
    # the file for one of them.
    try:
        password_file.PasswordFile.load(path)
    except password_file.AuthFileError as e:
        for problem in e.problems:
            print(f"smapctl: warning: {problem} (smap refuses the file until it is mended)", file=sys.stderr)
    return EXIT_OK


def _iterations(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not password_file.MIN_ITERATIONS <= n <= password_file.MAX_ITERATIONS:
        raise argparse.ArgumentTypeError(f"{n} is out of range ({password_file.MIN_ITERATIONS} to {password_file.MAX_ITERATIONS})")
    return n


def _cert_argument(parse: str):
    """An argparse type made of a parser in certs.py, imported only when
    an argument needs it (cryptography is slow to load, and `check` and
    `queue` have no use for it); its ValueError becomes a usage error."""
    def convert(text):
        from smapd.admin import certs
        try:
            return getattr(certs, parse)(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e))
    return convert


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smapctl", description="administer the smapd suite")
    p.add_argument("-V", "--version", action="version", version=f"smapctl (smapd suite) {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    c = sub.add_parser("check", help="validate the netperm-table and what it names",
                       description="Validate the netperm-table for smap, smapd and ssl-gw, "
                                   "and the accounts, directories and files it names.")
    c.add_argument("--config", "-c", metavar="FILE",
                   help="the table (default: $NETPERM_TABLE, else /usr/local/etc/netperm-table)")
    c.add_argument("--syntax-only", "-n", action="store_true",
                   help="check the table only, not the accounts and files it names")
    c.add_argument("--json", action="store_true", help="the diagnostics as one JSON document (file, line, "
                                                       "severity, program, keyword, text)")
    c.add_argument("names", nargs="*", metavar="NAME[=PROGRAM]",
                   help="the names the programs run under (default: every name of the table a program reads)")
    c.set_defaults(func=cmd_check)
    queue_commands = (
        ("queue", "list the spool, hold/ and bad/: id, age, size, sender, recipients, next attempt, last error",
         None),
        ("show", "print messages' envelopes and the messages as queued (as postcat -q)", "ID"),
        ("hold", "keep messages of the spool from being handed off, in hold/ (as postsuper -h)", "ID|all"),
        ("release", "put held messages back into the spool, due now (as postsuper -H)", "ID|all"),
        ("requeue", "put messages of bad/ or hold/ back into the spool, or make spooled ones due now with their "
                    "last error forgotten (as postsuper -r); all: every message of bad/", "ID|all"),
        ("flush", "make deferred messages due now (all of them without ID) and wake smapd", "ID"),
        ("delete", "delete messages, wherever they are (as postsuper -d); logged with who and why", "ID"))
    for cmd, helptext, metavar in queue_commands:
        q = sub.add_parser(cmd, help=helptext, description=helptext[0].upper() + helptext[1:] + ".")
        q.add_argument("--config", "-c", metavar="FILE", help="the table (default: $NETPERM_TABLE, else "
                                                                 "/usr/local/etc/netperm-table)")
        q.add_argument("--name", default="smapd", help="the name smapd reads the table under (default: smapd)")
        if cmd in ("queue", "show"):
            q.add_argument("--json", action="store_true", help="one JSON document on stdout")
        if cmd == "queue":
            q.add_argument("--shape", nargs="?", const="spool", choices=("spool", "hold", "bad"),
                           help="messages by recipient domain and age in minutes, as qshape (default: the spool)")
        elif cmd == "show":
            q.add_argument("--message-only", "-m", action="store_true",
                           help="the message alone, byte for byte as queued")
        else:
            q.add_argument("--wait", type=float, metavar="SECONDS",
                           help="how long to wait for a hand-off that holds a message's lock (default: the "
                                "table's sendmail-timeout)")
            q.add_argument("--reason", metavar="TEXT", help="why, for the log line")
        if metavar:
            q.add_argument("ids", nargs="*" if cmd == "flush" else "+", metavar=metavar,
                           help="queue ids; - reads more from standard input")
        q.set_defaults(func=cmd_queue, command=cmd)
    sc = sub.add_parser("show-config", help="the settings in force and the line each comes from (as postconf)",
                        description="Print every keyword of a program with the value in force and where it comes "
                                    "from: the table's file:line that wins, or default; lines that lose to it are "
                                    "named. As postconf (and, with -n, postconf -n).")
    sc.add_argument("program", nargs="?", metavar="PROGRAM",
                    help="smap, smapd, ssl-gw, or a name one of them runs as (default: all three)")
    sc.add_argument("--config", "-c", metavar="FILE", help="the table (default: $NETPERM_TABLE, else "
                                                              "/usr/local/etc/netperm-table)")
    sc.add_argument("--name", help="the name the program reads the table under (default: PROGRAM)")
    sc.add_argument("--service", "-N", help="ssl-gw's service name (-N), whose lines it reads too")
    sc.add_argument("-n", action="store_true", help="only the keywords the table sets")
    sc.add_argument("--json", action="store_true", help="one JSON document on stdout")
    sc.set_defaults(func=cmd_show_config)
    m = sub.add_parser("maildrop", help="sendmail-compatible delivery into Maildirs (the demo's MTA)",
                       description="Read a message on stdin and write one Maildir message per recipient "
                                   "under DIR/RECIPIENT/. Takes sendmail's -oi -f SENDER -- RCPT… arguments.")
    m.add_argument("directory", metavar="DIR")
    m.add_argument("sendmail_args", nargs=argparse.REMAINDER, metavar="-oi -f SENDER -- RCPT…")
    m.set_defaults(func=cmd_maildrop)
    mk = sub.add_parser("mkcert", help="make a private key and its certificate in one PEM file",
                        description="Make a private key and a certificate for it, self-signed or signed by "
                                    "--ca, and write both, the key first, into a new file of mode 0600 "
                                    "(stunnel's stunnel.pem).")
    mk.add_argument("--cn", metavar="NAME", type=_cert_argument("parse_cn"),
                    help="the subject's common name (default: this host's FQDN; with --make-ca, 'FQDN CA')")
    mk.add_argument("--subject", metavar="/TYPE=VALUE/…", type=_cert_argument("parse_subject"),
                    help="the whole subject in OpenSSL's one-line form, e.g. /C=DE/O=Example/CN=mail.example.org "
                         "(overrides --cn)")
    mk.add_argument("--san", metavar="TYPE:NAME[,…]", type=_cert_argument("parse_san"), action="append",
                    default=[], help="subject alternative names: DNS:name, IP:address, email:address, URI:uri "
                                     "(repeatable; default for a server certificate: its CN when it is a host "
                                     "name or an address)")
    mk.add_argument("--days", metavar="N", type=_cert_argument("parse_days"), default=365,
                    help="how long the certificate is valid (default: 365)")
    mk.add_argument("--key", metavar="TYPE", type=_cert_argument("parse_key_spec"), default="rsa:2048",
                    help="rsa:2048, rsa:3072, rsa:4096, ec:p256 or ec:p384 (default: rsa:2048)")
    mk.add_argument("--ca", metavar="CA.pem", help="sign with the CA key and certificate of this file "
                                                   "instead of self-signing")
    kind = mk.add_mutually_exclusive_group()
    kind.add_argument("--make-ca", action="store_true", help="make a CA certificate (keyCertSign, cRLSign)")
    kind.add_argument("--client", action="store_true", help="make a client certificate (clientAuth "
                                                            "instead of serverAuth)")
    mk.add_argument("--force", action="store_true", help="replace an existing file (never a symbolic link)")
    mk.add_argument("output", metavar="OUT.pem")
    mk.set_defaults(func=cmd_mkcert)
    ci = sub.add_parser("certinfo", help="describe the certificates and keys of PEM files",
                        description="Describe every certificate of each file (names, validity, key, usage, "
                                    "SHA-256 fingerprint), and say whether the file's private key is the "
                                    "certificate's. Keys are never printed.")
    ci.add_argument("files", nargs="+", metavar="PEM")
    ci.set_defaults(func=cmd_certinfo)
    pw = sub.add_parser("passwd", help="set or delete a user's password for smap's SMTP AUTH",
                        description="Set USER's password in smap's SMTP AUTH password file (the table's md5file), "
                                    "salted PBKDF2-HMAC-SHA256, or delete USER. The password is asked twice on a "
                                    "terminal, else read as one line of standard input; it is never echoed. "
                                    "Every other line of the file is kept as it is; the file is written anew, "
                                    "mode 0600, never through a symbolic link.")
    pw.add_argument("user", metavar="USER")
    pw.add_argument("--file", "-f", metavar="FILE", help="the password file (default: the table's md5file for NAME)")
    pw.add_argument("--config", "-c", metavar="TABLE", help="the table (default: $NETPERM_TABLE, else "
                                                               "/usr/local/etc/netperm-table)")
    pw.add_argument("--name", default="smap", help="the name smap reads the table under (default: smap)")
    pw.add_argument("--delete", action="store_true", help="delete USER instead")
    pw.add_argument("--stdin", action="store_true", help="read the password as one line of standard input, "
                                                         "even from a terminal")
    pw.add_argument("--iterations", metavar="N", type=_iterations,
                    help=f"PBKDF2 iterations (default: {password_file.DEFAULT_ITERATIONS}, about 50 ms a verification; "
                         f"{password_file.MIN_ITERATIONS} to {password_file.MAX_ITERATIONS})")
    pw.set_defaults(func=cmd_passwd)
    # Subcommands defined in modules of their own, each adding its parsers
    # with add_parsers(sub) (one line per module, below).
    from smapd.admin import logs
    logs.add_parsers(sub)
    from smapd.admin import stats
    stats.add_parsers(sub)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
