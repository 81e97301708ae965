"""smap's spam database: a file of refused clients, senders and domains.

What it does: reads the file named by `spam-database` into indexes, and
answers two questions: is this client address listed (`client_listed`),
and is this MAIL FROM sender listed (`sender_listed`)?  Each answer is the
matching entry as "FILE:LINE: WORD", or None.  Keeping it up to date is
the caller's: the master of smap -daemon reloads when the file changes
(master.py), inetd mode reads it for each connection.

The file format (this text is the reference the man page follows):

  One entry per line.  Blank lines, and lines whose first non-blank
  character is `#`, are ignored.  An entry is one word; it may be
  followed by blanks (spaces and tabs) and a comment that starts with
  `#`.  A `#` inside a word is part of the word (`a#b@example.com` is an
  address).  A CR before the end of the line is ignored.  The file is
  UTF-8.  Letters are compared without regard to case everywhere.

  The shape of the word decides its kind:

  `<>`
      The null sender: matches MAIL FROM:<>, the sender of bounces and
      delivery notifications.  Refusing it refuses every bounce sent to
      your users, from everyone, genuine ones included (RFC 5321 says a
      bounce must be accepted): that is the operator's choice, and smap
      only does what the line says.

  a word containing `@`: a sender address
      Compared with the whole MAIL FROM address: `user@example.com`,
      as the MTA will see it: a quoted local part dequoted
      (`"spam\\mer"@example.com` is spammer@example.com).
      `*` and `?` are wildcards anywhere: `*@spam.example` (every sender
      at spam.example), `user@*` (user at any domain), `*-bounces@*.example`.
      Before comparing, the domain of the sender and of the entry (the
      text after the last `@`) loses its trailing dots.  An empty local
      part (`@example.com`) or an empty domain (`user@`) is refused with a
      warning: write `*@example.com` and `user@*`.

  a word containing `:` or `/`, or made only of digits, dots, `*` and
  `?` with at least one dot: a client
      Compared with the client's IP address; an IPv4-mapped IPv6 address
      (::ffff:192.0.2.1, a dual-stack listener's view of an IPv4 client)
      is compared as the IPv4 address.  The forms, as in the
      netperm-table:
        192.0.2.1, 2001:db8::25          one address
        192.0.2.0/24, 2001:db8::/32      a network (host bits are ignored)
        192.0.2.0/255.255.255.0          IPv4 address/mask, any mask
        192.0.2.0:255.255.255.0          the same, FWTK spelling
        192.0.2.*, 10.*, 192.0.2.1?      IPv4 glob on the dotted form
      In a glob, `*` matches any run of characters, dots included (`10.*`
      is 10.0.0.0/8), and each part without a wildcard must be a number
      from 0 to 255; an IPv6 network is written as a prefix, never as a
      glob.

  anything else: a sender domain
      Labels of letters, digits, `-` and `_` separated by dots, with `*`
      and `?` as wildcards, the last label not all digits; a trailing dot
      is ignored.
        example.com      the domain example.com exactly (not its
                         subdomains)
        .example.com     every subdomain of example.com (mail.example.com,
                         a.b.example.com), not example.com itself: list
                         both lines to refuse both
        *.example.com    the same as .example.com
        spam*.example    a glob on the whole domain
      The sender's domain is the text after the last `@` of the MAIL FROM
      address, trailing dots removed; a domain entry never matches the
      null sender or an address literal (`user@[192.0.2.1]`: list it as
      `*@[192.0.2.1]`).

  Wildcards: `*` matches any run of characters (none included), `?`
  exactly one character; there are no others and no escape.  A word made
  only of wildcards and dots (`*`, `*.*`, `.*`) would match nearly
  everything and is refused.

  A line that is none of these -- a bad address or mask, a second word
  that is not a comment, a control character, bytes that are not UTF-8
  -- is a warning "FILE:LINE: text" and is ignored; the other lines still
  count.  When several entries match, the earliest line is the one
  reported.  A word listed twice counts once, at its first line.

What it trusts: nothing in the file, and nothing in the addresses it is
asked about.  Any bytes give entries and warnings, never an exception; any
client address or sender gives an answer (a client that is not an IP
address matches no client entry).  The file is read by path in `load`
only, before the jail.

What it must never do: take time that grows faster than the length of a
sender times the length of a pattern -- the client chooses its sender, so
the glob matcher never backtracks; act on a line it could not read
completely; stop smap because of a bad line.
"""

from __future__ import annotations

import os
import re
from typing import Optional

from smapd.table.netperm import compile_host_pattern
from smapd.addresses import client_address
from smapd.files import read_regular
from smapd.mailbox import compare_key

#: A bigger file is refused as a whole (OSError EFBIG): the database is
#: read into memory, and a runaway generator must not exhaust it.
MAX_FILE_BYTES = 64 << 20

_BLANKS = " \t"
_WILDCARDS = "*?"
_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # a tab is a blank
_IPV4_GLOB_CHARS = frozenset("0123456789.*?")
# Labels of letters, digits, '-' and '_' (and wildcards), separated by
# single dots.  ASCII only: smap does not offer SMTPUTF8, so a sender's
# domain is ASCII.
_DOMAIN_RE = re.compile(r"^[a-z0-9_*?-]+(?:\.[a-z0-9_*?-]+)*$")


# --------------------------------------------------------------------------
# Globs.

class _Segment:
    """A run of a glob without `*`: literal characters and `?`.  It has a
    fixed length, which is what makes leftmost matching correct."""

    __slots__ = ("text", "length", "regex")

    def __init__(self, text: str):
        self.text = text
        self.length = len(text)
        # A pattern of literals and '.' has no quantifier: re runs it in
        # time proportional to its length at each start position.
        self.regex = re.compile("".join("." if c == "?" else re.escape(c) for c in text), re.DOTALL) \
            if "?" in text else None

    def match_at(self, s: str, pos: int) -> bool:
        if self.regex is None:
            return s.startswith(self.text, pos)
        return self.regex.match(s, pos) is not None

    def find(self, s: str, start: int, end: int) -> int:
        """The first index >= start where the segment fits before `end`, or -1."""
        if self.regex is None:
            return s.find(self.text, start, end)
        m = self.regex.search(s, start, end)
        return m.start() if m else -1


class Glob:
    """A pattern with `*` (any run of characters) and `?` (one character).

    Matching takes time bounded by len(pattern) * len(text), whatever the
    pattern: the first segment must match at the start and the last at
    the end; each segment in between is taken at its leftmost place after
    the one before.  With segments of fixed length, the leftmost place is
    never worse than any other, so nothing is ever retried (a regex of
    `.*` groups can backtrack exponentially on `*a*a*a*a*b`)."""

    __slots__ = ("pattern", "_segments", "_star", "_minlen")

    def __init__(self, pattern: str):
        self.pattern = pattern
        parts = pattern.split("*")
        self._star = len(parts) > 1
        self._segments = [_Segment(p) for p in parts]
        self._minlen = sum(seg.length for seg in self._segments)

    def matches(self, s: str) -> bool:
        segs = self._segments
        if not self._star:
            return len(s) == self._minlen and segs[0].match_at(s, 0)
        if len(s) < self._minlen:
            return False
        head, tail = segs[0], segs[-1]
        end = len(s) - tail.length
        if not head.match_at(s, 0) or not tail.match_at(s, end):
            return False
        pos = head.length
        for seg in segs[1:-1]:
            if seg.length:
                i = seg.find(s, pos, end)
                if i < 0:
                    return False
                pos = i + seg.length
        return True


def _has_wildcard(word: str) -> bool:
    return any(c in word for c in _WILDCARDS)


def _only_wildcards(word: str) -> bool:
    return all(c in _WILDCARDS for c in word)


# --------------------------------------------------------------------------
# The database.

class _BadLine(ValueError):
    """Why a word is not an entry: the text of the warning."""


class SpamDatabase:
    """One version of the file, indexed.  Build it with `load` (a file) or
    `parse` (bytes or text, for tests and `smapctl check`)."""

    def __init__(self, path: str):
        self.path = path
        self.warnings: list = []
        self.stamp: tuple = ()
        self._count = 0
        # Client entries: per IP version, mask -> {network -> entry}; one
        # dict look-up per distinct mask (33 at most for IPv4 prefixes).
        self._nets = {4: {}, 6: {}}
        self._client_globs: list = []          # (Glob, entry), IPv4 dotted form
        # Sender entries.  An entry is (line, word).
        self._null = None
        self._addresses: dict = {}             # whole address -> entry
        self._domains: dict = {}               # exact domain (also from *@domain) -> entry
        self._parents: dict = {}               # domain -> entry, for its subdomains
        self._sender_globs: list = []          # (Glob, "address" | "domain", entry)

    def __len__(self) -> int:
        """The number of lines that gave an entry (a repeated word included)."""
        return self._count

    # ---------------------------------------------------------------- reading

    @classmethod
    def load(cls, path) -> "SpamDatabase":
        """Read the file at `path`.  OSError when it cannot be read (missing,
        unreadable, not a regular file, larger than MAX_FILE_BYTES); bad
        lines are warnings, never exceptions."""
        path = os.fspath(path)
        data, st = read_regular(path, MAX_FILE_BYTES)
        db = cls.parse(data, path)
        # The stamp of the file descriptor that was read, not of a later
        # stat of the path: a file replaced in between then counts as
        # changed, and is read again.
        db.stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        return db

    @classmethod
    def parse(cls, data, path: str = "<spam-database>") -> "SpamDatabase":
        """A database from bytes or text; never raises."""
        db = cls(path)
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogatepass")
        for lineno, raw in enumerate(data.split(b"\n"), 1):
            try:
                db._add_line(lineno, raw)
            except _BadLine as e:
                db.warnings.append(f"{path}:{lineno}: {e}; line ignored")
        return db

    def _add_line(self, lineno: int, raw: bytes) -> None:
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _BadLine("not valid UTF-8") from None
        text = line.strip(_BLANKS)
        if not text or text.startswith("#"):
            return
        m = _CONTROL_RE.search(text)
        if m:
            raise _BadLine(f"control character {m.group()!r} (only spaces and tabs separate words)")
        word, rest = text, ""
        for i, c in enumerate(text):
            if c in _BLANKS:
                word, rest = text[:i], text[i:].lstrip(_BLANKS)
                break
        if rest and not rest.startswith("#"):
            raise _BadLine(f"more than one word ({word!r}, then {rest.split()[0]!r}): one entry per line, "
                            "and a comment is a '#' after blanks")
        self._add_word(lineno, word)
        self._count += 1

    def _add_word(self, lineno: int, word: str) -> None:
        entry = (lineno, word)
        if word == "<>":
            if self._null is None:
                self._null = entry
            return
        if _only_wildcards(word.replace(".", "")):
            raise _BadLine(f"{word!r} would match nearly every client or sender")
        if "@" in word:
            self._add_sender(entry, word.lower())
        elif ":" in word or "/" in word or (set(word) <= _IPV4_GLOB_CHARS and "." in word):
            self._add_client(entry, word)
        else:
            self._add_domain(entry, word.lower())

    def _add_client(self, entry, word: str) -> None:
        if "[" in word or "]" in word:
            raise _BadLine(f"{word!r}: write a client address without [ ]")
        if set(word) <= _IPV4_GLOB_CHARS and _has_wildcard(word):
            parts = word.split(".")
            if len(parts) > 4:
                raise _BadLine(f"{word!r}: an IPv4 address has four parts")
            for part in parts:
                if not part or (not _has_wildcard(part) and not (len(part) <= 3 and int(part) <= 255)):
                    raise _BadLine(f"{word!r}: bad IPv4 glob (parts are 0 to 255, '*' or '?')")
            self._client_globs.append((Glob(word), entry))
            return
        try:
            pattern = compile_host_pattern(word)
        except ValueError as e:
            raise _BadLine(str(e)) from None
        if pattern.kind != "address":
            # Only address shapes reach here; anything else is not a client entry.
            raise _BadLine(f"{word!r}: not a client address or network")
        self._nets[pattern.version].setdefault(pattern.mask, {}).setdefault(pattern.net, entry)

    def _add_sender(self, entry, word: str) -> None:
        local, _, domain = word.rpartition("@")
        domain = domain.rstrip(".")
        if not local:
            hint = domain if domain and not _has_wildcard(domain) else "example.com"
            raise _BadLine(f"{entry[1]!r}: empty local part (for every sender at {hint}, write *@{hint})")
        if not domain:
            raise _BadLine(f"{entry[1]!r}: empty domain (for {local} at any domain, write {local}@*)")
        address = f"{local}@{domain}"
        if not _has_wildcard(address):
            self._addresses.setdefault(address, entry)
        elif local == "*" and not _has_wildcard(domain):
            # *@domain is exactly "the sender's domain is domain" (the
            # domain is what follows the last '@'): a dict look-up, not a
            # glob, for the commonest form of a list.
            self._domains.setdefault(domain, entry)
        else:
            self._sender_globs.append((Glob(address), "address", entry))

    def _add_domain(self, entry, word: str) -> None:
        name = word.rstrip(".")
        subdomains = False
        if name.startswith("*."):
            name, subdomains = name[2:], True
        elif name.startswith("."):
            name, subdomains = name[1:], True
        if not _DOMAIN_RE.match(name):
            raise _BadLine(f"{entry[1]!r}: not an address, a network, a sender address or a domain")
        if name.rpartition(".")[2].isdigit():
            # No top-level domain is all digits (RFC 3696): most likely an
            # address with a part missing.
            raise _BadLine(f"{entry[1]!r}: neither an address nor a domain (a top-level domain is never all digits)")
        if _has_wildcard(name):
            self._sender_globs.append((Glob("*." + name if subdomains else name), "domain", entry))
        elif subdomains:
            self._parents.setdefault(name, entry)
        else:
            self._domains.setdefault(name, entry)

    # ---------------------------------------------------------------- asking

    def _where(self, entry) -> str:
        return f"{self.path}:{entry[0]}: {entry[1]}"

    def client_listed(self, addr) -> Optional[str]:
        """The entry that lists client address `addr` (a string or an
        ipaddress object) as "FILE:LINE: WORD", or None."""
        try:
            a = client_address(addr)
        except ValueError:
            return None
        value = int(a)
        best = None
        for mask, nets in self._nets[a.version].items():
            e = nets.get(value & mask)
            if e is not None and (best is None or e[0] < best[0]):
                best = e
        if a.version == 4 and self._client_globs:
            best = _first_glob(self._client_globs, str(a), best)
        return None if best is None else self._where(best)

    def sender_listed(self, sender: str) -> Optional[str]:
        """The entry that lists MAIL FROM address `sender` as
        "FILE:LINE: WORD", or None.  `sender` is the address without its
        angle brackets ("" is the null sender); one enclosing pair is
        tolerated."""
        s = str(sender)
        if len(s) >= 2 and s[0] == "<" and s[-1] == ">":
            s = s[1:-1]
        if not s:
            return None if self._null is None else self._where(self._null)
        key = compare_key(s, sender=True)
        if key is not None:
            # As the MTA will see it: "spam\mer"@x is spammer@x.
            s, domain = f"{key[0]}@{key[1]}", key[1]
        else:
            s = s.lower()
            local, at, domain = s.rpartition("@")
            if at:
                domain = domain.rstrip(".")
                s = f"{local}@{domain}"
            else:
                domain = None
        candidates = [self._addresses.get(s)]
        if domain is not None:
            candidates.append(self._domains.get(domain))
            # Each parent of the domain: b.example.com, example.com, com.
            i = domain.find(".")
            while i >= 0:
                candidates.append(self._parents.get(domain[i + 1:]))
                i = domain.find(".", i + 1)
        best = None
        for e in candidates:
            if e is not None and (best is None or e[0] < best[0]):
                best = e
        if self._sender_globs:
            best = _first_glob(self._sender_globs, {"address": s, "domain": domain}, best)
        return None if best is None else self._where(best)

    # ---------------------------------------------------------------- change

    def changed(self) -> bool:
        """Is the file at `path` no longer the one that was loaded?  (A
        file that cannot be stat'ed counts as changed; a database made by
        `parse` always has.)"""
        try:
            st = os.stat(self.path)
        except (OSError, ValueError):
            return True
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) != self.stamp


def _first_glob(globs, subject, best):
    """The earliest of `best` and the glob entries that match.  `subject`
    is the text, or a dict of texts by target.  Globs are in file order,
    so the scan stops at the first match or once past `best`'s line."""
    for item in globs:
        glob, entry = item[0], item[-1]
        if best is not None and entry[0] > best[0]:
            break
        text = subject[item[1]] if isinstance(subject, dict) else subject
        if text is not None and glob.matches(text):
            return entry
    return best
