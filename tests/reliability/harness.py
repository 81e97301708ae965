"""What the reliability scenarios share (tests/reliability/test_*.py, and
bench/soak, which runs them longer).

Duration and seed.  Each scenario runs for `seconds(default)`: its short
default under `make test`, or RELIABILITY_SECONDS when set (bench/soak
sets it from SOAK_SECONDS).  Every random choice comes from one
random.Random seeded by RELIABILITY_SEED, or by a fresh seed that is
printed (and repeated in every audit failure): the seed fixes the
schedule (which fault, when, which message size), not the exact
interleaving with the programs, which the machine decides.

The ledger.  Every message a client tries gets a unique marker (in its
Subject, Message-Id and body) and one outcome: acknowledged (250, with
its queue id), refused (the code smap answered at the end of DATA), or
broken (the connection ended before any answer: a killed child).

The audit (`audit()`).  Every acknowledged marker must be found in the
MTA's mailbox or still in the spool (or in bad/ where the scenario makes
the MTA refuse permanently): none lost.  A marker found more than once
is a duplicate; duplicates are allowed only where they are inherent and
counted: a delivery child killed after it handed a message off (its
queue id is read from its title before the kill) may cause one more copy
of that message, never more.  A marker never acknowledged may be found
only when a killed smap child had committed it before its 250 left
(bounded by the number of smap children killed), and never after a 4xx
(the client sends it again).  Every copy must carry the queue id of its
250 (smap's Received header) and be the message the client sent, byte
for byte (canonical form; for Postfix, the body).  No `xma*` file may
be left, except those of smap children killed in DATA (their queue id
names the child's pid; smapd removes them after a day).  The programs'
logs may hold no traceback, no "cannot" but a full spool's, no child
dying at boot; their other unusual lines are summed up after the AUDIT
line.  A failed audit lists the markers at fault.
"""

from __future__ import annotations

import collections
import contextlib
import grp
import os
import random
import re
import signal
import socket
import subprocess
import threading
import time

from support.programs import children, command, nobody_ids, wait_for
from support.smtp import Smtp
from smapd.spool import base36
from support.fake_mta import FakeMta as SharedFakeMta
from support.process import stop

ENV_SECONDS = "RELIABILITY_SECONDS"
ENV_SEED = "RELIABILITY_SEED"

#: The marker in a message's Subject (and Message-Id and body).
MARKER_RE = re.compile(rb"^Subject: (rel-[0-9A-Za-z-]+)\r?$", re.M)
#: smap's queue id in its Received header.
QID_RE = re.compile(rb"\(smap, smapd [^)]*\) with E?SMTP id ([0-9A-Z]+P[0-9A-Z]+)")
RCPT = "sink@example.net"
SENDER = "sender@example.org"
#: How much of a message is read to find its marker and queue id (its head).
HEAD = 16384


def seconds(default: float) -> float:
    """The scenario's duration: RELIABILITY_SECONDS, or its default."""
    value = os.environ.get(ENV_SECONDS)
    return float(value) if value else float(default)


def soaking() -> bool:
    return bool(os.environ.get(ENV_SECONDS))


def make_rng(name: str):
    """(seed, random.Random): RELIABILITY_SEED or a fresh seed, printed."""
    value = os.environ.get(ENV_SEED)
    seed = int(value) if value else random.SystemRandom().randrange(1 << 31)
    print(f"\n{name}: seed {seed} (again: {ENV_SEED}={seed}), {seconds(0) or 'default'} s")
    return seed, random.Random(seed)


def poll_until(predicate, timeout: float):
    """predicate's first true value within `timeout` seconds, else None
    (wait_for without the failure: for a fault that may find no target)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.01)


# ------------------------------------------------------------------ processes

def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """Running (a zombie is not: its parent may be init, which reaps late)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def kill(pid: int, sig=signal.SIGKILL) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


def descendants(pid: int) -> list:
    out, todo = [], [pid]
    while todo:
        for kid in children(todo.pop()):
            out.append(kid)
            todo.append(kid)
    return out


# ------------------------------------------------------------------ messages

def message(marker: str, size: int = 0) -> bytes:
    """A message (CRLF, dot-stuffed, without the final dot) of about
    `size` octets carrying `marker`."""
    head = (f"From: <{SENDER}>\r\nTo: <{RCPT}>\r\nSubject: {marker}\r\n"
            f"Message-Id: <{marker}@reliability.test>\r\n\r\n{marker}\r\n").encode()
    line = b"." + b"x" * 75 + b"\r\n"  # a leading dot: every line is stuffed and unstuffed
    pad = max(0, size - len(head)) // len(line)
    return head + (b"." + line) * pad


def canonical(data: bytes) -> bytes:
    """A message as the spool and the MTA get it: LF line ends, unstuffed."""
    lines = data.split(b"\r\n")
    return b"\n".join(line[1:] if line.startswith(b".") else line for line in lines)


class Ledger:
    """What every attempt of every client came to (thread-safe)."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.lock = threading.Lock()
        self.n = 0
        self.outcome = {}   # marker -> ("acked", qid) | ("refused", code, text) | ("broken", why)
        self.size = {}      # marker -> the size given to message(): what a copy must hold
        self.times = []     # seconds from the end of DATA to the 250

    def new(self) -> str:
        with self.lock:
            self.n += 1
            marker = f"rel-{self.prefix}-{self.n:06d}"
            self.outcome[marker] = ("broken", "not sent")
            return marker

    def record(self, marker, *outcome):
        with self.lock:
            self.outcome[marker] = outcome

    def _items(self):
        # The clients' threads add outcomes while the test reads them.
        with self.lock:
            return list(self.outcome.items())

    def acked(self):
        return {m: o[1] for m, o in self._items() if o[0] == "acked"}

    def by_kind(self, kind):
        return {m: o for m, o in self._items() if o[0] == kind}

    def summary(self):
        outcomes = [o for _, o in self._items()]
        c = collections.Counter(o[0] for o in outcomes)
        codes = collections.Counter(o[1] for o in outcomes if o[0] == "refused")
        return (f"{len(outcomes)} attempts: {c['acked']} acknowledged, {c['refused']} refused"
                f"{' ' + str(dict(codes)) if codes else ''}, {c['broken']} broken")


def connect(port, source=None, timeout=30.0, addr="127.0.0.1") -> Smtp:
    sock = socket.create_connection((addr, port), timeout=timeout,
                                    source_address=(source, 0) if source else None)
    s = Smtp(sock)
    s.sock.settimeout(timeout)
    return s


def session(port, ledger: Ledger, sizes, count=1, source=None, timeout=30.0):
    """One SMTP session sending `count` messages (sizes: a callable giving
    each one's size); every attempt ends in the ledger.  Returns how many
    were acknowledged."""
    acked, marker = 0, None
    try:
        s = connect(port, source, timeout)
    except OSError:
        return 0
    try:
        code, lines = s.reply()
        if code != 220:
            return 0
        if s.cmd("EHLO client.example.test")[0] != 250:
            return 0
        for _ in range(count):
            marker = ledger.new()
            for line, want in ((f"MAIL FROM:<{SENDER}>", 250), (f"RCPT TO:<{RCPT}>", 250), ("DATA", 354)):
                code, lines = s.cmd(line)
                if code != want:
                    ledger.record(marker, "refused", code, " ".join(lines))
                    return acked
            size = sizes()
            ledger.size[marker] = size
            s.send(message(marker, size))
            started = time.monotonic()
            code, lines = s.cmd(".")
            if code == 250:
                ledger.record(marker, "acked", lines[-1].rsplit(" ", 1)[1])
                ledger.times.append(time.monotonic() - started)
                acked += 1
            else:
                ledger.record(marker, "refused", code, " ".join(lines))
            marker = None
        with contextlib.suppress(OSError, ConnectionError):
            s.cmd("QUIT")
    except (OSError, ConnectionError) as e:
        if marker:
            ledger.record(marker, "broken", repr(e))
    finally:
        s.close()
    return acked


class Clients:
    """`n` client threads sending through smap until stopped: sessions of
    1 to 3 messages, sizes and pauses from a seeded generator each."""

    def __init__(self, port, ledger, rng, n=2, size=(300, 6000), pause=(0.0, 0.15)):
        self.port, self.ledger, self.stopping = port, ledger, threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(random.Random(rng.random()), size, pause),
                                         daemon=True) for _ in range(n)]
        self.errors = []

    def _run(self, rng, size, pause):
        try:
            while not self.stopping.is_set():
                session(self.port, self.ledger, lambda: rng.randint(*size), count=rng.randint(1, 3))
                self.stopping.wait(rng.uniform(*pause))  # the clients' pace, not a synchronisation
        except Exception as e:  # recorded: the test fails on it
            self.errors.append(repr(e))

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(120)
        assert not any(t.is_alive() for t in self.threads), "a client thread hangs"
        assert not self.errors, self.errors


# ------------------------------------------------------------------ smapd and MTAs

class Smapd:
    """smapd (-d, in the foreground, as root: it drops to nobody) on a spool,
    handing off to `sendmail` (argv list), or by SMTP/LMTP to `mta`
    (smapd's mta keyword, such as smtp:127.0.0.1:PORT).  start() again
    after a kill."""

    def __init__(self, base, spool, sendmail=None, extra="", mta=None):
        self.base, self.spool = base, spool
        group = grp.getgrgid(nobody_ids()[1]).gr_name
        self.table = base / "smapd-table"
        handoff = f"mta {mta}" if mta else f"sendmail {' '.join(map(str, sendmail))}"
        self.table.write_text(f"smapd: directory {spool}\nsmapd: userid nobody\nsmapd: groupid {group}\n"
                              f"smapd: {handoff}\nsmapd: wakeup 1\n"
                              f"smapd: retry-max 1\nsmapd: maxchildren 4\n" + extra)
        self.table.chmod(0o644)
        self.proc = None
        self.logs = []
        self.orphans = []   # processes of killed smapds and children, until they exit

    def start(self):
        # Append mode: smapd's stderr and our reads share one file offset, and
        # without O_APPEND a line smapd writes between our seek(0) and read()
        # lands at 0, over the lines before it ("started:" lost: a restart
        # that seemed to time out).
        log = open(self.base / f"smapd{len(self.logs)}.log", "a+b")
        self.logs.append(log)
        self.proc = subprocess.Popen([command("smapd"), "-d", "--config", str(self.table)], stdout=log,
                                     stderr=log, stdin=subprocess.DEVNULL)
        wait_for(lambda: "started:" in self._read(log) or self.proc.poll() is not None, what="smapd to start")
        assert self.proc.poll() is None, self._read(log)
        return self

    @staticmethod
    def _read(log):
        log.seek(0)
        return log.read().decode("utf-8", "replace")

    def log(self):
        return "".join(self._read(f) for f in self.logs)

    def deliveries(self):
        """[(pid, queue id)] of the delivery children running now."""
        out = []
        for pid in children(self.proc.pid) if self.proc else ():
            title = cmdline(pid)
            if title.startswith("smapd: delivering "):
                out.append((pid, title.split()[2]))   # "smapd: delivering ID [(i of n)]"
        return out

    def kill_delivery(self, pid):
        """SIGKILL one delivery child; its MTA (a session of its own) goes on."""
        self.orphans += descendants(pid)
        return kill(pid)

    def kill(self, with_children=False):
        """SIGKILL smapd (and, with_children, its delivery children at once);
        the queue ids of the children killed."""
        kids = self.deliveries() if with_children else []
        self.orphans += descendants(self.proc.pid)
        kill(self.proc.pid)
        for pid, _ in kids:
            kill(pid)
        self.proc.wait(10)
        return [qid for _, qid in kids]

    def settled(self):
        """No delivery running: neither ours nor one a killed smapd left."""
        self.orphans = [p for p in self.orphans if alive(p)]
        return not self.orphans and not self.deliveries()

    def stop(self):
        """TERM: running deliveries finish, then smapd exits."""
        stop(self.proc, timeout=30)

    def close(self):
        self.stop()
        for pid in self.orphans:
            kill(pid)
        for log in self.logs:
            log.close()


class FakeMta(SharedFakeMta):
    """The tests' fake MTA (tests/support/fake_mta.py), read as the
    audit needs it."""

    def calls(self, ledger):
        """[(mode, marker, (queue id, intact), ok)] of every call that got
        as far as recording its mode (a call killed at its time-out did);
        intact: the MTA read the whole message, byte for byte."""
        import hashlib
        d = self.dir / "calls"
        out = []
        for stem, mode, _, body in self.records():
            with open(body, "rb") as f:
                head = f.read(HEAD)
            with open(d / f"{stem}.sum") as f:
                digest = f.read().split()[0]
            marker = _marker(head)
            want = expected(ledger, marker)
            start = head.find(f"From: <{SENDER}>\n".encode())
            intact = None if want is None else (
                start >= 0 and hashlib.sha256(head[:start] + want).hexdigest() == digest)
            out.append((mode, marker, (_qid(head), intact), self.succeeded(stem)))
        return out

    @staticmethod
    def delivered(calls, modes=("ok",)):
        """{marker: [(queue id, intact)]} of the calls that ended in one of
        `modes` (a call in mode ok counts once it has exited 0)."""
        out = collections.defaultdict(list)
        for mode, marker, copy, ok in calls:
            if (ok if mode == "ok" else mode in modes):
                out[marker].append(copy)
        return out


def expected(ledger, marker):
    """The canonical message `marker` stands for, or None (not ours)."""
    size = ledger.size.get(marker) if marker else None
    return None if size is None else canonical(message(marker, size))


def _marker(data: bytes):
    m = MARKER_RE.search(data)
    return m.group(1).decode() if m else None


def _qid(data: bytes):
    m = QID_RE.search(data)
    return m.group(1).decode() if m else None


# ------------------------------------------------------------------ what is where

def copies(files, ledger, maildir=False):
    """{marker: [(queue id, intact)]} over the files: spool files (whole
    after smap's Received header) or Maildir files (the MTA adds headers:
    the body whole)."""
    out = collections.defaultdict(list)
    for path in files:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            continue
        marker = _marker(data)
        want = expected(ledger, marker)
        if want is None:
            intact = None
        elif maildir:
            intact = data.split(b"\n\n", 1)[-1] == want.split(b"\n\n", 1)[1]
        else:
            intact = data.endswith(b"\n" + want)
        out[marker].append((_qid(data), intact))
    return out


def maildir_files(postfix, address=RCPT):
    d = postfix.maildir(address)
    return [os.path.join(d, sub, n) for sub in ("new", "cur") if os.path.isdir(os.path.join(d, sub))
            for n in os.listdir(os.path.join(d, sub))]


def spool_files(spool, prefix="sma"):
    return sorted(os.path.join(spool, n) for n in os.listdir(spool) if n.startswith(prefix))


def bad_files(spool):
    return sorted(os.path.join(spool, "bad", n) for n in os.listdir(os.path.join(spool, "bad")))


# ------------------------------------------------------------------ the audit

#: Log lines that are no news.
ROUTINE = re.compile(r" (sent\b.*|deferred: .*|started: .*|stopped|connect host=.*|disconnect host=.*|"
                     r"host=\S+ bytes=.*|"
                     r"id=\S+ to=.*|bounced by the MTA.*|moved to .*)$")
#: Log lines that say a program failed in a way no fault of the test explains.
ALARMING = re.compile(r"Traceback|[Ee]xception|delivery of \S+ failed|died while starting|exited with status|"
                      r"cannot (?!(create|write|commit) the spool file|write the status file)")
# (A full spool refuses the status file too: smapd says so once, and no
# message depends on it.)

def audit(label, seed, ledger: Ledger, delivered: dict, spooled: dict, bad: dict = None, *,
          dup_allowance=None, unacked_allowance=0, expect_bad=frozenset(), xma=(), killed_smap_pids=(),
          report=None, logs=None):
    """Check what the ledger says against where the messages are (dicts
    {marker: [(queue id, intact) of each copy]}); returns the figures, or
    fails listing the markers at fault."""
    bad = bad or {}
    dup_allowance = collections.Counter(dup_allowance or {})
    acked = ledger.acked()
    where = collections.defaultdict(list)
    for kind, found in (("delivered", delivered), ("spool", spooled), ("bad", bad)):
        for marker, found_copies in found.items():
            where[marker] += [(kind, q, intact) for q, intact in found_copies]
    problems = []
    lost = sorted(m for m in acked if not where.get(m))
    if lost:
        problems.append(f"{len(lost)} acknowledged message(s) LOST: {lost[:20]}")
    unknown = sorted(str(m) for m in where if m not in ledger.outcome)
    if unknown:
        problems.append(f"{len(unknown)} message(s) found that no client sent: {unknown[:20]}")
    corrupt = sorted((m, kind) for m, found in where.items() for kind, _, intact in found if intact is False)
    if corrupt:
        problems.append(f"{len(corrupt)} copies CORRUPT (not the message the client sent, byte for byte): "
                        f"{corrupt[:20]}")
    unchecked = sorted(m for m, found in where.items() for _, _, intact in found
                       if intact is None and m in ledger.outcome)
    if unchecked:
        problems.append(f"copies whose content could not be checked: {unchecked[:20]}")
    wrong_id = sorted(m for m, qid in acked.items() if any(q != qid for _, q, _ in where.get(m, ())))
    if wrong_id:
        problems.append(f"copies with another queue id than their 250 said: "
                        f"{[(m, acked[m], where[m]) for m in wrong_id[:10]]}")
    duplicates, excess = 0, []
    per_qid = collections.Counter()
    for marker, found in where.items():
        extra = len(found) - 1
        if extra > 0:
            duplicates += extra
            for _, q, _ in found[1:]:
                per_qid[q] += 1
    for qid, n in per_qid.items():
        if n > dup_allowance[qid]:
            markers = [m for m, f in where.items() if any(q == qid for _, q, _ in f)]
            excess.append((qid, markers, n, dup_allowance[qid]))
    if excess:
        problems.append(f"duplicates beyond the kills that hit a hand-off (queue id, markers, extra copies, "
                        f"delivery children killed on it): {excess[:10]}")
    unacked_found = sorted(m for m in where if m in ledger.outcome and m not in acked)
    refused_found = [m for m in unacked_found if ledger.outcome[m][0] == "refused"]
    if refused_found:
        problems.append(f"messages refused with a 4xx/5xx yet delivered (the client will send them again): "
                        f"{[(m, ledger.outcome[m], where[m]) for m in refused_found[:10]]}")
    if len(unacked_found) > unacked_allowance:
        problems.append(f"{len(unacked_found)} messages found that never got their 250, more than the "
                        f"{unacked_allowance} smap children killed: {unacked_found[:20]}")
    unexpected_bad = sorted(str(m) for m in bad if m not in expect_bad)
    if unexpected_bad:
        problems.append(f"in bad/ unexpectedly: {unexpected_bad[:20]}")
    killed_prefixes = {base36(p) + "P" for p in killed_smap_pids}
    stray_xma = [os.path.basename(x) for x in xma
                 if not any(os.path.basename(x)[3 + 11:].startswith(k) for k in killed_prefixes)]
    if stray_xma:
        problems.append(f"xma files left that no killed smap child explains: {stray_xma[:20]}")
    figures = {"attempts": len(ledger.outcome), "acknowledged": len(acked), "lost": len(lost),
               "duplicates": duplicates, "corrupt": len(corrupt),
               "checked_intact": sum(1 for found in where.values() for _, _, intact in found if intact),
               "unacknowledged_found": len(unacked_found),
               "in_spool": sum(len(v) for v in spooled.values()), "in_bad": sum(len(v) for v in bad.values()),
               "xma_left": len(xma)}
    figures.update(report or {})
    notes = []
    for name, text in (logs or {}).items():
        alarming = [line for line in text.splitlines() if ALARMING.search(line)]
        if alarming:
            problems.append(f"the {name} log says what it never should: {alarming[:10]}")
        notable = collections.Counter(re.sub(r"\[\d+\]|\b\d+(\.\d+){0,3}\b|sma[0-9A-Z]+", "N",
                                             line.split(": ", 1)[-1])
                                      for line in text.splitlines() if not ROUTINE.search(line))
        if notable:
            notes.append(f"  {name} log, beyond the routine: "
                         + "; ".join(f"{n}x {t[:120]}" for t, n in notable.most_common(6)))
    line = f"AUDIT {label} (seed {seed}): {ledger.summary()}; " + ", ".join(f"{k}={v}" for k, v in figures.items())
    print("\n".join([line] + notes))
    assert not problems, line + "\n  " + "\n  ".join(problems)
    return figures
