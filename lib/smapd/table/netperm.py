"""The netperm-table: reading it, tokenising it, and FWTK host matching.

What it does: turns the bytes of a netperm-table into `Rule`s (program list,
keyword, permit/deny flag, arguments, file and line), with a `Diagnostic`
for every line it cannot read; and decides whether a client address (and
its forward-confirmed name) matches a host pattern or a list of `hosts`
rules.  It knows the syntax of the table, not the meaning of any keyword:
that is `keywords.py`'s job.

What it trusts: nothing in the file.  Arbitrary bytes give Rules and
Diagnostics, never any other exception.  The client name handed to the
matchers must already be forward-confirmed (see `dns.confirmed_name`);
this module never looks anything up itself.

What it must never do: split a quoted argument, act on a line it could not
read completely, or let a name pattern match an address that had no
confirmed name.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

from smapd.addresses import client_address
from smapd.files import read_regular

#: The largest table read: FWTK tables are a few kilobytes; a FIFO or a
#: huge file in the table's place must neither block nor fill memory.
MAX_TABLE_BYTES = 16 << 20

PERMIT = "permit"
DENY = "deny"

#: Characters that separate arguments (FWTK: blanks).
_BLANKS = " \t\f\v"
_ESCAPES = {"t": "\t", "n": "\n"}
_PROGRAM_RE = re.compile(r"^(\*|[A-Za-z0-9_][A-Za-z0-9_.+@-]*)$")


class TokenError(ValueError):
    """A line whose arguments cannot be tokenised (bad quoting)."""


@dataclass(frozen=True)
class Diagnostic:
    """One finding about one place in a file: an error or a warning.

    `line` is 0 when the finding concerns the whole file.  `programs` is
    the program list of the line when it could be read, so that a program
    can ignore a broken line that belongs to another proxy.  `keyword`
    and `program`: the keyword concerned and the program of the suite
    that found it, when known (smapctl check --json).
    """

    file: str
    line: int
    severity: str  # "error", "warning" or "note"
    message: str
    programs: tuple = ()
    keyword: str = ""
    program: str = ""

    def as_json(self) -> dict:
        return {"file": self.file, "line": self.line or None, "severity": self.severity,
                "program": self.program or None, "keyword": self.keyword or None, "text": self.message}

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.severity}: {self.message}"


class ConfigError(Exception):
    """Raised by the programs when the table cannot be used; carries the
    diagnostics (each with file:line) that say why."""

    def __init__(self, diagnostics: Sequence[Diagnostic]):
        self.diagnostics = list(diagnostics)
        super().__init__("\n".join(str(d) for d in self.diagnostics))


@dataclass(frozen=True)
class Rule:
    """One line of the table: `prog[,prog…]: [permit-|deny-]keyword args…`."""

    programs: tuple
    keyword: str
    flag: Optional[str]
    args: tuple
    file: str
    line: int

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def applies_to(self, names: Iterable[str]) -> bool:
        return "*" in self.programs or any(n in self.programs for n in names)

    def spelled(self) -> str:
        """The keyword as the operator wrote it (with its prefix)."""
        return f"{self.flag}-{self.keyword}" if self.flag else self.keyword


def tokenize(text: str) -> list:
    """Split the argument part of a line the way FWTK does.

    Blanks separate arguments; commas before an argument are skipped;
    "…" and '…' quote (the quotes may sit inside a word, as in a shell);
    a backslash escapes the next character, with \\t and \\n giving a tab
    and a newline.  Raises TokenError on an unterminated quote or a
    backslash at the end of the line.
    """
    tokens = []
    i, n = 0, len(text)
    while True:
        while i < n and (text[i] in _BLANKS or text[i] == ","):
            i += 1
        if i >= n:
            return tokens
        buf = []
        quote = None
        while i < n:
            c = text[i]
            if c == "\\":
                if i + 1 >= n:
                    raise TokenError("backslash at the end of the line")
                buf.append(_ESCAPES.get(text[i + 1], text[i + 1]))
                i += 2
                continue
            if quote:
                if c == quote:
                    quote = None
                else:
                    buf.append(c)
            elif c in "\"'":
                quote = c
            elif c in _BLANKS:
                break
            else:
                buf.append(c)
            i += 1
        if quote:
            raise TokenError(f"unterminated {quote} quote")
        tokens.append("".join(buf))


def quote(token: str) -> str:
    """The inverse of `tokenize` for one argument: a spelling that reads
    back as exactly `token`."""
    if token and not any(c in token for c in _BLANKS + "\"'\\\r\n,#"):
        return token
    out = []
    for c in token:
        if c in "\"\\":
            out.append("\\" + c)
        elif c == "\t":
            out.append("\\t")
        elif c == "\n":
            out.append("\\n")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def split_programs(text: str) -> list:
    """The program list before the first ':' (commas and blanks separate)."""
    return [p for p in re.split(r"[,\s]+", text) if p]


@dataclass
class Table:
    """A parsed table: rules in file order and the diagnostics of the lines
    that could not be read."""

    path: str
    rules: list = field(default_factory=list)
    diagnostics: list = field(default_factory=list)

    @classmethod
    def read(cls, path: str) -> "Table":
        try:
            data = read_regular(path, MAX_TABLE_BYTES)[0]
        except OSError as e:
            raise ConfigError([Diagnostic(path, 0, "error", f"cannot read the table: {e.strerror}")]) from None
        return cls.parse(data, path)

    @classmethod
    def parse(cls, data, path: str = "<table>") -> "Table":
        """Parse bytes or text; never raises for bad content."""
        table = cls(path)
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogatepass")
        for lineno, raw in enumerate(data.split(b"\n"), 1):
            table._parse_line(raw, lineno)
        return table

    def _error(self, lineno: int, message: str, programs: tuple = ()) -> None:
        self.diagnostics.append(Diagnostic(self.path, lineno, "error", message, programs))

    def _parse_line(self, raw: bytes, lineno: int) -> None:
        line = raw[:-1] if raw.endswith(b"\r") else raw
        # FWTK: a comment only in column 0.  A '#' anywhere else is data.
        # Both are judged on bytes, so that a comment in any encoding is
        # still a comment.
        if line.startswith(b"#") or not line.strip():
            return
        if b"\0" in line:
            self._error(lineno, "the line contains a NUL byte")
            return
        head, colon, rest = line.partition(b":")
        if not colon:
            self._error(lineno, "no ':' after the program list (expected 'program: keyword args…')")
            return
        programs = split_programs(head.decode("ascii", "replace"))
        if not programs:
            self._error(lineno, "empty program list before ':'")
            return
        bad = [p for p in programs if not _PROGRAM_RE.match(p)]
        if bad:
            self._error(lineno, f"bad program name {bad[0]!r} (a name or '*')")
            return
        programs = tuple(programs)
        try:
            words = tokenize(rest.decode("utf-8"))
        except UnicodeDecodeError:
            # Blamed on this line's programs only: another proxy's line in
            # Latin-1 does not stop ours.
            self._error(lineno, "the line is not valid UTF-8", programs)
            return
        except TokenError as e:
            self._error(lineno, str(e), programs)
            return
        if not words:
            self._error(lineno, "no keyword after ':'", programs)
            return
        keyword, flag = words[0].lower(), None
        for prefix in (PERMIT, DENY):
            if keyword.startswith(prefix + "-") and len(keyword) > len(prefix) + 1:
                flag, keyword = prefix, keyword[len(prefix) + 1:]
                break
        self.rules.append(Rule(programs, keyword, flag, tuple(words[1:]), self.path, lineno))

    def rules_for(self, names: Iterable[str]) -> list:
        """The rules that apply to a program reading under any of `names`,
        in file order (`*` lines included)."""
        names = tuple(names)
        return [r for r in self.rules if r.applies_to(names)]

    def program_names(self) -> list:
        """Every program name the table mentions, in order of appearance."""
        seen = {}
        for r in self.rules:
            for p in r.programs:
                if p != "*":
                    seen.setdefault(p, r)
        return list(seen)


# --------------------------------------------------------------------------
# Host matching (FWTK hostmatch semantics, with CIDR and IPv6 added).

_IPV4_MASK_RE = re.compile(r"^(\d{1,3}(?:\.\d{1,3}){3})[:/](\d{1,3}(?:\.\d{1,3}){3})$")
_GLOB = "*?["


@dataclass(frozen=True)
class HostPattern:
    """One compiled host pattern.  kind is one of: any, unknown, address
    (net/mask), addrglob, name."""

    text: str
    kind: str
    version: int = 0
    net: int = 0
    mask: int = 0

    def matches(self, addr, name: Optional[str]) -> bool:
        """`name` is the forward-confirmed reverse name, or None."""
        if self.kind == "any":
            return True
        if self.kind == "unknown":
            return not name
        if self.kind == "name":
            return bool(name) and fnmatch.fnmatchcase(name.lower().rstrip("."), self.text.lower().rstrip("."))
        a = client_address(addr)
        if self.kind == "address":
            return a.version == self.version and (int(a) & self.mask) == self.net
        if self.kind == "addrglob":
            return a.version == 4 and fnmatch.fnmatchcase(str(a), self.text)
        return False


def compile_host_pattern(text: str) -> HostPattern:
    """Compile `text` or raise ValueError with a sentence saying why not.

    Forms: `*`; `unknown`; a dotted address or IPv6 address; `addr/len`;
    `addr/mask` and `addr:mask` (IPv4, any mask, FWTK style); IPv6
    `prefix/len`; a glob on a dotted address (`192.168.1.*`); a glob on
    a name (`*.example.com`)."""
    if text == "*":
        return HostPattern(text, "any")
    if text.lower() == "unknown":
        return HostPattern(text, "unknown")
    m = _IPV4_MASK_RE.match(text)
    if m:
        try:
            net = int(ipaddress.IPv4Address(m.group(1)))
            mask = int(ipaddress.IPv4Address(m.group(2)))
        except ValueError:
            raise ValueError(f"bad address or mask in {text!r}") from None
        return HostPattern(text, "address", 4, net & mask, mask)
    if "/" in text:
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"bad network {text!r} (expected addr/len or addr/mask)") from None
        mapped = ipaddress.ip_network("::ffff:0:0/96")
        if network.version == 6 and network.prefixlen >= 96 and network.subnet_of(mapped):
            # Clients are matched as IPv4: so must an IPv4-mapped prefix be.
            network = ipaddress.ip_network(
                f"{network.network_address.ipv4_mapped}/{network.prefixlen - 96}")
        return HostPattern(text, "address", network.version, int(network.network_address), int(network.netmask))
    if not any(c in text for c in _GLOB):
        try:
            a = ipaddress.ip_address(text)
        except ValueError:
            a = None
        if a is not None:
            a = client_address(a)
            full = (1 << a.max_prefixlen) - 1
            return HostPattern(text, "address", a.version, int(a), full)
    has_glob = any(c in text for c in _GLOB)
    bare = text.translate(str.maketrans("", "", "*?[]!"))
    if "." in text and all(c in "0123456789." for c in bare):
        if not has_glob:
            raise ValueError(f"bad address {text!r}")
        return HostPattern(text, "addrglob")
    if ":" in text:
        if has_glob:
            raise ValueError(f"{text!r}: an IPv6 network is written as a prefix (2001:db8::/32), not a glob")
        raise ValueError(f"bad host pattern {text!r}")
    if not re.match(r"^[A-Za-z0-9_.*?\[\]!-]+$", text):
        raise ValueError(f"bad host pattern {text!r} (a name, an address, or a glob of either)")
    return HostPattern(text, "name")


@dataclass(frozen=True)
class HostRule:
    """A `permit-hosts`/`deny-hosts` line: patterns, then `-options`."""

    flag: str
    patterns: tuple
    options: tuple
    where: str

    def matches(self, addr, name: Optional[str]) -> bool:
        return any(p.matches(addr, name) for p in self.patterns)


def compile_host_rule(rule: Rule) -> HostRule:
    """Compile a `hosts` Rule; ValueError says what is wrong with it."""
    if rule.flag is None:
        raise ValueError("'hosts' needs a permit- or deny- prefix (permit-hosts, deny-hosts)")
    pats, opts = [], []
    for i, arg in enumerate(rule.args):
        if arg.startswith("-") and len(arg) > 1:
            opts = list(rule.args[i:])
            break
        pats.append(compile_host_pattern(arg))
    if not pats:
        raise ValueError(f"{rule.spelled()} needs at least one host pattern")
    return HostRule(rule.flag, tuple(pats), tuple(opts), rule.where)


def check_hosts(rules: Sequence[HostRule], addr, name: Optional[str]):
    """Decide access: (permitted, deciding rule or None).

    The first matching rule decides.  With no rules at all, everyone is
    permitted; with rules and no match, the client is denied."""
    for r in rules:
        if r.matches(addr, name):
            return r.flag == PERMIT, r
    return (not rules), None
