"""The recipient map: which mailboxes exist behind smap.

What it does: `RecipientMap.load()` reads the file of the `recipients`
keyword, in the format of Postfix's relay_recipient_maps source files (so
that one file can serve both): one key per line, then optionally blanks
and a value, which is ignored (`alice@example.org OK`); `#` comments and
blank lines are skipped.  A key is a mailbox (`alice@example.org`) or a
whole domain (`@example.org`: every local part exists).  The domains of
the keys are the map's domains.  `verdict()` says of a recipient:

    "known"    its domain is the map's and the mailbox (or the domain)
               is listed: accepted, from anyone (the map is relay control)
    "unknown"  its domain is the map's and the mailbox is not listed:
               550 5.1.1, from anyone, so that nothing is accepted that
               the MTA would bounce to a forged sender (backscatter)
    "other"    not a domain of the map: the other checks decide

Keys compare as Postfix compares them: the dequoted local part (so that
`"alice"@example.org` is alice) and the domain, both case-folded, the
domain without a trailing dot.  The bare `postmaster` and `postmaster@`
every map domain are always known (RFC 5321 4.5.1).

What it trusts: nothing in the file; bad lines are warnings with
file:line and are skipped.  It is read as root before the jail; the
master re-reads it when it changes (a reload).

What it must never do: raise on a bad line, or let an unlisted recipient
of a map domain through.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from smapd.files import read_regular
from smapd.mailbox import compare_key

#: A bigger file is refused as a whole (OSError EFBIG): it is read into
#: memory.
MAX_FILE_BYTES = 64 << 20


@dataclass
class RecipientMap:
    path: str = "<recipients>"
    mailboxes: set = field(default_factory=set)      # (local, domain)
    whole_domains: set = field(default_factory=set)  # every local part exists
    domains: set = field(default_factory=set)        # the map's domains
    warnings: list = field(default_factory=list)

    @classmethod
    def load(cls, path) -> "RecipientMap":
        """OSError when the file cannot be read (missing, not a regular
        file, too big); bad lines are warnings."""
        path = os.fspath(path)
        data, _st = read_regular(path, MAX_FILE_BYTES)
        return cls.parse(data, path)

    @classmethod
    def parse(cls, data, path: str = "<recipients>") -> "RecipientMap":
        m = cls(path)
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogatepass")
        for lineno, raw in enumerate(data.split(b"\n"), 1):
            problem = m._add(raw)
            if problem:
                m.warnings.append(f"{path}:{lineno}: {problem}; line ignored")
        return m

    def _add(self, raw: bytes):
        try:
            line = raw.decode("ascii")
        except UnicodeDecodeError:
            return "not ASCII (smap offers no SMTPUTF8)"
        line = line.rstrip("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            return None
        if line[0] in " \t":
            return "a continuation line (the key must start the line)"
        key = _first_word(line)
        if key.startswith("@"):
            domain = key[1:].lower().rstrip(".")
            if compare_key("postmaster@" + domain) is None:
                return f"{key!r} is not @domain"
            self.whole_domains.add(domain)
            self.domains.add(domain)
            return None
        k = compare_key(key)
        if k is None:
            return f"{key!r} is not an address (local-part@domain) or @domain"
        self.mailboxes.add(k)
        self.domains.add(k[1])
        return None

    def verdict(self, recipient: str) -> str:
        if recipient.lower() == "postmaster":
            return "known"
        k = compare_key(recipient)
        if k is None or k[1] not in self.domains:
            return "other"
        local, domain = k
        if domain in self.whole_domains or k in self.mailboxes or local == "postmaster":
            return "known"
        return "unknown"


def _first_word(line: str) -> str:
    """The key: up to the first blank outside a quoted local part."""
    quoted = escaped = False
    for i, c in enumerate(line):
        if escaped:
            escaped = False
        elif quoted and c == "\\":
            escaped = True
        elif c == '"':
            quoted = not quoted
        elif c in " \t" and not quoted:
            return line[:i]
    return line
