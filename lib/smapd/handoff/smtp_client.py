"""SMTP and LMTP to the MTA: smapd's hand-off when `mta` is set.

What it does: `MtaSession` connects to the MTA (`smtp:HOST:PORT`,
`lmtp:HOST:PORT`, `lmtp:unix:PATH`), reads the greeting, says EHLO (LHLO
for LMTP) and sends one spool file's message: MAIL, one RCPT per
recipient and DATA, pipelined when the MTA offers PIPELINING (RFC 2920),
then the body read from the spool file at its offset, turned into the
wire form as it streams (LF line ends become CRLF, a leading dot is
doubled: RFC 5321 4.5.2) and nothing else.  `send()` returns the MTA's
reply for each recipient: the RCPT reply when it refused the recipient,
else the reply to the end of data (SMTP: one for all; LMTP: one per
accepted recipient, RFC 2033 4.2).

The original client (the spool's ATTR lines) goes with each message:
by XCLIENT when the MTA offers it to smapd, so that the MTA's access
rules, policy services and milters judge that client and not smapd
(Postfix's post-filter access control); else by XFORWARD, so that at
least the MTA's log names it.  XCLIENT holds for the rest of the
connection (and Postfix offers it only once): a connection carries the
messages of one client, and a message of another client, or of none (a
bounce smapd made), goes through a new connection.

What it trusts: the MTA's replies, to the extent of their codes; the
addresses, which deliver.py has checked with mailbox.py.

What it must never do: read a whole message into memory, send anything
but the spooled message, or turn a failure to talk to the MTA (refused
connection, time-out, a 4xx or malformed greeting) into anything but
`MtaUnavailable`, which the caller treats as "try again later".
"""

from __future__ import annotations

import encodings.idna  # noqa: F401  (connect() encodes host names with it; smapd imports us before the
#                       privilege drop, after which the interpreter's files may be out of reach)
import os
import re
import socket
from dataclasses import dataclass
from typing import Optional

from smapd.sockets import no_delay
from smapd.xtext import xtext

#: Octets of the body read from the spool per write.
CHUNK = 64 * 1024
#: The longest reply line read (RFC 5321 4.5.3.1.5 says 512; be lenient).
MAX_REPLY_LINE = 4096
MAX_REPLY_LINES = 100

_STATUS_RE = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")
#: The longest command line (RFC 5321 4.5.3.1.4), CRLF included.
MAX_COMMAND = 512
UNAVAILABLE = "[UNAVAILABLE]"
#: A HELO name that can be said again in an EHLO command as it is.
_HELO_WORD = re.compile(r"[\x21-\x7e]{1,255}")
#: XCLIENT replies that say smapd (its authorisation, its syntax) is at
#: fault, not the client: the message waits for the operator, never bounces.
XCLIENT_OUR_FAULT = {501, 503, 550}


class MtaUnavailable(Exception):
    """The MTA could not be reached or would not talk: retry later."""


@dataclass(frozen=True)
class Reply:
    code: int
    lines: tuple     # the text of each line, without the code

    @property
    def text(self) -> str:
        return " ".join(self.lines)

    def __str__(self):
        return f"{self.code} {self.text}".rstrip()

    @property
    def status(self) -> str:
        """The enhanced status code (RFC 3463), or one made from the class."""
        m = _STATUS_RE.match(self.text)
        return m.group(0) if m and m.group(1) == str(self.code)[0] else f"{self.code // 100}.0.0"


class MtaSession:
    def __init__(self, mta, helo: str, timeout: float):
        self.mta = mta               # keywords.Mta
        self.helo = helo
        self.timeout = timeout
        self.sock: Optional[socket.socket] = None
        self.rfile = None
        self.extensions: set = set()
        self.xclient: tuple = ()     # the XCLIENT attributes the MTA offers, () for none
        self.xforward: tuple = ()
        self.client = None           # the attributes the last XCLIENT sent on this connection
        self.reused = False          # a transaction has been completed on this connection
        self.body_sent = False       # the current transaction's body has started going out

    # ------------------------------------------------------------ talking

    def open(self) -> None:
        try:
            if self.mta.path:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self.timeout)
                sock.connect(self.mta.path)
            else:
                sock = socket.create_connection((self.mta.host, self.mta.port), timeout=self.timeout)
                # Each command group is one write already: Nagle's wait
                # for an ACK (delayed by the MTA) would only stall it.
                no_delay(sock)
        except OSError as e:
            raise MtaUnavailable(f"cannot connect to {self.mta}: {e.strerror or e}") from None
        self.sock = sock
        self.rfile = sock.makefile("rb")
        greeting = self._reply()
        if greeting.code != 220:
            raise MtaUnavailable(f"{self.mta} greeted {greeting}")
        self.client = None
        self._hello()

    def _hello(self, name: str = None) -> None:
        verb = "LHLO" if self.mta.protocol == "lmtp" else "EHLO"
        self._send(f"{verb} {name or self.helo}\r\n".encode("ascii"))
        hello = self._reply()
        if hello.code != 250:
            raise MtaUnavailable(f"{self.mta} answered {verb} with {hello}")
        self.extensions = set()
        for line in hello.lines[1:]:
            words = line.upper().split()
            if words:
                self.extensions.add(words[0])
                if words[0] == "XCLIENT":
                    self.xclient = tuple(words[1:])
                elif words[0] == "XFORWARD":
                    self.xforward = tuple(words[1:])
        if "XCLIENT" not in self.extensions:
            self.xclient = ()
        if "XFORWARD" not in self.extensions:
            self.xforward = ()

    def send(self, sender: str, recipients, fd: int, offset: int, client: dict = None) -> dict:
        """The message at `offset` of `fd` to `recipients`, on behalf of
        `client` (the spool's ATTR lines); returns {recipient: Reply}.
        MtaUnavailable when the dialogue breaks off (nothing is then
        known to be delivered)."""
        self.body_sent = False
        client = client or {}
        if self.sock is None or (self.client is not None and client != self.client):
            # XCLIENT holds for the rest of the connection, and Postfix
            # offers it no more once used (the client it now believes in
            # may not impersonate anyone): a message of another client,
            # or of none (smapd's own bounces), needs a new connection.
            self.close()
            self.open()
        if self.xclient and client and self.client is None:
            refused = self._impersonate(client)
            if refused:
                self.close()   # the MTA refused the client: this connection is spent
                return {r: refused for r in recipients}
        replies = self._transaction(sender, recipients, fd, offset, client)
        self.reused = True
        return replies

    def _impersonate(self, client: dict):
        """XCLIENT for `client`, then EHLO again (the MTA has gone back to
        its greeting), with the client's own HELO name: Postfix takes the
        HELO of that EHLO over XCLIENT's.  None when the MTA took it, else
        its refusal (the original client refused by a connection-level
        rule)."""
        attributes = _forwarded(client, self.xclient, xclient=True)
        for command in _commands("XCLIENT", attributes):
            self._send(command)
            reply = self._reply()
            if reply.code == 220:
                continue
            if reply.code in XCLIENT_OUR_FAULT or reply.code // 100 != 5:
                raise MtaUnavailable(f"{self.mta} answered XCLIENT with {reply}")
            self.client = None
            return reply
        self.client = dict(client)
        helo = client.get("helo") or ""
        self._hello(helo if _HELO_WORD.fullmatch(helo) else None)
        return None

    def _transaction(self, sender, recipients, fd, offset, client) -> dict:
        body = " BODY=8BITMIME" if "8BITMIME" in self.extensions else ""
        # XFORWARD when XCLIENT is not offered: the MTA logs the client
        # and treats the mail as remote (SOURCE).  After XCLIENT only
        # SOURCE=REMOTE: Postfix takes its header-rewriting context from
        # the real connection, not from XCLIENT, and would complete a
        # bare `Cc: carol` as for local mail.  The MTA forgets XFORWARD
        # at the end of each transaction; its replies are read and let
        # pass: it decides nothing.
        if self.client is not None:
            pairs = [("SOURCE", "REMOTE")] if "SOURCE" in self.xforward else []
        else:
            pairs = [] if self.xclient or not client else _forwarded(client, self.xforward, xclient=False)
        forward = _commands("XFORWARD", pairs)
        for command in forward if "PIPELINING" not in self.extensions else ():
            self._send(command)
            self._reply()
        commands = [f"MAIL FROM:<{sender}>{body}\r\n".encode("ascii")]
        commands += [f"RCPT TO:<{r}>\r\n".encode("ascii") for r in recipients]
        commands.append(b"DATA\r\n")
        if "PIPELINING" in self.extensions:
            self._send(b"".join(forward + commands))
            for _ in forward:
                self._reply()
            replies = [self._reply() for _ in commands]
        else:
            replies = []
            for i, command in enumerate(commands):
                self._send(command)
                replies.append(self._reply())
                if i == 0 and replies[0].code != 250:
                    break
        mail, rcpt_replies = replies[0], replies[1:1 + len(recipients)]
        if mail.code != 250:
            self._rset()
            return {r: mail for r in recipients}
        out = {r: rep for r, rep in zip(recipients, rcpt_replies) if rep.code // 100 != 2}
        accepted = [r for r, rep in zip(recipients, rcpt_replies) if rep.code // 100 == 2]
        data = replies[-1]
        if not accepted:
            if data.code == 354:   # an MTA that says go ahead without recipients
                self._send(b".\r\n")
                self._reply()
            self._rset()
            return out
        if data.code != 354:
            self._rset()
            out.update({r: data for r in accepted})
            return out
        self.body_sent = True
        self._stream(fd, offset)
        if self.mta.protocol == "lmtp":
            out.update({r: self._reply() for r in accepted})
        else:
            end = self._reply()
            out.update({r: end for r in accepted})
        return out

    def probe(self, address: str) -> Reply:
        """Does the MTA take `address` as a recipient?  MAIL FROM:<>, RCPT
        TO, RSET: its reply to RCPT (to MAIL, when MAIL is refused).
        Nothing is sent; MtaUnavailable when the dialogue breaks off."""
        commands = [b"MAIL FROM:<>\r\n", f"RCPT TO:<{address}>\r\n".encode("ascii"), b"RSET\r\n"]
        if "PIPELINING" in self.extensions:
            self._send(b"".join(commands))
            mail, rcpt, _ = (self._reply() for _ in commands)
        else:
            self._send(commands[0])
            mail = rcpt = self._reply()
            if mail.code == 250:
                self._send(commands[1])
                rcpt = self._reply()
            self._rset()
        self.reused = True
        return rcpt if mail.code == 250 else mail

    def quit(self) -> None:
        try:
            self._send(b"QUIT\r\n")
            self._reply()
        except MtaUnavailable:
            pass
        finally:
            self.close()

    def close(self) -> None:
        for f in (self.rfile, self.sock):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass
        self.rfile = self.sock = None

    # ------------------------------------------------------------ helpers

    def _rset(self) -> None:
        self._send(b"RSET\r\n")
        self._reply()

    def _stream(self, fd: int, offset: int) -> None:
        """The body in wire form, then the final dot, in the same write
        as the body's end (a small message is one write)."""
        at_line_start, last, pending = True, b"\n", b""
        while True:
            chunk = os.pread(fd, CHUNK, offset)
            if not chunk:
                break
            if pending:
                self._send(pending)
            offset += len(chunk)
            last = chunk[-1:]
            wire = chunk.replace(b"\n.", b"\n..")
            if at_line_start and wire.startswith(b"."):
                wire = b"." + wire
            at_line_start = last == b"\n"
            pending = wire.replace(b"\n", b"\r\n")
        self._send(pending + (b".\r\n" if last == b"\n" else b"\r\n.\r\n"))

    def _send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as e:
            raise MtaUnavailable(f"{self.mta}: {e.strerror or e} while sending") from None

    def _reply(self) -> Reply:
        lines, code = [], None
        try:
            while True:
                raw = self.rfile.readline(MAX_REPLY_LINE)
                if not raw:
                    raise MtaUnavailable(f"{self.mta} closed the connection")
                line = raw.rstrip(b"\r\n").decode("ascii", "replace")
                if len(line) < 3 or not line[:3].isdigit() or (len(line) > 3 and line[3] not in " -"):
                    raise MtaUnavailable(f"{self.mta} sent a malformed reply {line[:80]!r}")
                if code is not None and int(line[:3]) != code:
                    raise MtaUnavailable(f"{self.mta} changed the code within a reply")
                code = int(line[:3])
                lines.append(line[4:])
                if len(line) == 3 or line[3] == " ":
                    break
                if len(lines) > MAX_REPLY_LINES:
                    raise MtaUnavailable(f"{self.mta} sent a reply of more than {MAX_REPLY_LINES} lines")
        except (OSError, socket.timeout) as e:
            raise MtaUnavailable(f"{self.mta}: {e.strerror or e or 'time-out'} while reading a reply") from None
        return Reply(code, tuple(lines))


def _forwarded(client: dict, offered, xclient: bool) -> list:
    """The (NAME, value) pairs of XCLIENT or XFORWARD for `client`, those
    the MTA offers, each in the syntax Postfix checks: an IPv6 address
    tagged IPV6:, PROTO SMTP or ESMTP, [UNAVAILABLE] for what is unknown
    (for XCLIENT every offered attribute is sent, since the previous
    client's would otherwise stay in force)."""
    addr = client.get("client-addr")
    proto = client.get("proto")
    helo = client.get("helo")
    values = {
        "NAME": client.get("client-name"),
        "ADDR": (f"IPV6:{addr}" if ":" in addr else addr) if addr else None,
        "PROTO": ("ESMTP" if proto.startswith("ESMTP") else "SMTP") if proto else None,
        "HELO": helo if helo and len(helo) <= 255 else None,
    }
    if xclient:
        values["LOGIN"] = client.get("login")
    else:
        values["SOURCE"] = "REMOTE"
    return [(name, value or UNAVAILABLE) for name, value in values.items()
            if name in offered and (xclient or value)]


def _commands(verb: str, pairs) -> list:
    """`verb` with the pairs xtext-encoded, in as few commands as fit in
    MAX_COMMAND octets each."""
    commands, line = [], verb
    for name, value in pairs:
        word = f" {name}={xtext(value)}"
        if len(line) + len(word) + 2 > MAX_COMMAND and line != verb:
            commands.append(line)
            line = verb
        line += word
    if line != verb:
        commands.append(line)
    return [(c + "\r\n").encode("ascii") for c in commands]
