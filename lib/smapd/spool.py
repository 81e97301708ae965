"""The spool: the one module that knows the format of a queue file.

What it does: `SpoolWriter` writes one message as `xma<id>` (O_CREAT|O_EXCL,
mode 0660, under an fcntl write lock), streams the body into it, and on
`commit()` flushes, fsyncs, renames it to `sma<id>`, fsyncs the directory,
unlocks and pokes the `.trigger` FIFO so that smapd looks at once.  Only
then may smap answer 250.  `abort()` removes the temporary file.
`read_envelope()` parses the head of a committed file and says where the
message starts; `list_spool()` lists the committed files; `mark_sent()`
turns handed-off recipients' `RCPT` lines into `SENT` in place;
`set_error()`/`get_error()` keep a file's last delivery error in an
extended attribute.  smap writes through this module; smapd and smapctl
read and mark through it.

The format (LF line ends; the body dot-unstuffed, in canonical form):

    FROM <sender>               the null sender is FROM <>
    ATTR name=value             what smap knew of the client (ATTRIBUTES),
                                the value xtext-encoded (RFC 3461 4)
    RCPT <recipient>            one line per recipient, in SMTP order
    BODY
    Received: ...
    <message>

What it trusts: when writing, the envelope it is given has been
validated by the protocol (no CR, LF or NUL in an address); the directory
is the spool (inside smap's jail it is "/").  When reading, nothing in the
file: a spool file may be truncated, edited by hand or planted; anything
that is not exactly the format is `Corrupt`, with a reason for the log.

What it must never do: leave an `sma*` file that is not complete and
synced, reuse a queue id, let a write failure pass silently (every error
is an OSError for the caller, who answers 451 and calls `abort()`), read
a message body into memory, or accept an address read back that holds a
control character or a non-ASCII octet (every address smap writes, which
mailbox.py accepted, reads back unchanged).
"""

from __future__ import annotations

import fcntl
import itertools
import os
import re
import stat
import time
from dataclasses import dataclass, field

from smapd.files import fsync_dir
from smapd.xtext import unxtext, xtext

TEMP_PREFIX, READY_PREFIX, TRIGGER = "xma", "sma", ".trigger"
#: smapd's status (handoff/status.py), which `smapctl stats smapd` reads;
#: written beside it as STATUS + ".new" and renamed.  Neither name starts
#: with READY_PREFIX: list_spool() never takes them for messages.
STATUS = ".status"
#: The UNIX socket of smapd's recipient verifier (handoff/verifier.py).
VERIFY_SOCKET = ".verify"
#: The ATTR lines smap writes: what the MTA behind smapd needs to judge
#: and log the original client (XCLIENT/XFORWARD).  The reader keeps any
#: name of this shape, so that a newer smap's file is not "corrupt" to an
#: older smapd.
ATTRIBUTES = ("client-addr", "client-name", "helo", "proto", "login")
_counter = itertools.count(1)
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def base36(n: int) -> str:
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = _ALPHABET[r] + out
        if not n:
            return out


#: Base-36 digits of the microsecond time at the head of every queue id.
ID_TIME_DIGITS = 11


def new_queue_id() -> str:
    """Unique without coordination: microseconds (fixed width, so that the
    birth of a message can be read back), process id, counter."""
    stamp = base36(time.time_ns() // 1000).rjust(ID_TIME_DIGITS, "0")
    return f"{stamp}{base36(os.getpid())}P{base36(next(_counter))}"


def queue_id_time(queue_id: str):
    """When the message with this id was received (seconds), or None."""
    try:
        return int(queue_id[:ID_TIME_DIGITS], 36) / 1e6
    except ValueError:
        return None


#: A spool file's mode: its writer's, and the group's, so that smapd may
#: run as a user of its own in smap's group (it opens a file read-write
#: to lock it and mark SENT lines); never anyone else's.
FILE_MODE = 0o660


class SpoolWriter:
    """One message on its way into the spool."""

    def __init__(self, directory: str, sender: str, recipients, header: bytes, queue_id: str = None,
                 attributes: dict = None):
        self.directory = directory
        self.queue_id = queue_id or new_queue_id()
        self.temp = os.path.join(directory, TEMP_PREFIX + self.queue_id)
        self.final = os.path.join(directory, READY_PREFIX + self.queue_id)
        self.size = 0
        fd = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)   # whatever the umask (a daemon's is 077)
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.file = os.fdopen(fd, "wb", buffering=65536)
        except BaseException:
            os.close(fd)
            self._unlink()
            raise
        try:
            envelope = ([f"FROM <{sender}>\n"]
                        + [f"ATTR {k}={xtext(v)}\n" for k, v in (attributes or {}).items() if v is not None]
                        + [f"RCPT <{r}>\n" for r in recipients] + ["BODY\n"])
            self.file.write("".join(envelope).encode("ascii"))
            self.file.write(header)
        except BaseException:
            self.abort()
            raise

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.size += len(data)

    def commit(self) -> str:
        """Make the message durable and visible to smapd; returns the id.
        On an OSError the temporary file is gone and nothing is visible."""
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            os.rename(self.temp, self.final)
        except BaseException:
            self.abort()
            raise
        try:
            fsync_dir(self.directory)
        except OSError:
            # The rename may not survive a crash: take it back rather than
            # acknowledge a message that could vanish.
            try:
                os.rename(self.final, self.temp)
            except OSError:
                pass
            self.abort()
            raise
        # The message is durable and visible: from here on nothing may turn
        # the answer into a 451, or the client would send it again.
        try:
            self.file.close()  # closing drops the lock
        except OSError:
            pass
        poke_trigger(self.directory)
        return self.queue_id

    def abort(self) -> None:
        """Close and remove the temporary file; safe to call again."""
        try:
            self.file.close()
        except (OSError, AttributeError):
            pass
        self._unlink()

    def _unlink(self) -> None:
        try:
            os.unlink(self.temp)
        except FileNotFoundError:
            pass


def poke_trigger(directory: str) -> None:
    """Wake smapd through the FIFO; no reader, no FIFO, or a full pipe are
    all fine (smapd polls anyway)."""
    try:
        fd = os.open(os.path.join(directory, TRIGGER), os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            os.write(fd, b"\n")
    except OSError:
        pass  # a full pipe already wakes smapd
    finally:
        os.close(fd)




# ------------------------------------------------------------ reading back

#: The longest envelope accepted: 10 000 recipients of 256 octets and more.
MAX_ENVELOPE = 4 << 20
# Between the brackets, printable ASCII and blanks: a quoted local part
# may hold blanks and angle brackets ("john doe"@x, "a>b"@x), and the
# line ends with the closing bracket.  The grammar is mailbox.py's, which
# smapd applies to what this returns.
_LINE = re.compile(rb"^(FROM|RCPT|SENT) <([\x20-\x7e]*)>$")
_ATTR = re.compile(rb"^ATTR ([a-z][a-z0-9-]{0,31})=([\x21-\x7e]{0,2048})$")


class Corrupt(Exception):
    """The file is not a spool file smapd can deliver; the text says why."""


@dataclass
class Queued:
    """The envelope of a committed spool file, as read back."""

    sender: str
    recipients: list                              # every recipient, in SMTP order
    sent: list = field(default_factory=list)      # those already handed off
    body_offset: int = 0
    rcpt_offsets: dict = field(default_factory=dict)  # pending recipient -> offsets of its RCPT lines
    attributes: dict = field(default_factory=dict)    # ATTR name -> value (decoded)

    @property
    def pending(self) -> list:
        """Recipients not yet handed off, in SMTP order."""
        done = set(self.sent)
        return [r for r in self.recipients if r not in done]


def read_envelope(f) -> Queued:
    """Parse the envelope from a binary file object positioned anywhere.

    A recipient handed off already has its `RCPT` turned into `SENT` in
    place (same length: the file never moves, see mark_sent)."""
    f.seek(0)
    env = Queued(None, [])
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
        m = _ATTR.match(line)
        if m:
            if env.sender is None:
                raise Corrupt("the first line is not FROM")
            if env.recipients:
                raise Corrupt("an ATTR line is not between FROM and the first RCPT")
            try:
                env.attributes[m.group(1).decode("ascii")] = unxtext(m.group(2).decode("ascii"))
            except ValueError:
                raise Corrupt(f"bad envelope line {line[:60]!r}") from None
            continue
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


# ------------------------------------------------------------ marking

def mark_sent(fd: int, env: Queued, batch) -> None:
    """Turn the batch's RCPT lines into SENT lines, in place and synced:
    the same length, so the file neither grows nor moves, and its lock
    (the caller's) is never let go.  Needs no free space."""
    for r in batch:
        for offset in env.rcpt_offsets.pop(r, ()):
            os.pwrite(fd, b"SENT", offset)
    os.fsync(fd)
    env.sent.extend(batch)


#: The extended attribute that keeps a file's last error for smapctl queue.
ERROR_XATTR = "user.smapd.error"


def set_error(fd, text: str) -> None:
    try:
        os.setxattr(fd, ERROR_XATTR, text.encode("utf-8", "replace")[:1000])
    except OSError:
        pass  # a file system without user xattrs: the log has it anyway


def get_error(path) -> str:
    """The last error of the file at `path` (never followed), or of the
    open descriptor `path`; "" when it has none."""
    try:
        if isinstance(path, int):
            return os.getxattr(path, ERROR_XATTR).decode("utf-8", "replace")
        return os.getxattr(path, ERROR_XATTR, follow_symlinks=False).decode("utf-8", "replace")
    except OSError:
        return ""


def clear_error(fd) -> None:
    try:
        os.removexattr(fd, ERROR_XATTR)
    except OSError:
        pass
