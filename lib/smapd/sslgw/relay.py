"""Relaying one ssl-gw connection: TLS on one side, plain TCP on the other.

What it does: moves bytes both ways between the client's TLS socket and
the backend's TCP socket with one poll(2) loop on non-blocking sockets
(an SSL object must not be read and written from two threads), until
both directions are done (or, under the pool's stress, `stress`'s
shorter idle time-out ends an idle one).  Half-close is forwarded: the client's EOF
(close_notify, or a TCP FIN) becomes a FIN to the backend once all its
bytes are written, and the backend's FIN becomes a close_notify to the
client once all the backend's bytes are written; each direction then
goes on alone.  An error on either side, or `idle` seconds without a
byte either way, ends both.  At most `BUFFER` octets wait per direction:
a slow reader slows its writer down instead of filling memory.

What it trusts: nothing it relays; it never looks at the bytes.

What it must never do: drop or reorder a byte, block on one side while
the other has work, or hold more than two buffers of data.
"""

from __future__ import annotations

import errno
import select
import socket
import ssl
import time
from dataclasses import dataclass

#: Octets waiting per direction, at most: one buffer each way, filled by
#: recv_into and sent from in place (no copy of the bytes in Python); a
#: slow reader slows its writer down instead of filling memory.
BUFFER = 256 * 1024

_WANT = (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError, InterruptedError)


@dataclass
class Counts:
    to_ssl: int = 0        # octets from the backend written to the client
    to_socket: int = 0     # octets from the client written to the backend
    ended_by: str = ""     # why it ended, for the log


#: Seconds between two looks at the pool's stress while a relay is idle.
STRESS_CHECK = 1.0


class _Buffer:
    """One direction's octets: read into `view[end:]`, sent from
    `view[start:end]`; emptied, it starts again at 0."""

    def __init__(self, view: memoryview):
        self.view = view
        self.start = self.end = 0

    def waiting(self) -> bool:
        return self.start < self.end

    def room(self) -> bool:
        if self.start == self.end:
            self.start = self.end = 0
        return self.end < BUFFER


#: The two buffers of this process, made at its first relay and kept: a
#: child relays one connection at a time, and 512 KiB zeroed and faulted
#: in per connection is a handshake's worth of time at a high rate.
_MEMORY = []


def _buffers() -> tuple:
    if not _MEMORY:
        _MEMORY.extend(memoryview(bytearray(BUFFER)) for _ in range(2))
    return _Buffer(_MEMORY[0]), _Buffer(_MEMORY[1])


def relay(tls: ssl.SSLSocket, plain: socket.socket, idle: float, clock=time.monotonic, stress=None) -> Counts:
    """`stress`: (stressed(), the idle time-out under stress), or None; it
    is asked only while nothing moves, so a busy relay pays nothing."""
    counts = Counts()
    tls.setblocking(False)
    plain.setblocking(False)
    up, down = _buffers()          # from the client for the backend, and back
    client_eof = backend_eof = False
    plain_shut = tls_shut = False  # our FIN to the backend / close_notify to the client sent
    tls_wants_write = False        # an SSL read needs the socket writable (rare)
    last = clock()
    poller = select.poll()
    tls_fd, plain_fd = tls.fileno(), plain.fileno()
    watched = {tls_fd: 0, plain_fd: 0}

    def watch(fd, events):
        # A side with nothing to do is not watched: a closed peer would
        # otherwise report POLLHUP at every turn and spin the loop.
        if events != watched[fd]:
            if events:
                poller.register(fd, events)
            else:
                poller.unregister(fd)
            watched[fd] = events

    def done():
        return client_eof and backend_eof and plain_shut and tls_shut

    try:
        while not done():
            tls_events = 0
            if (not client_eof and up.room()) or tls_wants_write:
                tls_events |= select.POLLIN
            if down.waiting() or tls_wants_write or (backend_eof and not tls_shut):
                tls_events |= select.POLLOUT
            plain_events = 0
            if not backend_eof and down.room():
                plain_events |= select.POLLIN
            if up.waiting():
                plain_events |= select.POLLOUT
            watch(tls_fd, tls_events)
            watch(plain_fd, plain_events)
            # Decrypted bytes may sit in the SSL object with nothing on the
            # descriptor: do not wait for the descriptor then.
            wait = 0 if (tls.pending() and not client_eof and up.room()) else \
                max(0.0, idle - (clock() - last))
            if stress is not None:
                wait = min(wait, STRESS_CHECK)  # an idle relay sees stress begin
            events = poller.poll(int(wait * 1000))
            if not events and not tls.pending():
                limit = idle
                if stress is not None and stress[0]():
                    limit = min(idle, stress[1])
                if clock() - last >= limit:
                    counts.ended_by = "idle time-out" + (" (under stress)" if limit < idle else "")
                    return counts
                continue
            progress = False

            # client -> backend: TLS records until the buffer is full or
            # none is left.
            while not client_eof and up.room():
                try:
                    n = tls.recv_into(up.view[up.end:])
                except _WANT as e:
                    tls_wants_write = isinstance(e, ssl.SSLWantWriteError)
                    break
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    n = 0
                if not n:
                    client_eof = True
                    break
                up.end += n
                progress = True
            while up.waiting():
                try:
                    n = plain.send(up.view[up.start:up.end])
                except _WANT:
                    break
                up.start += n
                counts.to_socket += n
                progress = True
            if client_eof and not up.waiting() and not plain_shut:
                _shutdown_write(plain)
                plain_shut = True

            # backend -> client
            if not backend_eof and down.room():
                try:
                    n = plain.recv_into(down.view[down.end:])
                    if n:
                        down.end += n
                        progress = True
                    else:
                        backend_eof = True
                except _WANT:
                    pass
            while down.waiting():
                try:
                    # A retry after WANT_WRITE sends the same octets from
                    # the same place, as OpenSSL asks.
                    n = tls.send(down.view[down.start:down.end])
                except _WANT:
                    break
                down.start += n
                counts.to_ssl += n
                progress = True
            if backend_eof and not down.waiting() and not tls_shut:
                _close_notify(tls)
                tls_shut = True

            if progress:
                last = clock()
        counts.ended_by = "both sides closed"
        return counts
    except (ssl.SSLError, OSError) as e:
        counts.ended_by = _why(e)
        return counts


def _shutdown_write(sock) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _close_notify(tls: ssl.SSLSocket) -> None:
    """Send close_notify and keep reading: SSL_shutdown's first step.  The
    client may go on sending (a TLS 1.3 half-close) until its own EOF."""
    try:
        tls._sslobj.shutdown()  # the public unwrap() would also drop the SSL object we still read from
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError, ssl.SSLError, OSError, AttributeError, ValueError):
        pass


def _why(e) -> str:
    if isinstance(e, ssl.SSLError):
        return f"TLS error: {e.reason or e}"
    if getattr(e, "errno", None) == errno.ECONNRESET:
        return "connection reset"
    return getattr(e, "strerror", None) or str(e)
