"""The recipient verifier's wire format, between smap and smapd.

What it does: a jailed smap child asks smapd's verifier (handoff/
verifier.py) about one recipient over the UNIX socket spool.VERIFY_SOCKET
in the spool, one question per connection:

    RCPT <address>\\n                  the question, at most MAX_LINE octets
    250 2.1.5 text\\n                  the answer: code, enhanced status, text

`request()`/`parse_request()` and `answer()`/`parse_answer()` are the two
ends of each line, so that the format is written down once.

What it trusts: nothing: either end may be a compromised process (a
jailed child, a process under smapd's uid).

What it must never do: let a line carry a control character or more than
MAX_LINE octets, or an answer with a code outside 2xx, 4xx and 5xx.
"""

from __future__ import annotations

import re
from typing import Optional, Tuple

MAX_LINE = 1024
_REQUEST = re.compile(rb"RCPT <([\x20-\x7e]{1,512})>\n")
_ANSWER = re.compile(rb"([245])(\d\d) ([245]\.\d{1,3}\.\d{1,3}) ([\x20-\x7e]{0,900})\n")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


def request(address: str) -> bytes:
    return f"RCPT <{address}>\n".encode("ascii")


def parse_request(line: bytes) -> Optional[str]:
    m = _REQUEST.fullmatch(line)
    return m.group(1).decode("ascii") if m else None


def answer(code: int, status: str, text: str) -> bytes:
    text = _UNPRINTABLE.sub("?", text)[:900]
    return f"{code} {status} {text}\n".encode("ascii")


def parse_answer(line: bytes) -> Optional[Tuple[int, str, str]]:
    """(code, enhanced status, text), or None for anything else; the
    status must be of the code's class."""
    m = _ANSWER.fullmatch(line)
    if not m or m.group(3)[0:1] != m.group(1):
        return None
    return int(m.group(1) + m.group(2)), m.group(3).decode("ascii"), m.group(4).decode("ascii")
