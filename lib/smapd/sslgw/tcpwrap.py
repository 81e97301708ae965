"""TCP wrappers for ssl-gw: hosts.allow and hosts.deny, as libwrap reads them.

What it does: reads the hosts.allow and hosts.deny of one directory (/etc
by default) once, compiles every entry -- daemon list, client list,
options -- and answers, for a service name and a client, whether libwrap's
hosts_access(3) would grant access and which FILE:LINE decided.  The
language is that of hosts_access(5) and hosts_options(5) as Debian's
libwrap 7.6 reads them: ALL, EXCEPT, LOCAL, KNOWN, UNKNOWN, PARANOID,
.domain, net., net/mask, net/len, [ipv6] and [ipv6]/len, `*` and `?`
wildcards, /file lists, daemon@host, and the `allow` and `deny` options.
Access is granted when an entry of hosts.allow matches, else refused when
an entry of hosts.deny matches, else granted; the first matching entry of
a file decides.  Everything a line or a pattern cannot mean -- a missing
':', a netgroup, an option ssl-gw does not carry out -- is a warning
("FILE:LINE: text") in `Tables.warnings`.

What it trusts: nothing in the files.  Any bytes give entries and
warnings, never an exception.  The client's name must already be
forward-confirmed (`dns.confirmed_name`); an IPv4-mapped address is
read as IPv4 in any case (`addresses.client_address`).  This module never
looks anything up, and reads files only in `Tables.reload()`: ssl-gw
checks clients inside its chroot, where /etc/hosts.allow and the /file
lists are out of reach.

What it must never do: run a command, whatever an entry says (`spawn`
and `twist` are warnings: a firewall component does not execute its
tables); grant access through an entry whose options it cannot honour
(libwrap refuses such a client, and so does this module); let a name
pattern match a client without a confirmed name, or an address pattern
match a name.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from typing import Optional

from smapd.addresses import client_address
from smapd.files import read_regular

ALLOW_FILE = "hosts.allow"
DENY_FILE = "hosts.deny"

#: The separators of daemon and client lists (libwrap's ", \t\r\n").
_LIST_SEP = re.compile(r"[, \t\r\n]+")
#: A host name as a pattern may spell it: dot-separated ASCII labels.
_NAME_RE = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
#: One number of a dotted quad, without the leading zeros that
#: inet_pton(3) refuses.
_OCTET_RE = re.compile(r"0|[1-9][0-9]{0,2}")
#: The client keywords (libwrap compares them without regard to case).
_KEYWORDS = ("ALL", "KNOWN", "UNKNOWN", "PARANOID", "LOCAL")
#: An IPv4 client as an IPv6 pattern sees it: ::ffff:a.b.c.d, since
#: Debian's libwrap compares every address in IPv4-mapped form.
_MAPPED = 0xFFFF << 32
_ALL_V4 = (1 << 32) - 1
#: Bigger hosts files and /file lists are refused: a list of every
#: address of a country is a few MiB; 16 MiB is a mistake.
MAX_FILE_BYTES = 16 << 20
#: /file lists may name further /file lists, as in libwrap; deeper than
#: this is surely a loop the cycle check has not seen yet.
MAX_FILE_DEPTH = 8


@dataclass(frozen=True)
class Client:
    """The client as ssl-gw knows it before the TLS handshake."""

    addr: str                # its IP address as text; an IPv4-mapped one already as IPv4
    name: Optional[str]      # its forward-confirmed host name, or None
    paranoid: bool = False   # its reverse name and its address do not match


@dataclass(frozen=True)
class Decision:
    """What hosts_access would do, and why."""

    allowed: bool
    where: Optional[str]     # "FILE:LINE" of the deciding entry; None: no entry matched
    reason: str              # for the log, e.g. "hosts.deny:1: pop3,imap: ALL"


class _BadPattern(ValueError):
    """A pattern that can never match; the message says why."""


# --------------------------------------------------------------------------
# Patterns.  Each has `text` (as written) and `matches(...)`; host patterns
# take a _Host, daemon patterns a service name and the server's _Host.

@dataclass(frozen=True)
class _Host:
    """A client or server as the host patterns see it.  `name` is None
    unless the name is confirmed, and None for a PARANOID host too: libwrap
    calls such a host "paranoid", a name no pattern but PARANOID matches."""

    addr: Optional[ipaddress._BaseAddress]
    name: Optional[str]
    paranoid: bool = False

    @classmethod
    def of(cls, addr, name=None, paranoid=False) -> "_Host":
        try:
            a = client_address(addr)
        except ValueError:
            a = None  # libwrap's "unknown" address: only ALL and UNKNOWN match
        n = None if paranoid or not name else str(name).lower().rstrip(".") or None
        return cls(a, n, bool(paranoid))


@dataclass(frozen=True)
class _Never:
    """A pattern that matches nothing (a warning said why)."""

    text: str

    def matches(self, *_args) -> bool:
        return False


@dataclass(frozen=True)
class _Keyword:
    """ALL, KNOWN, UNKNOWN, PARANOID or LOCAL.  KNOWN, UNKNOWN and PARANOID
    split every client in three, as in libwrap: a paranoid client is
    neither known nor unknown."""

    text: str
    keyword: str

    def matches(self, host: _Host) -> bool:
        if self.keyword == "ALL":
            return True
        if self.keyword == "KNOWN":
            return host.addr is not None and host.name is not None
        if self.keyword == "UNKNOWN":
            return host.addr is None or (host.name is None and not host.paranoid)
        if self.keyword == "PARANOID":
            return host.paranoid
        return host.name is not None and "." not in host.name  # LOCAL


@dataclass(frozen=True)
class _Name:
    """A host name (exact) or a .domain (suffix), without regard to case."""

    text: str
    value: str
    suffix: bool

    def matches(self, host: _Host) -> bool:
        if host.name is None:
            return False
        if self.suffix:
            # libwrap: the name must be longer than the pattern, so
            # ".example.com" matches a.example.com, not example.com.
            return len(host.name) > len(self.value) and host.name.endswith(self.value)
        return host.name == self.value


@dataclass(frozen=True)
class _Glob:
    """A pattern with `*` and `?`, on the address text or on the name."""

    text: str
    glob: str  # lower case, as names and address texts are compared
    on_address: bool

    def matches(self, host: _Host) -> bool:
        if self.on_address:
            subject = host.addr.compressed if host.addr is not None else None
        else:
            subject = host.name
        return subject is not None and _wildcard_match(self.glob, subject)


@dataclass(frozen=True)
class _Net:
    """An address, a net., a net/mask or a prefix, IPv4 or IPv6."""

    text: str
    version: int
    net: int
    mask: int

    def matches(self, host: _Host) -> bool:
        a = host.addr
        if a is None:
            return False
        if self.version == 4:
            return a.version == 4 and int(a) & self.mask == self.net
        value = int(a) if a.version == 6 else _MAPPED | int(a)
        return value & self.mask == self.net


@dataclass(frozen=True)
class _AnyOf:
    """A /file list: matches when any of its words does."""

    text: str
    patterns: tuple

    def matches(self, host: _Host) -> bool:
        return any(p.matches(host) for p in self.patterns)


@dataclass(frozen=True)
class _Daemon:
    """A daemon pattern: ALL, a name, a glob or a .suffix on the service
    name (without regard to case), with an optional @host part matched
    against the server's address."""

    text: str
    kind: str                      # "all", "exact", "suffix" or "glob"
    value: str                     # lower case
    host: Optional[object]         # a host pattern, or None

    def matches(self, service: str, server: Optional[_Host]) -> bool:
        if not self._service_matches(service):
            return False
        if self.host is None:
            return True
        return server is not None and self.host.matches(server)

    def _service_matches(self, service: str) -> bool:
        if self.kind == "all":
            return True
        if self.kind == "glob":
            return _wildcard_match(self.value, service)
        if self.kind == "suffix":
            return len(service) > len(self.value) and service.endswith(self.value)
        return service == self.value


@dataclass(frozen=True)
class _List:
    """`list_1 EXCEPT list_2 EXCEPT list_3 ...`, nested right to left as
    libwrap's list_match nests it: list_1 EXCEPT (list_2 EXCEPT list_3)."""

    groups: tuple  # one tuple of patterns per EXCEPT-separated part

    def matches(self, *args) -> bool:
        # From the right, without recursion: a line with thousands of
        # EXCEPTs must not exhaust the stack.
        result = False
        for group in reversed(self.groups):
            result = any(p.matches(*args) for p in group) and not result
        return result


@dataclass(frozen=True)
class _Entry:
    """One entry: where it is, what it says, and what it decides."""

    path: str
    line: int
    text: str
    daemons: _List
    clients: _List
    verdict: Optional[bool]  # from allow/deny/twist or an option error; None: its file's
    note: str                # why `verdict` overrides the file, for the log

    def matches(self, service: str, client: _Host, server: Optional[_Host]) -> bool:
        return self.daemons.matches(service, server) and self.clients.matches(client)

    def decide(self, file_grants: bool) -> Decision:
        allowed = file_grants if self.verdict is None else self.verdict
        reason = f"{os.path.basename(self.path)}:{self.line}: {self.text}"
        if self.note:
            reason += f" ({self.note})"
        return Decision(allowed, f"{self.path}:{self.line}", reason)


@dataclass(frozen=True)
class _Table:
    """One file's entries.  `unreadable`: it exists but could not be read,
    which Debian's libwrap treats as an error: no grant from hosts.allow,
    a refusal from hosts.deny."""

    path: str
    entries: tuple
    unreadable: bool = False

    def first_match(self, service: str, client: _Host, server: Optional[_Host]) -> Optional[_Entry]:
        for entry in self.entries:
            if entry.matches(service, client, server):
                return entry
        return None


# --------------------------------------------------------------------------
# Compiling one host pattern (everything but /file lists, which need the
# reader): each function returns a pattern or raises _BadPattern.

def _wildcard_match(glob: str, text: str) -> bool:
    """libwrap's wildcards: `*` any run of characters, `?` one character,
    nothing else special.  Greedy with one back-up point, so time is at
    most len(glob) * len(text) -- a regex with many `*` can backtrack for
    ages on a long host name, and the client chooses its name."""
    g = t = 0
    star, mark = -1, 0
    while t < len(text):
        # A `*` of the glob is a wildcard even where the text has a `*`.
        if g < len(glob) and glob[g] == "*":
            star, mark, g = g, t, g + 1
        elif g < len(glob) and glob[g] in ("?", text[t]):
            g, t = g + 1, t + 1
        elif star >= 0:
            mark += 1
            g, t = star + 1, mark
        else:
            return False
    return all(c == "*" for c in glob[g:])


def _glob(tok: str) -> _Glob:
    if tok.startswith(".") or tok.endswith(".") or "/" in tok or "[" in tok:
        raise _BadPattern("wildcards cannot be combined with the .domain, net., net/mask or [ipv6] forms")
    # Digits, dots and wildcards, or a colon: an address; anything else
    # is a name.  (libwrap tries such a pattern on both; an address never
    # looks like a name, so only the spelling decides.)
    if ":" in tok or set(tok) <= set("0123456789.*?"):
        if not set(tok.lower()) <= set("0123456789abcdef:.*?"):
            raise _BadPattern("not an address with wildcards")
        return _Glob(tok, tok.lower(), True)
    if not _NAME_RE.fullmatch(tok.replace("*", "x").replace("?", "x")):
        raise _BadPattern("not a host name with wildcards")
    return _Glob(tok, tok.lower(), False)


def _suffix(tok: str) -> _Name:
    if not _NAME_RE.fullmatch(tok[1:]):
        raise _BadPattern("not a .domain (.example.com)")
    return _Name(tok, tok.lower(), True)


def _name(tok: str) -> _Name:
    if not _NAME_RE.fullmatch(tok):
        raise _BadPattern("not a host name, an address or a pattern")
    return _Name(tok, tok.lower(), False)


def _prefix_mask(length: int, bits: int) -> int:
    return ((1 << bits) - 1) ^ ((1 << (bits - length)) - 1)


def _length(text: str, bits: int) -> int:
    if not re.fullmatch(r"[0-9]{1,3}", text) or int(text) > bits:
        raise _BadPattern(f"the prefix length must be 0 to {bits}")
    return int(text)


def _ipv4(text: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        raise _BadPattern(f"'{text}' is not a dotted-quad IPv4 address") from None


def _ipv6(text: str) -> ipaddress.IPv6Address:
    try:
        return ipaddress.IPv6Address(text)
    except ValueError:
        raise _BadPattern(f"'{text}' is not an IPv6 address") from None


def _v6net(tok: str, addr: ipaddress.IPv6Address, length: int) -> _Net:
    mask = _prefix_mask(length, 128)
    return _Net(tok, 6, int(addr) & mask, mask)


def _bracketed(tok: str) -> _Net:
    """[ipv6] or [ipv6]/len."""
    close = tok.find("]")
    if close < 0:
        raise _BadPattern("'[' without ']'")
    addr, rest = _ipv6(tok[1:close]), tok[close + 1:]
    if not rest:
        return _v6net(tok, addr, 128)
    if not rest.startswith("/"):
        raise _BadPattern("only /length may follow ']'")
    return _v6net(tok, addr, _length(rest[1:], 128))


def _netmask(tok: str) -> _Net:
    """n.n.n.n/m.m.m.m, n.n.n.n/len, and (only possible in a /file list,
    since a ':' ends the client list) an unbracketed ipv6/len."""
    net_text, mask_text = tok.split("/", 1)
    if ":" in net_text:
        return _v6net(tok, _ipv6(net_text), _length(mask_text, 128))
    net = int(_ipv4(net_text))
    if "." in mask_text:
        # Any mask, contiguous or not, applied bit by bit as
        # hosts_access(5) defines it: net == address & mask.  Host bits
        # in the net are masked off too, as Debian's libwrap does.
        mask = int(_ipv4(mask_text))
    else:
        mask = _prefix_mask(_length(mask_text, 32), 32)
    return _Net(tok, 4, net & mask, mask)


def _net_prefix(tok: str) -> _Net:
    """net.: one to three leading numbers of an IPv4 address."""
    octets = tok[:-1].split(".")
    if not 1 <= len(octets) <= 3 or not all(_OCTET_RE.fullmatch(o) and int(o) <= 255 for o in octets):
        raise _BadPattern("ends with '.' but is not a net. prefix (10. or 192.168.)")
    net = sum(int(o) << (24 - 8 * i) for i, o in enumerate(octets))
    return _Net(tok, 4, net, _prefix_mask(8 * len(octets), 32))


def _address(tok: str) -> _Net:
    if ":" in tok:
        return _v6net(tok, _ipv6(tok), 128)
    return _Net(tok, 4, int(_ipv4(tok)), _ALL_V4)


def _plain_host_pattern(tok: str):
    """Every host pattern but @netgroup and /file, in libwrap's order of
    precedence: keywords, wildcards, then the forms by their spelling."""
    if tok.upper() in _KEYWORDS:
        return _Keyword(tok, tok.upper())
    if "*" in tok or "?" in tok:
        return _glob(tok)
    if tok.startswith("."):
        return _suffix(tok)
    if tok.startswith("["):
        return _bracketed(tok)
    if "/" in tok:
        return _netmask(tok)
    if tok.endswith("."):
        return _net_prefix(tok)
    if ":" in tok or set(tok) <= set("0123456789."):
        return _address(tok)
    return _name(tok)


def _daemon_name(tok: str) -> tuple:
    """(kind, value) of the service part of a daemon pattern."""
    if tok.upper() == "ALL":
        return "all", ""
    if "*" in tok or "?" in tok:
        return "glob", tok.lower()
    if tok.startswith(".") and len(tok) > 1:
        return "suffix", tok.lower()
    return "exact", tok.lower()


# --------------------------------------------------------------------------
# Options (hosts_options(5)): what each takes, and why ssl-gw ignores it.

_NEED, _OPTIONAL, _NONE = "needs", "may take", "takes no"
_NO_COMMANDS = "ssl-gw runs no commands"
#: name: (value, must be the last option, why ssl-gw ignores it)
_OPTIONS = {
    "allow": (_NONE, True, None),
    "deny": (_NONE, True, None),
    "spawn": (_NEED, False, _NO_COMMANDS),
    "twist": (_NEED, True, _NO_COMMANDS),
    "setenv": (_NEED, False, _NO_COMMANDS),
    "severity": (_NEED, False, "ssl-gw logs at its own levels"),
    "umask": (_NEED, False, "ssl-gw creates no files for clients"),
    "user": (_NEED, False, "ssl-gw's children run as its -s/-g account"),
    "group": (_NEED, False, "ssl-gw's children run as its -s/-g account"),
    "nice": (_OPTIONAL, False, "ssl-gw does not renice its children"),
    "keepalive": (_NONE, False, "ssl-gw sets its own socket options"),
    "linger": (_NEED, False, "ssl-gw sets its own socket options"),
    "rfc931": (_OPTIONAL, False, "ssl-gw makes no ident (RFC 931) look-ups"),
    "banners": (_NEED, False, "ssl-gw sends nothing before the TLS handshake"),
}


def _option_fields(text: str) -> list:
    """The fields of an option list: split at ':', where `\\:` is a colon
    that does not split (libwrap's get_field); each field stripped."""
    fields, current, i = [], [], 0
    while i < len(text):
        if text.startswith("\\:", i):
            current.append(":")
            i += 2
            continue
        if text[i] == ":":
            fields.append("".join(current))
            current = []
        else:
            current.append(text[i])
        i += 1
    fields.append("".join(current))
    return [f.strip(" \t\r\n") for f in fields]


def _split_option(field: str) -> tuple:
    """`name value`, `name = value` or `name`: (name, value or None)."""
    m = re.match(r"([^= \t\r\n]*)[ \t\r\n]*=?[ \t\r\n]*(.*)", field, re.DOTALL)
    return m.group(1), (m.group(2) or None)


def _option_problem(name: str, value: Optional[str], last: bool) -> Optional[str]:
    """What libwrap's process_options would reject in this option, or None."""
    if not name:
        return "empty option (a ':' with no option after it)"
    spec = _OPTIONS.get(name.lower())
    if spec is None:
        return f"unknown option '{name}'"
    takes, must_be_last, _ = spec
    if takes == _NEED and value is None:
        return f"option '{name.lower()}' needs a value"
    if takes == _NONE and value is not None:
        return f"option '{name.lower()}' takes no value"
    if must_be_last and not last:
        return f"option '{name.lower()}' must be the last option"
    return None


# --------------------------------------------------------------------------
# Files and lines.

def _read_text(path: str) -> str:
    """The text of a regular file, or OSError/ValueError.  Opened without
    blocking (a FIFO named as a /file list must not hang ssl-gw's start)
    and read up to MAX_FILE_BYTES; bytes that are not UTF-8 become U+FFFD,
    which no pattern matches."""
    return read_regular(path, MAX_FILE_BYTES)[0].decode("utf-8", "replace")


def _logical_lines(text: str):
    """(number of the first physical line, logical line) pairs.  A
    backslash at the end of a line joins the next line to it with nothing
    in between (libwrap's xgets); a CR before the newline is dropped."""
    physical = text.split("\n")
    if physical[-1] == "":
        physical.pop()
    parts, start = [], 1
    for number, raw in enumerate(physical, 1):
        if raw.endswith("\r"):
            raw = raw[:-1]
        if not parts:
            start = number
        if raw.endswith("\\"):
            parts.append(raw[:-1])
            continue
        parts.append(raw)
        yield start, "".join(parts)
        parts = []
    if parts:
        yield start, "".join(parts)


def _strip_comment(line: str) -> tuple:
    """(the line before its first '#' not escaped by a backslash, whether
    there was one)."""
    for m in re.finditer("#", line):
        if m.start() == 0 or line[m.start() - 1] != "\\":
            return line[:m.start()], True
    return line, False


def _split_colon(text: str) -> tuple:
    """(text before the first ':' outside [brackets], text after it or
    None): IPv6 addresses in brackets keep their colons, as in Debian's
    libwrap."""
    depth = 0
    for i, c in enumerate(text):
        if c == "[":
            depth += 1
        elif c == "]":
            depth = max(0, depth - 1)
        elif c == ":" and depth == 0:
            return text[:i], text[i + 1:]
    return text, None


def _words(text: str) -> list:
    return [w for w in _LIST_SEP.split(text) if w]


def _summary(text: str, limit: int = 200) -> str:
    """An entry as the log shows it: blanks collapsed, length capped."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


class _Reader:
    """One load of the tables: compiles entries and /file lists, and
    collects the warnings.  Each /file list is read once per load."""

    def __init__(self):
        self.warnings = []
        self._lists = {}
        self._reading = set()

    def warn(self, where: str, text: str) -> None:
        self.warnings.append(f"{where}: {text}")

    # ---- tables

    def table(self, path: str) -> _Table:
        """A hosts file; a missing file is an empty table, as in libwrap."""
        try:
            text = _read_text(path)
        except FileNotFoundError:
            return _Table(path, ())
        except (OSError, ValueError) as e:
            self.warn(path, f"cannot be read: {getattr(e, 'strerror', None) or e}")
            return _Table(path, (), unreadable=True)
        entries = [e for e in (self._entry(path, n, line) for n, line in _logical_lines(text)) if e]
        self._check_last_line(path, text)
        return _Table(path, tuple(entries))

    def _check_last_line(self, path: str, text: str) -> None:
        last = text.rsplit("\n", 1)[-1]
        if last.strip() and not last.lstrip().startswith("#"):
            self.warn(f"{path}:{text.count(chr(10)) + 1}",
                      "no newline at the end of the file: libwrap skips this line; ssl-gw reads it")

    def _entry(self, path: str, line: int, text: str) -> Optional[_Entry]:
        where = f"{path}:{line}"
        if not text.strip(" \t\r\n") or text.lstrip(" \t\r\n").startswith("#"):
            return None
        if "\0" in text:
            self.warn(where, "a NUL byte in the line: skipped, as libwrap skips it")
            return None
        text, had_comment = _strip_comment(text)
        if had_comment:
            self.warn(where, "the text after '#' is taken as a comment "
                             "(libwrap 7.6 reads it as part of the entry)")
            if not text.strip(" \t\r\n"):
                return None
        head, rest = _split_colon(text)
        if rest is None:
            self.warn(where, "missing ':' separator (daemon_list : client_list [: option ...]): skipped")
            return None
        client_text, option_text = _split_colon(rest)
        daemon_words, client_words = _words(head), _words(client_text)
        if not daemon_words or not client_words:
            self.warn(where, f"empty {'daemon' if not daemon_words else 'client'} list: skipped")
            return None
        daemons = self._list(where, daemon_words, self._daemon_pattern, "daemon")
        clients = self._list(where, client_words, self._client_pattern, "client")
        verdict, note = self._options(where, option_text)
        return _Entry(path, line, _summary(text), daemons, clients, verdict, note)

    def _list(self, where: str, words: list, compile_one, what: str) -> _List:
        groups, current = [], []
        for word in words:
            if word.upper() == "EXCEPT":
                groups.append(tuple(current))
                current = []
            else:
                current.append(compile_one(where, word))
        groups.append(tuple(current))
        if not groups[0]:
            self.warn(where, f"the {what} list starts with EXCEPT: it matches nothing")
        elif not all(groups):
            self.warn(where, f"an EXCEPT in the {what} list has no pattern after it: it excepts nothing")
        return _List(tuple(groups))

    # ---- patterns

    def _daemon_pattern(self, where: str, tok: str) -> _Daemon:
        at = tok.find("@", 1)
        name, host = (tok, None) if at < 0 else (tok[:at], self._server_pattern(where, tok, tok[at + 1:]))
        kind, value = _daemon_name(name)
        return _Daemon(tok, kind, value, host)

    def _server_pattern(self, where: str, tok: str, host_text: str):
        """The @host of daemon@host: matched against the server's address
        only, since ssl-gw does not look its own names up."""
        pattern = self._host_pattern(where, host_text) if host_text else None
        if pattern is None:
            self.warn(where, f"'{tok}': no host after '@': never matches")
            return _Never(tok)
        if isinstance(pattern, _Name) or (isinstance(pattern, _Glob) and not pattern.on_address):
            self.warn(where, f"'{tok}': the server's name is not looked up, only its address: never matches")
            return _Never(tok)
        return pattern

    def _client_pattern(self, where: str, tok: str):
        if "@" in tok[1:]:
            self.warn(where, f"'{tok}': user@host needs an ident (RFC 931) look-up, "
                             "which ssl-gw does not make: never matches")
            return _Never(tok)
        return self._host_pattern(where, tok)

    def _host_pattern(self, where: str, tok: str, depth: int = 0):
        if tok.startswith("@"):
            self.warn(where, f"'{tok}': NIS netgroups are not supported: never matches")
            return _Never(tok)
        if tok.startswith("/"):
            return self._list_file(where, tok, depth)
        try:
            return _plain_host_pattern(tok)
        except _BadPattern as e:
            self.warn(where, f"'{tok}': {e}: never matches")
            return _Never(tok)

    def _list_file(self, where: str, path: str, depth: int):
        """A /file list: its blank-separated words, each a host pattern,
        read now (ssl-gw checks clients inside its chroot)."""
        if path in self._lists:
            return self._lists[path]
        if path in self._reading or depth >= MAX_FILE_DEPTH:
            self.warn(where, f"'{path}': /file lists nested in a loop or more than "
                             f"{MAX_FILE_DEPTH} deep: never matches")
            return _Never(path)
        self._reading.add(path)
        try:
            result = self._read_list(where, path, depth)
        finally:
            self._reading.discard(path)
        self._lists[path] = result
        return result

    def _read_list(self, where: str, path: str, depth: int):
        try:
            text = _read_text(path)
        except FileNotFoundError:
            self.warn(where, f"'{path}': no such file: matches nothing")
            return _Never(path)
        except (OSError, ValueError) as e:
            self.warn(where, f"'{path}': cannot be read ({getattr(e, 'strerror', None) or e}): matches nothing")
            return _Never(path)
        patterns, commented = [], False
        for number, line in enumerate(text.split("\n"), 1):
            line, had_comment = _strip_comment(line)
            commented = commented or had_comment
            for word in line.split():
                if word.upper() == "EXCEPT":
                    self.warn(f"{path}:{number}", "EXCEPT has no meaning in a /file list: never matches")
                    continue
                patterns.append(self._host_pattern(f"{path}:{number}", word, depth + 1))
        if commented:
            self.warn(path, "the text after '#' is taken as a comment "
                            "(libwrap 7.6 reads the words after it as patterns)")
        return _AnyOf(path, tuple(patterns))

    # ---- options

    def _options(self, where: str, text: Optional[str]) -> tuple:
        """(verdict, note) of an entry's options.  The verdict is None when
        the entry's file decides, True for `allow`, False for `deny`, for
        `twist` and for an option libwrap would reject: libwrap refuses
        the client when it meets a bad option in the entry that matched."""
        if text is None:
            return None, ""
        fields = _option_fields(text)
        verdict, note = None, ""
        for i, field in enumerate(fields):
            name, value = _split_option(field)
            problem = _option_problem(name, value, last=i == len(fields) - 1)
            if problem:
                self.warn(where, f"{problem}: a client this entry matches is refused, as libwrap refuses it")
                return False, f"refused: {problem}"
            key = name.lower()
            if key in ("allow", "deny"):
                verdict = key == "allow"
                continue
            if key == "twist":
                # libwrap hands a twisted client to the command, never to
                # the service: ssl-gw must not relay it either.
                self.warn(where, f"option 'twist' is ignored ({_NO_COMMANDS}); a client this entry "
                                 "matches is refused, since twist never gives it the service")
                verdict, note = False, "refused: twist"
                continue
            self.warn(where, f"option '{key}' is ignored ({_OPTIONS[key][2]})")
        return verdict, note


# --------------------------------------------------------------------------
# The interface.

def _needs_name(pattern) -> bool:
    """Does this client pattern (or list) depend on the client's name?"""
    if isinstance(pattern, _List):
        return any(_needs_name(p) for group in pattern.groups for p in group)
    if isinstance(pattern, _AnyOf):
        return any(_needs_name(p) for p in pattern.patterns)
    if isinstance(pattern, _Keyword):
        return pattern.keyword != "ALL"
    if isinstance(pattern, _Glob):
        return not pattern.on_address
    return isinstance(pattern, _Name)


class Tables:
    """hosts.allow and hosts.deny of one directory, parsed once (at start,
    before any chroot); `reload()` re-reads them (the master does this on
    HUP).  `warnings` lists "FILE:LINE: text" for every line skipped,
    pattern that can never match and option ignored."""

    def __init__(self, directory: str = "/etc"):
        self.directory = directory
        self.allow_path = os.path.join(directory, ALLOW_FILE)
        self.deny_path = os.path.join(directory, DENY_FILE)
        self.warnings = []
        self.reload()

    def reload(self) -> None:
        """Read both files (and their /file lists) again; never raises."""
        reader = _Reader()
        tables = (reader.table(self.allow_path), reader.table(self.deny_path))
        # One assignment: a check in another thread sees the old pair or
        # the new one, never one file of each.
        self._tables = tables
        self.warnings = reader.warnings
        #: Whether any client pattern looks at the client's name: when none
        #: does, a caller may skip the DNS look-ups (libwrap looks names up
        #: only when a pattern asks, too).
        self.needs_names = any(_needs_name(entry.clients) for t in tables for entry in t.entries)

    def check(self, service: str, client: Client, server_addr: Optional[str] = None) -> Decision:
        """hosts_access: may `client` use `service` (a daemon name as
        stunnel makes it, e.g. "imap" or "localhost.143")?  `server_addr`,
        the address the client connected to, is what daemon@host patterns
        match; without it they never match."""
        allow, deny = self._tables
        service = str(service).lower()
        host = _Host.of(client.addr, client.name, client.paranoid)
        server = _Host.of(server_addr) if server_addr is not None else None
        entry = allow.first_match(service, host, server)
        if entry is not None:
            return entry.decide(file_grants=True)
        if deny.unreadable:
            return Decision(False, deny.path, f"{DENY_FILE} cannot be read: refused, as libwrap refuses")
        entry = deny.first_match(service, host, server)
        if entry is not None:
            return entry.decide(file_grants=False)
        return Decision(True, None, f"no entry of {ALLOW_FILE} or {DENY_FILE} matches: granted")


def check(service: str, client: Client, directory: str = "/etc",
          server_addr: Optional[str] = None) -> Decision:
    """One check with freshly read tables: `Tables(directory).check(...)`.
    A daemon checks many clients: it keeps a Tables instead."""
    return Tables(directory).check(service, client, server_addr)
