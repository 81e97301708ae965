"""Reading the spool: the envelope of a committed message.

What it does: `read_envelope()` parses the head of an `sma<id>` file
(`FROM <sender>`, `RCPT <recipient>` lines, `SENT <recipient>` lines for
recipients already handed off, then `BODY`) and says where the message
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
    recipients: list
    sent: list = field(default_factory=list)
    body_offset: int = 0

    @property
    def pending(self) -> list:
        """Recipients not yet handed off, in SMTP order."""
        done = set(self.sent)
        return [r for r in self.recipients if r not in done]


def read_envelope(f) -> Envelope:
    """Parse the envelope from a binary file object positioned anywhere."""
    f.seek(0)
    sender, rcpts, sent = None, [], []
    offset = 0
    while True:
        line = f.readline(MAX_ENVELOPE)
        if not line:
            raise Corrupt("no BODY line (truncated file)")
        offset += len(line)
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
            if sender is not None or rcpts or sent:
                raise Corrupt("FROM is not the first line, or appears twice")
            sender = addr
        elif sender is None:
            raise Corrupt("the first line is not FROM")
        elif kind == b"RCPT":
            if not addr:
                raise Corrupt("empty recipient")
            rcpts.append(addr)
        else:
            if addr not in rcpts:
                raise Corrupt(f"SENT for a recipient that is not in the envelope: {addr!r}")
            sent.append(addr)
    if sender is None:
        raise Corrupt("no FROM line")
    if not rcpts:
        raise Corrupt("no RCPT line")
    return Envelope(sender, rcpts, sent, offset)


def list_spool(directory: str) -> list:
    """The committed spool files (`sma*`), oldest first by name."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(READY_PREFIX))
