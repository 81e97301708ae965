"""smapctl trace and report: what the mail log says of the suite's mail.

What it does: reads syslog text files as rsyslog, syslog-ng and
`journalctl -o short-iso-precise` write them, a line being
`Mmm dd hh:mm:ss[.frac] host prog[pid]: text` (the year is not in the
line: it is the file's, from its modification time) or
`2026-12-04T19:00:00.123456+00:00 host prog[pid]: text` (RFC 3339);
several files, plain or compressed (gzip, bzip2, xz), merged in time
order.  `trace` (find_trace) gathers every line of one message: smap's
session (the connect, TLS and disconnect lines of the connection, the
lines that carry the message's queue id), smapd's hand-off, and the
MTA's lines of the queue id it gave the message.  `report` (summarize)
counts what pflogsumm counts for Postfix: connections, messages
received, refused by check, handed off, deferred, bounced, moved to
bad/, the top clients and senders refused, TLS and AUTH use.

What it trusts: the forms of the suite's own log lines
(smap/session.py, handoff/deliver.py) and Postfix's `QUEUEID: ` prefix.
Nothing else in a log: a line that does not parse is passed over, and
peer text in smap's lines was made safe by the programs (log.py).

What it must never do: write to a log or any other file; follow one
message into the lines of another; link smapd's hand-off to an MTA queue
id unless the log makes the link certain (the SMTP reply's `queued as`;
for the sendmail hand-off, a Postfix pickup line that no other hand-off
can claim: find_pickups).
"""

from __future__ import annotations

import argparse
import bz2
import calendar
import collections
import datetime
import gzip
import heapq
import json
import lzma
import os
import re
import sys
import tempfile
import time
import zlib
from functools import lru_cache
from typing import NamedTuple, Optional

from smapd.exits import EXIT_OK, EXIT_RUNTIME

#: The usual mail logs, in the order looked for: Debian's and Ubuntu's
#: rsyslog, Red Hat's and the BSDs', syslog-ng's mail/ directory.
DEFAULT_LOGS = ("/var/log/mail.log", "/var/log/maillog", "/var/log/mail/mail.log")
#: Rotated copies of a log: FILE.1, FILE.2.gz ... (logrotate, newsyslog),
#: FILE-20261204[.gz] (logrotate's dateext).
ROTATED = r"(?:\.\d+|-\d{8}(?:\d\d)?)(?:\.gz|\.bz2|\.xz)?"

# ------------------------------------------------------------------ lines


class Line(NamedTuple):
    time: float       # seconds since the epoch
    host: str
    program: str      # the syslog tag without its [pid]: smap, postfix/qmgr
    pid: str          # "" when the tag has none
    text: str
    raw: str          # the line as the file has it
    source: str       # the file's name
    number: int       # its line number there


_MONTHS = {m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct",
                                       "Nov", "Dec"), 1)}
_CLASSIC = re.compile(r"([A-Z][a-z]{2}) +(\d{1,2}) (\d\d):(\d\d):(\d\d)(\.\d+)? +(\S+) (.*)")
_RFC3339 = re.compile(r"(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d):(\d\d)(\.\d+)?(Z|[+-]\d\d:?\d\d)? +(\S+) (.*)")
_TAG = re.compile(r"([^\s\[\]:]+)(?:\[(\d+)\])?: ?(.*)")


@lru_cache(maxsize=4096)
def _local_minute(year: int, month: int, day: int, hour: int, minute: int) -> float:
    """The epoch time of a local minute (classic time stamps are local)."""
    return time.mktime((year, month, day, hour, minute, 0, 0, 0, -1))


def _classic_time(m, newest: float) -> Optional[float]:
    """The time of a classic stamp: in the year of `newest` (the file's
    modification time), or the year before when that would put the line
    more than a day after the file was last written (December's lines
    read in January)."""
    month, day = _MONTHS.get(m.group(1)), int(m.group(2))
    if month is None:
        return None
    hour, minute, second = int(m.group(3)), int(m.group(4)), int(m.group(5))
    year = time.localtime(newest).tm_year
    for y in range(year, year - 5, -1):    # far enough back for a leap year's Feb 29
        if (month, day) == (2, 29) and not calendar.isleap(y):
            continue
        t = _local_minute(y, month, day, hour, minute) + second + float(m.group(6) or 0)
        if t <= newest + 86400:
            return t
    return None


def _rfc3339_time(m) -> Optional[float]:
    try:
        zone = m.group(8)
        if zone is None:
            tz = None      # local time
        elif zone == "Z":
            tz = datetime.timezone.utc
        else:
            sign = -1 if zone[0] == "-" else 1
            digits = zone[1:].replace(":", "")
            tz = datetime.timezone(sign * datetime.timedelta(hours=int(digits[:2]), minutes=int(digits[2:])))
        stamp = datetime.datetime(*(int(m.group(i)) for i in range(1, 7)), tzinfo=tz)
    except ValueError:
        return None
    return stamp.timestamp() + float(m.group(7) or 0)


def parse_line(raw: str, newest: float, source: str = "", number: int = 0) -> Optional[Line]:
    """A Line, or None for a line that is not syslog's."""
    m = _RFC3339.match(raw)
    if m:
        t, host, rest = _rfc3339_time(m), m.group(9), m.group(10)
    else:
        m = _CLASSIC.match(raw)
        if not m:
            return None
        t, host, rest = _classic_time(m, newest), m.group(7), m.group(8)
    tag = _TAG.match(rest)
    if t is None or not tag:
        return None
    return Line(t, host, tag.group(1), tag.group(2) or "", tag.group(3), raw, source, number)


# ------------------------------------------------------------------ files


class LogError(Exception):
    """A log that cannot be read; the text names it and says why."""


#: What reading a truncated or corrupt file raises.
_UNREADABLE = (OSError, EOFError, zlib.error, lzma.LZMAError)


def _decompressed(f):
    """`f` (binary, at its start) as it reads uncompressed."""
    magic = f.read(6)
    f.seek(0)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=f)
    if magic.startswith(b"BZh"):
        return bz2.BZ2File(f)
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(f)
    return f


class Source:
    """One log: a file by name, or standard input (copied into a
    temporary file first when it is to be read more than once)."""

    def __init__(self, path: str, reread: bool = False):
        self.name = path
        self._spool = None
        self.read = 0
        try:
            if path == "-":
                self.name = "(standard input)"
                if reread:
                    self._spool = tempfile.TemporaryFile()
                    while True:
                        chunk = sys.stdin.buffer.read(1 << 20)
                        if not chunk:
                            break
                        self._spool.write(chunk)
                self.newest = time.time()
            else:
                with open(path, "rb") as f:    # unreadable: said now, before any output
                    self.newest = os.fstat(f.fileno()).st_mtime
        except OSError as e:
            raise LogError(f"cannot read {self.name}: {e.strerror}") from None
        self.path = path

    def _open(self):
        """(a binary file of the log's lines, whether to close it)."""
        if self._spool is not None:
            self._spool.seek(0)
            return _decompressed(self._spool), False
        if self.path == "-":
            return sys.stdin.buffer, False     # read once: a pipe cannot seek to look for compression
        try:
            return _decompressed(open(self.path, "rb")), True
        except OSError as e:
            raise LogError(f"cannot read {self.name}: {e.strerror}") from None

    def lines(self, wanted=None):
        """Its syslog lines, in the file's order; with `wanted` (a bytes
        regex), only those it finds something in: the others are not
        even parsed, which makes a pass over a large log several times
        faster.  `read` counts the lines read."""
        f, close = self._open()
        self.read = 0
        try:
            for number, data in enumerate(f, 1):
                self.read = number
                if wanted is not None and not wanted.search(data):
                    continue
                line = parse_line(data.decode("utf-8", "replace").rstrip("\r\n"), self.newest, self.name, number)
                if line is not None:
                    yield line
        except _UNREADABLE as e:
            raise LogError(f"cannot read {self.name}: {getattr(e, 'strerror', None) or e}") from None
        finally:
            if close:
                f.close()


def rotations(path: str):
    """The rotated copies of `path` that exist, oldest first."""
    directory, base = os.path.split(path)
    pattern = re.compile(re.escape(base) + ROTATED + "$")
    try:
        names = [os.path.join(directory, n) for n in os.listdir(directory or ".") if pattern.match(n)]
    except OSError:
        return []
    found = []
    for name in names:
        try:
            found.append((os.stat(name).st_mtime, name))
        except OSError:
            pass
    return [name for _, name in sorted(found)]


def sources(paths, reread: bool = False):
    """The Sources of the --log options, or of the first usual mail log
    that exists, with its rotated copies.  LogError when one cannot be
    read, or none is given and none of the usual ones exists."""
    if paths:
        return [Source(p, reread) for p in paths]
    for path in DEFAULT_LOGS:
        if os.path.exists(path):
            return [Source(p, reread) for p in (*rotations(path), path)]
    raise LogError(f"no mail log: none of {', '.join(DEFAULT_LOGS)} exists; name the log with --log FILE "
                   "(or --log - for standard input, as from journalctl -o short-iso-precise)")


def merged(logs, wanted=None):
    """Every line of `logs` (that `wanted` finds something in) in time
    order.  Time stamps are compared to the second, the precision of the
    classic ones: lines of one second keep their file's order, and come
    file after file in the order of `logs`."""
    return heapq.merge(*(s.lines(wanted) for s in logs), key=lambda line: int(line.time))


# ------------------------------------------------------------------ the lines of the suite

# smap (smap/session.py): a session's lines, and the session-wide ones
# among them that concern each of its messages.
CONNECT = re.compile(r"connect host=(\S+) id=(\S+)$")
TLS = re.compile(r"host=(\S+) TLS (\S+)(?: (\S+) \(\d+ bits\))?")
RECEIVED = re.compile(r"host=(\S+) bytes=(\d+) from=<(.*?)> to=<.*> nrcpt=(\d+) id=(\S+)$")
REFUSED = re.compile(r"host=(\S+) refused: (.*); code=(\d{3})(?: (\d\.\d{1,3}\.\d{1,3}))? id=(\S+) "
                     r"from=(none|<.*>) helo=(\S*)$")
NOTE = re.compile(r"host=(\S+) note: (.*); id=(\S+)$")
SESSION_WIDE = re.compile(r"(?:connect|disconnect) host=|host=\S+ (?:TLS |note: authenticated as )")
AUTHENTICATED = re.compile(r"authenticated as .* \((\S+)\)$")
# smapd (handoff/deliver.py).
SENT = re.compile(r"id=(\S+) from=<(.*?)> nrcpt=(\d+) sent\b")
#: A sendmail hand-off (an SMTP one says `sent (MTA: REPLY)`).
SENDMAIL_SENT = re.compile(r"id=(\S+) from=<(.*)> nrcpt=([1-9]\d*) sent(?: delay=| to=|$)")
MTA_BOUNCED = re.compile(r"id=(\S+) from=<.*?> nrcpt=(\d+) bounced by the MTA")
FAILED = re.compile(r"id=(\S+) from=<.*?> to=<.*?> failed: ")
DEFERRED = re.compile(r"id=(\S+) deferred: ")
MOVED_TO_BAD = re.compile(r"id=(\S+) moved to ")

#: A queue id of the suite in a line: `id=ID` (smap, smapd, smapctl; a
#: bounce's `DSN id=ID`) or a spool file's name.
SUITE_ID = re.compile(r"(?<![\w.-])id=([0-9A-Za-z]+)|\b[sx]ma([0-9A-Z]+P[0-9A-Z]+)\b")
#: Postfix's lines of a message begin with its queue id.
MTA_LINE = re.compile(r"([0-9A-Za-z]{5,}): ")
#: Where a line names another MTA queue id of the same message: the
#: hand-off's reply, a relay's, a local forward, a bounce.
MTA_LINK = re.compile(r"(?:queued as|forwarded as|notification:) ([0-9A-Za-z]{5,})\b")
PICKUP = re.compile(r"([0-9A-Za-z]{5,}): uid=\d+ from=<(.*)>$")


def suite_ids(text: str) -> set:
    return {a or b for a, b in SUITE_ID.findall(text)} - {"none"}


# ------------------------------------------------------------------ trace

#: Seconds after smapd's sendmail `sent` line within which Postfix's
#: pickup line for it is looked for (before it: POSTDROP_LEAD, since
#: pickup may log before sendmail has exited and smapd has logged).
PICKUP_WINDOW = 30
POSTDROP_LEAD = 2
#: The slack, in seconds, between a link to an MTA queue id and that
#: queue id's lines (classic time stamps are whole seconds).
SLACK = 2
#: At most this many passes over the logs: each follows the links that
#: the one before found (hand-off, MTA queue id, pickup, forward).
MAX_PASSES = 8


class Trace(NamedTuple):
    lines: list          # Lines, in the logs' order
    suite_ids: list      # the suite's queue ids followed (the message, its bounces)
    mta_ids: list        # the MTA's queue ids whose lines were found
    notes: list          # what could not be followed, and why


class _Pass:
    """One read of the logs: the lines of the ids known so far, and the
    links they show to ids not known yet.  Only the lines that name one
    of them, or come from a process that logged one (its sessions), are
    parsed at all."""

    def __init__(self, ours: set, mta: dict, processes: set, judging: list):
        self.ours = ours              # the suite's queue ids
        self.mta = mta                # MTA queue id -> the times of its links, None: any time
        self.processes = processes    # (host, program, pid) that logged a line of ours
        self.judging = judging        # (time, sender) of our sendmail hand-offs, to link to pickup lines
        needles = [*ours, *mta, *(f" {host} {prog}[{pid}]: " if pid else f" {host} {prog}: "
                                  for host, prog, pid in processes),
                   *(f"from=<{sender}>" for _, sender in judging)]
        self.wanted = re.compile(b"|".join(re.escape(n.encode("utf-8", "surrogateescape")) for n in needles))
        self.selected = {}            # index -> Line
        self.sessions = {}            # process -> [matched, [(index, Line) session-wide]]
        self.mta_lines = collections.defaultdict(list)   # MTA queue id -> [(index, Line)]
        self.new_ours, self.new_processes = set(), set()
        self.new_mta = collections.defaultdict(set)      # MTA queue id -> times of the links to it
        self.handoffs = set()         # (time, sender) of our sendmail hand-offs
        self.pickups = []             # (time, MTA queue id, sender) of Postfix's pickup lines
        self.others = []              # (time, sender) of other messages' sendmail hand-offs

    def _close(self, key) -> None:
        matched, wide = self.sessions.pop(key)
        if matched:
            self.selected.update(wide)

    def line(self, i: int, line: Line) -> None:
        text = line.text
        key = (line.host, line.program, line.pid)
        # Every line of these processes is read: their sessions are whole.
        tracked = key in self.processes
        if tracked and text.startswith("connect host="):
            if key in self.sessions:
                self._close(key)           # its disconnect line is missing
            self.sessions[key] = [False, []]
        session = self.sessions.get(key)
        if session is not None and SESSION_WIDE.match(text):
            session[1].append((i, line))
        ids = suite_ids(text)
        if ids & self.ours:
            self.selected[i] = line
            self.new_processes.add(key)
            if session is not None:
                session[0] = True
            self.new_ours |= ids           # a bounce's DSN id: the bounce is this message's too
            for qid in MTA_LINK.findall(text):
                self.new_mta[qid].add(line.time)
            m = SENDMAIL_SENT.match(text)
            if m:
                self.handoffs.add((line.time, m.group(2)))
        elif ids:
            m = SENDMAIL_SENT.match(text) if self.judging else None
            if m:
                self.others.append((line.time, m.group(2)))
            # The trace began with the MTA's queue id: smapd's reply
            # names it, and so the suite's id of the message.
            if any(self.mta.get(qid, ()) is None for qid in MTA_LINK.findall(text)):
                self.selected[i] = line
                self.new_ours |= ids
        if session is not None and text.startswith("disconnect host="):
            self._close(key)
        m = MTA_LINE.match(text)
        if m:
            if m.group(1) in self.mta:
                self.mta_lines[m.group(1)].append((i, line))
            if self.judging and line.program.endswith("pickup"):
                p = PICKUP.match(text)
                if p:
                    self.pickups.append((line.time, p.group(1), p.group(2)))

    def finish(self) -> None:
        for key in list(self.sessions):
            self._close(key)
        # Postfix reuses a queue id once its message has left the queue
        # (`QUEUEID: removed`): only the stretch of lines around a link to
        # it is this message's.
        for qid, found in self.mta_lines.items():
            times = self.mta[qid]
            for stretch in _stretches(found):
                first, last = stretch[0][1].time - SLACK, stretch[-1][1].time + SLACK
                still_queued = not stretch[-1][1].text.endswith(": removed")
                if times is None or any(first <= t and (t <= last or still_queued) for t in times):
                    for i, line in stretch:
                        self.selected[i] = line
                        for other in MTA_LINK.findall(line.text):
                            self.new_mta[other].add(line.time)


def _stretches(found):
    """An MTA queue id's lines, cut after each `QUEUEID: removed`."""
    out, current = [], []
    for i, line in found:
        current.append((i, line))
        if line.text.endswith(": removed"):
            out.append(current)
            current = []
    if current:
        out.append(current)
    return out


def _near(t: float, times, before: float, after: float) -> bool:
    """Whether `t` is from `before` seconds before to `after` seconds
    after one of `times`."""
    return any(h - before <= t <= h + after for h in times)


def find_pickups(handoffs, others, pickups):
    """({MTA queue id: time}, notes): the Postfix queue ids of sendmail
    hand-offs, where the log makes them certain.

    smapd's sendmail run learns no queue id.  Postfix's pickup logs
    `QUEUEID: uid=N from=<SENDER>` as it takes the message from the
    maildrop, moments before or after smapd's `sent` line.  The link is
    made only when the pickup lines of that sender around our hand-offs
    are exactly as many as our hand-offs, and no hand-off of another
    message with that sender is near enough to claim one of them."""
    linked, notes = {}, []
    by_sender = collections.defaultdict(list)
    for t, sender in handoffs:
        by_sender[sender].append(t)
    reach = PICKUP_WINDOW + POSTDROP_LEAD      # where another hand-off could claim one of those lines
    for sender, times in sorted(by_sender.items()):
        found = sorted({(t, qid) for t, qid, s in pickups
                        if s == sender and _near(t, times, POSTDROP_LEAD, PICKUP_WINDOW)})
        rivals = [t for t, s in others if s == sender and _near(t, times, reach, reach)]
        if found and len(found) == len(times) and not rivals:
            linked.update({qid: t for t, qid in found})
            continue
        why = (f"{len(rivals)} hand-off(s) of other messages from <{sender}> at the same time" if rivals else
               f"{len(found)} Postfix pickup line(s) from <{sender}> for {len(times)} hand-off(s)")
        notes.append(f"the MTA's queue id of the sendmail hand-off is not certain ({why}): the MTA's lines "
                     "are left out")
    return linked, notes


def find_trace(logs, queue_id: str) -> Trace:
    """Every line of the message with `queue_id` (the suite's, or the
    MTA's), reading the logs as many times as there are links to follow."""
    ours, mta, processes = {queue_id}, {queue_id: None}, set()
    judging, judged, notes = [], set(), []
    for _ in range(MAX_PASSES):
        p = _Pass(ours, mta, processes, judging)
        for i, line in enumerate(merged(logs, p.wanted)):
            p.line(i, line)
        p.finish()
        grew = not (p.new_ours <= ours and p.new_processes <= processes)
        ours |= p.new_ours
        processes |= p.new_processes
        for qid, times in p.new_mta.items():
            if qid not in mta:
                mta[qid], grew = set(times), True
            elif mta[qid] is not None and not times <= mta[qid]:
                mta[qid] |= times
                grew = True
        if judging:
            linked, said = find_pickups(judging, p.others, p.pickups)
            notes += said
            for qid, t in linked.items():
                if qid not in mta:
                    mta[qid], grew = {t}, True
            judged |= set(judging)
        judging = sorted(p.handoffs - judged)
        if not grew and not judging:
            break
    else:
        notes.append(f"links still unfollowed after {MAX_PASSES} reads of the logs")
    lines = [p.selected[i] for i in sorted(p.selected)]
    suite = set().union(*(suite_ids(line.text) for line in lines)) & ours
    found = {m.group(1) for line in lines for m in [MTA_LINE.match(line.text)] if m and m.group(1) in mta}
    return Trace(lines, sorted(suite), sorted(found), notes)


# ------------------------------------------------------------------ report

#: How many clients and senders each top list names by default.
TOP = 10
#: The lines report() counts: smap's (`host=`, `connect host=`) and
#: smapd's (`id=`); the MTA's are for pflogsumm.
REPORT_WANTED = re.compile(rb": (?:host=|id=|connect host=)")


def check_of(why: str) -> str:
    """The check a refusal's reason names, without its particulars: the
    reason up to its first detail (` (`, `: ` or `; `), addresses as
    `<...>`, numbers as N (`relay to <...> denied`, `DNSBL score N`)."""
    head = re.split(r" \(|: |; ", why, maxsplit=1)[0]
    return re.sub(r"\d+", "N", re.sub(r"<[^>]*>", "<...>", head))


class _Counts:
    """What summarize() counts, line by line."""

    def __init__(self):
        self.first = self.last = None
        self.connections = 0
        self.received = collections.Counter()          # messages, recipients, bytes
        self.received_senders, self.received_clients = collections.Counter(), collections.Counter()
        self.refused = collections.Counter()           # total, permanent, temporary
        self.checks = collections.defaultdict(collections.Counter)   # check -> {code: n}
        self.refused_clients, self.refused_senders = collections.Counter(), collections.Counter()
        self.delivered, self.deferred, self.bounced, self.bad = set(), set(), set(), set()
        self.handed_off = self.deferrals = self.bounced_rcpts = 0
        self.tls = collections.Counter()               # sessions, failed
        self.protocols, self.ciphers = collections.Counter(), collections.Counter()
        self.auth, self.mechanisms = 0, collections.Counter()

    def line(self, line: Line) -> None:
        self.first = line.time if self.first is None else min(self.first, line.time)
        self.last = line.time if self.last is None else max(self.last, line.time)
        text = line.text
        if text.startswith("host="):
            self._smap(text)
        elif text.startswith("id="):
            self._smapd(text)
        elif CONNECT.match(text):
            self.connections += 1

    def _smap(self, text: str) -> None:
        m = RECEIVED.match(text)
        if m:
            self.received.update(messages=1, recipients=int(m.group(4)), bytes=int(m.group(2)))
            self.received_senders[m.group(3)] += 1
            self.received_clients[m.group(1)] += 1
            return
        m = REFUSED.match(text)
        if m:
            client, why, code, status, qid, sender = m.group(1, 2, 3, 4, 5, 6)
            if qid == "none":
                self.connections += 1      # refused before its session: no connect line
            self.refused.update(total=1, **{"permanent" if code[0] == "5" else "temporary": 1})
            self.checks[check_of(why)][f"{code} {status}" if status else code] += 1
            self.refused_clients[client] += 1
            if sender != "none":
                self.refused_senders[sender[1:-1]] += 1
            return
        m = TLS.match(text)
        if m:
            self.tls["sessions"] += 1
            self.protocols[m.group(2)] += 1
            if m.group(3):
                self.ciphers[m.group(3)] += 1
            return
        m = NOTE.match(text)
        if m:
            if m.group(2).startswith("TLS handshake failed"):
                self.tls["failed"] += 1
            auth = AUTHENTICATED.match(m.group(2))
            if auth:
                self.auth += 1
                self.mechanisms[auth.group(1)] += 1

    def _smapd(self, text: str) -> None:
        m = SENT.match(text)
        if m:
            self.delivered.add(m.group(1))
            self.handed_off += int(m.group(3))
            return
        m = DEFERRED.match(text)
        if m:
            self.deferred.add(m.group(1))
            self.deferrals += 1
            return
        m = MTA_BOUNCED.match(text)
        if m:
            self.bounced.add(m.group(1))
            self.bounced_rcpts += int(m.group(2))
            return
        m = FAILED.match(text)
        if m:
            self.bounced.add(m.group(1))
            self.bounced_rcpts += 1
            return
        m = MOVED_TO_BAD.match(text)
        if m:
            self.bad.add(m.group(1))


def _top(counter, n: int):
    return [{"name": k, "count": v} for k, v in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


def _iso(t):
    if t is None:
        return None
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).astimezone().isoformat(timespec="seconds")


def summarize(logs, top: int = TOP) -> dict:
    """The report of `logs` as one JSON-ready dict (stable keys)."""
    c = _Counts()
    for line in merged(logs, REPORT_WANTED):
        c.line(line)
    checks = sorted(c.checks.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))
    return {
        "logs": [s.name for s in logs],
        "first": _iso(c.first), "last": _iso(c.last), "lines": sum(s.read for s in logs),
        "connections": c.connections,
        "received": {"messages": c.received["messages"], "recipients": c.received["recipients"],
                     "bytes": c.received["bytes"], "senders": _top(c.received_senders, top),
                     "clients": _top(c.received_clients, top)},
        "refused": {"total": c.refused["total"], "permanent": c.refused["permanent"],
                    "temporary": c.refused["temporary"],
                    "checks": [{"check": k, "count": sum(codes.values()), "codes": dict(sorted(codes.items()))}
                               for k, codes in checks],
                    "clients": _top(c.refused_clients, top), "senders": _top(c.refused_senders, top)},
        "delivered": {"messages": len(c.delivered), "recipients": c.handed_off},
        "deferred": {"messages": len(c.deferred), "deferrals": c.deferrals},
        "bounced": {"messages": len(c.bounced), "recipients": c.bounced_rcpts},
        "bad": {"messages": len(c.bad)},
        "tls": {"sessions": c.tls["sessions"], "failed": c.tls["failed"],
                "protocols": _top(c.protocols, top), "ciphers": _top(c.ciphers, top)},
        "auth": {"sessions": c.auth, "mechanisms": _top(c.mechanisms, top)},
    }


def _n(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def _size(n: int) -> str:
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("k", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def format_report(r: dict) -> str:
    """The report as pflogsumm lays it out: the grand totals, then each
    list under its title."""
    def local(stamp):
        return datetime.datetime.fromisoformat(stamp).strftime("%Y-%m-%d %H:%M:%S") if stamp else "-"
    out = [f"Log report of {', '.join(r['logs'])}",
           f"{_n(r['lines'], 'line')}, {local(r['first'])} to {local(r['last'])}", ""]

    def section(title, rows):
        out.extend([title, "-" * len(title)])
        out.extend(f"{count:7d}  {text}" for count, text in rows)
        if not rows:
            out.append("   none")
        out.append("")

    rec, ref, tls = r["received"], r["refused"], r["tls"]
    sent, deferred, bounced = r["delivered"], r["deferred"], r["bounced"]
    share = f" ({100 * tls['sessions'] // r['connections']}% of the connections)" if r["connections"] else ""
    section("Grand totals", [
        (r["connections"], "connections"),
        (rec["messages"], f"received ({_n(rec['recipients'], 'recipient')}, {_size(rec['bytes'])} bytes)"),
        (ref["total"], f"refused ({ref['permanent']} permanent, {ref['temporary']} temporary)"),
        (sent["messages"], f"delivered: handed off to the MTA ({_n(sent['recipients'], 'recipient')})"),
        (deferred["messages"], f"deferred ({_n(deferred['deferrals'], 'deferral')})"),
        (bounced["messages"], f"bounced ({_n(bounced['recipients'], 'recipient')})"),
        (r["bad"]["messages"], "moved to bad/"),
        (tls["sessions"], f"sessions with TLS{share}"),
        (tls["failed"], "TLS handshakes failed"),
        (r["auth"]["sessions"], "sessions authenticated (SMTP AUTH)")])
    section("Refused, by check", [(c["count"], f"{c['check']} ({', '.join(c['codes'])})") for c in ref["checks"]])
    section("Clients refused", [(e["count"], e["name"]) for e in ref["clients"]])
    section("Senders refused", [(e["count"], f"<{e['name']}>") for e in ref["senders"]])
    section("Clients received from", [(e["count"], e["name"]) for e in rec["clients"]])
    section("Senders received from", [(e["count"], f"<{e['name']}>") for e in rec["senders"]])
    section("TLS protocols", [(e["count"], e["name"]) for e in tls["protocols"]])
    section("TLS ciphers", [(e["count"], e["name"]) for e in tls["ciphers"]])
    return "\n".join(out)


# ------------------------------------------------------------------ the commands


def _json_line(line: Line) -> dict:
    return {"time": datetime.datetime.fromtimestamp(line.time, datetime.timezone.utc).isoformat(),
            "host": line.host, "program": line.program, "pid": int(line.pid) if line.pid else None,
            "text": line.text, "log": line.source, "line": line.number}


def _fail(message: str) -> int:
    print(f"smapctl: {message}", file=sys.stderr)
    return EXIT_RUNTIME


def cmd_trace(args) -> int:
    try:
        logs = sources(args.log, reread=True)
        t = find_trace(logs, args.id)
    except LogError as e:
        return _fail(str(e))
    if not t.lines:
        return _fail(f"trace: no line of {', '.join(s.name for s in logs)} concerns {args.id}")
    if args.json:
        json.dump({"id": args.id, "suite_ids": t.suite_ids, "mta_ids": t.mta_ids,
                   "lines": [_json_line(line) for line in t.lines], "notes": t.notes}, sys.stdout, indent=1)
        print()
    else:
        for line in t.lines:
            print(line.raw)
    for note in t.notes:
        print(f"smapctl: trace: {args.id}: {note}", file=sys.stderr)
    return EXIT_OK


def cmd_report(args) -> int:
    try:
        r = summarize(sources(args.log), args.top)
    except LogError as e:
        return _fail(str(e))
    if args.json:
        json.dump(r, sys.stdout, indent=1)
        print()
    else:
        print(format_report(r), end="")
    return EXIT_OK


def _top_count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"{n} is negative")
    return n


def add_parsers(sub) -> None:
    """smapctl's trace and report commands."""
    logs_help = (f"a syslog file to read, plain or compressed; repeatable, - is standard input (default: the first "
                 f"of {', '.join(DEFAULT_LOGS)} that exists, with its rotated copies)")
    t = sub.add_parser("trace", help="every log line of one message: smap, smapd and the MTA",
                       description="Print every log line of one message, in time order: smap's session (connect, "
                                   "TLS, the lines of its queue id, disconnect), smapd's hand-off, and the MTA's "
                                   "lines of the queue id it gave the message.")
    t.add_argument("id", metavar="ID", help="the message's queue id: smap's, or the MTA's")
    t.add_argument("--log", "-l", action="append", metavar="FILE", help=logs_help)
    t.add_argument("--json", action="store_true", help="one JSON document on stdout")
    t.set_defaults(func=cmd_trace)
    r = sub.add_parser("report", help="sum up the mail log, as pflogsumm does for Postfix",
                       description="Count connections, messages received, refused (by check), handed off, "
                                   "deferred, bounced and moved to bad/, TLS and AUTH use, and list the clients "
                                   "and senders refused most.")
    r.add_argument("--log", "-l", action="append", metavar="FILE", help=logs_help)
    r.add_argument("--top", type=_top_count, default=TOP, metavar="N",
                   help=f"how many clients, senders, protocols and ciphers each list names (default: {TOP})")
    r.add_argument("--json", action="store_true", help="one JSON document on stdout")
    r.set_defaults(func=cmd_report)
