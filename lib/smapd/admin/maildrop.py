"""`smapctl maildrop DIR`: a sendmail-compatible local delivery into Maildirs.

What it does: takes a message on stdin and the sendmail command line
smapd uses (`-oi -f SENDER -- RCPT…`) and writes one Maildir message per
recipient under DIR (`DIR/<recipient>/new/…`), each with `Return-Path:`
and `Delivered-To:` on top.  It is the embedded delivery default of the
demo (`make run`), for a machine without an MTA.

What it trusts: its caller (smapd) for the envelope; a recipient still
has to be a plain address before it becomes a directory name.

What it must never do: deliver to some recipients and report failure (it
writes and syncs every copy in tmp/ first and renames them all into new/
only when all are written), put an address with a control character in
a header, or make a directory name out of an address that could leave
DIR.

Exit statuses (sysexits, as sendmail): 0 delivered to all; 64 usage;
67 a recipient that cannot be a Maildir name; 75 temporary failure (a
write or fsync failed: try again later).
"""

from __future__ import annotations

import os
import socket
import sys
import time

from smapd.files import fsync_dir, write_all

EX_OK, EX_USAGE, EX_NOUSER, EX_TEMPFAIL = 0, 64, 67, 75
_counter = 0


def _unique() -> str:
    global _counter
    _counter += 1
    now = time.time()
    host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
    return f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{_counter}.{host}"


def plain(address: str) -> bool:
    """No blanks, control characters or DEL: nothing that could end a
    header line or hide in one."""
    return not any(ord(c) < 33 or ord(c) == 127 for c in address)


def mailbox_name(rcpt: str):
    """The directory name of a recipient, or None when the address is not
    a plain one (path separators, a leading dot or dash, blanks, control
    characters, longer than a file name may be)."""
    name = rcpt.lower()
    if (not name or "/" in name or name.startswith((".", "-")) or not plain(name)
            or len(name.encode("utf-8", "surrogateescape")) > 200):
        return None
    return name


def parse_args(argv):
    """sendmail's options as smapd passes them -> (sender, rcpts, ignore_dots)."""
    sender, rcpts, ignore_dots = None, [], False
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            rcpts = argv[i + 1:]
            break
        if a in ("-oi", "-i"):
            ignore_dots = True
        elif a == "-f" and i + 1 < len(argv):
            sender = argv[i + 1]
            i += 1
        elif a.startswith("-f") and len(a) > 2:
            sender = a[2:]
        elif a == "-F" and i + 1 < len(argv):
            i += 1
        elif a.startswith("-"):
            raise ValueError(f"unsupported option {a!r}")
        else:
            rcpts = argv[i:]
            break
        i += 1
    if not rcpts:
        raise ValueError("no recipients")
    return sender, rcpts, ignore_dots


def read_message(stream, ignore_dots: bool) -> bytes:
    if ignore_dots:
        return stream.read()
    lines = []
    for line in stream:
        if line.rstrip(b"\r\n") == b".":
            break
        lines.append(line)
    return b"".join(lines)


def deliver(directory: str, sender, rcpts, body: bytes) -> int:
    boxes = []
    for r in rcpts:
        name = mailbox_name(r)
        if name is None:
            print(f"maildrop: {r!r}: not a deliverable address", file=sys.stderr)
            return EX_NOUSER
        boxes.append((r, os.path.join(directory, name)))
    staged, delivered = [], 0
    try:
        for rcpt, box in boxes:
            for sub in ("tmp", "new", "cur"):
                os.makedirs(os.path.join(box, sub), mode=0o700, exist_ok=True)
            unique = _unique()
            tmp = os.path.join(box, "tmp", unique)
            head = f"Return-Path: <{sender or ''}>\nDelivered-To: {rcpt}\n".encode("utf-8", "surrogateescape")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            staged.append((tmp, os.path.join(box, "new", unique)))
            try:
                write_all(fd, head + body)
                os.fsync(fd)
            finally:
                os.close(fd)
        for tmp, new in staged:
            os.rename(tmp, new)
            delivered += 1
    except OSError as e:
        if delivered:
            # Renames within one file system do not fail short of a broken
            # disk; if one did, the copies already in new/ stay, and a
            # retry would duplicate them, so this is reported as done.
            print(f"maildrop: {e.filename or directory}: {e.strerror}: delivered to {delivered} of "
                  f"{len(staged)} recipients only", file=sys.stderr)
            return EX_OK
        for tmp, _ in staged:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        print(f"maildrop: {e.filename or directory}: {e.strerror}", file=sys.stderr)
        return EX_TEMPFAIL
    for _, new in staged:
        try:
            fsync_dir(os.path.dirname(new))
        except OSError as e:
            print(f"maildrop: cannot sync {os.path.dirname(new)}: {e.strerror}", file=sys.stderr)
    return EX_OK


def main(directory: str, argv) -> int:
    try:
        sender, rcpts, ignore_dots = parse_args(list(argv))
    except ValueError as e:
        print(f"maildrop: {e}; usage: smapctl maildrop DIR [-oi] [-f SENDER] [--] RCPT…", file=sys.stderr)
        return EX_USAGE
    if sender in ("<>",):
        sender = ""
    if sender and not plain(sender):
        print(f"maildrop: {sender!r}: not a plain sender address", file=sys.stderr)
        return EX_USAGE
    body = read_message(sys.stdin.buffer, ignore_dots)
    return deliver(directory, sender, rcpts, body)
