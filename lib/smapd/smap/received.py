"""The trace header smap puts at the head of every message it spools.

What it does: `received_header()` builds the `Received:` line (RFC 5321
4.4) from the session's HELO, the client's name and address, smap's host
name, the protocol (ESMTP[S][A]), the queue id and the recipients:

    Received: from HELO (NAME [ADDRESS])
            by HOST (smap, smapd VERSION) with ESMTP id QUEUEID
            for <RCPT>; DATE

The HELO is the From-domain only when it is one (a domain name, or an
address literal holding an address); anything else the client said is
kept in the comment, quoted, and the From-domain is the client's address
literal: `from [192.0.2.7] (unknown [192.0.2.7] helo="x;y(z")`.  An IPv6
address carries its tag (`[IPv6:2001:db8::7]`, RFC 5321 4.1.3).  The
product goes in a comment: `via` takes only a registered link name.

What it trusts: its arguments come from the protocol and the session:
the HELO argument is the client's (printable ASCII, no blank, checked no
further); the client's name is a forward-confirmed DNS name or
"unknown".

What it must never do: put a line break into the header that it did not
fold itself, or let the client's word open or close a comment.
"""

from __future__ import annotations

import ipaddress
import re
import time
from email.utils import formatdate

from smapd import __version__
from smapd.mailbox import DOMAIN, is_address_literal

_DOMAIN_RE = re.compile(DOMAIN)


def address_literal(addr: str) -> str:
    """The client's address as RFC 5321 writes it in brackets."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return f"[{addr}]"
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return f"[IPv6:{ip.compressed}]" if ip.version == 6 else f"[{ip}]"


def _is_from_domain(helo: str) -> bool:
    return bool(helo) and ((_DOMAIN_RE.fullmatch(helo) is not None and not helo.endswith(".")) or
                           is_address_literal(helo))


def _quoted(text: str) -> str:
    """`text` in double quotes, fit for a comment: a backslash before each
    `\\`, `"`, `(` and `)` (a quoted-pair, RFC 5322 3.2.1)."""
    return '"' + re.sub(r'([\\"()])', r"\\\1", text) + '"'


_last_date = (None, "")


def _date(when: float = None) -> str:
    """RFC 5322 date of `when` (now by default), local time: formatted
    once per second (a busy child stamps many messages in one, and
    formatdate was a few per cent of a session)."""
    global _last_date
    second = int(time.time() if when is None else when)
    if _last_date[0] != second:
        _last_date = (second, formatdate(second, localtime=True))
    return _last_date[1]


def received_header(helo: str, client_name: str, client_addr: str, hostname: str, protocol: str,
                    queue_id: str, recipients, when: float = None) -> bytes:
    """The trace header (RFC 5321 4.4), folded, LF line ends."""
    name = client_name or "unknown"
    literal = address_literal(client_addr)
    if _is_from_domain(helo):
        first = f"Received: from {helo} ({name} {literal})"
    else:
        first = f"Received: from {literal} ({name} {literal} helo={_quoted(helo or '')})"
    lines = [first, f"\tby {hostname} (smap, smapd {__version__}) with {protocol} id {queue_id}"]
    if len(recipients) == 1:
        lines.append(f"\tfor <{recipients[0]}>; {_date(when)}")
    else:
        lines[-1] += ";"
        lines.append(f"\t{_date(when)}")
    return ("\n".join(lines) + "\n").encode("ascii", "replace")
