"""Reliability, scenario 4: a flood of idle connections and slow-trickle
clients against a pool of 50 (`smap -daemon`, maxchildren 50, timeout
2 s, session-timeout 40 s, min-data-rate 64, maxperhost and maxpernet
high: the flood comes from ten addresses, 127.0.0.2 to .11, as a
distributed one would, and loopback is one /24).

A wave: ten slow clients take children first (five trickle a command
line one octet a second, five trickle their message the same way), then
500 connections open and say nothing: 50 are served, the rest wait in
the listen backlog.  Then a normal client (127.0.0.1) connects and sends
a message.  What a user sees is asserted: the normal client's 250 comes
within 60 s (it waits its turn in the backlog while idle connections
time out); every idle connection got its 220 and then 421 4.4.2 (timeout
exceeded); the message tricklers are cut by the minimum data rate
(after its 30 s of grace), the command tricklers by the session limit;
the master never has more than 50 children and stays up; afterwards the
pool shrinks back and serves a new client at once.  Waves repeat for
RELIABILITY_SECONDS (default: one wave, about 45 s)."""

import os
import select
import selectors
import socket
import threading
import time

import pytest

from support.programs import wait_for
from harness import RCPT, Ledger, audit, cmdline, connect, copies, make_rng, seconds, session, spool_files

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="smap -daemon binds, chroots and drops privileges as root")

IDLE, TRICKLERS, POOL, TIMEOUT, SESSION = 500, 10, 50, 2, 40
DEADLINE = 60           # seconds the normal client may wait for its 250
FLOOD_SOURCES = [f"127.0.0.{i}" for i in range(2, 12)]


class IdleFlood:
    """`n` connections that never send a byte; one thread reads what
    smap says to each and closes it at smap's end-of-file, as a client
    would."""

    def __init__(self, port, n):
        self.sel = selectors.DefaultSelector()
        self.said = {}
        self.open = 0
        self.lock = threading.Lock()
        for i in range(n):
            s = socket.socket()
            s.bind((FLOOD_SOURCES[i % len(FLOOD_SOURCES)], 0))
            s.settimeout(10)
            s.connect(("127.0.0.1", port))  # completed by the kernel: the backlog holds it
            s.setblocking(False)
            self.said[s.fileno()] = bytearray()
            self.sel.register(s, selectors.EVENT_READ)
            self.open += 1
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while self.open and not self.stopping:
            for key, _ in self.sel.select(0.2):
                s = key.fileobj
                try:
                    data = s.recv(4096)
                except BlockingIOError:
                    continue
                except OSError as e:
                    data = b""
                    self.said[s.fileno()] += f"[{e!r}]".encode()
                if data:
                    self.said[s.fileno()] += data
                    continue
                self.sel.unregister(s)
                self.said[("closed", s.fileno())] = self.said.pop(s.fileno())
                s.close()
                self.open -= 1

    def transcripts(self):
        return [bytes(v) for k, v in self.said.items() if isinstance(k, tuple)]

    def close(self):
        self.stopping = True
        self.thread.join(5)
        for key in list(self.sel.get_map().values()):
            key.fileobj.close()


def trickle(port, in_data, results, i):
    """A client that sends one octet a second: a command line, or its
    message after DATA.  Records the last line smap said and how long
    the session lasted."""
    started = time.monotonic()
    said = b""
    try:
        s = connect(port, source="127.0.0.12", timeout=SESSION + 30)
        said = s.reply()[1][-1].encode() + b"\r\n"
        if in_data:
            for line, want in (("EHLO trickle.example.test", 250), ("MAIL FROM:<slow@example.org>", 250),
                               (f"RCPT TO:<{RCPT}>", 250), ("DATA", 354)):
                code, lines = s.cmd(line)
                assert code == want, lines
        text = (b"Subject: slow\r\n\r\n" if in_data else b"EHLO trickle.example.test\r\n") * 1000
        for octet in text:
            if select.select([s.sock], [], [], 0)[0]:  # (a socket with a time-out waits even with MSG_DONTWAIT)
                data = s.sock.recv(4096)
                if not data:
                    break  # smap ended the session
                said += data
            s.send(bytes([octet]))
            time.sleep(1)  # the trickle itself: under the idle time-out, far under min-data-rate
        s.close()
    except (OSError, ConnectionError) as e:
        said += f"[{e!r}]".encode()
    lines = said.decode(errors="replace").splitlines()
    results[i] = (in_data, lines[-1] if lines else "", time.monotonic() - started)


def test_flood_of_idle_and_slow_clients(daemon):
    import resource
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert soft >= IDLE + 100, f"the open file limit ({soft}) is too low for {IDLE} connections"
    with open("/proc/sys/net/core/somaxconn") as f:
        backlog = min(socket.SOMAXCONN, int(f.read()))
    assert backlog > IDLE + TRICKLERS, f"a listen backlog of {backlog} cannot hold {IDLE} idle connections"
    seed, rng = make_rng("flood")
    duration = seconds(0)
    d = daemon(f"smap: maxchildren {POOL}\nsmap: minspare 5\nsmap: maxspare 10\nsmap: timeout {TIMEOUT}\n"
               f"smap: session-timeout {SESSION}\nsmap: min-data-rate 64\nsmap: maxperhost 1000\n"
               "smap: maxpernet 1000\n")
    d.wait_idle(5, at_least=True)
    ledger = Ledger(f"flood{seed}")
    most, stop = [0], threading.Event()
    master_died = []

    def watch():
        while not stop.is_set():
            most[0] = max(most[0], len(d.kids()))
            if d.proc.poll() is not None:
                master_died.append(d.proc.returncode)
            stop.wait(0.1)  # a sampling period, not a synchronisation

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    waves, waits = 0, []
    end = time.monotonic() + duration
    try:
        while waves == 0 or time.monotonic() < end:
            waves += 1
            results = {}
            slow = [threading.Thread(target=trickle, args=(d.port, i % 2 == 1, results, i), daemon=True)
                    for i in range(TRICKLERS)]
            for t in slow:
                t.start()
            wait_for(lambda: sum(1 for p in d.kids() if cmdline(p).split()[1:2] == ["127.0.0.12"]) >= TRICKLERS,
                     timeout=20, what="the slow clients to hold their children")
            flood = IdleFlood(d.port, IDLE)
            try:
                started = time.monotonic()
                acked = session(d.port, ledger, lambda: rng.randint(200, 5000), timeout=DEADLINE + 30)
                waited = time.monotonic() - started
                waits.append(round(waited, 1))
                assert acked == 1, f"the normal client's message was not accepted: {ledger.summary()}"
                assert waited < DEADLINE, f"the normal client waited {waited:.0f}s for its 250"
                wait_for(lambda: not flood.open, timeout=IDLE * TIMEOUT / 10 + 60,
                         what="smap to end every idle connection")
                transcripts = flood.transcripts()
            finally:
                flood.close()
            assert len(transcripts) == IDLE
            kinds = {}
            for t in transcripts:  # what each idle client saw, in short
                lines = t.decode(errors="replace").splitlines()
                kind = " / ".join(" ".join(line.split()[:2]) + (" (timeout)" if "timeout exceeded" in line else "")
                                  for line in lines) or "nothing"
                kinds[kind] = kinds.get(kind, 0) + 1
            assert kinds == {"220 test.example / 421 4.4.2 (timeout)": IDLE}, f"the idle connections saw {kinds}"
            for t in slow:
                t.join(SESSION + 40)
            assert len(results) == TRICKLERS, "a slow client hangs"
            for in_data, last, lasted in results.values():
                if in_data:
                    assert "421 4.4.2" in last and "data rate too low" in last and lasted >= 30, (last, lasted)
                else:
                    assert "421 4.4.2" in last and "session time limit exceeded" in last and lasted >= SESSION - 1, \
                        (last, lasted)
            d.wait_idle(10, at_least=True)
        stop.set()
        watcher.join()
        assert not master_died, f"the smap master died ({master_died})"
        assert most[0] <= POOL, f"{most[0]} children at once, more than maxchildren {POOL}"
        wait_for(lambda: len(d.kids()) <= 10, timeout=20, what="the pool to shrink back to maxspare")
        started = time.monotonic()
        assert session(d.port, ledger, lambda: 1000) == 1
        assert time.monotonic() - started < 5, "a client after the flood was not served at once"
        audit("flood", seed, ledger, {}, copies(spool_files(d.spool), ledger), xma=spool_files(d.spool, "xma"),
              logs={"smap": d.log()},
              report={"waves": waves, "normal_client_waits_s": waits, "most_children": most[0],
                      "idle_per_wave": IDLE, "slow_per_wave": TRICKLERS})
    finally:
        stop.set()
