"""Reading the spool: the envelope of a committed message.

What it does: `read_envelope()` parses the head of an `sma<id>` file
(`FROM <sender>`, a `RCPT <recipient>` line per recipient, turned into
`SENT <recipient>` in place once handed off, then `BODY`) and says where the message
starts; `list_spool()` lists the committed files of a spool directory.
smapd and `smapctl queue` read the spool through this module only.

What it trusts: nothing in the file.  A spool file may be truncated,
edited by hand or planted; anything that is not exactly the format is
`Corrupt`, with a reason for the log, and goes to bad/ (smapd's job).

What it must never do: read a message body into memory, or accept an
address that holds a control character or angle brackets.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from .spool import READY_PREFIX

#: The longest envelope accepted: 10 000 recipients of 256 octets and more.
MAX_ENVELOPE = 4 << 20
_LINE = re.compile(rb"^(FROM|RCPT|SENT) <([^<>\x00-\x1f\x7f]*)>$")


class Corrupt(Exception):
    """The file is not a spool file smapd can deliver; the text says why."""


@dataclass
class Envelope:
    sender: str
    recipients: list                              # every recipient, in SMTP order
    sent: list = field(default_factory=list)      # those already handed off
    body_offset: int = 0
    rcpt_offsets: dict = field(default_factory=dict)  # pending recipient -> offsets of its RCPT lines

    @property
    def pending(self) -> list:
        """Recipients not yet handed off, in SMTP order."""
        done = set(self.sent)
        return [r for r in self.recipients if r not in done]


def read_envelope(f) -> Envelope:
    """Parse the envelope from a binary file object positioned anywhere.

    A recipient handed off already has its `RCPT` turned into `SENT` in
    place (same length: the file never moves, see deliver.mark_sent)."""
    f.seek(0)
    env = Envelope(None, [])
    offset = 0
    while True:
        line = f.readline(MAX_ENVELOPE)
        if not line:
            raise Corrupt("no BODY line (truncated file)")
        start, offset = offset, offset + len(line)
        if offset > MAX_ENVELOPE:
            raise Corrupt("envelope too large")
        if not line.endswith(b"\n"):
            raise Corrupt("truncated envelope line")
        line = line[:-1]
        if line == b"BODY":
            break
        m = _LINE.match(line)
        if not m:
            raise Corrupt(f"bad envelope line {line[:60]!r}")
        kind, addr = m.group(1), m.group(2).decode("utf-8", "surrogateescape")
        if kind == b"FROM":
            if env.sender is not None or env.recipients:
                raise Corrupt("FROM is not the first line, or appears twice")
            env.sender = addr
            continue
        if env.sender is None:
            raise Corrupt("the first line is not FROM")
        if not addr:
            raise Corrupt("empty recipient")
        env.recipients.append(addr)
        if kind == b"SENT":
            env.sent.append(addr)
        else:
            env.rcpt_offsets.setdefault(addr, []).append(start)
    if env.sender is None:
        raise Corrupt("no FROM line")
    if not env.recipients:
        raise Corrupt("no RCPT line")
    env.body_offset = offset
    return env


def list_spool(directory: str) -> list:
    """The committed spool files (`sma*`), oldest first by name."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(READY_PREFIX))
