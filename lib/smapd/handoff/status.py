"""smapd's status: what it is doing, in a small file of its spool.

What it does: the runner (runner.py) keeps a `Status`: smapd's pid and
start, its hand-off, each delivery child (its pid, the file it is on and
since when), the spool's size and its oldest message as the runner's own
scan found them (no listing of its own), counters of the outcomes since
the start (handed off, deferred, moved to bad/), the last ERRORS_KEPT
hand-off errors with their time and queue id, and the drain rate
(messages handed off a minute, over the last DRAIN_WINDOW seconds).
`publish()` writes it, when it has changed and at most once every
WRITE_GAP seconds, as one JSON document into spool.STATUS (a new file
beside it, renamed over the name: a reader sees the old document or the
new one, whole), and `title_of()` says the same in short for the process
title.  `smapctl stats smapd` reads it with `read()`, without talking to
smapd.

Where the outcomes come from: each delivery child reports on a pipe of
its own (`Reporter` in the child, `Status.child_output` in smapd):
`start ID` when it takes a file, `done ID OUTCOME ERROR` after it.  The
outcome is what became of the file's inode, held open across the
hand-off: unlinked (handed off: the MTA has it, or has bounced it); gone
from the spool but still linked (moved to bad/); still there with a new
modification time (deferred: the mtime is its next attempt); else
nothing (skipped: locked by another smapd, or not due), which is not
reported.  The error is the file's last error (spool.get_error), read
through the same descriptor.

What it trusts: the reports of its own delivery children (a line that
does not parse is dropped).  When reading (smapctl, often as root):
nothing: whoever runs as smap's user can write the spool and plant the
file, so it is read without following a link, bounded, and every field
is checked; the pid it names is only looked at, never signalled.

What it must never do: delay or fail a hand-off (a report that does not
fit in the pipe is dropped: the pipe never blocks; a status that cannot
be written is logged once and tried again later); write through a
symbolic link; close a descriptor of a spool file while deliver.py holds
its lock (closing any descriptor of a file drops the process's fcntl
locks on it: the Reporter closes its own only after the hand-off).
"""

from __future__ import annotations

import collections
import errno
import json
import logging
import math
import os
import stat
import time

from smapd import spool
from smapd.files import read_regular, write_all
from smapd.prefork.scoreboard import duration

log = logging.getLogger("smapd")

#: The format's version: a reader refuses any other.
VERSION = 1
#: What the counters count, as the reports name it.
HANDED_OFF, DEFERRED, BAD = "handed_off", "deferred", "bad"
OUTCOMES = (HANDED_OFF, DEFERRED, BAD)
#: An error of the list that is no outcome of a file: a delivery child
#: that crashed (the runner says so).
CRASHED = "crashed"
#: Hand-off errors kept, the newest last.
ERRORS_KEPT = 10
#: Characters of an error kept (in a report line and in the file).
ERROR_TEXT = 300
#: The status is written at most this often (seconds).
WRITE_GAP = 1.0
#: The drain rate is over this many seconds (or since the start, when
#: smapd is younger, but over a minute at least), in buckets of
#: DRAIN_BUCKET seconds.
DRAIN_WINDOW, DRAIN_BUCKET = 300, 10
#: A reader reads at most this much of the file.
MAX_SIZE = 1 << 20
#: The status file's mode: smapd's and its group's (smap's, which holds
#: the spool) to read, nobody else's: the errors may name addresses.
FILE_MODE = 0o640


# ------------------------------------------------------------ in the child

class Reporter:
    """A delivery child's reports to smapd on `fd` (the non-blocking write
    end of a pipe; None: no reports): begin(name) before each file's
    hand-off, end() after the last (begin ends the previous one)."""

    def __init__(self, fd: int):
        self.fd = fd
        self.current = None   # (name, descriptor or None, its stat before the hand-off)

    def begin(self, name: str) -> None:
        self.end()
        if self.fd is None:
            return
        self._send(f"start {name[len(spool.READY_PREFIX):]}")
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            fd = None         # a symbolic link, or gone
        try:
            before = os.fstat(fd) if fd is not None else os.lstat(name)
        except OSError:
            before = None
        if fd is not None and (before is None or not stat.S_ISREG(before.st_mode)):
            # No spool file (a FIFO, a directory): deliver.py moves it by
            # name and never locks it, so closing now is safe.
            os.close(fd)
            fd = None
        self.current = (name, fd, before)

    def end(self) -> None:
        if self.current is None:
            return
        name, fd, before = self.current
        self.current = None
        try:
            outcome, error = _outcome(name, fd, before)
        except OSError:
            outcome, error = None, ""
        finally:
            if fd is not None:
                os.close(fd)  # deliver.py has closed its claim: no lock of ours goes with it
        if outcome:
            self._send(f"done {name[len(spool.READY_PREFIX):]} {outcome} {error}")

    def _send(self, text: str) -> None:
        # One write of less than PIPE_BUF: atomic, whole or not at all.
        line = " ".join(text.split())[:ERROR_TEXT + 100] + "\n"
        try:
            os.write(self.fd, line.encode("utf-8", "replace"))
        except OSError:
            pass  # a full pipe, or smapd gone (its orphaned child goes on): the hand-off matters, not the report


def _outcome(name: str, fd, before):
    """(outcome or None, error) of a file once deliver.py is done with it."""
    if fd is None:
        # No regular file: deliver.py moves it to bad/ by name, or cannot.
        gone = before is not None and not os.path.lexists(name)
        return (BAD, "refused: not a regular file") if gone else (None, "")
    st = os.fstat(fd)
    if st.st_nlink == 0:
        return HANDED_OFF, ""
    try:
        here = os.lstat(name)
        still = (here.st_dev, here.st_ino) == (st.st_dev, st.st_ino)
    except FileNotFoundError:
        still = False
    if not still:
        return BAD, spool.get_error(fd)
    if st.st_mtime_ns != before.st_mtime_ns:
        return DEFERRED, spool.get_error(fd)
    return None, ""


# ------------------------------------------------------------ in smapd

class Status:
    """What smapd is doing, kept by the runner, published by publish()."""

    def __init__(self, prog: str, handoff: str, maxchildren: int):
        self.prog = prog
        self.pid = os.getpid()
        self.started = time.time()
        self.handoff, self.maxchildren = handoff, maxchildren
        self.stopping = False
        self.children = {}            # pid -> its entry of "deliveries"
        self.counters = dict.fromkeys(OUTCOMES, 0)
        self.errors = collections.deque(maxlen=ERRORS_KEPT)
        self.queue = {"messages": None, "oldest": None, "scanned": None}
        self._drain = collections.deque()   # [bucket, messages handed off in it], oldest first
        self._partial = {}            # pid -> the start of a report line not yet ended
        self._dirty = True
        self._written_at = None       # time.monotonic() of the last write
        self._written_rate = None
        self._write_error = None      # the last failure logged, so as to log it once

    def configure(self, handoff: str, maxchildren: int) -> None:
        """After a reload."""
        self.handoff, self.maxchildren, self._dirty = handoff, maxchildren, True

    def stop(self) -> None:
        self.stopping, self._dirty = True, True

    # ------------------------------------------------------ what the runner learns

    def child_started(self, pid: int, names) -> None:
        now = time.time()
        self.children[pid] = {"pid": pid, "id": names[0][len(spool.READY_PREFIX):] if names else None,
                              "since": now, "started": now, "file": 0, "files": len(names)}
        self._dirty = True

    def child_output(self, pid: int, data: bytes) -> None:
        """Bytes read from a child's report pipe."""
        lines = (self._partial.pop(pid, b"") + data).split(b"\n")
        if lines[-1]:
            self._partial[pid] = lines[-1][:4096]
        for line in lines[:-1]:
            self._report(pid, line.decode("utf-8", "replace"))

    def _report(self, pid: int, line: str) -> None:
        words = line.split(" ", 3)
        now = time.time()
        child = self.children.get(pid)
        if words[0] == "start" and len(words) == 2 and child is not None:
            child.update(id=words[1], since=now, file=child["file"] + 1)
        elif words[0] == "done" and len(words) >= 3 and words[2] in OUTCOMES:
            self.counters[words[2]] += 1
            if words[2] == HANDED_OFF:
                self._handed_off(now)
            else:
                self.error(words[1], words[2], words[3] if len(words) > 3 else "", now)
        else:
            return
        self._dirty = True

    def child_ended(self, pid: int, problem: str = None) -> None:
        """A delivery child was reaped (its pipe read to the end first);
        `problem`: why it is an error (a crash), if it is one."""
        self._partial.pop(pid, None)
        child = self.children.pop(pid, None)
        if problem:
            self.error(child["id"] if child else None, CRASHED, problem)
        self._dirty = True

    def error(self, qid, outcome: str, text: str, now: float = None) -> None:
        self.errors.append({"time": time.time() if now is None else now, "id": qid, "outcome": outcome,
                            "error": text[:ERROR_TEXT]})
        self._dirty = True

    def scanned(self, names) -> None:
        """The runner's listing of the spool (spool.list_spool: oldest first)."""
        oldest = next((t for t in (spool.queue_id_time(n[len(spool.READY_PREFIX):]) for n in names)
                       if t is not None), None)
        figures = {"messages": len(names), "oldest": oldest}
        if figures != {k: self.queue[k] for k in figures}:
            self._dirty = True
        self.queue.update(figures, scanned=time.time())

    def _handed_off(self, now: float) -> None:
        bucket = int(now // DRAIN_BUCKET)
        if self._drain and self._drain[-1][0] == bucket:
            self._drain[-1][1] += 1
        else:
            self._drain.append([bucket, 1])

    def per_minute(self, now: float) -> float:
        """Messages handed off a minute, over the last DRAIN_WINDOW seconds."""
        first = int((now - DRAIN_WINDOW) // DRAIN_BUCKET) + 1
        while self._drain and self._drain[0][0] < first:
            self._drain.popleft()
        return round(sum(n for _, n in self._drain) * 60 / self.window(now), 1)

    def window(self, now: float) -> float:
        return max(60.0, min(float(DRAIN_WINDOW), now - self.started))

    # ------------------------------------------------------ what it says

    def document(self, now: float) -> dict:
        return {"version": VERSION, "program": self.prog, "pid": self.pid, "started": self.started,
                "written": now, "stopping": self.stopping, "handoff": self.handoff,
                "maxchildren": self.maxchildren,
                "deliveries": sorted(self.children.values(), key=lambda c: c["started"]),
                "counters": dict(self.counters), "errors": list(self.errors), "queue": dict(self.queue),
                "drain": {"per_minute": self.per_minute(now), "window": self.window(now)}}

    def due_in(self) -> float:
        """Seconds until publish() would write, None when there is nothing new."""
        if not self._dirty:
            return None
        if self._written_at is None:
            return 0.0
        return max(0.0, self._written_at + WRITE_GAP - time.monotonic())

    def publish(self, set_title) -> None:
        """Write the status (and `set_title` the process title) if it has
        changed, and the last write is WRITE_GAP seconds old."""
        mono = time.monotonic()
        if self._written_at is not None and mono - self._written_at < WRITE_GAP:
            return
        now = time.time()
        doc = self.document(now)
        # The title at each call, for the age of the oldest message moves
        # on when nothing else does (the file holds its arrival instead).
        set_title(title_of(doc, now))
        if not self._dirty and doc["drain"]["per_minute"] == self._written_rate:
            return
        self._dirty, self._written_at, self._written_rate = False, mono, doc["drain"]["per_minute"]
        data = (json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n").encode("utf-8")
        try:
            _replace(spool.STATUS, data)
        except OSError as e:
            if e.strerror != self._write_error:
                log.warning("cannot write the status file %s: %s (smapctl stats smapd shows an older status "
                            "meanwhile)", spool.STATUS, e.strerror)
            self._write_error, self._dirty = e.strerror, True   # again after WRITE_GAP
            return
        self._write_error = None

    def remove(self) -> None:
        """At a clean stop: no status says smapd runs."""
        for name in (spool.STATUS, spool.STATUS + ".new"):
            try:
                os.unlink(name)
            except OSError:
                pass


def _replace(path: str, data: bytes) -> None:
    """`data` as the new file at `path`: written beside it (a new file,
    never one that was planted there), then renamed over it."""
    temporary = path + ".new"
    try:
        os.unlink(temporary)
    except FileNotFoundError:
        pass
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)   # whatever the umask (a daemon's is 077)
        write_all(fd, data)
    finally:
        os.close(fd)
    # No fsync: after a crash of the host a stale or empty status is
    # harmless (its pid is dead), and the spool's disk is the mail's.
    os.rename(temporary, path)


def title_of(doc: dict, now: float = None) -> str:
    """The process title: `smapd: 2 deliveries, queue 15 (oldest 3m07s), 40/min`."""
    now = time.time() if now is None else now
    n = len(doc["deliveries"])
    running = f"{n} deliveries running" if n != 1 else "1 delivery running"
    if doc["stopping"]:
        return f"{doc['program']}: stopping, {running}"
    q = doc["queue"]
    queue = "" if q["messages"] is None else f", queue {q['messages']}"
    if q["oldest"] is not None:
        queue += f" (oldest {duration(now - q['oldest'])})"
    rate = doc["drain"]["per_minute"]
    return f"{doc['program']}: {n} deliver{'y' if n == 1 else 'ies'}{queue}, {rate:g}/min"


# ------------------------------------------------------------ reading it back

class Unreadable(ValueError):
    """A file that is not smapd's status of this version; the text says why."""


_DELIVERY = {"pid": "count", "id": "text?", "since": "number", "started": "number", "file": "count",
             "files": "count"}
_ERROR = {"time": "number", "id": "text?", "outcome": "text", "error": "text"}
_SCHEMA = {"version": "count", "program": "text", "pid": "count", "started": "number", "written": "number",
           "stopping": "flag", "handoff": "text", "maxchildren": "count", "deliveries": [_DELIVERY],
           "counters": {o: "count" for o in OUTCOMES}, "errors": [_ERROR],
           "queue": {"messages": "count?", "oldest": "number?", "scanned": "number?"},
           "drain": {"per_minute": "number", "window": "number"}}


def _check(value, schema, where: str):
    """`value` as `schema` says, or Unreadable naming the field."""
    if isinstance(schema, dict):
        if not isinstance(value, dict) or set(value) != set(schema):
            raise Unreadable(f"{where or 'the document'}: not the expected fields")
        return {k: _check(value[k], s, f"{where}.{k}".lstrip(".")) for k, s in schema.items()}
    if isinstance(schema, list):
        if not isinstance(value, list) or len(value) > 100000:
            raise Unreadable(f"{where}: not a list")
        return [_check(v, schema[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if schema.endswith("?") and value is None:
        return None
    kind = schema.rstrip("?")
    if kind == "flag":
        ok = isinstance(value, bool)
    elif kind == "text":
        ok = isinstance(value, str) and len(value) <= 4096
    else:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (kind == "number" or (isinstance(value, int) and value >= 0))
    if not ok:
        raise Unreadable(f"{where}: not a {kind}")
    return value


def read(path: str) -> dict:
    """The status at `path`, checked.  FileNotFoundError when there is
    none; Unreadable, or another OSError, when it cannot be used."""
    try:
        data, _ = read_regular(path, MAX_SIZE, follow=False)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise Unreadable("a symbolic link (never followed)") from None
        raise
    try:
        doc = json.loads(data)
    except ValueError:
        raise Unreadable("not JSON") from None
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        raise Unreadable(f"not a status of version {VERSION}")
    return _check(doc, _SCHEMA, "")
