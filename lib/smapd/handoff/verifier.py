"""smapd's recipient verifier: asks the MTA whether a recipient exists,
for smap's `recipient-verify`, from outside the jail.

What it does: `serve()` (a process of its own, forked by runner.py when
`recipient-verify` is set) listens on the UNIX socket spool.VERIFY_SOCKET
in the spool (mode 0660: smap's children, jailed in the spool, reach it
as long as their group is smapd's) and answers one question per
connection (verify_wire.py).  `Verifier.verify()` answers from its cache,
or probes the MTA of `mta` (MAIL FROM:<>, RCPT TO, RSET; nothing is
sent) through a few kept connections, as Postfix's verify(8) does:
the MTA's 2xx is kept `verify-positive-expire` seconds, its 5xx
`verify-negative-expire`, a 4xx or an MTA that cannot be reached not at
all; the last two are answered 450 4.1.1 and 451 4.4.3, never a 5xx.
The cache is in memory: a restart of smapd starts it empty.

What it trusts: the MTA's reply codes.  Nothing of the questions: each
is one line that must hold an address mailbox.py accepts, or it gets 501.

What it must never do: answer a 5xx that the MTA did not give, send a
message, follow a symbolic link to bind its socket, or hold more than
PROBES connections to the MTA.
"""

from __future__ import annotations

import logging
import os
import socket
import socketserver
import stat
import threading
import time
from collections import OrderedDict

from smapd import mailbox, verify_wire
from smapd.handoff.smtp_client import MtaSession, MtaUnavailable, Reply
from smapd.spool import VERIFY_SOCKET

log = logging.getLogger("smapd")

#: Probes at once (connections to the MTA); more questions wait their turn.
PROBES = 4
#: Seconds a probe may take, and a question may wait for a free probe.
PROBE_TIMEOUT = 10.0
#: Seconds a client has to ask its question.
QUESTION_TIMEOUT = 5.0
#: Addresses kept at most (the oldest go first).
MAX_ENTRIES = 100_000

UNAVAILABLE = Reply(451, ("4.4.3 recipient verification is unavailable, try again later",))


class VerifyCache:
    """Address -> the MTA's reply, each for its time; thread-safe."""

    def __init__(self, positive: float, negative: float, clock=time.monotonic, max_entries: int = MAX_ENTRIES):
        self.positive, self.negative, self.clock, self.max_entries = positive, negative, clock, max_entries
        self.entries = OrderedDict()
        self.lock = threading.Lock()

    @staticmethod
    def key(address: str) -> str:
        """The domain is case-insensitive; the local part may not be."""
        local, at, domain = address.rpartition("@")
        return f"{local}{at}{domain.lower()}" if at else address.lower()

    def get(self, address: str):
        with self.lock:
            hit = self.entries.get(self.key(address))
            if hit is None:
                return None
            reply, until = hit
            if until <= self.clock():
                del self.entries[self.key(address)]
                return None
            return reply

    def put(self, address: str, reply: Reply) -> None:
        ttl = {2: self.positive, 5: self.negative}.get(reply.code // 100)
        if ttl is None:
            return
        with self.lock:
            key = self.key(address)
            self.entries.pop(key, None)
            self.entries[key] = (reply, self.clock() + ttl)
            while len(self.entries) > self.max_entries:
                self.entries.popitem(last=False)


class Verifier:
    def __init__(self, mta, hostname: str, cache: VerifyCache, timeout: float = PROBE_TIMEOUT):
        self.mta, self.hostname, self.cache, self.timeout = mta, hostname, cache, timeout
        self.slots = threading.BoundedSemaphore(PROBES)
        self.idle = []                # kept MtaSessions
        self.idle_lock = threading.Lock()
        self.probes = 0               # probes made (for the log and the tests)

    def verify(self, address: str) -> Reply:
        problem = mailbox.problem(address)
        if problem:
            return Reply(501, (f"5.1.3 {problem}",))
        hit = self.cache.get(address)
        if hit is not None:
            log.info("verify <%s>: %s (cached)", address, hit)
            return hit
        if not self.slots.acquire(timeout=self.timeout):
            log.warning("verify <%s>: no probe free within %ds", address, self.timeout)
            return UNAVAILABLE
        try:
            reply = self._probe(address)
        finally:
            self.slots.release()
        if reply.code // 100 == 4:
            # The MTA says "not now": an unverified address, not a refusal.
            reply = Reply(450, (f"4.1.1 unverified address: {reply}",)) if reply is not UNAVAILABLE else reply
        self.cache.put(address, reply)
        log.info("verify <%s>: %s (probed)", address, reply)
        return reply

    def _probe(self, address: str) -> Reply:
        with self.idle_lock:
            session = self.idle.pop() if self.idle else None
        for attempt in (1, 2):
            try:
                if session is None:
                    session = MtaSession(self.mta, self.hostname, self.timeout)
                    session.open()
                self.probes += 1
                reply = session.probe(address)
            except MtaUnavailable as e:
                reused = session is not None and session.reused
                if session is not None:
                    session.close()
                session = None
                # A kept connection the MTA has closed meanwhile: once more.
                if attempt == 1 and reused:
                    continue
                log.warning("verify <%s>: %s", address, e)
                return UNAVAILABLE
            with self.idle_lock:
                self.idle.append(session)
            return reply
        return UNAVAILABLE  # not reached


class _Handler(socketserver.StreamRequestHandler):
    def handle(self):
        self.connection.settimeout(QUESTION_TIMEOUT)
        try:
            line = self.rfile.readline(verify_wire.MAX_LINE)
        except OSError:
            return
        address = verify_wire.parse_request(line)
        reply = Reply(501, ("5.5.2 not a question",)) if address is None else self.server.verifier.verify(address)
        text = reply.text
        if text.startswith(reply.status + " "):
            text = text[len(reply.status) + 1:]
        try:
            self.connection.sendall(verify_wire.answer(reply.code, reply.status, text))
        except OSError:
            pass


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = False


def bind(path: str = VERIFY_SOCKET) -> socket.socket:
    """The listening socket, in the working directory (the spool).  What
    is there already (a dead socket, or anything whoever can write the
    spool planted: unlink removes a symbolic link, never its target) is
    removed first; bind() creates the socket with mode 0660 (umask)."""
    try:
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode):
            raise OSError(f"{path} is a directory")
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o117)
    try:
        sock.bind(path)
    finally:
        os.umask(old)
    sock.listen(128)
    return sock


def serve(settings, hostname: str) -> None:
    """Answer questions until killed (runner.py sends TERM)."""
    cache = VerifyCache(settings["verify-positive-expire"], settings["verify-negative-expire"])
    server = _Server(VERIFY_SOCKET, _Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = bind()
    server.verifier = Verifier(settings["mta"], hostname, cache)
    log.info("verifier: answering on %s/%s for mta %s", os.getcwd(), VERIFY_SOCKET, settings["mta"])
    server.serve_forever(poll_interval=3600)
