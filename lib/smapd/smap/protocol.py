"""The SMTP protocol of smap as a pure state machine.

What it does: takes events (the connection opened, one command line, the
end of a message, the spool's verdict, a time-out) and returns what to do:
replies to send, whether to read a message, spool it, start TLS, pause
(tarpit) or close.  Replies follow RFC 5321 with RFC 3463 enhanced status codes; the
reply of each situation is written here once.

What it trusts: nothing the client sends.  The session layer
(`session.py`) tells it only facts it observed: the bytes of a line
(without its CRLF), whether the line was too long or badly terminated,
whether more input was already waiting behind it, and what the message
reader saw.

What it must never do: read a socket, a clock, a file or DNS (so every
transcript is a unit test), let a client's word become anything but an
envelope address, or answer 250 to a message before the spool has said
it is on disk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, List, Optional

from smapd.mailbox import DOMAIN, LITERAL, AddressError, parse as parse_mailbox
from smapd.smap.sasl import b64decode_strict, decode_plain
from smapd.xtext import unxtext

MAX_COMMAND = 512          # octets, CRLF included (RFC 5321 4.5.3.1.4)


@dataclass(frozen=True)
class Reply:
    code: int
    status: str            # enhanced status code, "" for 220/221/354 and friends
    lines: tuple           # text lines, without code

    def render(self) -> bytes:
        """The reply on the wire; the enhanced code on every line (RFC 2034)."""
        status = self.status + " " if self.status else ""
        last = len(self.lines) - 1
        out = [f"{self.code}{' ' if i == last else '-'}{status}{text}" for i, text in enumerate(self.lines)]
        return ("\r\n".join(out) + "\r\n").encode("ascii", "replace")

    @property
    def text(self) -> str:
        return self.render().decode("ascii").rstrip("\r\n")


def reply(code: int, status: str, *lines: str) -> Reply:
    return Reply(code, status, tuple(lines))


@dataclass
class Envelope:
    helo: str = ""
    esmtp: bool = False
    sender: Optional[str] = None
    recipients: List[str] = field(default_factory=list)
    body: str = "7BIT"
    over_maxrecip: bool = False


@dataclass
class Settings:
    """What the protocol needs of the configuration (from `config.Settings`)."""
    hostname: str
    maxbytes: int = 10240000
    maxrecip: int = 100
    errors_max: int = 20
    banner: Optional[str] = None
    starttls: bool = False   # STARTTLS offered (`ssl` is set)
    auth: tuple = ()         # AUTH mechanisms ("login", "plain"); () = no AUTH
    auth_requires_tls: bool = True


@dataclass
class Result:
    """What the session must do, in order: wait `delay` seconds, send the
    replies, then the action: None (read the next command), "data" (open
    the spool and call `data_started`), "spool" (commit and call
    `spooled`/`spool_failed`), "starttls" (send the replies, then do the
    TLS handshake and call `tls_started`), or "close"."""
    replies: List[Reply] = field(default_factory=list)
    action: Optional[str] = None
    delay: float = 0.0
    log: List[str] = field(default_factory=list)

    @property
    def closes(self) -> bool:
        return self.action == "close"


# A source route, accepted before a sender and ignored (RFC 5321 C);
# the address grammar itself is mailbox.py's.
_ROUTE_RE = re.compile(rf"^@(?:{DOMAIN}|{LITERAL})(?:,@(?:{DOMAIN}|{LITERAL}))*:")
_HELO_RE = re.compile(r"^[\x21-\x7e]{1,255}$")
_PARAM_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9-]*)(?:=([\x21-\x3c\x3e-\x7e]*))?$")

COMMANDS = ("HELO", "EHLO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "VRFY", "EXPN", "HELP", "STARTTLS",
            "AUTH")
#: Seconds a failed AUTH waits before its 535 (a password guesser's tarpit).
AUTH_FAILURE_DELAY = 2.0
#: Commands after which a client must wait for the reply (RFC 2920; RFC
#: 3207 for STARTTLS: plaintext behind it would be read as if encrypted).
GROUP_ENDS = ("EHLO", "HELO", "DATA", "QUIT", "STARTTLS")


def _auth_param_ok(value) -> bool:
    """RFC 4954 5: `<>` or an addr-spec, as xtext."""
    if not value:
        return False
    try:
        unxtext(value)
    except ValueError:
        return False
    return True


def parse_path(text: str):
    """`<path> params` or a bare address (lenient, as most MTAs) ->
    (address, params text).  Raises ValueError with the reason."""
    text = text.lstrip(" ")
    if text.startswith("<"):
        i, quoted = 1, False
        while i < len(text):
            c = text[i]
            if c == "\\" and quoted:
                i += 2
                continue
            if c == '"':
                quoted = not quoted
            elif c == ">" and not quoted:
                break
            i += 1
        else:
            raise ValueError("missing '>'")
        path, rest = text[1:i], text[i + 1:]
        if rest and not rest.startswith(" "):
            raise ValueError("text after '>'")
        return path, rest.strip(" ")
    path, _, rest = text.partition(" ")
    if not path:
        raise ValueError("no address")
    return path, rest.strip(" ")


class Protocol:
    """One SMTP session's state.  Create it per connection."""

    def __init__(self, settings: Settings, client_name: str = "unknown", client_addr: str = ""):
        self.settings = settings
        self.client_name = client_name
        self.client_addr = client_addr
        self.envelope: Optional[Envelope] = None
        self.helo: Optional[str] = None
        self.esmtp = False
        self.errors = 0
        self.in_data = False
        self.closed = False
        #: TLS: the protocol version and cipher once the handshake is done,
        #: and the verified client certificate's subject, if any.
        self.tls: Optional[str] = None
        self.tls_peer: Optional[str] = None
        #: SMTP AUTH: the authenticated user, and the exchange in progress
        #: (mechanism, the user name LOGIN has received) while the client
        #: owes a response line.
        self.auth_user: Optional[str] = None
        self._auth: Optional[tuple] = None
        #: Checks a user name and password (bytes): the policy's, set by the session.
        self.verify_password: Optional[Callable] = None
        #: Why AUTH is refused to this client for now (too many failures
        #: from its address, over its sessions), or None: set by the session.
        self.auth_blocked: Optional[Callable] = None
        #: The sender of the last MAIL command, accepted or not: what a
        #: refusal's log line names as from=.
        self.mail_attempt: Optional[str] = None
        #: Hooks for the policy checks of later issues: each returns None
        #: to go on or a Reply that refuses (with the log reason second).
        self.check_sender: Optional[Callable] = None
        self.check_recipient: Optional[Callable] = None

    # ----------------------------------------------------------- events

    def connect(self) -> Result:
        """The connection is open: the greeting."""
        text = self.settings.banner or f"{self.settings.hostname} SMTP/smap Ready."
        return Result([reply(220, "", text)])

    def teaser(self) -> bytes:
        """The first line of a greeting that `greet-delay` holds back: a
        client that answers before the last line talks out of turn."""
        return f"220-{self.settings.hostname} ESMTP\r\n".encode("ascii", "replace")

    def refuse_client(self, why: str) -> Result:
        """The client may not use this service (hosts rules, policy)."""
        return self._close(reply(554, "5.7.1", f"{self.settings.hostname} Error: access denied"), why)

    def unavailable(self, why: str) -> Result:
        """smap cannot serve now (it could not enter its jail): try later."""
        return self._close(reply(421, "4.3.0", f"{self.settings.hostname} Error: service temporarily unavailable"), why)

    def too_many_connections(self, limit: int) -> Result:
        """The client already holds `limit` sessions (maxperhost)."""
        return self._close(reply(421, "4.7.0", f"{self.settings.hostname} Error: too many connections from your host"),
                           f"too many connections from this host (maxperhost {limit})")

    def too_many_from_network(self, limit: int) -> Result:
        """The client's network (/24, /64) already holds `limit` sessions (maxpernet)."""
        return self._close(reply(421, "4.7.0", f"{self.settings.hostname} Error: too many connections from your "
                                 "network"), f"too many connections from this network (maxpernet {limit})")

    @property
    def stage(self) -> str:
        """Where the session is, for a process title: the last command
        that changed the state."""
        if self.in_data:
            return "DATA"
        if self.envelope is not None:
            return "RCPT" if self.envelope.recipients else "MAIL"
        if self.helo:
            return "EHLO" if self.esmtp else "HELO"
        return "connected"

    def early_talker(self) -> Result:
        """The client sent something before the greeting."""
        return self._close(reply(554, "5.5.0", "Protocol error: talking before the greeting"),
                           "early talker (sent data before the greeting)")

    def timeout(self, what: str = "timeout exceeded") -> Result:
        return self._close(reply(421, "4.4.2", f"{self.settings.hostname} Error: {what}"), what)

    def line(self, raw: bytes, pipelined: bool = False, too_long: bool = False,
             bad_eol: bool = False) -> Result:
        """One command line, without its line end.  `pipelined`: more
        input was already waiting behind it; `too_long`: it was cut at the
        command limit and the rest discarded; `bad_eol`: it held a bare
        CR or LF."""
        if self._auth is not None:
            return self._auth_response(raw, too_long or bad_eol)
        if too_long:
            return self._error(reply(500, "5.5.2", "Error: line too long"), "command line too long")
        if bad_eol:
            return self._error(reply(500, "5.5.2", "Error: bare <CR> or <LF> in command"),
                               "bare CR or LF in a command")
        if any(b < 0x20 or b == 0x7f for b in raw):
            return self._error(reply(501, "5.5.2", "Error: control characters are not allowed in commands"),
                               "control characters in a command")
        if any(b >= 0x80 for b in raw):
            return self._error(reply(501, "5.5.2", "Error: 8-bit characters are not allowed in commands"),
                               "8-bit characters in a command")
        text = raw.decode("ascii")
        verb, _, arg = text.partition(" ")
        verb = verb.upper()
        handler = getattr(self, "_cmd_" + verb.lower(), None) if verb in COMMANDS else None
        if handler is None:
            if verb == "BDAT":
                # Its octets follow at once, unframed (RFC 3030): read as
                # commands they would be a session inside the session.
                # CHUNKING is never offered, so it ends the session, as
                # any other framing violation does.
                return self._close(reply(554, "5.5.1", "Error: BDAT without CHUNKING: closing the connection"),
                                   "BDAT (CHUNKING is not offered)")
            if verb in ("TURN", "ETRN", "ATRN"):
                return self._error(reply(502, "5.5.1", f"Error: {verb} is not implemented"), f"{verb} refused")
            return self._error(reply(500, "5.5.2", "Error: command not recognized"), "unknown command")
        result = handler(arg)
        if pipelined and verb in GROUP_ENDS and not result.closes:
            # RFC 2920: these commands end a pipelined group; a client that
            # sends more before their reply does not wait for replies.
            return self._close(reply(554, "5.5.0", f"Error: improper command pipelining after {verb}"),
                               f"improper pipelining after {verb}")
        return result

    def data_started(self) -> Result:
        """The spool file is open: invite the message."""
        self.in_data = True
        return Result([reply(354, "", "End data with <CR><LF>.<CR><LF>")])

    def data_end(self, size: int, too_big: bool = False, bad_eol: bool = False, nul: bool = False) -> Result:
        """The message has been read up to CRLF.CRLF."""
        self.in_data = False
        if too_big:
            return self._refuse_message(reply(552, "5.3.4", "Error: message too big"),
                                        f"message too big ({size} bytes, maxbytes {self.settings.maxbytes})")
        if bad_eol:
            return self._refuse_message(reply(550, "5.5.2", "Error: bare <LF>/<CR> received"),
                                        "bare CR or LF in the message")
        if nul:
            return self._refuse_message(reply(550, "5.6.0", "Error: NUL character in the message"),
                                        "NUL in the message")
        return Result(action="spool")

    def spooled(self, queue_id: str) -> Result:
        self.envelope = None
        return Result([reply(250, "2.0.0", f"Ok: queued as {queue_id}")])

    def spool_failed(self, why: str = "spool failure") -> Result:
        self.envelope = None
        self.in_data = False
        return Result([reply(451, "4.3.0", "Error: local error in processing, try again later")], log=[why])

    # -------------------------------------------------------- commands

    def _cmd_helo(self, arg):
        return self._hello(arg, esmtp=False)

    def _cmd_ehlo(self, arg):
        return self._hello(arg, esmtp=True)

    def _hello(self, arg, esmtp):
        name = arg.strip(" ")
        if not name or not _HELO_RE.match(name):
            verb = "EHLO" if esmtp else "HELO"
            return self._error(reply(501, "5.5.4", f"Syntax: {verb} hostname"), f"{verb} without a valid name")
        self.helo, self.esmtp, self.envelope = name, esmtp, None
        if not esmtp:
            return Result([reply(250, "", self.settings.hostname)])
        ext = ["PIPELINING", f"SIZE {self.settings.maxbytes}", "8BITMIME", "ENHANCEDSTATUSCODES"]
        if self.settings.starttls and not self.tls:
            ext.append("STARTTLS")
        if self._auth_offered():
            ext.append("AUTH " + " ".join(m.upper() for m in self.settings.auth))
        return Result([Reply(250, "", (self.settings.hostname, *ext))])

    def _cmd_mail(self, arg):
        if self.helo is None:
            return self._error(reply(503, "5.5.1", "Error: send HELO/EHLO first"), "MAIL before HELO")
        if self.envelope is not None:
            return self._error(reply(503, "5.5.1", "Error: nested MAIL command"), "nested MAIL")
        if not arg[:5].upper() == "FROM:":
            return self._error(reply(501, "5.5.4", "Syntax: MAIL FROM:<address>"), "MAIL syntax")
        try:
            path, params = parse_path(arg[5:])
        except ValueError as e:
            return self._error(reply(501, "5.1.7", f"Bad sender address syntax ({e})"), "MAIL syntax")
        self.mail_attempt = path
        if path:
            m = _ROUTE_RE.match(path)
            if m:  # RFC 5321 C: accept a source route and ignore it
                path = path[m.end():]
            try:
                parse_mailbox(path, sender=True)
            except AddressError as e:
                return self._error(reply(553 if e.policy else 501, "5.1.7", f"Bad sender address: {e.reason}"),
                                   f"sender: {e.reason}")
        body, size = "7BIT", None
        for p in params.split():
            m = _PARAM_RE.match(p)
            key = m.group(1).upper() if m else ""
            value = m.group(2) if m else None
            if key == "SIZE":
                if value is None or not value.isdigit() or len(value) > 19:
                    return self._error(reply(501, "5.5.4", "Error: bad SIZE value"), "bad SIZE value")
                size = int(value)
            elif key == "BODY":
                if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                    return self._error(reply(501, "5.5.4", "Error: bad BODY value"), "bad BODY value")
                body = value.upper()
            elif key == "AUTH" and self._auth_offered():
                # RFC 4954 5: a server that offers AUTH must take the
                # parameter, from anyone.  Its value (who submitted the
                # message first) is a claim: checked for syntax, then
                # dropped; the spool records only this session's login.
                if not _auth_param_ok(value):
                    return self._error(reply(501, "5.5.4", "Error: bad AUTH value"), "bad AUTH value")
            else:
                return self._error(reply(555, "5.5.4", "Error: unsupported MAIL parameter"),
                                   "unsupported MAIL parameter")
        if not self.esmtp and params:
            return self._error(reply(555, "5.5.4", "Error: MAIL parameters need EHLO"), "MAIL parameters after HELO")
        if size is not None and size > self.settings.maxbytes:
            return self._error(reply(552, "5.3.4", "Error: message size exceeds the fixed limit"),
                               f"declared SIZE {size} above maxbytes")
        if self.check_sender:
            refused = self.check_sender(path)
            if refused:
                return self._error(*refused)
        self.envelope = Envelope(self.helo, self.esmtp, path, [], body)
        return Result([reply(250, "2.1.0", "Ok")])

    def _cmd_rcpt(self, arg):
        if self.envelope is None:
            return self._error(reply(503, "5.5.1", "Error: need MAIL command"), "RCPT before MAIL")
        if not arg[:3].upper() == "TO:":
            return self._error(reply(501, "5.5.4", "Syntax: RCPT TO:<address>"), "RCPT syntax")
        try:
            path, params = parse_path(arg[3:])
        except ValueError as e:
            return self._error(reply(501, "5.1.3", f"Bad recipient address syntax ({e})"), "RCPT syntax")
        if params:
            return self._error(reply(555, "5.5.4", "Error: unsupported RCPT parameter"), "unsupported RCPT parameter")
        if _ROUTE_RE.match(path):
            return self._error(reply(553, "5.1.3", "Error: source routes are not accepted"), "source-routed recipient")
        if path.lower() == "postmaster":
            path = "postmaster"
        else:
            try:
                if not path:
                    raise AddressError("an empty recipient")
                parse_mailbox(path)
            except AddressError as e:
                return self._error(reply(553 if e.policy else 501, "5.1.3", f"Bad recipient address: {e.reason}"),
                                   f"recipient: {e.reason}")
        if len(self.envelope.recipients) >= self.settings.maxrecip:
            # Not the client's error: the session goes on and the error
            # budget is not charged.  Logged once per message, so that
            # 10 000 recipients do not make 10 000 log lines.
            first = not self.envelope.over_maxrecip
            self.envelope.over_maxrecip = True
            return Result([reply(452, "4.5.3", "Error: too many recipients")],
                          log=[f"too many recipients (maxrecip {self.settings.maxrecip})"] if first else [])
        if self.check_recipient:
            refused = self.check_recipient(path)
            if refused:
                return self._error(*refused)
        self.envelope.recipients.append(path)
        return Result([reply(250, "2.1.5", "Ok")])

    def _cmd_data(self, arg):
        if arg.strip(" "):
            return self._error(reply(501, "5.5.4", "Syntax: DATA"), "DATA with arguments")
        if self.envelope is None:
            return self._error(reply(503, "5.5.1", "Error: need MAIL command"), "DATA before MAIL")
        if not self.envelope.recipients:
            return self._error(reply(554, "5.5.1", "Error: no valid recipients"), "DATA without recipients")
        return Result(action="data")

    def _cmd_rset(self, arg):
        if arg.strip(" "):
            return self._error(reply(501, "5.5.4", "Syntax: RSET"), "RSET with arguments")
        self.envelope = None
        return Result([reply(250, "2.0.0", "Ok")])

    def _cmd_noop(self, arg):
        return Result([reply(250, "2.0.0", "Ok")])

    def _cmd_quit(self, arg):
        self.closed = True
        return Result([reply(221, "2.0.0", "Bye")], action="close")

    def _cmd_vrfy(self, arg):
        if not arg.strip(" "):
            return self._error(reply(501, "5.5.4", "Syntax: VRFY address"), "VRFY syntax")
        return Result([reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")])

    def _cmd_expn(self, arg):
        return self._error(reply(502, "5.5.1", "Error: EXPN is not implemented"), "EXPN refused")

    def _cmd_starttls(self, arg):
        if not self.settings.starttls:
            return self._error(reply(502, "5.5.1", "Error: STARTTLS is not implemented"), "STARTTLS refused")
        if self.tls:
            return self._error(reply(554, "5.5.1", "Error: TLS already active"), "STARTTLS inside TLS")
        if arg.strip(" "):
            return self._error(reply(501, "5.5.4", "Syntax: STARTTLS"), "STARTTLS with arguments")
        return Result([reply(220, "2.0.0", "Ready to start TLS")], action="starttls")

    def tls_started(self, description: str, peer: Optional[str] = None) -> Result:
        """The handshake is done: everything said before it is forgotten
        (RFC 3207 4.2), and STARTTLS is not offered again."""
        self.tls, self.tls_peer = description, peer
        self.helo, self.esmtp, self.envelope, self.auth_user = None, False, None, None
        return Result()

    @property
    def received_protocol(self) -> str:
        """The `with` word of the Received header (RFC 3848)."""
        if not self.esmtp:
            return "SMTP"
        return "ESMTP" + ("S" if self.tls else "") + ("A" if self.auth_user else "")

    def tls_failed(self, why: str) -> Result:
        """The handshake failed: the connection cannot go on in clear."""
        self.closed = True
        return Result(action="close", log=[f"TLS handshake failed: {why}"])

    # ------------------------------------------------------------ AUTH

    def _auth_offered(self) -> bool:
        return bool(self.settings.auth) and self.verify_password is not None and (
            bool(self.tls) or not self.settings.auth_requires_tls)

    def _cmd_auth(self, arg):
        """RFC 4954: LOGIN and PLAIN, with or without an initial response."""
        if not self.settings.auth or self.verify_password is None:
            return self._error(reply(502, "5.5.1", "Error: AUTH is not implemented"), "AUTH refused")
        if self.helo is None or not self.esmtp:
            return self._error(reply(503, "5.5.1", "Error: send EHLO first"), "AUTH before EHLO")
        if self.auth_user:
            return self._error(reply(503, "5.5.1", "Error: already authenticated"), "AUTH twice")
        if self.envelope is not None:
            return self._error(reply(503, "5.5.1", "Error: AUTH not permitted during a mail transaction"),
                               "AUTH during a transaction")
        if not self._auth_offered():
            return self._error(reply(538, "5.7.11", "Error: encryption required for authentication (STARTTLS)"),
                               "AUTH on a plain channel")
        blocked = self.auth_blocked() if self.auth_blocked is not None else None
        if blocked:
            # A 4xx: the client may be a real user behind a guesser's
            # address; no password is looked at, no error is charged.
            return Result([reply(454, "4.7.0", "Error: too many failed authentications from your address, "
                                 "try again later")], log=[f"AUTH refused: {blocked}"])
        words = arg.split(" ")
        mechanism = words[0].lower()
        if mechanism not in self.settings.auth or len(words) > 2 or not mechanism:
            return self._error(reply(504, "5.5.4", "Error: unrecognized authentication type"),
                               "AUTH with an unknown mechanism")
        initial = words[1] if len(words) == 2 else None
        if mechanism == "plain":
            if initial is None:
                self._auth = ("plain", None)
                return Result([reply(334, "", "")])
            return self._auth_response(initial.encode("ascii"), False, ("plain", None))
        if initial is None:
            self._auth = ("login", None)
            return Result([reply(334, "", "VXNlcm5hbWU6")])  # "Username:"
        return self._auth_response(initial.encode("ascii"), False, ("login", None))

    def _auth_response(self, raw: bytes, bad: bool, state: tuple = None) -> Result:
        """One line of the exchange (or an initial response)."""
        mechanism, user = state or self._auth
        self._auth = None
        if raw == b"*":
            return self._error(reply(501, "5.0.0", "Error: authentication cancelled"), "AUTH cancelled")
        try:
            if bad:
                raise ValueError("bad line")
            data = b64decode_strict(raw.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            return self._error(reply(501, "5.5.2", "Error: cannot decode the response"), "AUTH response not base64")
        if mechanism == "login" and user is None:
            try:
                name = data.decode("utf-8")
            except UnicodeDecodeError:
                return self._error(reply(501, "5.5.2", "Error: cannot decode the user name"), "AUTH user not UTF-8")
            self._auth = ("login", name)
            return Result([reply(334, "", "UGFzc3dvcmQ6")])  # "Password:"
        if mechanism == "plain":
            try:
                _, user, password = decode_plain(data)
            except ValueError:
                return self._error(reply(501, "5.5.2", "Error: bad PLAIN response"), "AUTH PLAIN malformed")
        else:
            password = data
        if self.verify_password(user, password):
            self.auth_user = user
            return Result([reply(235, "2.7.0", "Authentication successful")],
                          log=[f"authenticated as {user} ({mechanism.upper()})"])
        result = self._error(reply(535, "5.7.8", "Error: authentication failed"),
                             f"authentication failed for {user} ({mechanism.upper()})")
        result.delay = max(result.delay, AUTH_FAILURE_DELAY)
        return result

    def _cmd_help(self, arg):
        extra = (" STARTTLS" if self.settings.starttls and not self.tls else "") + (" AUTH" if self._auth_offered() else "")
        return Result([reply(214, "2.0.0", f"Commands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP{extra}")])

    # ------------------------------------------------------------ helpers

    def _refuse_message(self, r: Reply, why: str) -> Result:
        self.envelope = None
        return Result([r], log=[why])

    def _error(self, r: Reply, why: str = "") -> Result:
        """A refused command: counted against the error budget; past half
        of it each error reply waits a second (tarpit); at the budget the
        client is disconnected."""
        self.errors += 1
        if self.errors >= self.settings.errors_max:
            return self._close(reply(421, "4.7.0", f"{self.settings.hostname} Error: too many errors"),
                               f"too many errors ({self.errors})", prior=[r])
        delay = 1.0 if self.errors > self.settings.errors_max // 2 else 0.0
        return Result([r], delay=delay, log=[why] if why else [])

    def _close(self, r: Reply, why: str, prior=()) -> Result:
        self.closed = True
        return Result([*prior, r], action="close", log=[why])
