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

CHUNK = 65536
BUFFER = 4 * CHUNK

_WANT = (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError, InterruptedError)


@dataclass
class Counts:
    to_ssl: int = 0        # octets from the backend written to the client
    to_socket: int = 0     # octets from the client written to the backend
    ended_by: str = ""     # why it ended, for the log


#: Seconds between two looks at the pool's stress while a relay is idle.
STRESS_CHECK = 1.0


def relay(tls: ssl.SSLSocket, plain: socket.socket, idle: float, clock=time.monotonic, stress=None) -> Counts:
    """`stress`: (stressed(), the idle time-out under stress), or None; it
    is asked only while nothing moves, so a busy relay pays nothing."""
    counts = Counts()
    tls.setblocking(False)
    plain.setblocking(False)
    to_plain = bytearray()         # from the client, for the backend
    to_tls = bytearray()           # from the backend, for the client
    client_eof = backend_eof = False
    plain_shut = tls_shut = False  # our FIN to the backend / close_notify to the client sent
    tls_wants_write = False        # an SSL read needs the socket writable (rare)
    last = clock()

    def done():
        return client_eof and backend_eof and plain_shut and tls_shut

    try:
        while not done():
            tls_events = 0
            if (not client_eof and len(to_plain) < BUFFER) or tls_wants_write:
                tls_events |= select.POLLIN
            if to_tls or tls_wants_write or (backend_eof and not tls_shut):
                tls_events |= select.POLLOUT
            plain_events = 0
            if not backend_eof and len(to_tls) < BUFFER:
                plain_events |= select.POLLIN
            if to_plain:
                plain_events |= select.POLLOUT
            # A side with nothing to do is not watched: a closed peer would
            # otherwise report POLLHUP at every turn and spin the loop.
            poller = select.poll()
            if tls_events:
                poller.register(tls.fileno(), tls_events)
            if plain_events:
                poller.register(plain.fileno(), plain_events)
            # Decrypted bytes may sit in the SSL object with nothing on the
            # descriptor: do not wait for the descriptor then.
            wait = 0 if (tls.pending() and not client_eof and len(to_plain) < BUFFER) else \
                max(0.0, idle - (clock() - last))
            if stress is not None:
                wait = min(wait, STRESS_CHECK)  # an idle relay sees stress begin
            events = dict(poller.poll(int(wait * 1000)))
            if not events and not tls.pending():
                limit = idle
                if stress is not None and stress[0]():
                    limit = min(idle, stress[1])
                if clock() - last >= limit:
                    counts.ended_by = "idle time-out" + (" (under stress)" if limit < idle else "")
                    return counts
                continue
            progress = False

            # client -> backend
            if not client_eof and len(to_plain) < BUFFER:
                while len(to_plain) < BUFFER:
                    try:
                        data = tls.recv(CHUNK)
                    except _WANT as e:
                        tls_wants_write = isinstance(e, ssl.SSLWantWriteError)
                        break
                    except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                        data = b""
                    if not data:
                        client_eof = True
                        break
                    to_plain += data
                    progress = True
            if to_plain:
                try:
                    n = plain.send(to_plain)
                    del to_plain[:n]
                    counts.to_socket += n
                    progress = progress or n > 0
                except _WANT:
                    pass
            if client_eof and not to_plain and not plain_shut:
                _shutdown_write(plain)
                plain_shut = True

            # backend -> client
            if not backend_eof and len(to_tls) < BUFFER:
                try:
                    data = plain.recv(CHUNK)
                    if data:
                        to_tls += data
                        progress = True
                    else:
                        backend_eof = True
                except _WANT:
                    pass
            while to_tls:
                try:
                    n = tls.send(to_tls[:CHUNK])
                except _WANT:
                    break
                del to_tls[:n]
                counts.to_ssl += n
                progress = True
            if backend_eof and not to_tls and not tls_shut:
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
