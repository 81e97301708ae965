"""xtext (RFC 3461 4): printable ASCII, every other octet as +XX.

What it does: `xtext()` encodes a value, `unxtext()` decodes one and says
when a text is not xtext.  The spool's ATTR lines, smapd's XCLIENT and
XFORWARD, and the AUTH= parameter of MAIL (RFC 4954 5) all use it.

What it trusts: nothing; the text may come from a client or a planted
spool file.

What it must never do: read or write anything; decode what is not xtext.
"""

from __future__ import annotations

import re


def xtext(value: str) -> str:
    """RFC 3461 4's xtext: printable ASCII but `+` and `=` as is, every
    other octet (of the UTF-8 form) as +XX; what XCLIENT and XFORWARD
    send, and what keeps an ATTR line one line of printable ASCII."""
    return "".join(chr(b) if 0x21 <= b <= 0x7e and b not in (0x2b, 0x3d) else f"+{b:02X}"
                   for b in value.encode("utf-8", "surrogateescape"))


def unxtext(text: str) -> str:
    """The inverse of xtext(); ValueError when `text` is not xtext."""
    if not _XTEXT.fullmatch(text):
        raise ValueError("not xtext")
    return re.sub(r"\+([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), text).encode(
        "latin-1").decode("utf-8", "surrogateescape")


_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*")
