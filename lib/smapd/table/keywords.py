"""Every keyword of every program, declared once, and the typed settings.

What it does: `KEYWORDS` declares, for each program of the suite (smap,
smapd, ssl-gw), each keyword it reads: its argument type, default and a
one-line doc.  `load()` turns the rules of a `netperm.Table` that apply to
a program's names into `Settings` (typed values, each with the file:line
it came from) and diagnostics.  The programs, `smapctl check` and the man
pages (`manpage.py`) all take their knowledge from here; nothing else
keeps a list of keywords.

What it trusts: the Table's rules are syntactically whole; their values
are checked here.  It never touches the file system or the account
database: that is `check.py` (for the operator) and the programs' own
start-up.

What it must never do: let a bad value through as a default (a wrong
argument is an error with file:line, never silently ignored), or act on a
line written for another program.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass, field
from typing import Any, Optional

from smapd.table import netperm
from smapd.table.netperm import Diagnostic, Rule

SMAP, SMAPD, SSLGW = "smap", "smapd", "ssl-gw"
PROGRAMS = (SMAP, SMAPD, SSLGW)

SYSLOG_FACILITIES = (
    "auth", "authpriv", "cron", "daemon", "ftp", "kern", "lpr", "mail", "news",
    "syslog", "user", "uucp", "local0", "local1", "local2", "local3", "local4",
    "local5", "local6", "local7",
)


# --------------------------------------------------------------------------
# Argument types.  parse() gets the argument tuple of one line and returns
# the value or raises ValueError with a sentence for the operator.

class Type:
    metavar = "VALUE"
    nargs = (1, 1)  # (min, max); max None = unbounded
    #: What check.py verifies on the machine: None, "user", "group",
    #: "dir", "file", "pem", "secret", "exec", "pidfile".
    check = None
    #: A repeatable keyword whose lines each give several items (patterns)
    #: collects the items, not the lines.
    flatten = False

    def parse(self, args: tuple) -> Any:
        return self.parse_one(args[0])

    def parse_one(self, arg: str) -> Any:
        return arg

    def count_ok(self, n: int) -> bool:
        lo, hi = self.nargs
        return n >= lo and (hi is None or n <= hi)

    def count_text(self) -> str:
        lo, hi = self.nargs
        if hi == lo:
            return "one argument" if lo == 1 else f"{lo} arguments"
        if hi is None:
            return f"at least {lo} argument" + ("s" if lo > 1 else "")
        return f"{lo} to {hi} arguments"


class Int(Type):
    def __init__(self, lo: int = 0, hi: Optional[int] = None, metavar: str = "N"):
        self.lo, self.hi, self.metavar = lo, hi, metavar

    def parse_one(self, arg):
        if not re.fullmatch(r"[0-9]+", arg):
            raise ValueError(f"{arg!r} is not a whole number")
        v = int(arg)
        if v < self.lo or (self.hi is not None and v > self.hi):
            top = f"..{self.hi}" if self.hi is not None else " or more"
            raise ValueError(f"{v} is out of range ({self.lo}{top})")
        return v


class Word(Type):
    def __init__(self, metavar="WORD", pattern=None, what=None):
        self.metavar, self.pattern, self.what = metavar, pattern, what

    def parse_one(self, arg):
        if not arg or (self.pattern and not re.fullmatch(self.pattern, arg)):
            raise ValueError(f"{arg!r} is not {self.what or 'a valid ' + self.metavar.lower()}")
        return arg


class Text(Type):
    """The rest of the line, arguments joined by one blank."""
    metavar = "TEXT"
    nargs = (1, None)

    def parse(self, args):
        text = " ".join(args)
        if any(ord(c) < 32 or ord(c) == 127 for c in text):
            raise ValueError("control characters are not allowed here")
        return text


class Choice(Type):
    def __init__(self, *values, metavar=None):
        self.values = values
        self.metavar = metavar or "|".join(values)

    def parse_one(self, arg):
        for v in self.values:
            if arg.lower() == v.lower():
                return v
        raise ValueError(f"{arg!r} is not one of: {', '.join(self.values)}")


class ChoiceList(Choice):
    """One or more words, each from a fixed set (e.g. `auth login plain`)."""
    nargs = (1, None)

    def __init__(self, *values):
        super().__init__(*values)
        self.metavar = "|".join(values) + "…"

    def parse(self, args):
        return tuple(dict.fromkeys(Choice.parse_one(self, a) for a in args))


class Bool(Type):
    metavar = "yes|no"

    def parse_one(self, arg):
        a = arg.lower()
        if a in ("yes", "on", "true", "1"):
            return True
        if a in ("no", "off", "false", "0"):
            return False
        raise ValueError(f"{arg!r} is not yes or no")


class Account(Type):
    """A user or group: a name, or a number (FWTK allows both)."""

    def __init__(self, check):
        self.check = check
        self.metavar = "USER" if check == "user" else "GROUP"

    def parse_one(self, arg):
        if re.fullmatch(r"[0-9]+", arg):
            v = int(arg)
            if v > 2**32 - 2:
                raise ValueError(f"{arg} is out of range for an id")
            return v
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*\$?", arg):
            raise ValueError(f"{arg!r} is not a valid {self.metavar.lower()} name or number")
        return arg


class Path(Type):
    def __init__(self, check="file", metavar="PATH"):
        self.check, self.metavar = check, metavar

    def parse_one(self, arg):
        if not arg.startswith("/"):
            raise ValueError(f"{arg!r} is not an absolute path")
        if "\0" in arg or "\n" in arg:
            raise ValueError("a path may not contain NUL or newline")
        return arg


class Command(Type):
    """A program and fixed arguments; the program runs with no shell."""
    metavar = "PATH [ARG…]"
    nargs = (1, None)
    check = "exec"

    def parse(self, args):
        Path().parse_one(args[0])
        if any("\0" in a or "\n" in a for a in args):
            raise ValueError("an argument may not contain NUL or newline")
        return tuple(args)


class Globs(Type):
    """One or more shell-style patterns (domains, addresses)."""
    metavar = "PATTERN…"
    nargs = (1, None)
    flatten = True

    def parse(self, args):
        out = []
        for a in args:
            if any(ord(c) < 33 or ord(c) == 127 for c in a):
                raise ValueError(f"{a!r} contains blanks or control characters")
            out.append(a.lower())
        return tuple(out)


class HostPatterns(Type):
    """One or more netperm host patterns (see netperm-table(5))."""
    metavar = "PATTERN…"
    nargs = (1, None)
    flatten = True

    def parse(self, args):
        return tuple(netperm.compile_host_pattern(a) for a in args)


class HostRules(Type):
    """`permit-hosts`/`deny-hosts PATTERN… [-option…]`: parsed whole-rule
    by `load()`, which has the flag."""
    metavar = "PATTERN… [-option…]"
    nargs = (1, None)


@dataclass(frozen=True)
class Listen:
    addr: Optional[str]  # None: every address (IPv4 and IPv6)
    port: int
    tls: bool = False

    def __str__(self):
        host = "*" if self.addr is None else (f"[{self.addr}]" if ":" in self.addr else self.addr)
        return f"{host}:{self.port}" + (" smtps" if self.tls else "")


def parse_port(text: str, proto: str = "tcp") -> int:
    """A port number or a service name from /etc/services."""
    if re.fullmatch(r"[0-9]+", text):
        port = int(text)
        if not 0 < port < 65536:
            raise ValueError(f"port {port} out of range (1..65535)")
        return port
    try:
        return socket.getservbyname(text, proto)
    except OSError:
        raise ValueError(f"{text!r} is neither a port number nor a service in /etc/services") from None


def split_host_port(spec: str):
    """`port`, `host:port`, `[v6]:port` or `*:port` -> (host or None, port text)."""
    if spec.startswith("["):
        close = spec.find("]")
        if close < 0 or spec[close + 1:close + 2] != ":":
            raise ValueError(f"expected [ADDRESS]:PORT, got {spec!r}")
        return spec[1:close], spec[close + 2:]
    if spec.count(":") == 1:
        host, port = spec.split(":")
        return (None if host in ("", "*") else host), port
    if ":" in spec:
        raise ValueError(f"write an IPv6 address in brackets: [ADDRESS]:PORT, not {spec!r}")
    return None, spec


class ListenType(Type):
    metavar = "[ADDRESS:]PORT [smtps]"
    nargs = (1, 2)

    def parse(self, args):
        host, port = split_host_port(args[0])
        if host is not None:
            try:
                host = str(ipaddress.ip_address(host))
            except ValueError:
                raise ValueError(f"{host!r} is not an IP address (listen on addresses, not names)") from None
        tls = port.lower() == "smtps"  # `listen smtps` is port 465 with TLS
        if len(args) == 2:
            if args[1].lower() != "smtps":
                raise ValueError(f"{args[1]!r}: the only listener option is 'smtps'")
            tls = True
        return Listen(host, parse_port(port), tls)


class HostPort(Type):
    """`[host:]port` as stunnel writes it; host defaults to `default_host`."""

    def __init__(self, default_host=None):
        self.default_host = default_host
        self.metavar = "[HOST:]PORT"

    def parse_one(self, arg):
        host, port = split_host_port(arg)
        return (host or self.default_host, parse_port(port))


_RBL_RE = re.compile(
    r"^(?P<zone>[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?)"
    r"(?:=(?P<filter>(?:\d{1,3}|\[[0-9.;]+\])(?:\.(?:\d{1,3}|\[[0-9.;]+\])){3}))?"
    r"(?:\*(?P<weight>-?\d+))?$")


@dataclass(frozen=True)
class Rbl:
    zone: str
    filter: Optional[str]
    weight: int


# One octet of a postscreen filter: a number, or [items] where an item is
# N or N..M and items are separated by ';'.
_OCTET = r"(?:\d{1,3}|\[[0-9.;]*\])"
_FILTER_RE = re.compile(rf"^({_OCTET})\.({_OCTET})\.({_OCTET})\.({_OCTET})$")
_ITEM_RE = re.compile(r"^(\d{1,3})(?:\.\.(\d{1,3}))?$")

def parse_filter(text: str) -> tuple:
    """A postscreen reply filter (`127.0.0.2`, `127.0.0.[2..11]`,
    `127.0.[0;1].[2;4;8..9]`) -> four frozensets of octet values.
    ValueError with a sentence for a malformed one."""
    m = _FILTER_RE.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a reply filter like 127.0.0.[2..11] or 127.0.0.[2;4]")
    octets = []
    for part in m.groups():
        values = set()
        items = part[1:-1].split(";") if part.startswith("[") else [part]
        for item in items:
            im = _ITEM_RE.match(item)
            if not im:
                raise ValueError(f"{item!r} in reply filter {text!r} is not N or N..M")
            lo = int(im.group(1))
            hi = int(im.group(2)) if im.group(2) is not None else lo
            if hi > 255 or lo > hi:
                raise ValueError(f"{item!r} in reply filter {text!r} is not a range within 0..255")
            values.update(range(lo, hi + 1))
        octets.append(frozenset(values))
    return tuple(octets)



class RblType(Type):
    metavar = "ZONE[=FILTER][*WEIGHT]"

    def parse_one(self, arg):
        m = _RBL_RE.match(arg)
        if not m or "." not in m.group("zone"):
            raise ValueError(f"{arg!r} is not ZONE[=FILTER][*WEIGHT] (e.g. zen.example.org=127.0.0.[2..11]*2)")
        if m.group("filter"):
            parse_filter(m.group("filter"))  # ValueError with a sentence
        return Rbl(m.group("zone").lower(), m.group("filter"), int(m.group("weight") or 1))


class ResolverType(Type):
    metavar = "ADDRESS[:PORT]"

    def parse_one(self, arg):
        from smapd.addresses import parse_resolver_spec
        return parse_resolver_spec(arg)


@dataclass(frozen=True)
class Mta:
    """Where smapd hands off by SMTP or LMTP (`mta`)."""
    protocol: str            # "smtp" or "lmtp"
    host: Optional[str] = None
    port: int = 0
    path: Optional[str] = None   # lmtp:unix:PATH

    def __str__(self):
        if self.path:
            return f"{self.protocol}:unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.protocol}:{host}:{self.port}"


class MtaType(Type):
    """`smtp:HOST:PORT`, `lmtp:HOST:PORT` or `lmtp:unix:PATH` (an IPv6
    address in brackets)."""
    metavar = "smtp:HOST:PORT|lmtp:HOST:PORT|lmtp:unix:PATH"

    def parse_one(self, arg):
        protocol, _, rest = arg.partition(":")
        if protocol not in ("smtp", "lmtp"):
            raise ValueError(f"{arg!r}: write smtp:HOST:PORT, lmtp:HOST:PORT or lmtp:unix:PATH")
        if rest.startswith("unix:"):
            if protocol != "lmtp":
                raise ValueError(f"{arg!r}: a UNIX socket is for LMTP (lmtp:unix:PATH)")
            return Mta(protocol, path=Path().parse_one(rest[5:]))
        m = re.match(r"^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$", rest)
        if not m or not 0 < int(m.group(3)) < 65536:
            raise ValueError(f"{arg!r}: write {protocol}:HOST:PORT (a port from 1 to 65535)")
        return Mta(protocol, m.group(1) or m.group(2), int(m.group(3)))


# --------------------------------------------------------------------------
# The declarations.

@dataclass(frozen=True)
class Keyword:
    program: str
    name: str
    type: Type
    default: Any
    doc: str
    multi: bool = False        # repeatable; values used in file order
    flagged: bool = False      # takes permit-/deny- (and needs it)
    compat: str = ""           # accepted for compatibility only: why
    default_doc: str = ""      # the default as the man page shows it

    @property
    def usage(self) -> str:
        name = f"permit-{self.name}|deny-{self.name}" if self.flagged else self.name
        return f"{name} {self.type.metavar}"

    def default_text(self) -> str:
        if self.default_doc:
            return self.default_doc
        d = self.default
        if d is None or d == () or callable(d):
            return ""
        if isinstance(d, bool):
            return "yes" if d else "no"
        if isinstance(d, tuple):
            return " ".join(str(x) for x in d)
        return str(d)


def _default_group(settings):
    try:
        import grp
        grp.getgrnam("nogroup")
        return "nogroup"
    except (KeyError, ImportError):
        return "nobody"


def _fqdn(settings):
    return socket.getfqdn()


#: The defaults that ask the machine (Settings.resolve_system_defaults).
SYSTEM_DEFAULTS = (_default_group, _fqdn)


def _baddir(settings):
    return settings["directory"].rstrip("/") + "/bad"


def _holddir(settings):
    return settings["directory"].rstrip("/") + "/hold"


def _run_file(settings, suffix):
    """/var/run/NAME.suffix, NAME being the name the program reads the table
    under; for ssl-gw, ssl-gw.SERVICE.suffix (one daemon per service)."""
    if settings.program == SSLGW:
        return f"/var/run/ssl-gw.{settings.names[-1]}.{suffix}"
    return f"/var/run/{settings.names[0]}.{suffix}"


def _run_doc(program, suffix):
    return f"/var/run/ssl-gw.SERVICE.{suffix}" if program == SSLGW else f"/var/run/NAME.{suffix}"


def _pidfile(settings):
    return _run_file(settings, "pid")


def _scoreboard(settings):
    return _run_file(settings, "scoreboard")


def _pool(program, maxchildren, maxspare=20, maxperhost=10, maxpernet=30):
    """The prefork pool keywords shared by the two standalone masters."""
    return [
        Keyword(program, "maxchildren", Int(1, 10000), maxchildren,
                "most children at once; further connections wait in the listen backlog"),
        Keyword(program, "minspare", Int(0, 10000), 5, "idle children the master keeps ready at least"),
        Keyword(program, "maxspare", Int(1, 10000), maxspare, "idle children above this number are stopped"),
        Keyword(program, "maxperhost", Int(1, 10000), maxperhost,
                "connections one client address may hold at once (smap answers more with 421 4.7.0, "
                "ssl-gw closes them)"),
        Keyword(program, "maxpernet", Int(1, 10000), maxpernet,
                "connections one client network (an IPv4 /24, an IPv6 /64) may hold at once, beside maxperhost"),
        Keyword(program, "maxrequests", Int(1), 500, "connections a child serves before it exits"),
        Keyword(program, "shutdown-timeout", Int(0, metavar="SECONDS"), 60,
                "how long a graceful stop (TERM) lets sessions finish before they are ended"),
        Keyword(program, "idle-exit", Int(0, metavar="SECONDS"), 100,
                "with a listening socket from inetd (wait) or systemd (Accept=no): seconds without a connection "
                "after which the master exits, to be started again by the next one (0: never)"),
        Keyword(program, "scoreboard", Path("pidfile"), _scoreboard,
                "the master's shared-memory scoreboard file, which smapctl stats reads",
                default_doc=_run_doc(program, "scoreboard")),
    ]


def _common(program, directory_doc, directory_default):
    return [
        Keyword(program, "userid", Account("user"), "nobody", "the unprivileged user the program runs as"),
        Keyword(program, "groupid", Account("group"), _default_group,
                "the group the program runs as (its only group: supplementary groups are dropped)",
                default_doc="nogroup, or nobody where there is no nogroup"),
        Keyword(program, "directory", Path("dir", "DIRECTORY"), directory_default, directory_doc),
        Keyword(program, "pidfile", Path("pidfile"), _pidfile,
                "where the daemon writes its process id (in the foreground only when set here or by --pidfile)",
                default_doc=_run_doc(program, "pid")),
        Keyword(program, "log-facility", Choice(*SYSLOG_FACILITIES, metavar="FACILITY"), "mail",
                "the syslog facility of the log lines (mail, daemon, local0 to local7, ...)"),
        Keyword(program, "log-socket", Path("none", "PATH"), None,
                "the syslog socket, connected at start (before any chroot)",
                default_doc="the first of /dev/log, /var/run/log and /var/run/syslog that exists"),
    ]


_DECLARATIONS = [
    # ---------------------------------------------------------------- smap
    *_common(SMAP, "the chroot jail, which is also the spool", "/var/spool/smap"),
    Keyword(SMAP, "maxbytes", Int(1), 10240000, "largest message accepted, in octets (552 5.3.4 above it)"),
    Keyword(SMAP, "maxrecip", Int(1), 100, "most recipients of one message (452 4.5.3 above it)"),
    Keyword(SMAP, "timeout", Int(1, metavar="SECONDS"), 300,
            "idle time-out in seconds; the client gets 421 4.4.2 and is disconnected"),
    Keyword(SMAP, "stress-timeout", Int(1, metavar="SECONDS"), 10,
            "smap -daemon under stress (80 % of maxchildren busy): the timeout, and greet-delay is skipped"),
    Keyword(SMAP, "stress-session-timeout", Int(1, metavar="SECONDS"), 300,
            "smap -daemon under stress: the session-timeout"),
    Keyword(SMAP, "session-timeout", Int(1, metavar="SECONDS"), 7200,
            "the longest a whole session may last; then 421 4.4.2 and disconnect"),
    Keyword(SMAP, "min-data-rate", Int(0, metavar="OCTETS"), 64,
            "octets per second a client must keep up in DATA after its first 30 seconds (0: no minimum)"),
    Keyword(SMAP, "hostname", Word("NAME", r"[A-Za-z0-9_.-]+", "a host name"), _fqdn,
            "the name in the greeting and the Received header", default_doc="the host's fully qualified name"),
    Keyword(SMAP, "banner", Text(), None, "the text of the 220 greeting instead of '<hostname> SMTP/smap Ready.'"),
    Keyword(SMAP, "listen", ListenType(), (Listen(None, 25),),
            "a listener of smap -daemon: address (all when omitted) and port; 'smtps' for TLS on accept",
            multi=True, default_doc="25"),
    *_pool(SMAP, 100),
    Keyword(SMAP, "hosts", HostRules(), (), "which clients may connect; the first matching rule decides",
            multi=True, flagged=True),
    Keyword(SMAP, "relay-domain", Globs(), (),
            "recipient domains accepted from any client (globs); others only from internal or authenticated ones",
            multi=True),
    Keyword(SMAP, "relay-hosts", HostPatterns(), (),
            "internal clients: they may relay and skip the spam checks", multi=True),
    Keyword(SMAP, "auth", ChoiceList("login", "plain"), (), "SMTP AUTH mechanisms offered"),
    Keyword(SMAP, "md5file", Path("secret"), None, "the password file of SMTP AUTH (user:md5hex, or the salted form)"),
    Keyword(SMAP, "auth-requires-tls", Bool(), True, "offer and accept AUTH only inside TLS (538 5.7.11 otherwise)"),
    Keyword(SMAP, "auth-failures-max", Int(1, 100000), 20,
            "smap -daemon: AUTH failures one client address may have within auth-failures-window, over all its "
            "sessions; beyond, AUTH gets 454 4.7.0 until the window has passed since its last failure"),
    Keyword(SMAP, "auth-failures-window", Int(1, 86400, "SECONDS"), 600,
            "how long an AUTH failure counts for auth-failures-max"),
    Keyword(SMAP, "ssl", Path("pem", "PEM"), None, "PEM file with key and certificate: enables STARTTLS and smtps"),
    Keyword(SMAP, "ssl-auth", Choice("none", "optional", "required"), "none",
            "client certificates: not asked for, asked for, or required; a verified one may relay and skips the "
            "checks at MAIL, as an authenticated client does"),
    Keyword(SMAP, "ssl-ca", Path("file", "FILE"), None, "CA certificates that verify client certificates"),
    Keyword(SMAP, "nospam", Choice("RFC821", "ns-required", "maps-rbl"), (),
            "spam checks: strict RFC 821 senders, NS records for the sender's domain, DNSBL scoring",
            multi=True),
    Keyword(SMAP, "rbl", RblType(), (), "a DNSBL zone, with an optional reply filter and weight", multi=True),
    Keyword(SMAP, "rbl-threshold", Int(1), 1, "the DNSBL score at which a client is refused"),
    Keyword(SMAP, "dns-timeout", Int(1, 60, "SECONDS"), 5,
            "how long the DNSBL queries (all zones at once) and the ns-required look-ups may take"),
    Keyword(SMAP, "resolver", ResolverType(), (),
            "a DNS server for smap's look-ups", multi=True, default_doc="the servers of /etc/resolv.conf"),
    Keyword(SMAP, "recipients", Path("file"), None,
            "file of the mailboxes that exist (user@domain, or @domain for every user of a domain; the format "
            "of Postfix's relay_recipient_maps sources): others of those domains get 550 5.1.1, the listed ones "
            "are accepted from anyone; re-read when it changes"),
    Keyword(SMAP, "recipient-verify", Bool(), False,
            "ask smapd's verifier (smapd: recipient-verify) whether each recipient of a relay-domain exists: "
            "the MTA's 5xx becomes 550 at RCPT, and 450 or 451 when it cannot be asked"),
    Keyword(SMAP, "spam-database", Path("file"), None,
            "file of refused client addresses, networks, senders and domains; re-read when it changes"),
    Keyword(SMAP, "crlf", Choice("strict", "normalize"), "strict",
            "line ends: only CRLF (strict), or a bare LF too (normalize); the end of DATA is only CRLF.CRLF"),
    Keyword(SMAP, "greet-delay", Int(0, 300, "SECONDS"), 0, "pause before the greeting; clients that talk first are refused"),
    Keyword(SMAP, "errors-max", Int(1), 20, "errors before 421 4.7.0 and disconnect; replies are delayed after half"),
    # --------------------------------------------------------------- smapd
    *_common(SMAPD, "the spool smapd reads (its working directory; no chroot)", "/var/spool/smap"),
    Keyword(SMAPD, "sendmail", Command(), ("/usr/sbin/sendmail",),
            "the MTA's sendmail-compatible command, to which smapd appends -oi -f SENDER -- and the recipients"),
    Keyword(SMAPD, "mta", MtaType(), None,
            "hand off by SMTP or LMTP to this address instead of running sendmail (pipelined; each recipient's "
            "reply counts: 5xx bounces it, 4xx retries it)"),
    Keyword(SMAPD, "recipient-verify", Bool(), False,
            "serve smap's recipient-verify: probe mta with MAIL FROM:<>, RCPT TO and RSET, the answers cached"),
    Keyword(SMAPD, "verify-positive-expire", Int(60, metavar="SECONDS"), 7 * 86400,
            "how long the verifier trusts an address the MTA accepted"),
    Keyword(SMAPD, "verify-negative-expire", Int(60, metavar="SECONDS"), 3 * 3600,
            "how long the verifier trusts a refusal (5xx) of the MTA"),
    Keyword(SMAPD, "baddir", Path("dir", "DIRECTORY"), _baddir, "where refused and corrupt spool files are moved",
            default_doc="DIRECTORY/bad"),
    Keyword(SMAPD, "holddir", Path("dir", "DIRECTORY"), _holddir,
            "where smapctl hold keeps messages that smapd must not hand off, until smapctl release; smapd never "
            "reads it (smapctl makes it, mode 0700, on the spool's file system)", default_doc="DIRECTORY/hold"),
    Keyword(SMAPD, "wakeup", Int(1, metavar="SECONDS"), 30, "seconds between two scans of the spool"),
    Keyword(SMAPD, "maxchildren", Int(1, 1000), 6, "delivery children at once"),
    Keyword(SMAPD, "executable", Path("none"), None, "FWTK 2.1's path of smapd's delivery program",
            compat="smapd forks its delivery children and runs no separate delivery program, so the path is unused"),
    Keyword(SMAPD, "retry-max", Int(1, metavar="SECONDS"), 3600, "the longest wait between two delivery attempts"),
    Keyword(SMAPD, "sendmail-timeout", Int(1, metavar="SECONDS"), 600,
            "seconds a hand-off may take before it is killed and retried"),
    # -------------------------------------------------------------- ssl-gw
    *_common(SSLGW, "chroot jail of the children (none when unset)", None),
    Keyword(SSLGW, "pem", Path("pem", "PEM"), None, "PEM file with key and certificate (stunnel -p)"),
    Keyword(SSLGW, "connect", HostPort("127.0.0.1"), None, "the backend service (stunnel -r)"),
    Keyword(SSLGW, "accept", HostPort(), None, "the listener of ssl-gw -d (stunnel -d)"),
    Keyword(SSLGW, "verify", Int(0, 3, "LEVEL"), 0,
            "client certificates: 0 none asked for, 1 verify if offered, 2 require, 3 require a locally installed one "
            "(stunnel -v)"),
    Keyword(SSLGW, "ca-file", Path("file", "FILE"), None, "CA certificates for verification (stunnel -A)"),
    Keyword(SSLGW, "ca-dir", Path("dir", "DIRECTORY"), None, "hashed CA directory for verification (stunnel -a)"),
    Keyword(SSLGW, "timeout", Int(1, metavar="SECONDS"), 300,
            "idle time-out of a relayed connection (stunnel -t, which stunnel 3 used for its session cache)"),
    Keyword(SSLGW, "handshake-timeout", Int(1, metavar="SECONDS"), 30,
            "seconds the client has for the TLS handshake"),
    Keyword(SSLGW, "stress-timeout", Int(1, metavar="SECONDS"), 10,
            "ssl-gw -d under stress (80 % of maxchildren busy): the idle time-out and the handshake time-out"),
    Keyword(SSLGW, "connect-timeout", Int(1, metavar="SECONDS"), 10,
            "seconds the connection to the backend may take"),
    Keyword(SSLGW, "ciphers", Word("LIST", r"[A-Za-z0-9_:+!@=.-]+", "an OpenSSL cipher list"), None,
            "OpenSSL cipher list for TLS 1.2 (stunnel -C)", default_doc="modern AEAD ciphers"),
    Keyword(SSLGW, "tls-min", Choice("1.2", "1.3"), "1.2", "the oldest TLS version accepted"),
    # IMAP clients hold their connections for hours, several each (and an
    # office behind NAT is one address): a bigger pool and per-host limits
    # than smap's short SMTP sessions need.  256 idle children are some
    # 800 MB (ssl-gw(8)).
    *_pool(SSLGW, 256, maxspare=32, maxperhost=32, maxpernet=64),
    Keyword(SSLGW, "hosts", HostRules(), (), "which clients may connect; the first matching rule decides",
            multi=True, flagged=True),
    Keyword(SSLGW, "tcpwrappers", Bool(), True, "check hosts.allow and hosts.deny before the handshake"),
    Keyword(SSLGW, "tcpwrappers-dir", Path("dir", "DIRECTORY"), "/etc", "where hosts.allow and hosts.deny are"),
    Keyword(SSLGW, "resolver", ResolverType(), (),
            "DNS server for the client's name (TCP wrappers, hosts)", multi=True,
            default_doc="the servers of /etc/resolv.conf"),
]

#: (program, keyword) -> Keyword.  The only list of keywords in the suite.
KEYWORDS = {}
for _k in _DECLARATIONS:
    assert (_k.program, _k.name) not in KEYWORDS, f"{_k.program}: {_k.name} declared twice"
    KEYWORDS[(_k.program, _k.name)] = _k
del _k


def keywords_for(program: str) -> list:
    """The keywords of one program, in declaration order."""
    return [k for k in _DECLARATIONS if k.program == program]


def programs_with(keyword: str) -> list:
    """The programs that read `keyword`."""
    return [p for p in PROGRAMS if (p, keyword) in KEYWORDS]


# --------------------------------------------------------------------------
# Loading.

@dataclass
class Settings:
    """A program's typed configuration.  `settings[name]` gives the value
    (a tuple for repeatable keywords), the default when unset."""

    program: str
    names: tuple
    values: dict = field(default_factory=dict)
    origins: dict = field(default_factory=dict)  # name -> Rule, or list of Rules
    system: dict = field(default_factory=dict)   # defaults that asked the machine, fixed before the jail

    def __getitem__(self, name: str) -> Any:
        """The value; reading never changes the settings."""
        kw = KEYWORDS[(self.program, name)]
        if name in self.values:
            return self.values[name]
        if name in self.system:
            return self.system[name]
        d = kw.default
        return d(self) if callable(d) else d

    def resolve_system_defaults(self) -> None:
        """Fix, once, the defaults that ask the machine (the FQDN of
        `hostname`, `groupid`'s nogroup or nobody): the one step, taken as
        root before any jail, after which neither the resolver's files nor
        the group database are needed."""
        for kw in keywords_for(self.program):
            if kw.name not in self.values and kw.default in SYSTEM_DEFAULTS:
                self.system[kw.name] = kw.default(self)

    def is_set(self, name: str) -> bool:
        return name in self.origins

    def override(self, name: str, value, origin) -> None:
        """Set `name` from outside the table (ssl-gw's letters), before the
        settings are used; `origin` says where (its .file, .line, .where)."""
        KEYWORDS[(self.program, name)]  # a KeyError for a keyword the program lacks
        self.values[name], self.origins[name] = value, origin

    def where(self, name: str) -> str:
        o = self.origins.get(name)
        if o is None:
            return "default"
        if isinstance(o, list):
            return ", ".join(r.where for r in o)
        return o.where


@dataclass
class Loaded:
    settings: Settings
    diagnostics: list

    @property
    def errors(self):
        return [d for d in self.diagnostics if d.severity == "error"]


def load(table: netperm.Table, program: str, names, rules: bool = True) -> Loaded:
    """Apply the table's rules for `names` to `program`'s keywords.

    Single-valued keywords: the first matching line wins; later ones are
    reported.  Repeatable ones accumulate in file order.  A line for these
    names with a bad argument is an error; an unknown keyword on a line
    that names the program explicitly is a warning (a `*:` line may be
    meant for another proxy of the table and is passed over).  Then the
    rules between keywords (rules.py), unless `rules` is false: ssl-gw
    evaluates them itself once its letters are applied."""
    names = tuple(names)
    s = Settings(program, names)
    diags = [d for d in table.diagnostics
             if not d.programs or "*" in d.programs or any(n in d.programs for n in names)]

    def diag(rule, severity, message):
        diags.append(Diagnostic(rule.file, rule.line, severity, message, rule.programs, rule.keyword, program))

    for rule in table.rules_for(names):
        kw = KEYWORDS.get((program, rule.keyword))
        explicit = any(n in rule.programs for n in names)
        if kw is None:
            if explicit:
                diag(rule, "warning", unknown_keyword_message(program, rule))
            continue
        if rule.flag and not kw.flagged:
            diag(rule, "error", f"{rule.keyword} takes no permit-/deny- prefix")
            continue
        if not kw.type.count_ok(len(rule.args)):
            diag(rule, "error", f"{rule.spelled()} takes {kw.type.count_text()} "
                 f"({kw.usage}), found {len(rule.args)}")
            continue
        try:
            if kw.flagged:
                value = netperm.compile_host_rule(rule)
            else:
                value = kw.type.parse(rule.args)
        except ValueError as e:
            diag(rule, "error", f"{rule.spelled()}: {e}")
            continue
        if kw.compat:
            diag(rule, "warning", f"{kw.name} {' '.join(rule.args)} is accepted for compatibility only: {kw.compat}")
        if kw.multi:
            if kw.name not in s.values:
                s.values[kw.name], s.origins[kw.name] = (), []
            s.values[kw.name] += value if kw.type.flatten else (value,)
            s.origins[kw.name].append(rule)
        elif kw.name in s.origins:
            first = s.origins[kw.name]
            diag(rule, "warning", f"{kw.name} is already set at line {first.line}"
                 + ("" if first.file == rule.file else f" of {first.file}")
                 + "; the first line wins and this one is ignored")
        else:
            s.values[kw.name], s.origins[kw.name] = value, rule
    if rules:
        from smapd.table.rules import evaluate
        diags += evaluate(s, table.path)
    return Loaded(s, diags)


def load_or_die(table: netperm.Table, program: str, names, rules: bool = True) -> Loaded:
    """As `load`, raising netperm.ConfigError when there is any error."""
    loaded = load(table, program, names, rules)
    if loaded.errors:
        raise netperm.ConfigError(loaded.errors)
    return loaded


def nearest(word: str, candidates, limit: int = 2) -> Optional[str]:
    """The candidate closest to `word` by edit distance, if within `limit`."""
    best, best_d = None, limit + 1
    for c in candidates:
        d = edit_distance(word, c)
        if d < best_d:
            best, best_d = c, d
    return best


def edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def unknown_keyword_message(program: str, rule: Rule) -> str:
    msg = f"unknown keyword {rule.spelled()!r} for {program}"
    known = [k.name for k in keywords_for(program)]
    guess = nearest(rule.keyword, known)
    if guess:
        msg += f" (did you mean {guess!r}?)"
    else:
        others = programs_with(rule.keyword)
        if others:
            msg += f" ({rule.keyword} is a keyword of {', '.join(others)})"
    return msg + "; the line is ignored"
