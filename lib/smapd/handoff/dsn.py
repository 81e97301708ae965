"""Delivery status notifications: the bounce of a recipient smapd gives up.

What it does: `build()` writes an RFC 3464 report (multipart/report with
a human part, the message/delivery-status part and the original message's
headers as text/rfc822-headers, RFC 6522); `queue_bounce()` puts it into
the spool from the null sender to the original sender, as smap would have
written it, so that it reaches the sender through the same hand-off and
the same retries as any other message.

What it trusts: the envelope smapd read back from the spool (addresses
that mailbox.py accepted, or the refused ones, which are only quoted in
the report, never used as an address), and the original headers, copied
as they are.

What it must never do: bounce to the null sender (RFC 5321 6.1: no
bounce of a bounce), read more of the original than its headers, or put
a refused address anywhere but in the report's text.
"""

from __future__ import annotations

import email.utils
import os
import time

from smapd import spool

#: How much of the original's header is attached (a bounce of a message
#: with an enormous header must not be enormous).
MAX_HEADERS = 64 * 1024


def original_headers(fd: int, offset: int) -> bytes:
    """The header of the message stored at `offset` of the spool file,
    up to its first empty line, at most MAX_HEADERS octets (whole lines)."""
    data = os.pread(fd, MAX_HEADERS, offset)
    end = data.find(b"\n\n")
    if end >= 0:
        return data[:end + 1]
    cut = data.rfind(b"\n")
    return data[:cut + 1] if cut >= 0 else b""


#: The longest address or reason quoted whole (a planted file may hold
#: an address of any length; a report line stays well under 998 octets).
MAX_SHOWN = 300


def shown(text: str) -> str:
    """`text` as the report quotes it: printable ASCII, at most MAX_SHOWN
    characters and "..." when cut."""
    text = "".join(c if " " <= c <= "~" else "?" for c in text)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "..."


def build(queue_id: str, hostname: str, sender: str, failures, headers: bytes, arrival: float,
          now: float = None) -> bytes:
    """The report, LF line ends (the spool's canonical form).  `failures`:
    (recipient, enhanced status, reply or reason) for each recipient."""
    now = time.time() if now is None else now
    boundary = f"{queue_id}.{int(now)}/{hostname}"
    date = email.utils.formatdate(now, localtime=False)
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{shown(sender)}>",
        "Subject: Undelivered Mail Returned to Sender",
        f"Date: {date}",
        f"Message-ID: <{queue_id}.dsn.{int(now)}@{hostname}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=us-ascii",
        "Content-Description: Notification",
        "",
        f"This is the mail system at host {hostname}.",
        "",
        "Your message (queue id " + queue_id + ") could not be delivered to the",
        "recipients below; it was delivered to any other recipients it had.",
        "",
    ]
    for rcpt, _status, why in failures:
        lines.append(f"<{shown(rcpt)}>: {shown(why)}")
    lines += [
        "",
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "Content-Description: Delivery report",
        "",
        f"Reporting-MTA: dns; {hostname}",
        f"X-Smapd-Queue-ID: {queue_id}",
        f"Arrival-Date: {email.utils.formatdate(arrival, localtime=False)}",
    ]
    for rcpt, status, why in failures:
        lines += [
            "",
            f"Final-Recipient: rfc822; {shown(rcpt)}",
            "Action: failed",
            f"Status: {status}",
            f"Diagnostic-Code: smtp; {shown(why)}",
        ]
    lines += [
        "",
        f"--{boundary}",
        "Content-Type: text/rfc822-headers",
        "Content-Description: Undelivered message headers",
        "",
    ]
    head = "\n".join(lines).encode("ascii") + b"\n" + headers
    if not head.endswith(b"\n"):
        head += b"\n"
    return head + f"\n--{boundary}--\n".encode("ascii")


def queue_bounce(directory: str, hostname: str, queue_id: str, sender: str, failures, headers: bytes,
                 arrival: float):
    """Spool the report for `sender`; returns its queue id, or None for
    the null sender (nothing is sent).  An OSError means nothing was
    queued: the caller must keep the original."""
    if not sender:
        return None
    writer = spool.SpoolWriter(directory, "", [sender], b"")
    writer.write(build(queue_id, hostname, sender, failures, headers, arrival))
    return writer.commit()
