"""Envelope addresses: the one grammar of the suite.

What it does: `parse()` reads one RFC 5321 mailbox (`local@domain`, a
dot-atom or quoted-string local part, a domain or an address literal;
the bare `postmaster` for a recipient) and says why not with an
`AddressError`; `problem()` gives that reason or None.  smap judges MAIL
and RCPT with it (protocol.py), and smapd judges what it reads back from
the spool before the hand-off (handoff/deliver.py), so that smap never
answers 250 to an address that smapd would refuse.

A quoted local part is judged by what it dequotes to, since that is what
the MTA sees: `"|prog"@x` is the local part `|prog`, a pipe to the
Postfix and sendmail local delivery agents, and `"-oQ/tmp"@x` would be an
option on a sendmail command line.  Such local parts (starting with `|`,
`/` or `-`) are refused whatever their spelling, as policy (553), not
syntax (501).

What it trusts: nothing: the text may come from a client or a planted
spool file.

What it must never do: accept a control character, a NUL or a non-ASCII
octet (no SMTPUTF8), or look anything up.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Optional

MAX_PATH = 256     # octets, the angle brackets included (RFC 5321 4.5.3.1.3)
MAX_LOCAL = 64
MAX_DOMAIN = 255

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
DOT_ATOM = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"'
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*\.?"
#: An address literal's shape; `is_address_literal()` checks the address.
#: The IPv6 tag is case-insensitive, as all of RFC 5321's ABNF strings.
LITERAL = r"\[(?:[0-9.]+|(?i:IPv6):[0-9A-Fa-f:.]+)\]"
_MAILBOX_RE = re.compile(rf"^(?P<local>{DOT_ATOM}|{QUOTED})@(?P<domain>{DOMAIN}|{LITERAL})$")
_QUOTED_PAIR = re.compile(r"\\(.)")

#: First characters of a local part that the MTA behind would take for a
#: program, a file or a command-line option.
FORBIDDEN_STARTS = "|/-"


class AddressError(ValueError):
    """`reason`: why, for the reply and the log; `policy`: a refusal of
    something well formed (553) rather than bad syntax (501)."""

    def __init__(self, reason: str, policy: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.policy = policy


@dataclass(frozen=True)
class Mailbox:
    local: str        # as written (quotes and backslashes kept)
    domain: str       # as written ("" for the bare postmaster)

    @property
    def dequoted_local(self) -> str:
        """The local part the MTA sees: quotes and quoted-pairs removed."""
        if self.local.startswith('"'):
            return _QUOTED_PAIR.sub(r"\1", self.local[1:-1])
        return self.local


def parse(text: str, sender: bool = False) -> Mailbox:
    """One address without its angle brackets (a sender's source route
    already stripped).  The bare `postmaster` (any case) is a recipient's
    only address without a domain (RFC 5321 4.5.1)."""
    if not sender and text.lower() == "postmaster":
        return Mailbox("postmaster", "")
    if len(text) + 2 > MAX_PATH:
        raise AddressError("too long")
    if text.startswith("-"):
        raise AddressError("an address may not start with '-'", policy=True)
    m = _MAILBOX_RE.match(text)
    if not m:
        raise AddressError("not local-part@domain")
    local, domain = m.group("local"), m.group("domain")
    if len(local) > MAX_LOCAL or len(domain) > MAX_DOMAIN:
        raise AddressError("too long")
    if domain.startswith("[") and not is_address_literal(domain):
        raise AddressError(f"{domain} is not an address literal")
    box = Mailbox(local, domain)
    dequoted = box.dequoted_local
    if not dequoted:
        raise AddressError("an empty local part")
    if dequoted[0] in FORBIDDEN_STARTS:
        raise AddressError(f"an address may not start with {dequoted[0]!r}, quoted or not", policy=True)
    return box


def is_address_literal(text: str) -> bool:
    """`[192.0.2.1]` or `[IPv6:2001:db8::1]` (RFC 5321 4.1.3) holding an
    address the standard library reads: no `[999.1.1.1]`, `[1.2.3]`,
    `[01.2.3.4]` or nine IPv6 groups."""
    if len(text) < 3 or text[0] != "[" or text[-1] != "]":
        return False
    body = text[1:-1]
    try:
        if body[:5].lower() == "ipv6:":
            ipaddress.IPv6Address(body[5:])
        else:
            ipaddress.IPv4Address(body)
    except ValueError:
        return False
    return True


def compare_key(text: str, sender: bool = False) -> Optional[tuple]:
    """(local part, domain) as the MTA compares addresses: the local part
    dequoted (`"alice"@x` and `"al\\ice"@x` are alice), both case-folded,
    the domain without a trailing dot; None for what `parse()` refuses.
    Every list smap checks an address against compares these."""
    try:
        box = parse(text, sender)
    except AddressError:
        return None
    return box.dequoted_local.lower(), box.domain.lower().rstrip(".")


def problem(text: str, sender: bool = False) -> Optional[str]:
    """Why `text` is not an address smap accepts and smapd hands off, or
    None.  The null sender (`sender` and "") is fine."""
    if sender and text == "":
        return None
    try:
        parse(text, sender)
    except AddressError as e:
        return e.reason
    return None
