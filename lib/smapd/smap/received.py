"""The trace header smap puts at the head of every message it spools.

What it does: `received_header()` builds the `Received:` line (RFC 5321
4.4) from the session's HELO, the client's name and address, smap's host
name, the protocol (ESMTP[S][A]), the queue id and the recipients.

What it trusts: its arguments come from the protocol and the session:
the HELO argument is the client's, checked only as far as the protocol
checks it.

What it must never do: put a line break into the header that it did not
fold itself.
"""

from __future__ import annotations

from email.utils import formatdate

from smapd import __version__


def received_header(helo: str, client_name: str, client_addr: str, hostname: str, protocol: str,
                    queue_id: str, recipients, when: float = None) -> bytes:
    """The trace header (RFC 5321 4.4), folded, LF line ends."""
    name = client_name or "unknown"
    lines = [f"Received: from {helo} ({name} [{client_addr}])",
             f"\tby {hostname} via smap (smapd {__version__}) with {protocol} id {queue_id}"]
    if len(recipients) == 1:
        lines.append(f"\tfor <{recipients[0]}>; {formatdate(when, localtime=True)}")
    else:
        lines[-1] += ";"
        lines.append(f"\t{formatdate(when, localtime=True)}")
    return ("\n".join(lines) + "\n").encode("ascii", "replace")
