"""Property tests (hypothesis) for what reads client or file input: the
SMTP state machine, the socket framer, the netperm-table reader, TCP
wrappers, and smapd's hand-off of (corrupted) spool files.

Each property says what must hold for every input, not for a chosen few;
the example counts keep the whole file well under a minute on two cores.
"""

import base64
import contextlib
import email
import ipaddress
import logging
import os
import re
import socket
import tempfile
import threading
import time

from hypothesis import HealthCheck, event, example, given, settings, strategies as st

from support.programs import REFERENCE
from smapd import mailbox
from smapd.handoff import deliver as deliver_module, dsn
from smapd import spool as queue_module
from smapd.table.netperm import Table, check_hosts, compile_host_pattern, compile_host_rule, quote, tokenize
from smapd.smap.protocol import AUTH_FAILURE_DELAY, MAX_COMMAND, Protocol, Settings
from smapd.smap.session import CHUNK, Closed, Framer, Limits
from smapd.sslgw.tcpwrap import Client, Tables
from support.libwrap import Libwrap


# ============================================================== SMTP protocol

_REPLY_LINE = re.compile(rb"^([2-5][0-9][0-9])([- ])([\x20-\x7e]*)$")
_STATUS = re.compile(r"^([245])\.[0-9]{1,3}\.[0-9]{1,3}$")


def check_reply(r):
    """One Reply: a valid RFC 5321 reply on the wire, with an RFC 3463
    enhanced code of the reply's class on every line when it has one."""
    assert 200 <= r.code <= 599 and r.lines
    if r.status:
        m = _STATUS.match(r.status)
        assert m, f"bad enhanced status code {r.status!r}"
        assert m.group(1) == str(r.code)[0], f"{r.code} with {r.status}"
        assert r.code // 100 != 3, "a 3xx reply has no enhanced code"
    wire = r.render()
    assert wire.endswith(b"\r\n")
    lines = wire[:-2].split(b"\r\n")
    assert len(lines) == len(r.lines)
    for i, line in enumerate(lines):
        assert len(line) + 2 <= 512, "reply line over 512 octets"
        assert b"\r" not in line and b"\n" not in line
        m = _REPLY_LINE.match(line)
        assert m, f"bad reply line {line!r}"
        assert int(m.group(1)) == r.code
        assert m.group(2) == (b" " if i == len(lines) - 1 else b"-")
        if r.status:
            assert m.group(3).startswith(r.status.encode() + b" ")


_ADDRESSES = st.one_of(
    st.sampled_from(["a@x.example", "b.c@y.example", "postmaster", "PostMaster", "", "-oQ/tmp@x.example",
                     "|cmd@x.example", "/etc/passwd", "a b@x.example", "@r.example:a@x.example",
                     "@r.example,@s.example:a@x.example", "a@[192.0.2.1]", "a@[IPv6:2001:db8::1]",
                     '"q s"@x.example', '"q\\"@x.example', "x" * 70 + "@y.example", "a@" + "b." * 130 + "c",
                     "a@x.example.", "a@-x.example", "a@x..example", "<a@x.example>", "a@x.example>"]),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e), max_size=20))
_MAIL_PARAMS = st.sampled_from(["", " SIZE=100", " SIZE=99999999999999", " SIZE=", " SIZE=x", " SIZE",
                                " BODY=8BITMIME", " BODY=7bit", " BODY=BINARYMIME", " FOO=1", " SMTPUTF8",
                                " SIZE=10 BODY=8BITMIME", "  ", " AUTH=<>"])
_B64 = st.binary(max_size=24).map(lambda b: base64.b64encode(b).decode())
_PLAIN_OK = base64.b64encode(b"\0user\0secret").decode()
_LOGIN_USER, _LOGIN_PASS = base64.b64encode(b"user").decode(), base64.b64encode(b"secret").decode()
_ARG = {
    "HELO": st.sampled_from(["", " ", "c.example", "[192.0.2.1]", "a b", "x" * 256]),
    "MAIL": st.one_of(st.builds(lambda a, p: f"FROM:<{a}>{p}", _ADDRESSES, _MAIL_PARAMS),
                      st.builds(lambda a, p: f"from:{a}{p}", _ADDRESSES, _MAIL_PARAMS),
                      st.builds(lambda a: f"FROM: <{a}>", _ADDRESSES),
                      st.sampled_from(["", "FROM", "FROM:", "TO:<a@x.example>", "FROM:<a@x.example"])),
    "RCPT": st.one_of(st.builds(lambda a: f"TO:<{a}>", _ADDRESSES),
                      st.builds(lambda a: f"to:{a}", _ADDRESSES),
                      st.sampled_from(["", "TO:", "TO:<a@x.example> NOTIFY=NEVER", "TO:<a@x.example>x",
                                       "FROM:<a@x.example>"])),
    "AUTH": st.one_of(st.sampled_from(["", "PLAIN", "LOGIN", "plain", "CRAM-MD5", "PLAIN =", "PLAIN *",
                                       f"PLAIN {_PLAIN_OK}", f"LOGIN {_LOGIN_USER}", "PLAIN a b", " PLAIN"]),
                      st.builds(lambda m, b: f"{m} {b}", st.sampled_from(["PLAIN", "LOGIN"]), _B64)),
}
_OTHER_ARGS = st.sampled_from(["", " ", "x", "a@x.example", "<a@x.example>", "ARGS here"])
_VERBS = ["HELO", "EHLO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "VRFY", "EXPN", "HELP", "STARTTLS",
          "AUTH", "BDAT", "ETRN", "TURN", "XYZZY", "MAIL FROM:<a@x.example>"]


@st.composite
def _command(draw):
    """One command line: a verb of the grammar with a good or bad
    argument, an AUTH response, or arbitrary bytes."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.binary(max_size=80))
    if kind == 1:  # an AUTH response line (or garbage where one is expected)
        return draw(st.one_of(_B64, st.sampled_from(["*", "=", _PLAIN_OK, _LOGIN_USER, _LOGIN_PASS,
                                                     "not base64!", "dXNlcg"]))).encode()
    verb = draw(st.sampled_from(_VERBS))
    arg = draw(_ARG.get(verb.split()[0] if verb != "EHLO" else "HELO", _OTHER_ARGS))
    verb = draw(st.sampled_from([verb, verb.lower(), verb.capitalize()]))
    return (verb + (" " + arg if arg else draw(st.sampled_from(["", " "])))).encode()


_GOOD = [b"EHLO c.example", b"HELO c.example", b"MAIL FROM:<a@x.example>", b"MAIL FROM:<> SIZE=10",
         b"RCPT TO:<b@y.example>", b"RCPT TO:<postmaster>", b"DATA", b"RSET", b"NOOP", b"STARTTLS",
         b"AUTH PLAIN " + _PLAIN_OK.encode(), b"AUTH LOGIN", _LOGIN_USER.encode(), _LOGIN_PASS.encode()]
#: Runs of good commands, so that sessions get far: a message, a login.
_RUNS = st.sampled_from([
    [b"EHLO c.example", b"MAIL FROM:<a@x.example>", b"RCPT TO:<b@y.example>", b"DATA"],
    [b"MAIL FROM:<a@x.example>", b"RCPT TO:<b@y.example>", b"RCPT TO:<c@y.example>", b"DATA"],
    [b"EHLO c.example", b"AUTH LOGIN", _LOGIN_USER.encode(), _LOGIN_PASS.encode()],
    [b"MAIL FROM:<a@x.example>", b"RCPT TO:<b@y.example>", b"RSET", b"MAIL FROM:<a@x.example>",
     b"RCPT TO:<c@y.example>", b"DATA"],
    [b"EHLO c.example", b"STARTTLS", b"EHLO c.example"],
    [b"EHLO c.example", b"STARTTLS", b"EHLO c.example", b"AUTH PLAIN " + _PLAIN_OK.encode()]])
_RARE = st.integers(0, 11).map(lambda n: n == 0)
_FLAGS = st.tuples(st.integers(0, 4).map(lambda n: n == 0), _RARE, _RARE)
_EVENTS = st.lists(st.one_of(
    st.tuples(_command(), _FLAGS).map(lambda t: [(t[0], *t[1])]),
    st.tuples(st.sampled_from(_GOOD), _FLAGS).map(lambda t: [(t[0], *t[1])]),
    _RUNS.map(lambda run: [(line, False, False, False) for line in run]),
    # Pipelined as a client does (MAIL and RCPT with input behind them),
    # or as it must not (DATA with input behind it).
    st.tuples(_RUNS, st.lists(st.booleans(), min_size=6, max_size=6)).map(
        lambda t: [(line, p and line.split()[0] in (b"MAIL", b"RCPT", b"DATA"), False, False)
                   for line, p in zip(*t)])), min_size=1, max_size=25).map(
    lambda blocks: [e for b in blocks for e in b])


def _verify(user, password):
    return user == "user" and password == b"secret"


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=_EVENTS,
       errors_max=st.one_of(st.integers(1, 6), st.integers(10, 40), st.integers(10, 40)),
       maxrecip=st.integers(1, 4), starttls=st.booleans(),
       auth=st.sampled_from([(), ("login", "plain"), ("plain",)]), auth_requires_tls=st.booleans(),
       data=st.data())
def test_protocol_random_sessions(events, errors_max, maxrecip, starttls, auth, auth_requires_tls, data):
    """Random command sequences, driven as Session drives the protocol:
    nothing raises; every reply is a valid SMTP reply; after a close the
    session says nothing more; 354 only for an envelope with a sender and
    a recipient, and at most one spooled message per 354; every 5xx
    reply to a command is charged to the error budget, which tarpits past
    its half and closes the session (421 4.7.0) exactly when spent."""
    s = Settings(hostname="test.example", errors_max=errors_max, maxrecip=maxrecip, maxbytes=1000,
                 starttls=starttls, auth=auth, auth_requires_tls=auth_requires_tls)
    p = Protocol(s, "client.example", "192.0.2.7")
    p.verify_password = _verify
    closed = False
    n354 = spools = errors = 0
    mail_ok, rcpts = False, 0         # the envelope as the replies show it
    helo_ok = False
    auth_pending = False              # a 334 asked for a response line

    def emit(result, where):
        nonlocal closed
        assert not closed, f"{where} after the session closed"
        assert result.action in (None, "data", "spool", "starttls", "close")
        for r in result.replies:
            check_reply(r)
        if result.closes:
            closed = True
            assert p.closed
            if result.replies:
                assert result.replies[-1].code in (221, 421, 554), result.replies[-1]
        else:
            assert not p.closed
            assert all(r.code not in (221, 421) for r in result.replies), "221/421 without closing"
        assert p.envelope is None or len(p.envelope.recipients) <= maxrecip
        return result

    r = emit(p.connect(), "greeting")
    assert [x.code for x in r.replies] == [220]
    for raw, pipelined, too_long, bad_eol in events:
        if closed:
            break
        was_auth = auth_pending
        verb = raw.split(b" ")[0].upper()
        r = emit(p.line(raw, pipelined=pipelined, too_long=too_long, bad_eol=bad_eol), "a command")
        assert r.action != "spool", "only the end of a message may be spooled"
        codes = [x.code for x in r.replies]
        if too_long or bad_eol:  # what such a line holds is never acted on
            assert codes and codes[0] in (500, 501) and r.action in (None, "close"), r
        # Framing violations end the session at once, whatever the budget:
        # improper pipelining, and BDAT (whose octets would follow unread).
        is_pipelining_close = r.closes and codes[-1:] == [554] and (
            "pipelining" in r.replies[-1].text or "BDAT" in r.replies[-1].text)
        if is_pipelining_close and "BDAT" in r.replies[-1].text:
            assert verb == b"BDAT" and not was_auth, raw
        # The error budget: every 5xx to a command is one error.
        if codes and codes[0] >= 500 and not is_pipelining_close:
            errors += 1
            spent = errors >= errors_max
            assert r.closes == spent, (errors, errors_max, r)
            if spent:
                event("error budget spent")
                assert codes[1:] == [421] and "too many errors" in r.replies[1].text
            else:
                want = 1.0 if errors > errors_max // 2 else 0.0
                if codes[0] == 535:
                    want = max(want, AUTH_FAILURE_DELAY)
                assert r.delay == want
        else:
            assert not any("too many errors" in x.text for x in r.replies)
            assert r.delay == 0.0
        if r.closes:
            break
        auth_pending = codes == [334]
        if codes == [235]:
            event("authenticated")
        if was_auth:
            continue
        # The envelope: MAIL, RCPT and DATA only in their order, and a
        # good one in its turn is accepted.
        plain = not (too_long or bad_eol)
        if plain and raw == b"MAIL FROM:<a@x.example>" and helo_ok and not mail_ok:
            assert codes == [250], "a good MAIL in its turn was refused"
        if plain and raw in (b"RCPT TO:<b@y.example>", b"RCPT TO:<c@y.example>") and mail_ok:
            assert codes == ([250] if rcpts < maxrecip else [452]), "a good RCPT in its turn was refused"
        if codes == [250] and verb in (b"HELO", b"EHLO"):
            helo_ok = True
        if codes == [250] and verb in (b"HELO", b"EHLO", b"RSET"):
            mail_ok, rcpts = False, 0
        if verb == b"MAIL" and codes == [250]:
            assert not mail_ok and p.helo is not None
            mail_ok, rcpts = True, 0
        if verb == b"RCPT" and codes == [250]:
            assert mail_ok
            rcpts += 1
            assert rcpts <= maxrecip
        if verb == b"RCPT" and codes == [452]:
            assert rcpts == maxrecip
        if r.action == "data":
            assert verb == b"DATA" and not r.replies and mail_ok and rcpts >= 1
            assert not pipelined, "DATA with input behind it must not open a message"
            r = emit(p.data_started(), "the 354")
            assert [x.code for x in r.replies] == [354]
            n354 += 1
            too_big, bad, nul = data.draw(st.tuples(st.booleans(), _RARE, _RARE), label="message")
            r = emit(p.data_end(123, too_big, bad, nul), "the end of the message")
            if too_big or bad or nul:
                assert r.action is None and [x.code for x in r.replies] in ([552], [550])
            else:
                assert r.action == "spool" and not r.replies
                spools += 1
                event("message spooled")
                assert spools <= n354
                if data.draw(st.booleans(), label="spool ok"):
                    r = emit(p.spooled("QID"), "the 250 of a message")
                    assert [x.text for x in r.replies] == ["250 2.0.0 Ok: queued as QID"]
                else:
                    r = emit(p.spool_failed("disk full"), "the 451")
                    assert [x.code for x in r.replies] == [451]
            mail_ok, rcpts = False, 0
        elif r.action == "starttls":
            assert verb == b"STARTTLS" and starttls and not pipelined and [x.code for x in r.replies] == [220]
            event("STARTTLS")
            if data.draw(st.booleans(), label="handshake ok"):
                emit(p.tls_started("TLSv1.3 TLS_AES_256_GCM_SHA384"), "tls_started")
                mail_ok, rcpts, helo_ok = False, 0, False
            else:
                emit(p.tls_failed("bad record"), "tls_failed")
                break
        elif verb == b"DATA" and not was_auth:
            assert not (mail_ok and rcpts and not pipelined and not too_long and not bad_eol
                        and raw.upper() in (b"DATA", b"DATA ")), "a good DATA was refused"
    assert spools <= n354


# ============================================================== the framer

class BoundedFramer(Framer):
    """A Framer that records the most it ever held in its buffer."""

    most = 0

    def _fill(self):
        try:
            super()._fill()
        finally:
            self.most = max(self.most, len(self.buf))


#: During commands the buffer holds at most one command line's worth
#: (read_command trims it to <= MAX_COMMAND before it reads) plus one recv
#: of CHUNK; during a message at most CHUNK (longer partial lines are
#: written out before the next read) plus one recv.
COMMAND_BOUND = MAX_COMMAND + CHUNK
MESSAGE_BOUND = 2 * CHUNK


@contextlib.contextmanager
def fed_framer(chunks, crlf, kind):
    """A BoundedFramer on one end of a real socket pair; a thread writes
    `chunks` into the other end, then shuts it down.  SOCK_SEQPACKET keeps
    every chunk one recv (the split points are exactly the drawn ones);
    SOCK_STREAM lets the kernel merge them."""
    ours, peer = socket.socketpair(socket.AF_UNIX, kind)

    def feed():
        try:
            for c in chunks:
                peer.sendall(c)
            peer.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the reader stopped early and closed its end

    t = threading.Thread(target=feed, daemon=True)
    t.start()
    f = BoundedFramer(ours, Limits(idle=20, session=120, crlf=crlf))
    try:
        yield f
    finally:
        ours.close()
        t.join(20)
        peer.close()
        assert not t.is_alive()


def split_stream(stream, cuts):
    """`stream` cut at the given points, no piece empty (an empty
    SEQPACKET datagram would read as EOF) nor longer than CHUNK.  A cut
    is a fraction of the stream, or ("after", k): just after the k-th CR,
    LF or dot, where a framer that forgets a byte at a boundary errs."""
    special = None
    points = {0, len(stream)}
    for c in cuts:
        if isinstance(c, float):
            points.add(int(c * len(stream)))
            continue
        if special is None:
            special = [m.end() for m in re.finditer(rb"[\r\n.]", stream)]
        if special:
            points.add(special[c[1] % len(special)])
    points = sorted(points)
    pieces = [stream[a:b] for a, b in zip(points, points[1:]) if b > a]
    out = []
    for p in pieces:
        out.extend(p[i:i + CHUNK] for i in range(0, len(p), CHUNK))
    return out


_CUTS = st.lists(st.one_of(st.floats(0, 1), st.tuples(st.just("after"), st.integers(0, 10 ** 6))), max_size=12)
#: Lines: contents at the command limit and beyond, and the line ends a
#: client may send (a bare CR or LF, CR CR LF, none at all).
_CMD_LINES = st.tuples(
    st.one_of(st.sampled_from([b"NOOP", b"MAIL FROM:<a@x.example>", b"", b".", b"\0", b"\xff", b"a\rb", b"a\nb"]),
              st.sampled_from([MAX_COMMAND - 3, MAX_COMMAND - 2, MAX_COMMAND - 1, MAX_COMMAND, MAX_COMMAND + 1,
                               1000, CHUNK - 1, CHUNK + 5, 2 * CHUNK + 3]).map(lambda n: b"x" * n),
              st.binary(max_size=12)),
    st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b"", b"\r\r\n", b"\n\r"])).map(b"".join)


def model_commands(stream, strict):
    """The commands a correct framer finds in `stream`: (line, too_long,
    bad) for each terminated line; `bad` is None for a too-long line
    (the protocol does not look at it then)."""
    out, pos = [], 0
    while True:
        if strict:
            i = stream.find(b"\r\n", pos)
            if i < 0:
                return out
            line, pos = stream[pos:i], i + 2
        else:
            i = stream.find(b"\n", pos)
            if i < 0:
                return out
            line, pos = stream[pos:i], i + 1
            if line.endswith(b"\r"):
                line = line[:-1]
        too_long = len(line) + 2 > MAX_COMMAND
        out.append((b"", True, None) if too_long else (line, False, b"\r" in line or b"\n" in line))


_KINDS = st.sampled_from([socket.SOCK_SEQPACKET, socket.SOCK_SEQPACKET, socket.SOCK_STREAM])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pieces=st.lists(_CMD_LINES, max_size=20), cuts=_CUTS,
       crlf=st.sampled_from(["strict", "normalize"]), kind=_KINDS)
def test_framer_commands(pieces, cuts, crlf, kind):
    """read_command over a real socket, the stream cut at random points:
    exactly the lines of the stream, in order (a long line is one
    too-long command, never split into two; nothing is lost behind it);
    a line holds CR or LF only when flagged bad; none is over
    MAX_COMMAND; the buffer stays bounded."""
    stream = b"".join(pieces)
    want = model_commands(stream, crlf == "strict")
    got = []
    with fed_framer(split_stream(stream, cuts), crlf, kind) as f:
        while True:
            try:
                line, too_long, bad = f.read_command()
            except Closed:
                break
            assert len(line) + 2 <= MAX_COMMAND
            assert bad or (b"\r" not in line and b"\n" not in line)
            assert not too_long or line == b""
            got.append((line, too_long, None if too_long else bad))
            assert len(f.buf) <= COMMAND_BOUND
            f.pending()  # as Session asks after every command
            assert len(f.buf) <= COMMAND_BOUND
        assert f.most <= COMMAND_BOUND, f.most
        event("most buffered: " + ("> CHUNK" if f.most > CHUNK else "> MAX_COMMAND" if f.most > MAX_COMMAND
                                   else "small"))
    assert got == want


def model_message(stream, strict):
    """(canonical body, bad_eol, nul, where the message ends) or None when
    the stream holds no end.  Only CRLF "." CRLF at a true line start (the
    previous line ended with CRLF) ends a message."""
    lines, pos, crlf_before = [], 0, True
    while True:
        if strict:
            i = stream.find(b"\r\n", pos)
            if i < 0:
                return None
            content, n = stream[pos:i], 2
        else:
            i = stream.find(b"\n", pos)
            if i < 0:
                return None
            content, n = stream[pos:i], 1
            if content.endswith(b"\r"):
                content, n = content[:-1], 2
        pos = i + 2 if strict else i + 1
        if crlf_before and n == 2 and content == b".":
            break
        lines.append(content[1:] if content.startswith(b".") else content)
        crlf_before = n == 2
    body = b"".join(line + b"\n" for line in lines)
    bad = any(b"\r" in line or (strict and b"\n" in line) for line in lines)
    return body, bad, any(b"\0" in line for line in lines), pos


#: Line ends that must never end a message (SMTP smuggling), and friends.
_SMUGGLE = [b"\n.\n", b"\r.\r", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\r", b"\r\n.\r\r\n", b"\r\n. \r\n",
            b"\r\n..\r\n", b"\r\n\x00.\r\n", b".\r\n", b"\n.", b"\r\n.\r\n"]
_MSG_PIECES = st.one_of(
    st.sampled_from(_SMUGGLE),
    st.sampled_from([b"Subject: x", b"\r\n", b"\r\n", b"\r\n", b".", b"..", b"\r", b"\n", b"\0", b"text"]),
    st.tuples(st.sampled_from([CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7, 1000]),
              st.sampled_from([b"y", b"."])).map(lambda t: t[1] * t[0]),
    st.binary(max_size=8))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pieces=st.lists(_MSG_PIECES, max_size=25), end=st.booleans(), cuts=_CUTS,
       crlf=st.sampled_from(["strict", "normalize"]), kind=_KINDS,
       maxbytes=st.one_of(st.just(10 ** 9), st.integers(0, 300)))
def test_framer_messages(pieces, end, cuts, crlf, kind, maxbytes):
    """read_message over a real socket: the message ends exactly at the
    first CRLF.CRLF at a true line start, never at a smuggling sequence
    (bare LF or CR around the dot), and what follows it is left for the
    next command, byte for byte; the sink gets the dot-unstuffed LF form
    of exactly the lines sent (a prefix within maxbytes when too big);
    bare CR (and bare LF in strict mode) and NUL are reported; the
    buffer stays bounded."""
    stream = b"".join(pieces) + (b"\r\n.\r\nQUIT\r\n" if end else b"")
    strict = crlf == "strict"
    want = model_message(stream, strict)
    out = []
    with fed_framer(split_stream(stream, cuts), crlf, kind) as f:
        try:
            info = f.read_message(out.append, maxbytes)
        except Closed:
            info = None
        assert f.most <= MESSAGE_BOUND, f.most
        event(f"most buffered: {'> CHUNK' if f.most > CHUNK else 'small'}")
        assert len(f.buf) <= MESSAGE_BOUND
        rest = bytes(f.buf)
        if info is not None:
            while True:  # what the client sent after the message
                try:
                    f._fill()
                except Closed:
                    break
            rest = bytes(f.buf)
    if want is None:
        assert info is None, "the message ended where the stream holds no CRLF.CRLF"
        return
    assert info is not None, "the stream's CRLF.CRLF did not end the message"
    body, bad, nul, pos = want
    event(f"message ended (bad_eol={bad}, too_big={len(body) > maxbytes}, rest={len(stream) > pos})")
    assert rest == stream[pos:], "the message did not end at the first CRLF.CRLF"
    assert (info.size, info.bad_eol, info.nul, info.too_big) == (len(body), bad, nul, len(body) > maxbytes)
    sunk = b"".join(out)
    if info.too_big:
        assert len(sunk) <= maxbytes and body.startswith(sunk)
    else:
        assert sunk == body


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
                      max_size=20),
       cuts=_CUTS, crlf=st.sampled_from(["strict", "normalize"]))
def test_framer_dot_stuffing_round_trip(lines, cuts, crlf):
    """A client that dot-stuffs any body of lines as RFC 5321 says: the
    spool gets exactly those lines back, in LF form."""
    stream = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines) + b".\r\n"
    out = []
    with fed_framer(split_stream(stream, cuts), crlf, socket.SOCK_SEQPACKET) as f:
        info = f.read_message(out.append, 10 ** 9)
    assert b"".join(out) == b"".join(line + b"\n" for line in lines)
    assert not info.bad_eol and info.nul == any(b"\0" in line for line in lines)


# ============================================================== netperm-table

_PROGRAM_NAMES = st.sampled_from(["smap", "smapd", "ssl-gw", "smmap", "*", "smap-in", "x_y.z+@-1"])
_KEYWORDS = st.sampled_from(["userid", "directory", "maxbytes", "permit-hosts", "deny-hosts", "hosts",
                             "PERMIT-HOSTS", "permit-", "banner", "relay-domain", "x"])
_TOKEN = st.text(st.characters(blacklist_categories=("Cs",)), max_size=10)
#: Pieces of table text: the tokeniser's specials, bad bytes, line ends.
_TABLE_PIECES = st.one_of(
    st.sampled_from([b"smap", b"smapd", b"*", b":", b",", b" ", b"\t", b"\x0b", b"\x0c", b"\n", b"\r\n", b"\r",
                     b"#", b'"', b"'", b"\\", b"\\n", b"\\t", b"permit-", b"deny-", b"hosts", b"\0", b"\xff",
                     b"\xc3\xa9", b"\xed\xa0\x80", b"10.0.0.0/8", b"[::1]:25", b"*.example.com"]),
    st.binary(max_size=6))


@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(_TABLE_PIECES, max_size=60))
def test_netperm_table_text_gives_rules_and_located_diagnostics(pieces):
    """Table.read on any file: no exception; every line is a rule, a
    diagnostic, or blank/comment, never two of them; every diagnostic
    names the file and a line that exists, in file:line form."""
    data = b"".join(pieces)
    nlines = len(data.split(b"\n"))
    with tempfile.NamedTemporaryFile("wb", suffix="-netperm-table") as f:
        f.write(data)
        f.flush()
        t = Table.read(f.name)
    seen = [r.line for r in t.rules] + [d.line for d in t.diagnostics]
    assert len(seen) == len(set(seen)), "a line both read and refused, or refused twice"
    assert [r.line for r in t.rules] == sorted(r.line for r in t.rules)
    for d in t.diagnostics:
        assert d.file == f.name and 1 <= d.line <= nlines and d.severity == "error"
        assert str(d).startswith(f"{f.name}:{d.line}: error: ")
    for r in t.rules:
        assert 1 <= r.line <= nlines and r.keyword and r.programs and r.where == f"{f.name}:{r.line}"
    lines = data.split(b"\n")
    for n in set(range(1, nlines + 1)) - set(seen):
        line = lines[n - 1]
        line = line[:-1] if line.endswith(b"\r") else line
        assert line.startswith(b"#") or not line.strip(), f"line {n} {line!r} neither read nor refused"


@settings(max_examples=300, deadline=None)
@given(rules=st.lists(st.tuples(st.lists(_PROGRAM_NAMES, min_size=1, max_size=3), _KEYWORDS,
                                st.lists(_TOKEN, max_size=5),
                                st.sampled_from([" ", "\t", " ,", " ,, \t"])), max_size=8),
       crlf=st.booleans())
def test_netperm_table_round_trip(rules, crlf):
    """A table written with quote() reads back as the same rules: program
    lists, keyword and prefix, and every argument, whatever it holds (but
    NUL, which a table line may not hold), whatever blanks and commas
    separate the arguments."""
    rules = [r for r in rules if not any("\0" in a for a in r[2])]
    end = "\r\n" if crlf else "\n"
    text = "".join(f"{', '.join(progs)}: {kw}{sep}" + sep.join(quote(a) for a in args) + end
                   for progs, kw, args, sep in rules)
    t = Table.parse(text.encode("utf-8"), "t")
    assert t.diagnostics == []
    got = [(r.programs, r.spelled(), r.args) for r in t.rules]
    assert got == [(tuple(progs), kw.lower(), tuple(args)) for progs, kw, args, _ in rules]


@settings(max_examples=300, deadline=None)
@given(tokens=st.lists(_TOKEN, max_size=8), seps=st.lists(st.sampled_from([" ", "\t", " ,", " , ,\t", "\x0c"]),
                                                          min_size=8, max_size=8),
       lead=st.sampled_from(["", " ", ",", ",,, "]))
def test_netperm_quote_tokenize_round_trip(tokens, seps, lead):
    """quote() then tokenize() gives the tokens back, with any blanks and
    commas between them and before the first."""
    line = lead + "".join(quote(t) + seps[i] for i, t in enumerate(tokens))
    assert tokenize(line) == tokens


_HOST_TEXT = st.one_of(
    st.sampled_from(["*", "unknown", "10.0.0.0/8", "10.0.0.0/255.0.0.0", "10.0.0.0:255.255.0.0", "10.*",
                     "192.168.1.?", "2001:db8::/32", "::ffff:10.0.0.0/104", "::1", "*.example.com",
                     "host.example.com", "10.0.0.0/33", "300.1.1.1", "1.2.3", "2001:db8::*", "a b", "", "/8",
                     "0.0.0.0/0", "::/0", "[::1]", "10.0.0.1/255.0.255.0"]),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e), max_size=20),
    st.text(max_size=8))
_ADDR = st.one_of(st.ip_addresses(), st.ip_addresses(v=4).map(lambda a: ipaddress.ip_address(f"::ffff:{a}")),
                  st.ip_addresses(network="10.0.0.0/8"))


@settings(max_examples=300, deadline=None)
@given(patterns=st.lists(st.tuples(st.sampled_from(["permit", "deny"]), st.lists(_HOST_TEXT, min_size=1,
                                                                                 max_size=3)), max_size=5),
       addr=_ADDR, name=st.sampled_from([None, "", "host.example.com", "x.example.com.", "HOST.EXAMPLE.COM"]))
def test_netperm_host_patterns(patterns, addr, name):
    """Any host pattern compiles or raises ValueError with a sentence;
    deciding any address with the rules that compiled never raises; an
    address pattern decides the same for an address, its text and (IPv4)
    its IPv4-mapped form; a name pattern never matches without a name."""
    from smapd.table.netperm import Rule
    rules = []
    for flag, texts in patterns:
        try:
            rules.append(compile_host_rule(Rule(("smap",), "hosts", flag, tuple(texts), "t", 1)))
        except ValueError as e:
            assert str(e)
    for text in (t for _, ts in patterns for t in ts):
        try:
            p = compile_host_pattern(text)
        except ValueError as e:
            assert str(e)
            continue
        got = p.matches(addr, name)
        assert isinstance(got, bool)
        assert p.matches(str(addr), name) == got
        if p.kind == "name":
            assert not p.matches(addr, None)
        if addr.version == 4 and p.kind != "name":
            assert p.matches(ipaddress.ip_address(f"::ffff:{addr}"), name) == got
    allowed, rule = check_hosts(rules, addr, name)
    assert isinstance(allowed, bool) and (rule is None or rule in rules)


# ============================================================== TCP wrappers

def _mapped(a):
    """The client as libwrap compares it: IPv4-mapped IPv6 as IPv4."""
    a = ipaddress.ip_address(a)
    return a.ipv4_mapped if a.version == 6 and a.ipv4_mapped else a


@st.composite
def _wrap_pattern(draw):
    """A client pattern made of addresses: every form libwrap reads an
    address in, with numbers of any size (so host bits, /0, odd masks)."""
    base4 = draw(st.one_of(st.ip_addresses(v=4), st.ip_addresses(network="10.0.0.0/8")))
    base6 = draw(st.one_of(st.ip_addresses(v=6), st.ip_addresses(network="2001:db8::/32"),
                           st.just(ipaddress.ip_address(f"::ffff:{base4}"))))
    kind = draw(st.sampled_from(["all", "v4", "len4", "mask4", "prefix", "glob", "v6", "len6"]))
    if kind == "all":
        return "ALL"
    if kind == "v4":
        return str(base4)
    if kind == "len4":
        n = draw(st.integers(0, 33))
        net = ipaddress.ip_network(f"{base4}/{min(n, 32)}", strict=False)
        return f"{draw(st.sampled_from([base4, net.network_address]))}/{n}"
    if kind == "mask4":  # any mask, contiguous or not
        mask = draw(st.integers(0, 2 ** 32 - 1))
        net = draw(st.sampled_from([int(base4), int(base4) & mask]))
        return f"{ipaddress.IPv4Address(net)}/{ipaddress.IPv4Address(mask)}"
    if kind == "prefix":
        return ".".join(str(base4).split(".")[:draw(st.integers(1, 3))]) + "."
    if kind == "glob":
        return "".join(draw(st.sampled_from([c, "?", "*"])) if c.isdigit() else c for c in str(base4))
    if kind == "v6":
        return f"[{base6}]"
    return f"[{base6}]/{draw(st.integers(0, 129))}"


@st.composite
def _wrap_entry(draw):
    groups = draw(st.lists(st.lists(_wrap_pattern(), min_size=1, max_size=3), min_size=1, max_size=2))
    daemons = draw(st.sampled_from(["ALL", "imap", "pop3,imap", "pop3 EXCEPT imap", "ALL EXCEPT pop3"]))
    option = draw(st.sampled_from(["", ": allow", ": deny", ": ALLOW"]))
    sep = draw(st.sampled_from([" ", ", ", "\t", " ,"]))
    return f"{daemons}: " + " EXCEPT ".join(sep.join(g) for g in groups) + f" {option}"


@settings(max_examples=100, deadline=None)
@given(allow=st.lists(_wrap_entry(), max_size=4), deny=st.lists(_wrap_entry(), max_size=4),
       addrs=st.lists(_ADDR, min_size=1, max_size=6),
       service=st.sampled_from(["imap", "pop3", "smtp"]))
def test_tcpwrap_address_rules(allow, deny, addrs, service):
    """Random hosts.allow/hosts.deny made of address patterns (addresses,
    net/len, net/mask with any mask, net., address globs, [ipv6] and
    [ipv6]/len, EXCEPT, allow/deny options): for any client address (IPv4,
    IPv6, IPv4-mapped: ssl-gw reads it as IPv4) check() never raises and
    decides as Debian's libwrap decides."""
    with tempfile.TemporaryDirectory() as d:
        for fname, entries in (("hosts.allow", allow), ("hosts.deny", deny)):
            with open(os.path.join(d, fname), "w") as f:
                f.write("".join(text + "\n" for text in entries))
        t = Tables(d)
        libwrap = Libwrap(d)
        for addr in addrs:
            a = _mapped(addr)
            got = t.check(service, Client(str(addr), None, False))
            assert got.allowed is libwrap.allows(service, str(a)), (str(addr), service, got.reason)


@settings(max_examples=300, deadline=None)
@given(addr=_ADDR, name=st.sampled_from([None, "localhost", "mail.example.com", "10.0.0.1"]),
       paranoid=st.booleans(), service=st.sampled_from(["imap", "pop3", "IMAP", "smtp", "localhost.143"]))
def test_tcpwrap_reference_files_decide_by_address(addr, name, paranoid, service):
    """The reference hosts.allow/hosts.deny: pop3 and imap from 10/8 (an
    IPv4-mapped 10/8 too) are granted by hosts.allow:1, everything else
    refused by hosts.deny:1, whatever the client's name; other services
    are granted by default."""
    t = _REFERENCE_TABLES
    d = t.check(service, Client(str(addr), name, paranoid))
    if service.lower() not in ("imap", "pop3"):
        assert (d.allowed, d.where) == (True, None)
    elif _mapped(addr) in ipaddress.ip_network("10.0.0.0/8"):
        assert (d.allowed, d.where) == (True, os.path.join(REFERENCE, "hosts.allow") + ":1")
    else:
        assert (d.allowed, d.where) == (False, os.path.join(REFERENCE, "hosts.deny") + ":1")


_REFERENCE_TABLES = Tables(REFERENCE)


# ============================================================== spool files to the MTA

FAKE_SENDMAIL = """#!/bin/sh
# Records its arguments (NUL-separated) and its stdin, then exits %(status)d.
n=$(date +%%s%%N).$$
printf '%%s\\0' "$@" > '%(calls)s'/$n.tmp
cat > '%(calls)s'/$n.body
mv '%(calls)s'/$n.tmp '%(calls)s'/$n.argv
exit %(status)d
"""

_ENVELOPE_LINES = [
    b"FROM <x@y.example>\n", b"FROM <>\n", b"FROM <-f@x.example>\n", b"RCPT <-oQ/tmp/x>\n", b"RCPT <--help>\n",
    b"RCPT <|/bin/sh -c touch>\n", b"RCPT <|cmd@x.example>\n", b"RCPT </etc/passwd>\n", b"RCPT <>\n",
    b"SENT <b@y.example>\n", b"SENT <c@y.example>\n", b"RCPT <a b@c.example>\n", b"RCPT <caf\xc3\xa9@x.example>\n",
    b"RCPT <\xff@x.example>\n", b"RCPT <b@y.example>\r\n", b"BODY\n", b"\n", b"RCPT b@y.example\n",
    b"RCPT <<b@y.example>>\n", b"rcpt <b@y.example>\n", b"RCPT <b@y.example>", b"RCPT <\tb@y.example>\n",
    b"RCPT <b@y.example> \n", b"\0\0\0\n", b"RCPT <d@z.example>\n", b"ATTR helo=x+3By\n", b"ATTR helo=bad+zz\n",
    b"ATTR Helo=x\n", b"ATTR helo=a b\n", b"ATTR login=\n", b"ATTR helo=x=y\n"]
_HUGE = [queue_module.MAX_ENVELOPE - 100, queue_module.MAX_ENVELOPE + 10, 200000]
_OPS = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("flip"), st.floats(0, 1), st.integers(1, 255)),
    st.tuples(st.just("nul"), st.floats(0, 1)),
    st.tuples(st.just("remove"), st.integers(0, 20)),
    st.tuples(st.just("dup"), st.integers(0, 20)),
    st.tuples(st.just("sent"), st.integers(0, 20)),
    st.tuples(st.just("insert"), st.integers(0, 20), st.sampled_from(_ENVELOPE_LINES)),
    st.tuples(st.just("huge"), st.integers(0, 20), st.sampled_from(_HUGE),
              st.sampled_from([b"RCPT <%s@x.example>\n", b"%s\n", b"%s", b"FROM <%s>\n"])))


def corrupt(data: bytes, ops) -> bytes:
    for op in ops:
        lines = data.splitlines(keepends=True)
        kind, args = op[0], op[1:]
        if kind in ("truncate", "flip", "nul"):
            at = int(args[0] * len(data))
            if kind == "truncate":
                data = data[:at]
            elif kind == "nul":
                data = data[:at] + b"\0" + data[at:]
            elif at < len(data):
                data = data[:at] + bytes([data[at] ^ args[1]]) + data[at + 1:]
            continue
        i = args[0] % (len(lines) + 1)
        if kind == "remove" and i < len(lines):
            del lines[i]
        elif kind == "dup" and i < len(lines):
            lines.insert(i, lines[i])
        elif kind == "sent" and i < len(lines) and lines[i].startswith(b"RCPT"):
            lines[i] = b"SENT" + lines[i][4:]
        elif kind == "insert":
            lines.insert(i, args[1])
        elif kind == "huge":
            lines.insert(i, args[2].replace(b"%s", b"a" * args[1]))
        data = b"".join(lines)
    return data


_SPOOL_LINE = re.compile(rb"(FROM|RCPT|SENT) <([\x20-\x7e]*)>")
# An attribute: a lower-case name, an xtext value (RFC 3461 4), between FROM and the first RCPT.
_ATTR_LINE = re.compile(rb"ATTR [a-z][a-z0-9-]{0,31}=(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2}){0,2048}")


def expected_envelope(data):
    """What the spool format (spool.py) says of a file:
    (sender, recipients, sent, body offset), or None when it is not a
    deliverable spool file (corrupt, or a sender that the address
    grammar refuses).  A refused recipient is bounced, not a reason to
    refuse the file."""
    pos, sender, rcpts, sent = 0, None, [], []
    while True:
        j = data.find(b"\n", pos)
        if j < 0 or j + 1 > queue_module.MAX_ENVELOPE:
            return None
        line, pos = data[pos:j], j + 1
        if line == b"BODY":
            break
        if _ATTR_LINE.fullmatch(line):
            if sender is None or rcpts:
                return None
            continue
        m = _SPOOL_LINE.fullmatch(line)
        if not m:
            return None
        kind, addr = m.group(1), m.group(2).decode("utf-8", "surrogateescape")
        if kind == b"FROM":
            if sender is not None or rcpts:
                return None
            sender = addr
            continue
        if sender is None or not addr:
            return None
        rcpts.append(addr)
        if kind == b"SENT":
            sent.append(addr)
    if sender is None or not rcpts:
        return None
    if mailbox.problem(sender, sender=True):
        return None
    return sender, rcpts, sent, pos


#: The longest single argument execve(2) takes (MAX_ARG_STRLEN, NUL included).
_ARG_STRLEN = 32 * os.sysconf("SC_PAGE_SIZE")


def _short(x):
    """A repr that a 4 MiB address does not make unreadable."""
    text = repr(x)
    return text if len(text) < 300 else text[:150] + f"...({len(text)} characters)..." + text[-100:]


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def _locks_of(ino):
    """This process's fcntl locks on inode `ino` (from /proc/locks)."""
    with open("/proc/locks") as f:
        return [line for line in f if f" {os.getpid()} " in line and f":{ino} " in line]


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _fds_under(directory):
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(directory):
                out.append(fd)
        except OSError:
            pass
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(sender=st.sampled_from(["a@x.example", "", "b.c@y.example"]),
       rcpts=st.lists(st.sampled_from(["b@y.example", "c@y.example", "d@z.example", "postmaster", "e@[192.0.2.1]"]),
                      min_size=1, max_size=5),
       body=st.sampled_from([b"Subject: t\n\nhello\n", b"", b"BODY\nRCPT <evil@x.example>\n.\n", b"x\0y\n"]),
       ops=st.lists(_OPS, max_size=4), status=st.sampled_from([0, 0, 0, 67, 75, 1]),
       batch=st.sampled_from([1, 2, deliver_module.BATCH]))
# What this property found (fixed in deliver.py): a file whose every
# recipient has a SENT line stayed in the spool, claimed again at every
# scan; a recipient listed twice was handed off again in a later batch;
# an address too long for an argv (E2BIG) was deferred forever.
@example(sender="a@x.example", rcpts=["b@y.example"], body=b"", ops=[("sent", 1)], status=0, batch=1)
@example(sender="a@x.example", rcpts=["b@y.example", "c@y.example", "b@y.example"], body=b"", ops=[], status=0,
         batch=1)
@example(sender="a@x.example", rcpts=["b@y.example"], body=b"", ops=[("huge", 1, 200000, b"RCPT <%s@x.example>\n")],
         status=0, batch=100)
def test_spool_files_are_delivered_or_moved_to_bad(sender, rcpts, body, ops, status, batch):
    """deliver() on a valid spool file damaged at random (truncated, bytes
    flipped, NULs, lines removed, duplicated, turned into SENT, foreign
    and huge lines, '-' and '|' recipients), with a fake sendmail (a real
    script recording argv and stdin) exiting 0, 67, 75 or 1, and a batch
    size of 1, 2 or the real one: nothing raises; the file ends handed
    off (gone), deferred (only after the MTA said 'temporary': kept,
    its mtime in the future, the reason in its xattr), or in bad/ with
    the reason in its xattr and the log -- one of these, never two; no
    lock or descriptor is left; sendmail gets `-oi -f SENDER --` and
    then the recipients, none of them an option or a pipe, no recipient
    in two runs, and the body exactly as spooled."""
    data = b"".join([f"FROM <{sender}>\n".encode(), b"ATTR client-addr=192.0.2.1\n", b"ATTR helo=x+3By+28z\n"]
                    + [f"RCPT <{r}>\n".encode() for r in rcpts] + [b"BODY\n", b"Received: x\n", body])
    data = corrupt(data, ops)
    want = expected_envelope(data)
    with tempfile.TemporaryDirectory(prefix="smapd-fuzz-") as base:
        spool_dir, bad, calls = (os.path.join(base, n) for n in ("spool", "spool/bad", "calls"))
        for d in (spool_dir, bad, calls):
            os.mkdir(d)
        mta = os.path.join(base, "sendmail")
        with open(mta, "w") as f:
            f.write(FAKE_SENDMAIL % {"calls": calls, "status": status})
        os.chmod(mta, 0o755)
        name = "sma" + "0" * 11 + "FUZZP1"
        with open(os.path.join(spool_dir, name), "wb") as f:
            f.write(data)
        ino = os.stat(os.path.join(spool_dir, name)).st_ino
        ctx = deliver_module.DeliverySettings(sendmail=(mta,), baddir=bad, retry_max=3600, timeout=20, directory=".")
        records, logger = _Records(), logging.getLogger("smapd")
        old_level, old_batch, cwd = logger.level, deliver_module.BATCH, os.getcwd()
        logger.addHandler(records)
        logger.setLevel(logging.INFO)
        deliver_module.BATCH = batch
        started = time.time()
        try:
            os.chdir(spool_dir)
            code = deliver_module.deliver(name, ctx)
        finally:
            os.chdir(cwd)
            deliver_module.BATCH = old_batch
            logger.removeHandler(records)
            logger.setLevel(old_level)
        assert code == deliver_module.DONE
        assert not _fds_under(base), "a descriptor of the spool file is left open"
        assert not _locks_of(ino), "the claim's lock is left"
        in_spool = os.path.exists(os.path.join(spool_dir, name))
        in_bad = sorted(os.listdir(bad))
        assert not (in_spool and in_bad), "both in the spool and in bad/"
        bounces = sorted(f for f in os.listdir(spool_dir) if f.startswith("sma") and f != name)
        assert sorted(os.listdir(spool_dir)) == sorted(["bad", *bounces] + ([name] if in_spool else []))
        runs = []
        for f in sorted(x for x in os.listdir(calls) if x.endswith(".argv")):
            argv = _read(os.path.join(calls, f)).split(b"\0")[:-1]
            runs.append(([a.decode("utf-8", "surrogateescape") for a in argv],
                         _read(os.path.join(calls, f[:-5] + ".body"))))
        for argv, stdin in runs:
            assert argv[:2] == ["-oi", "-f"] and argv[3] == "--", _short(argv[:4])
            assert not argv[2].startswith(("-", "|")), _short(argv[2])
            for r in argv[4:]:
                assert r and not r.startswith(("-", "|", "/")), _short(r)
                assert mailbox.problem(r) is None, _short(r)
            assert want is not None and argv[2] == want[0], "not the file's sender"
            assert stdin == data[want[3]:], "the MTA did not get the body as spooled"
        handed = [r for argv, _ in runs for r in dict.fromkeys(argv[4:])]
        twice = len(handed) != len(set(handed))
        assert not twice, f"a recipient handed off in two runs: {_short([a[4:] for a, _ in runs])}"
        # One outcome, and the one the MTA's word calls for: the pending
        # recipients (each once) in batches, until the MTA fails or a
        # batch cannot be run at all.
        outcome = "bad" if in_bad else "deferred" if in_spool else "gone"
        expected, expected_runs = "bad", []
        refused = []
        if want is not None:
            pending = list(dict.fromkeys(r for r in want[1] if r not in set(want[2])))
            # Each recipient the grammar refuses is bounced alone, first.
            refused = [r for r in pending if mailbox.problem(r)]
            pending = [r for r in pending if r not in refused]
            expected = "gone"  # also when every recipient has a SENT line already
            for i in range(0, len(pending), batch):
                b = pending[i:i + batch]
                if any(len(a.encode("utf-8", "surrogateescape")) >= _ARG_STRLEN for a in [want[0], *b]):
                    expected = "bad"  # E2BIG: no later attempt can run it either
                    break
                expected_runs.append(b)
                if status in (75, 1):
                    expected = "deferred" if status == 75 else "bad"
                    break
        same = [a[4:] for a, _ in runs] == expected_runs
        assert same, f"runs {_short([a[4:] for a, _ in runs])}, expected {_short(expected_runs)}"
        event(f"{outcome} (expected {expected})")
        assert outcome == expected, (outcome, expected, _short(records.lines[-1:]))
        # One bounce, from the null sender to the sender, naming each
        # refused recipient, when there is a sender to tell.
        assert len(bounces) == (1 if refused and want[0] else 0), (bounces, refused)
        for b in bounces:
            with open(os.path.join(spool_dir, b), "rb") as f:
                env = queue_module.read_envelope(f)
            assert (env.sender, env.recipients) == ("", [want[0]])
            report = email.message_from_bytes(_read(os.path.join(spool_dir, b))[env.body_offset:])
            assert report.get_content_type() == "multipart/report"
            status_part = report.get_payload()[1]
            assert [p["Final-Recipient"] for p in status_part.get_payload()[1:]] == [
                f"rfc822; {dsn.shown(r)}" for r in refused]
        if outcome == "bad":
            assert len(in_bad) == 1
            why = queue_module.get_error(os.path.join(bad, in_bad[0]))
            assert why and any("moved to" in line and why[:500] in line for line in records.lines), "no reason"
        elif outcome == "deferred":
            assert os.stat(os.path.join(spool_dir, name)).st_mtime > started + 30
            assert queue_module.get_error(os.path.join(spool_dir, name))


# ------------------------------------------- one address grammar, end to end

_LOCAL_ATOMS = st.text(st.sampled_from("abcXYZ09!#$%&'*+/=?^_`{|}~-"), min_size=1, max_size=8)
_QUOTED_LOCAL = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=12).map(
    lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"')
_LOCALS = st.one_of(st.lists(_LOCAL_ATOMS, min_size=1, max_size=3).map(".".join), _QUOTED_LOCAL,
                    st.sampled_from(['"john doe"', '"a>b"', '"a<b>"', "|prog", '"|prog"', '"-oQ/tmp"', '"/etc/x"',
                                     '" leading"', '"\\|prog"', '"a\\ b"', '""']))
_DOMAINS = st.sampled_from(["example.org", "y.example", "example.org.", "[192.0.2.1]", "[IPv6:2001:db8::1]",
                            "[999.1.1.1]", "[IPv6:zz::1]", "a-b.example"])


@settings(max_examples=300, deadline=None)
@given(local=_LOCALS, domain=_DOMAINS)
@example(local='"john doe"', domain="example.org")
@example(local='"a>b"', domain="example.org")
@example(local="|prog", domain="example.org")
@example(local='"|prog"', domain="example.org")
@example(local='"-oQ/tmp"', domain="example.org")
def test_every_address_accepted_at_rcpt_is_spooled_read_back_and_handed_off_unchanged(local, domain):
    """smap's RCPT, the spool writer and reader, and smapd's check before
    the hand-off apply one grammar: what gets 250 at RCPT is written,
    read back and passed unchanged; what smapd would refuse never gets
    250 (a dequoted '|', '/' or '-' first is a 553)."""
    address = f"{local}@{domain}"
    p = Protocol(Settings(hostname="test.example"))
    p.connect()
    p.line(b"EHLO c.example")
    assert p.line(b"MAIL FROM:<a@x.example>").replies[0].code == 250
    r = p.line(f"RCPT TO:<{address}>".encode()).replies[0]
    dequoted = mailbox.parse(address).dequoted_local if r.code == 250 else None
    if r.code != 250:
        assert r.code in (501, 553), r.text
        assert deliver_module.address_problem(address) is not None
        event(f"refused {r.code}")
        return
    assert dequoted and dequoted[0] not in "|/-"
    with tempfile.TemporaryDirectory(prefix="smapd-grammar-") as d:
        w = queue_module.SpoolWriter(d, "a@x.example", [address], b"Received: x\n")
        w.write(b"Subject: t\n\nhi\n")
        qid = w.commit()
        with open(os.path.join(d, "sma" + qid), "rb") as f:
            env = queue_module.read_envelope(f)
    assert env.recipients == [address]
    assert deliver_module.address_problem(env.recipients[0]) is None
    event("accepted")
