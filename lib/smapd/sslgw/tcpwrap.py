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
("FILE:LINE: text") in `Tables.warnings`.  Every decision is libwrap's
own, quirks included (tests/test_tcpwrap_libwrap.py asks libwrap.so.0):
what an administrator tested with tcpdmatch(8) must hold here.

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
(libwrap refuses such a client, and so does this module); let a client
without a confirmed name be matched by a name: it is "unknown" (or
"paranoid") to every pattern, as in libwrap.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
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
#
# libwrap compares most patterns as strings (string_match): against the
# address as text, and, when the pattern has a character other than digits,
# '.' and '/', against the name as text too, where a host without a
# confirmed name is called "unknown" and a lying one "paranoid".  That is
# why UNKNOWN and PARANOID are no keywords below: they are the strings.

#: The names libwrap gives a host it has no confirmed name for.
_UNKNOWN = "unknown"
_PARANOID = "paranoid"


@dataclass(frozen=True)
class _Host:
    """A client or server as the host patterns see it: its address (None:
    unknown), that address as text as getnameinfo(3) writes it, and its
    name as text -- the confirmed name, or "unknown", or "paranoid"."""

    addr: Optional[ipaddress._BaseAddress]
    addr_text: str
    name_text: str

    @classmethod
    def of(cls, addr, name=None, paranoid=False) -> "_Host":
        try:
            a = client_address(addr)
        except (ValueError, TypeError):
            a = None
        if a is None:
            text = _UNKNOWN
        elif a.version == 4:
            text = str(a)
        else:
            text = socket.inet_ntop(socket.AF_INET6, a.packed)
        if paranoid:
            n = _PARANOID
        else:
            n = str(name).lower().rstrip(".") if name else ""
            n = n or _UNKNOWN
        return cls(a, text, n)

    @property
    def name_known(self) -> bool:
        return self.name_text not in (_UNKNOWN, _PARANOID)


@dataclass(frozen=True)
class _Never:
    """A pattern that matches nothing (a warning said why)."""

    text: str

    def matches(self, *_args) -> bool:
        return False


def _string_kind(tok: str) -> str:
    """How string_match reads a pattern, in its order: .suffix, ALL,
    KNOWN, prefix. (ends with a dot), wildcards, else exact."""
    if tok.startswith("."):
        return "suffix"
    if tok.upper() == "ALL":
        return "all"
    if tok.upper() == "KNOWN":
        return "known"
    if tok.endswith("."):
        return "prefix"
    if "*" in tok or "?" in tok:
        return "glob"
    return "exact"


def _string_match(kind: str, value: str, text: str) -> bool:
    """libwrap's string_match, `value` and `text` in lower case."""
    if kind == "suffix":
        # The text must be longer: ".example.com" is no match for example.com.
        return len(text) > len(value) and text.endswith(value)
    if kind == "all":
        return True
    if kind == "known":
        return text != _UNKNOWN
    if kind == "prefix":
        return text.startswith(value)
    if kind == "glob":
        return _wildcard_match(value, text)
    return text == value


@dataclass(frozen=True)
class _String:
    """A pattern compared as a string: with the address text, and with the
    name text when it is not spelt like an address (libwrap's NOT_INADDR)."""

    text: str
    kind: str
    value: str       # lower case
    on_name: bool

    @classmethod
    def of(cls, tok: str) -> "_String":
        on_name = bool(tok.strip("0123456789./"))
        return cls(tok, _string_kind(tok), tok.lower(), on_name)

    def matches(self, host: _Host) -> bool:
        return (_string_match(self.kind, self.value, host.addr_text)
                or (self.on_name and _string_match(self.kind, self.value, host.name_text)))


@dataclass(frozen=True)
class _Keyword:
    """KNOWN (address and name both known) or LOCAL (a known name without
    a dot), the two keywords host_match reads before anything else."""

    text: str
    keyword: str

    def matches(self, host: _Host) -> bool:
        if self.keyword == "KNOWN":
            return host.addr is not None and host.name_known
        return host.name_known and "." not in host.name_text  # LOCAL


@dataclass(frozen=True)
class _Net:
    """An IPv4 net/mask or net/len, or an [IPv6]/len or bare IPv6 address:
    matches a client of its own family only (an IPv4-mapped client is an
    IPv4 one) whose masked address is `net`."""

    text: str
    version: int
    net: int
    mask: int

    def matches(self, host: _Host) -> bool:
        a = host.addr
        return a is not None and a.version == self.version and int(a) & self.mask == self.net


@dataclass(frozen=True)
class _AnyOf:
    """A /file list: matches when any of its words does."""

    text: str
    patterns: tuple

    def matches(self, host: _Host) -> bool:
        return any(p.matches(host) for p in self.patterns)


@dataclass(frozen=True)
class _UserAt:
    """user@host: ssl-gw makes no ident (RFC 931) query, so the user is
    libwrap's "unknown" when the query fails: ALL, UNKNOWN and wildcards
    that match "unknown" do, any user name does not."""

    text: str
    user: _String
    host: object

    def matches(self, host: _Host) -> bool:
        return self.host.matches(host) and _string_match(self.user.kind, self.user.value, _UNKNOWN)


@dataclass(frozen=True)
class _Daemon:
    """A daemon pattern: a string pattern on the service name, with an
    optional @host part matched against the server's address."""

    text: str
    service: _String
    host: Optional[object]         # a host pattern, or None

    def matches(self, service: str, server: _Host) -> bool:
        if not _string_match(self.service.kind, self.service.value, service):
            return False
        return self.host is None or self.host.matches(server)


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

    def matches(self, service: str, client: _Host, server: _Host) -> bool:
        return self.daemons.matches(service, server) and self.clients.matches(client)

    def decide(self, file_grants: bool) -> Decision:
        allowed = file_grants if self.verdict is None else self.verdict
        reason = f"{os.path.basename(self.path)}:{self.line}: {self.text}"
        if self.note:
            reason += f" ({self.note})"
        return Decision(allowed, f"{self.path}:{self.line}", reason)


@dataclass(frozen=True)
class _Table:
    """One file's entries.  `broken` is the line (or 0: the whole file)
    where libwrap stops with an error -- a file it cannot read, a line
    too long or without its newline: such a file grants nothing from there
    on, and in hosts.deny it refuses every client that gets that far."""

    path: str
    entries: tuple
    broken: Optional[int] = None
    why: str = ""

    def first_match(self, service: str, client: _Host, server: _Host) -> Optional[_Entry]:
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


def _prefix_mask(length: int, bits: int) -> int:
    return ((1 << bits) - 1) ^ ((1 << (bits - length)) - 1)


def _inet_addr(text: str) -> Optional[int]:
    """libwrap's dot_quad_addr: four runs of non-dots read by inet_addr(3)
    (so 0x7f and 017 are numbers too), or None.  inet_addr answers
    255.255.255.255 for an error, so libwrap cannot tell that address from
    one: None for it too."""
    if len([run for run in text.split(".") if run]) != 4:
        return None
    value = 0
    for part in text.split("."):
        m = re.fullmatch(r"0[xX]([0-9a-fA-F]*)|(0[0-7]*)|([1-9][0-9]*)", part)
        if not m:
            return None
        n = int(m.group(1) or "0", 16) if m.group(1) is not None else int(m.group(2), 8) if m.group(2) else int(m.group(3))
        if n > 255:
            return None
        value = value << 8 | n
    return None if value == _ALL_V4 else value


def _c_number(text: str, bits: int) -> Optional[int]:
    """A prefix length as libwrap reads one (atoi for IPv4, strtoul for
    IPv6): the leading digits, junk after them ignored; no digits is 0."""
    m = re.match(r"[ \t]*([+-]?)([0-9]*)", text)
    n = int(m.group(2) or "0")
    if m.group(1) == "-" and n:
        return None
    return n


def _masked(tok: str) -> object:
    """net/mask (host_match splits at the first '/')."""
    net_text, mask_text = tok.split("/", 1)
    if net_text.startswith("[") and net_text.endswith("]"):
        try:
            net = ipaddress.IPv6Address(net_text[1:-1])
        except ValueError:
            raise _BadPattern(f"'{net_text[1:-1]}' is not an IPv6 address") from None
        length = _c_number(mask_text, 128)
        if length is None or length > 128:
            raise _BadPattern("the prefix length of an [IPv6] net must be 0 to 128")
        mask = _prefix_mask(length, 128)
        # libwrap masks the net too: [2001:db8::1]/32 is [2001:db8::]/32.
        return _Net(tok, 6, int(net) & mask, mask)
    net = _inet_addr(net_text)
    if net is None:
        raise _BadPattern("the net of net/mask must be a dotted quad (or an [IPv6] address in brackets)")
    mask = _inet_addr(mask_text)
    if mask is None:
        if mask_text == "255.255.255.255":
            raise _BadPattern("libwrap reads the mask 255.255.255.255 as an error: write /32")
        length = None if len([r for r in mask_text.split(".") if r]) == 4 else _c_number(mask_text, 32)
        if length is None or not 1 <= length <= 32:
            raise _BadPattern("the mask must be a dotted quad or a prefix length of 1 to 32 "
                              "(libwrap matches nothing with /0: write 0.0.0.0/0.0.0.0)")
        mask = _prefix_mask(length, 32)
    if net & ~mask & _ALL_V4:
        raise _BadPattern("the net has bits set outside its mask, which libwrap matches with nothing")
    return _Net(tok, 4, net, mask)


def _plain_host_pattern(tok: str):
    """Every host pattern but @netgroup and /file, in libwrap's order:
    KNOWN, LOCAL, net/mask, [IPv6], then string_match."""
    if tok.upper() in ("KNOWN", "LOCAL"):
        return _Keyword(tok, tok.upper())
    if "/" in tok:
        return _masked(tok)
    if tok.startswith("[") and tok.endswith("]"):
        # Compared as an IPv6 address: [0:0::1] is [::1]; an IPv4 client
        # is never an IPv6 one, not even as [::ffff:127.0.0.1].
        try:
            return _Net(tok, 6, int(ipaddress.IPv6Address(tok[1:-1])), (1 << 128) - 1)
        except ValueError:
            raise _BadPattern("not an IPv6 address in brackets") from None
    return _String.of(tok)


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

#: libwrap reads a logical line into 2048 bytes with its newline: longer is
#: an error, as is a last line without a newline.
MAX_LINE = 2046


def _read_text(path: str) -> str:
    """The text of a regular file, or OSError/ValueError.  Opened without
    blocking (a FIFO named as a /file list must not hang ssl-gw's start)
    and read up to MAX_FILE_BYTES; bytes that are not UTF-8 become U+FFFD,
    which no pattern matches."""
    return read_regular(path, MAX_FILE_BYTES)[0].decode("utf-8", "replace")


def _logical_lines(text: str):
    """(number of the first physical line, logical line, trouble) for each
    line, as libwrap's xgets reads them: a backslash just before the
    newline joins the next line with nothing in between (a CR before the
    newline stays, and is a blank to the lists).  `trouble` says why
    libwrap cannot read a line -- too long, or no newline at the end of
    the file -- and is None for the others."""
    physical = text.split("\n")
    tail = physical.pop()  # after the last newline: "" or a line without one
    parts, start = [], 1
    for number, raw in enumerate(physical, 1):
        if not parts:
            start = number
        if raw.endswith("\\"):
            parts.append(raw[:-1])
            continue
        parts.append(raw)
        line = "".join(parts)
        yield start, line, (f"longer than libwrap's {MAX_LINE} characters" if len(line) > MAX_LINE else None)
        parts = []
    if parts or tail:
        yield (start if parts else len(physical) + 1), "".join(parts) + tail, "without a newline at its end"


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
            why = f"cannot be read: {getattr(e, 'strerror', None) or e}"
            self.warn(path, why)
            return _Table(path, (), broken=0, why=why)
        entries = []
        for number, line, trouble in _logical_lines(text):
            if trouble:
                # libwrap stops reading the file here with an error.
                why = f"line {number} is {trouble}"
                self.warn(f"{path}:{number}", f"{why}: libwrap stops reading the file there, so from there it "
                                              "grants nothing, and in hosts.deny refuses every client; so does ssl-gw")
                return _Table(path, tuple(entries), broken=number, why=why)
            entry = self._entry(path, number, line)
            if entry:
                entries.append(entry)
        return _Table(path, tuple(entries))

    def _entry(self, path: str, line: int, text: str) -> Optional[_Entry]:
        where = f"{path}:{line}"
        # libwrap: a comment starts with '#' in the first column, and only
        # there; a line of blanks is skipped.
        if text.startswith("#") or not text.strip(" \t\r\n"):
            return None
        if "\0" in text:
            self.warn(where, "a NUL byte in the line: skipped, as libwrap skips it")
            return None
        head, rest = _split_colon(text)
        if rest is None:
            self.warn(where, "missing ':' separator (daemon_list : client_list [: option ...]): skipped")
            return None
        if "#" in text:
            self.warn(where, "'#' after the start of a line is no comment: libwrap reads the words after it "
                             "as part of the entry, and so does ssl-gw")
        client_text, option_text = _split_colon(rest)
        daemon_words, client_words = _words(head), _words(client_text)
        if not daemon_words or not client_words:
            self.warn(where, f"empty {'daemon' if not daemon_words else 'client'} list: matches nothing")
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
        if not words:
            pass  # the entry already said so
        elif not groups[0]:
            self.warn(where, f"the {what} list starts with EXCEPT: it matches nothing")
        elif not all(groups):
            self.warn(where, f"an EXCEPT in the {what} list has no pattern after it: it excepts nothing")
        return _List(tuple(groups))

    # ---- patterns

    def _daemon_pattern(self, where: str, tok: str) -> _Daemon:
        at = tok.find("@", 1)
        if at < 0:
            return _Daemon(tok, _String.of(tok), None)
        host_text = tok[at + 1:]
        if not host_text:
            self.warn(where, f"'{tok}': no host after '@': never matches")
            host = _Never(tok)
        else:
            host = self._host_pattern(where, host_text)
            if self._names_server(host):
                self.warn(where, f"'{tok}': ssl-gw does not look its own address up, so the server's name is "
                                 "\"unknown\" to this pattern (libwrap would look it up)")
        return _Daemon(tok, _String.of(tok[:at]), host)

    @staticmethod
    def _names_server(pattern) -> bool:
        return (isinstance(pattern, _String) and pattern.on_name and pattern.kind != "all") or (
            isinstance(pattern, _Keyword))

    def _client_pattern(self, where: str, tok: str):
        at = tok.find("@", 1)
        if at < 0:
            return self._host_pattern(where, tok)
        user = _String.of(tok[:at])
        if not _string_match(user.kind, user.value, _UNKNOWN):
            self.warn(where, f"'{tok}': the user is \"unknown\" to ssl-gw, which makes no ident (RFC 931) "
                             "query: never matches")
        return _UserAt(tok, user, self._host_pattern(where, tok[at + 1:]))

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
        patterns = []
        for number, line in enumerate(text.split("\n"), 1):
            for word in _words(line):
                if word.upper() == "EXCEPT":
                    self.warn(f"{path}:{number}", "EXCEPT has no meaning in a /file list: never matches")
                    continue
                patterns.append(self._host_pattern(f"{path}:{number}", word, depth + 1))
        if "#" in text:
            self.warn(path, "'#' is no comment in a /file list: libwrap reads the words after it as "
                            "patterns, and so does ssl-gw")
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
    if isinstance(pattern, _UserAt):
        return _needs_name(pattern.host)
    if isinstance(pattern, _String):
        return pattern.on_name and pattern.kind != "all"
    return isinstance(pattern, _Keyword)


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
        match; without it the server is libwrap's "unknown" host."""
        allow, deny = self._tables
        service = str(service).lower()
        host = _Host.of(client.addr, client.name, client.paranoid)
        server = _Host.of(server_addr)
        entry = allow.first_match(service, host, server)
        if entry is not None:
            return entry.decide(file_grants=True)
        entry = deny.first_match(service, host, server)
        if entry is not None:
            return entry.decide(file_grants=False)
        if deny.broken is not None:
            where = f"{deny.path}:{deny.broken}" if deny.broken else deny.path
            return Decision(False, where, f"{DENY_FILE} {deny.why}: refused, as libwrap refuses")
        return Decision(True, None, f"no entry of {ALLOW_FILE} or {DENY_FILE} matches: granted")


def check(service: str, client: Client, directory: str = "/etc",
          server_addr: Optional[str] = None) -> Decision:
    """One check with freshly read tables: `Tables(directory).check(...)`.
    A daemon checks many clients: it keeps a Tables instead."""
    return Tables(directory).check(service, client, server_addr)
