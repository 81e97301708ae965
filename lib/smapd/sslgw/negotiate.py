"""stunnel 3's -n: the plain-text exchange before ssl-gw -c's handshake.

What it does: on the connection to the server (-r), reads the server's
greeting and passes it on to the plain client, then asks for TLS as the
protocol says -- SMTP: EHLO, then STARTTLS and its 220 (RFC 3207); POP3:
STLS and its +OK (RFC 2595); NNTP: STARTTLS and its 382 (RFC 4642) -- and
leaves the connection ready for the handshake.  The client's own
commands follow inside TLS (for SMTP it says EHLO again, as RFC 3207
wants after STARTTLS).

What it trusts: nothing the server says: a line is at most MAX_LINE
octets, a reply at most MAX_LINES lines, all within the time given.

What it must never do: read past the server's answer to STARTTLS (what
follows is the TLS handshake's), or pass the client more than the
greeting.
"""

from __future__ import annotations

import socket
import time

MAX_LINE = 4096
MAX_LINES = 100

#: protocol -> (greeting codes, command, the reply that starts TLS)
PROTOCOLS = {"smtp": ((b"220",), b"STARTTLS", b"220"),
             "pop3": ((b"+OK",), b"STLS", b"+OK"),
             "nntp": ((b"200", b"201"), b"STARTTLS", b"382")}


class NegotiationError(Exception):
    """The server would not start TLS; the text says what it said."""


class _Lines:
    """CRLF lines from a socket, never reading past the line asked for:
    each read peeks first and takes only up to the newline."""

    def __init__(self, sock: socket.socket, deadline: float):
        self.sock = sock
        self.deadline = deadline

    def line(self) -> bytes:
        got = b""
        while True:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise NegotiationError("timed out waiting for the server")
            self.sock.settimeout(left)
            try:
                peek = self.sock.recv(MAX_LINE, socket.MSG_PEEK)
            except socket.timeout:
                raise NegotiationError("timed out waiting for the server") from None
            if not peek:
                raise NegotiationError("the server closed the connection")
            end = peek.find(b"\n")
            got += self.sock.recv(len(peek) if end < 0 else end + 1)
            if got.endswith(b"\n"):
                return got
            if len(got) > MAX_LINE:
                raise NegotiationError(f"a line of more than {MAX_LINE} octets")

    def reply(self, multiline: bool) -> list:
        """One reply: SMTP's `250-...` lines up to `250 ...`, else one line."""
        lines = [self.line()]
        while multiline and lines[-1][3:4] == b"-":
            if len(lines) >= MAX_LINES:
                raise NegotiationError(f"a reply of more than {MAX_LINES} lines")
            lines.append(self.line())
        return lines


def _said(lines: list) -> str:
    return lines[-1].decode("ascii", "replace").strip()[:200]


def negotiate(protocol: str, server: socket.socket, client: socket.socket, timeout: float,
              helo: str) -> None:
    """Greeting to the client, then the protocol's STARTTLS; raises
    NegotiationError (or OSError) when TLS cannot start."""
    greetings, command, go = PROTOCOLS[protocol]
    smtp = protocol == "smtp"
    lines = _Lines(server, time.monotonic() + timeout)
    greeting = lines.reply(multiline=smtp)
    client.sendall(b"".join(greeting))
    if not greeting[-1].startswith(greetings):
        raise NegotiationError(f"greeting: {_said(greeting)}")
    if smtp:
        server.sendall(b"EHLO " + helo.encode("ascii", "replace") + b"\r\n")
        answer = lines.reply(multiline=True)
        if not answer[-1].startswith(b"250"):
            raise NegotiationError(f"EHLO: {_said(answer)}")
    server.sendall(command + b"\r\n")
    answer = lines.reply(multiline=smtp)
    if not answer[-1].startswith(go):
        raise NegotiationError(f"{command.decode()}: {_said(answer)}")
