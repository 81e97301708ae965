"""The spool: how smap commits a message so that nothing acknowledged is lost.

What it does: `SpoolWriter` writes one message as `xma<id>` (O_CREAT|O_EXCL,
mode 0600, under an fcntl write lock), streams the body into it, and on
`commit()` flushes, fsyncs, renames it to `sma<id>`, fsyncs the directory,
unlocks and pokes the `.trigger` FIFO so that smapd looks at once.  Only
then may smap answer 250.  `abort()` removes the temporary file.

The format (LF line ends; the body dot-unstuffed, in canonical form):

    FROM <sender>               the null sender is FROM <>
    RCPT <recipient>            one line per recipient, in SMTP order
    BODY
    Received: ...
    <message>

What it trusts: the envelope it is given has been validated by the
protocol (no CR, LF or NUL in an address); the directory is the spool
(inside smap's jail it is "/").

What it must never do: leave an `sma*` file that is not complete and
synced, reuse a queue id, or let a failure pass silently: every error is
an OSError for the caller, who answers 451 and calls `abort()`.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import stat
import time
from email.utils import formatdate

from . import __version__

TEMP_PREFIX, READY_PREFIX, TRIGGER = "xma", "sma", ".trigger"
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


class SpoolWriter:
    """One message on its way into the spool."""

    def __init__(self, directory: str, sender: str, recipients, header: bytes, queue_id: str = None):
        self.directory = directory
        self.queue_id = queue_id or new_queue_id()
        self.temp = os.path.join(directory, TEMP_PREFIX + self.queue_id)
        self.final = os.path.join(directory, READY_PREFIX + self.queue_id)
        self.size = 0
        fd = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.file = os.fdopen(fd, "wb", buffering=65536)
        except BaseException:
            os.close(fd)
            self._unlink()
            raise
        try:
            envelope = [f"FROM <{sender}>\n"] + [f"RCPT <{r}>\n" for r in recipients] + ["BODY\n"]
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
            _fsync_dir(self.directory)
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


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
