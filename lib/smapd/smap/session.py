"""The socket side of an SMTP session: line framing, time limits, the spool.

What it does: `Framer` reads command lines and messages from a blocking
socket with its own buffer: commands end only at CRLF (`crlf strict`) or
also at a bare LF (`crlf normalize`); a command longer than 512 octets is
consumed to its line end and reported, never split into two commands;
a message ends only at CRLF.CRLF at a true line start, is dot-unstuffed
and streamed to the spool in canonical LF form, and is measured against
`maxbytes` while it is read to its end.  `Session.serve()` drives the pure
`Protocol` with what the framer saw and carries out its actions.

What it trusts: the `Protocol` for every decision, the spool writer for
durability.  Nothing from the client.

What it must never do: hold more than a bounded amount of client input
in memory (a command line, or one chunk of a message), make a decision
of its own about the protocol, or wait longer than the idle time-out,
the session deadline or the minimum data rate allow.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Callable, Optional

from smapd import spool
from smapd.smap.received import received_header
from smapd import tls as stls
from smapd.sockets import readable
from smapd.smap.protocol import MAX_COMMAND, Protocol, Result

CHUNK = 65536          # how much of one message line is held before it is written
RATE_GRACE = 30.0      # seconds of DATA before the minimum rate is enforced
LINGER = 2.0           # seconds to read what a client still sends after our last reply
FINAL_SEND = 5.0       # seconds the last reply of a timed-out session may take to send
LINGER_BYTES = 1 << 20

log = logging.getLogger("smapd")




class Closed(Exception):
    """The client went away."""


class TimedOut(Exception):
    """A time limit passed; the argument says which."""


#: Seconds between two looks at the pool's stress while a session waits
#: for its client: how late an idle session learns of the short limits.
STRESS_CHECK = 1.0


@dataclass
class Limits:
    idle: float = 300.0            # seconds without a byte from the client
    session: float = 3600.0        # seconds for the whole session
    min_rate: int = 0              # octets per second during DATA, 0 = off
    crlf: str = "strict"
    #: Under stress (most of the pool busy, smap -daemon): the shorter
    #: limits, and `stressed()` that tells (None: never, as in inetd mode).
    stress_idle: float = 10.0
    stress_session: float = 300.0
    stressed: Optional[Callable] = None

    def under_stress(self) -> bool:
        return self.stressed is not None and self.stressed()


@dataclass
class MessageInfo:
    size: int = 0
    too_big: bool = False
    bad_eol: bool = False
    nul: bool = False


class Framer:
    """Lines and messages out of a socket, with time limits."""

    def __init__(self, sock: socket.socket, limits: Limits, clock=time.monotonic):
        self.sock = sock
        self.limits = limits
        self.clock = clock
        self.buf = bytearray()
        self.eof = False
        self.started = clock()
        self.deadline = self.started + limits.session
        self.received = 0
        self._rate_from = None  # (time, bytes) when DATA began

    # -------------------------------------------------------- input

    def limits_now(self):
        """(idle time-out, session deadline, stressed) as they are now: the
        short ones while the pool is under stress."""
        if self.limits.under_stress():
            return (min(self.limits.idle, self.limits.stress_idle),
                    min(self.deadline, self.started + self.limits.stress_session), True)
        return self.limits.idle, self.deadline, False

    def _fill(self) -> None:
        if self.eof:
            raise Closed()
        since = self.clock()
        while True:
            idle, deadline, stressed = self.limits_now()
            now = self.clock()
            why = " (under stress)" if stressed else ""
            if now >= deadline:
                raise TimedOut("session time limit exceeded" + why)
            if now - since >= idle:
                raise TimedOut("timeout exceeded" + why)
            wait = min(idle - (now - since), deadline - now)
            if self.limits.stressed is not None:
                wait = min(wait, STRESS_CHECK)   # a session already waiting sees stress begin
            self.sock.settimeout(wait)
            try:
                data = self.sock.recv(CHUNK)
                break
            except socket.timeout:
                continue
            except (ConnectionError, OSError):
                self.eof = True
                raise Closed() from None
        if not data:
            self.eof = True
            raise Closed()
        self.buf += data
        self.received += len(data)
        if self._rate_from and self.limits.min_rate:
            t0, b0 = self._rate_from
            elapsed = self.clock() - t0
            if elapsed > RATE_GRACE and (self.received - b0) / elapsed < self.limits.min_rate:
                raise TimedOut("data rate too low")

    def send(self, data: bytes, final: bool = False) -> None:
        """Send within the idle time-out and the session deadline; a
        final reply (the 421 that ends a session) gets FINAL_SEND seconds
        whatever the deadline says."""
        idle, deadline, _ = self.limits_now()
        if final:
            self.sock.settimeout(FINAL_SEND)
        else:
            left = deadline - self.clock()
            if left <= 0:
                raise TimedOut("session time limit exceeded")
            self.sock.settimeout(min(idle, left))
        try:
            self.sock.sendall(data)
        except socket.timeout:
            raise TimedOut("timeout exceeded" if self.clock() < deadline
                           else "session time limit exceeded") from None
        except OSError:
            raise Closed() from None

    def _take_waiting(self) -> None:
        """Move what the client has already sent into the buffer, without
        waiting.  (Read, not peeked: a TLS socket cannot peek, and may hold
        decrypted bytes its descriptor no longer shows.)"""
        if self.eof:
            return
        tls = isinstance(self.sock, ssl.SSLSocket)
        if not (tls and self.sock.pending()) and not readable(self.sock, 0):
            return
        try:
            self.sock.settimeout(0)
            data = self.sock.recv(CHUNK)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return  # readable, but no whole TLS record yet
        except OSError:
            self.eof = True
            return
        if not data:
            self.eof = True
            return
        self.buf += data
        self.received += len(data)

    def pending(self) -> bool:
        """Is client input already waiting (buffered, or on the socket)?"""
        if not self.buf:
            self._take_waiting()
        return bool(self.buf)

    def wait_quiet(self, seconds: float) -> bool:
        """Wait up to `seconds` for the client to stay silent (greet-delay);
        False when it talked first."""
        if self.buf:
            return False
        end = self.clock() + seconds
        while True:
            left = end - self.clock()
            if left <= 0:
                return True
            if readable(self.sock, left):
                return not self.pending() and not self.eof

    def _find_end(self, start: int = 0):
        """(index of the line end, its length) or (-1, 0)."""
        if self.limits.crlf == "strict":
            i = self.buf.find(b"\r\n", start)
            return (i, 2) if i >= 0 else (-1, 0)
        i = self.buf.find(b"\n", start)
        if i < 0:
            return -1, 0
        if i > 0 and self.buf[i - 1] == 0x0D:
            return i - 1, 2
        return i, 1

    def read_command(self):
        """(line, too_long, bad_eol): one command line without its end.
        A line over the limit is consumed to its end, never split."""
        if self.clock() >= self.limits_now()[1]:
            raise TimedOut("session time limit exceeded")
        too_long = False
        while True:
            i, n = self._find_end()
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[:i + n]
                too_long = too_long or len(line) + 2 > MAX_COMMAND
                bad = b"\r" in line or b"\n" in line
                return (b"" if too_long else line), too_long, bad
            if len(self.buf) > MAX_COMMAND:
                # Keep a trailing CR: it may start the CRLF.
                keep = 1 if self.buf.endswith(b"\r") else 0
                del self.buf[:len(self.buf) - keep]
                too_long = True
            self._fill()

    def read_message(self, sink, maxbytes: int) -> MessageInfo:
        """Read a message up to CRLF.CRLF, writing its canonical form to
        `sink` (a callable) while it stays within `maxbytes`."""
        info = MessageInfo()
        self._rate_from = (self.clock(), self.received - len(self.buf))
        crlf_before = True      # the DATA line ended with CRLF
        line_start = True
        strict = self.limits.crlf == "strict"

        def emit(piece: bytes, first: bool, line_end: bytes = b""):
            if first and piece.startswith(b"."):
                piece = piece[1:]
            if b"\r" in piece or (strict and b"\n" in piece):
                info.bad_eol = True
            if b"\0" in piece:
                info.nul = True
            piece += line_end
            info.size += len(piece)
            if info.size > maxbytes:
                info.too_big = True
            if not info.too_big:
                sink(piece)

        slow = 0                # bytes ahead to take line by line: they hold a bare CR or LF
        try:
            while True:
                if line_start and slow <= 0:
                    if crlf_before and self.buf.startswith(b".\r\n"):
                        del self.buf[:3]
                        return info
                    taken, ends_crlf = self._lines_in_bulk(info, sink, maxbytes, strict)
                    if taken > 0:
                        crlf_before = ends_crlf
                        continue
                    slow = -taken
                i, n = self._find_end()
                if i < 0:
                    if len(self.buf) > CHUNK:
                        keep = 1 if self.buf.endswith(b"\r") else 0
                        piece = bytes(self.buf[:len(self.buf) - keep])
                        del self.buf[:len(piece)]
                        slow -= len(piece)
                        emit(piece, line_start)
                        line_start = False
                    self._fill()
                    continue
                content = bytes(self.buf[:i])
                del self.buf[:i + n]
                slow -= i + n
                if line_start and crlf_before and n == 2 and content == b".":
                    return info
                emit(content, line_start, b"\n")
                line_start = True
                crlf_before = n == 2
        finally:
            self._rate_from = None

    def _lines_in_bulk(self, info: MessageInfo, sink, maxbytes: int, strict: bool):
        """The whole lines at the start of the buffer, up to the message's
        end or the last line end, taken at once when they hold no bare CR
        (and, in strict mode, no bare LF): their LF form is the buffer's
        bytes with CRLF made LF and one leading dot taken from each line.
        (taken, whether the last ended with CRLF): taken is the octets
        consumed, 0 when there is no whole line, or minus the octets that
        must go line by line, which flags what is bare.  Line by line, a
        100 KB message was 1300 rounds of Python; this is a few passes
        in C."""
        buf = self.buf
        end = buf.find(b"\r\n.\r\n")
        last = end + 2 if end >= 0 else buf.rfind(b"\n") + 1
        if last <= 0:
            return 0, False
        block = bytes(buf[:last])
        crlfs = block.count(b"\r\n")
        if block.count(b"\r") != crlfs or (strict and block.count(b"\n") != crlfs):
            return -last, False
        del buf[:last]
        out = block.replace(b"\r\n", b"\n")
        if out.startswith(b"."):
            out = out[1:]
        out = out.replace(b"\n.", b"\n")
        if b"\0" in out:
            info.nul = True
        info.size += len(out)
        if info.size > maxbytes:
            info.too_big = True
        if not info.too_big:
            sink(out)
        return last, block.endswith(b"\r\n")


@dataclass
class TlsSetup:
    """TLS for a session: the context (built before the jail) and whether
    the connection starts with the handshake (smtps) or may ask for it
    (STARTTLS)."""
    context: ssl.SSLContext
    on_connect: bool = False


class Session:
    """Serve one SMTP connection with a Protocol, a Framer and the spool."""

    def __init__(self, sock, protocol: Protocol, limits: Limits, spool_dir: str, hostname: str,
                 client_name: str, client_addr: str, greet_delay: float = 0.0, observer=None,
                 tls: Optional[TlsSetup] = None):
        self.sock = sock
        self.tls = tls
        self.proto = protocol
        self.framer = Framer(sock, limits)
        self.spool_dir = spool_dir
        self.hostname = hostname
        self.client_name = client_name or "unknown"
        self.client_addr = client_addr
        self.greet_delay = greet_delay
        #: Called with the protocol's stage when it changes (a child's title).
        self.observer = observer
        self._stage = None
        self.messages = 0
        self.said_bye = False   # the session ended with our 221 to its QUIT
        self.bytes = 0
        #: The queue id of the next message, given at connect: every log
        #: line of the session up to that message carries it, so that one
        #: grep finds the connection, its refusals, the message and
        #: smapd's hand-off.  A new one after each message spooled.
        self.queue_id = spool.new_queue_id()
        #: The first of them: the disconnect line carries it, as the connect
        #: line does, so that the two pair up (smapctl trace).
        self.session_id = self.queue_id

    def _send(self, result: Result, final: bool = False) -> bool:
        """Carry out the replies of a result; False when the session ends."""
        refused = bool(result.replies) and result.replies[-1].code >= 400
        for why in result.log:
            if refused:
                env = self.proto.envelope
                log_refusal(self.client_name, self.client_addr, why, result.replies[-1], self.queue_id,
                            env.sender if env is not None else self.proto.mail_attempt, self.proto.helo)
            else:
                log.info("host=%s/%s note: %s; id=%s", self.client_name, self.client_addr, why, self.queue_id)
        if result.delay:
            time.sleep(result.delay)
        if result.replies:
            try:
                self.framer.send(b"".join(r.render() for r in result.replies), final or result.closes)
            except Closed:
                return False
        return not result.closes

    def _note_stage(self) -> None:
        if self.observer is not None:
            stage = self.proto.stage
            if stage != self._stage:
                self._stage = stage
                self.observer(stage)

    def serve(self) -> None:
        log.info("connect host=%s/%s id=%s", self.client_name, self.client_addr, self.queue_id)
        aborted = False
        try:
            if self.tls and self.tls.on_connect and not self._handshake():
                return
            if self.greet_delay and not self.framer.limits.under_stress():
                # postscreen's pregreet test: a 220- line, then silence
                # expected until the last line of the greeting.
                self.framer.send(self.proto.teaser())
                if not self.framer.wait_quiet(self.greet_delay):
                    self._send(self.proto.early_talker())
                    return
            if self.framer.pending():
                self._send(self.proto.early_talker())
                return
            if not self._send(self.proto.connect()):
                return
            while True:
                line, too_long, bad = self.framer.read_command()
                result = self.proto.line(line, pipelined=self.framer.pending(), too_long=too_long, bad_eol=bad)
                if result.action == "data":
                    if not self._message():
                        return
                    self._note_stage()
                    continue
                if result.action == "starttls":
                    # The protocol has refused STARTTLS with input behind it,
                    # so nothing sent in clear can be read as encrypted.
                    if not self._send(result) or self.framer.buf or not self._handshake():
                        return
                    continue
                if not self._send(result):
                    self.said_bye = result.replies[-1].code == 221 if result.replies else False
                    return
                self._note_stage()
        except TimedOut as e:
            try:
                self._send(self.proto.timeout(str(e)), final=True)
            except TimedOut:
                pass
        except Closed:
            stage = self.proto.stage
            log.info("host=%s/%s lost connection after %s id=%s", self.client_name, self.client_addr,
                     "CONNECT" if stage == "connected" else stage, self.queue_id)
        except BaseException:
            # Stopped from outside (a fast stop): the spool file is removed
            # on the way out; no lingering.
            aborted = True
            raise
        finally:
            log.info("disconnect host=%s/%s messages=%d bytes=%d id=%s%s", self.client_name, self.client_addr,
                     self.messages, self.bytes, self.session_id, " (aborted)" if aborted else "")
            if aborted:
                self.sock.close()
            else:
                lingering_close(self.sock, idle_peer=self.said_bye and not self.framer.buf)

    def _handshake(self) -> bool:
        """TLS on this connection, within the idle time-out and the session
        deadline; False (after a log line) when it failed."""
        idle, deadline, _ = self.framer.limits_now()
        left = deadline - self.framer.clock()
        try:
            self.sock.settimeout(max(0.1, min(idle, left)))
            self.sock = self.tls.context.wrap_socket(self.sock, server_side=True, do_handshake_on_connect=False)
            self.framer.sock = self.sock
            self.sock.do_handshake()
        except (OSError, ValueError) as e:  # ssl.SSLError and socket.timeout are OSErrors
            why = "timed out" if isinstance(e, socket.timeout) else stls.handshake_failure(e)
            self._send(self.proto.tls_failed(why))
            return False
        peer = stls.peer_subject(self.sock)
        description = stls.describe(self.sock)
        log.info("host=%s/%s TLS %s%s id=%s", self.client_name, self.client_addr, description,
                 f" client={peer}" if peer else "", self.queue_id)
        self._send(self.proto.tls_started(description, peer))
        return True

    def _client_attributes(self, env) -> dict:
        """The spool's ATTR lines: what smapd passes on with XCLIENT or
        XFORWARD so that the MTA judges and logs the original client."""
        return {"client-addr": self.client_addr,
                "client-name": None if self.client_name == "unknown" else self.client_name,
                "helo": env.helo or None, "proto": self.proto.received_protocol,
                "login": self.proto.auth_user}

    def _message(self) -> bool:
        env = self.proto.envelope
        queue_id = self.queue_id
        header = received_header(env.helo, self.client_name, self.client_addr, self.hostname,
                                       self.proto.received_protocol, queue_id, env.recipients)
        try:
            writer = spool.SpoolWriter(self.spool_dir, env.sender, env.recipients, header, queue_id,
                                       self._client_attributes(env))
        except OSError as e:
            return self._send(self.proto.spool_failed(f"cannot create the spool file: {e.strerror}"))
        committed = False
        try:
            if not self._send(self.proto.data_started()):
                return False
            self._note_stage()
            failure = []

            def sink(piece):
                if failure:
                    return
                try:
                    writer.write(piece)
                except OSError as e:  # a full disk: read on, then 451
                    failure.append(e)

            info = self.framer.read_message(sink, self.proto.settings.maxbytes)
            result = self.proto.data_end(info.size, info.too_big, info.bad_eol, info.nul)
            # A refused or failed message leaves nothing behind before the
            # client hears about it (abort is idempotent; commit aborts too).
            if result.action != "spool":
                writer.abort()
                return self._send(result)
            if failure:
                writer.abort()
                return self._send(self.proto.spool_failed(f"cannot write the spool file: {failure[0].strerror}"))
            recipients = list(env.recipients)
            try:
                writer.commit()
            except OSError as e:
                return self._send(self.proto.spool_failed(f"cannot commit the spool file: {e.strerror}"))
            committed = True
            self.queue_id = spool.new_queue_id()
            self.messages += 1
            self.bytes += info.size
            # Name, address and each recipient in their own argument: the
            # length cap of peer text then never hides the address.
            log.info("host=%s/%s bytes=%d from=<%s> to=<%s> nrcpt=%d id=%s", self.client_name,
                     self.client_addr, info.size, env.sender, recipients[0], len(recipients), queue_id)
            for r in recipients[1:]:
                log.info("id=%s to=<%s>", queue_id, r)
            return self._send(self.proto.spooled(queue_id))
        finally:
            if not committed:
                writer.abort()


def log_refusal(name: str, addr: str, why: str, last, queue_id=None, sender=None, helo=None) -> None:
    """The one form of a refusal's log line: who, why, the reply code,
    the queue id, the sender and the HELO name (`none` when there is
    none yet), as Postfix's reject lines give them."""
    log.info("host=%s/%s refused: %s; code=%s id=%s from=%s helo=%s", name, addr, why,
             f"{last.code} {last.status}".strip(), queue_id or "none",
             "none" if sender is None else f"<{sender}>", "none" if helo is None else f"<{helo}>")


def lingering_close(sock, idle_peer: bool = False) -> None:
    """Send FIN after the last reply, then read what the client still had
    in flight, briefly: closing with unread input would send a reset that
    can destroy the reply before the client reads it.  Other descriptors
    may hold the connection (inetd's 0, 1 and 2), so the shutdown, not
    the close, ends it.  `idle_peer`: the client has nothing in flight,
    as before the greeting (a refusal at connect) or after its QUIT;
    without input waiting there is nothing to read, and lingering would
    let a flood of silent connections hold every child LINGER seconds
    each, and every session its client's round trip after the 221."""
    if idle_peer and not isinstance(sock, ssl.SSLSocket) and not readable(sock, 0):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
        return
    if isinstance(sock, ssl.SSLSocket):
        try:  # close_notify first, then the plain socket lingers below
            sock.settimeout(LINGER)
            sock = sock.unwrap()
        except (OSError, ValueError):
            pass
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(LINGER)
        end = time.monotonic() + LINGER
        drained = 0
        while time.monotonic() < end and drained < LINGER_BYTES:
            data = sock.recv(CHUNK)
            if not data:
                break
            drained += len(data)
    except OSError:
        pass
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
