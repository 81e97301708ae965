"""What an outside review of smap broke (issue 15), each against the
installed smap on a real connection: BDAT's octets, quoted senders in the
spam database, the Received header of a hostile HELO and of an IPv6
client, RFC 4954's AUTH= parameter and address literals."""

import email
import email.policy
import email.utils
import os
import re

import pytest

from support.programs import make_spool


def spool_files(spool, prefix="sma"):
    return sorted(f for f in os.listdir(spool) if f.startswith(prefix))


@pytest.fixture
def spool(tmp_path):
    return make_spool(tmp_path / "spool")


def greet(s, helo="client.example"):
    assert s.reply()[0] == 220
    code, lines = s.cmd(f"EHLO {helo}")
    assert code == 250, lines
    return lines


def send_message(s, sender="a@example.org", rcpt="b@example.net"):
    assert s.cmd(f"MAIL FROM:<{sender}>")[0] == 250
    assert s.cmd(f"RCPT TO:<{rcpt}>")[0] == 250
    assert s.cmd("DATA")[0] == 354
    s.send(b"Subject: t\r\n\r\nhello\r\n.\r\n")
    code, lines = s.reply()
    assert code == 250, lines
    return lines[0].rsplit(" ", 1)[-1]


def spooled_message(spool, name):
    data = open(os.path.join(spool, name), "rb").read()
    return data.split(b"BODY\n", 1)[1]


# ------------------------------------------------------------------- BDAT

def test_bdat_octets_are_never_read_as_commands(smap_table, spool, smap):
    """CHUNKING is not offered: BDAT ends the session, and the chunk that
    follows it is never a source of commands."""
    s = smap(smap_table(spool)).smtp
    ehlo = greet(s)
    assert not any("CHUNKING" in line for line in ehlo)
    chunk = (b"RSET\r\nMAIL FROM:<smuggled@attacker.example>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\n"
             b"smuggled\r\n.\r\n")
    s.send(f"BDAT {len(chunk)} LAST\r\n".encode() + chunk)
    code, lines = s.reply()
    assert code == 554 and "BDAT" in lines[0], lines
    assert s.closed()
    assert spool_files(spool) == []


def test_bdat_alone_ends_the_session_too(smap_table, spool, smap):
    s = smap(smap_table(spool)).smtp
    greet(s)
    assert s.cmd("BDAT 10")[0] == 554
    assert s.closed()


# ---------------------------------------------------- spam database senders

@pytest.mark.parametrize("sender", ['"spammer"@spam.example', '"spam\\mer"@spam.example', "SPAMMER@Spam.Example",
                                    '"SPAMMER"@spam.example.'])
def test_spam_database_refuses_every_spelling_of_a_listed_sender(smap_table, spool, smap, tmp_path, sender):
    db = tmp_path / "spamdb"
    db.write_text("spammer@spam.example\n")
    s = smap(smap_table(spool, f"smap: spam-database {db}\n")).smtp
    greet(s)
    code, lines = s.cmd(f"MAIL FROM:<{sender}>")
    assert code == 554 and lines[0].startswith("554 5.7.1"), lines


def test_spam_database_lets_other_senders_of_the_domain_pass(smap_table, spool, smap, tmp_path):
    db = tmp_path / "spamdb"
    db.write_text("spammer@spam.example\n")
    s = smap(smap_table(spool, f"smap: spam-database {db}\n")).smtp
    greet(s)
    assert s.cmd('MAIL FROM:<"spammer2"@spam.example>')[0] == 250


# ------------------------------------------------------------ the Received

def received_tokens(value):
    """The words of a Received field outside its comments (RFC 5322 3.2.2:
    comments nest, a quoted-pair escapes), and the date after the last
    ';'.  Raises AssertionError for unbalanced comments."""
    words, depth, i, word = [], 0, 0, ""
    head, _, date = value.rpartition(";")
    while i < len(head):
        c = head[i]
        if c == "\\" and depth:
            i += 2
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            assert depth > 0, f"unbalanced ')' in {value!r}"
            depth -= 1
        elif not depth:
            if c.isspace():
                words.append(word)
                word = ""
            else:
                word += c
        i += 1
    assert depth == 0, f"unclosed comment in {value!r}"
    words.append(word)
    return [w for w in words if w], date.strip()


def check_received(msg_bytes, queue_id, from_word, by="test.example"):
    msg = email.message_from_bytes(msg_bytes, policy=email.policy.default)
    assert msg.defects == [], msg.defects
    assert msg["Subject"] == "t"   # the header after Received is still a header
    received = msg.get_all("Received")
    assert len(received) == 1
    words, date = received_tokens(str(received[0]))
    assert words == ["from", from_word, "by", by, "with", "ESMTP", "id", queue_id, "for", "<b@example.net>"], words
    assert email.utils.parsedate_to_datetime(date) is not None
    return str(received[0])


@pytest.mark.parametrize("helo", ["x;y(z", "a)b", 'q"uote\\', "[999.1.1.1]", "-dash.example", "_under"])
def test_received_header_of_a_hostile_helo_parses(smap_table, spool, smap, helo):
    s = smap(smap_table(spool)).smtp
    greet(s, helo)
    qid = send_message(s)
    [name] = spool_files(spool)
    text = check_received(spooled_message(spool, name), qid, "[127.0.0.1]")
    # The client's word is kept, quoted in a comment, for the postmaster.
    assert "helo=" in text
    assert "via" not in text.split()


@pytest.mark.parametrize("helo, word", [("client.example", "client.example"), ("[127.0.0.1]", "[127.0.0.1]"),
                                        ("Client.Example", "Client.Example")])
def test_received_header_keeps_a_valid_helo_as_from(smap_table, spool, smap, helo, word):
    s = smap(smap_table(spool)).smtp
    greet(s, helo)
    qid = send_message(s)
    [name] = spool_files(spool)
    text = check_received(spooled_message(spool, name), qid, word)
    assert "helo=" not in text and "[127.0.0.1]" in text


def test_received_header_tags_an_ipv6_client(smap_table, spool, smap):
    s = smap(smap_table(spool), source="::1").smtp
    greet(s)
    qid = send_message(s)
    [name] = spool_files(spool)
    text = check_received(spooled_message(spool, name), qid, "client.example")
    assert "[IPv6:::1]" in text


# ------------------------------------------------------ AUTH= and literals

@pytest.fixture
def auth_smap(smap_table, spool, smap, tmp_path):
    import hashlib
    pw = tmp_path / "passwords"
    pw.write_text(f"alice:{hashlib.md5(b'wonderland').hexdigest()}\n")
    os.chmod(pw, 0o600)
    return lambda: smap(smap_table(spool, f"smap: auth plain\nsmap: auth-requires-tls no\nsmap: md5file {pw}\n")).smtp


@pytest.mark.parametrize("param", ["AUTH=<>", "AUTH=alice@example.org", "AUTH=al+2Bice@example.org", "auth=<>"])
def test_auth_parameter_is_accepted_when_auth_is_offered(auth_smap, spool, param):
    s = auth_smap()
    assert any(line.startswith("250-AUTH") or line.startswith("250 AUTH") for line in greet(s))
    code, lines = s.cmd(f"MAIL FROM:<a@example.org> {param}")
    assert code == 250, lines


def test_auth_parameter_keeps_its_syntax(auth_smap):
    s = auth_smap()
    greet(s)
    assert s.cmd("MAIL FROM:<a@example.org> AUTH=")[0] == 501
    assert s.cmd("MAIL FROM:<a@example.org> AUTH=a+zzb@example.org")[0] == 501


def test_auth_parameter_without_auth_offered_is_unsupported(smap_table, spool, smap):
    s = smap(smap_table(spool)).smtp
    greet(s)
    assert s.cmd("MAIL FROM:<a@example.org> AUTH=<>")[0] == 555


@pytest.mark.parametrize("literal, ok", [("[999.1.1.1]", False), ("[1.2.3]", False),
                                         ("[IPv6:1:2:3:4:5:6:7:8:9]", False), ("[ipv6:::1]", True),
                                         ("[IPv6:::1]", True), ("[IPV6:2001:db8::1]", True),
                                         ("[192.0.2.1]", True), ("[01.2.3.4]", False), ("[IPv6:1.2.3.4]", False)])
def test_address_literals_one_rule_for_mail_and_rcpt(smap_table, spool, smap, literal, ok):
    s = smap(smap_table(spool, "smap: relay-hosts 127.0.0.1\n")).smtp
    greet(s)
    code, lines = s.cmd(f"MAIL FROM:<a@{literal}>")
    assert (code == 250) == ok, lines
    if not ok:
        assert code == 501 and "address literal" in lines[0], lines
        assert s.cmd("MAIL FROM:<a@example.org>")[0] == 250
    code, lines = s.cmd(f"RCPT TO:<b@{literal}>")
    assert (code == 250) == ok, lines
    if not ok:
        assert code == 501 and "address literal" in lines[0], lines


# ------------------------------------------- AUTH failures across sessions

def _plain(user, password):
    import base64
    return base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode()).decode()


def test_auth_guesses_from_parallel_connections_stop_at_the_limit(daemon, tmp_path):
    import hashlib
    import socket
    import threading
    from support.smtp import Smtp
    pw = tmp_path / "passwords"
    pw.write_text(f"alice:{hashlib.md5(b'wonderland').hexdigest()}\n")
    os.chmod(pw, 0o600)
    d = daemon(f"smap: auth plain\nsmap: auth-requires-tls no\nsmap: md5file {pw}\nsmap: auth-failures-max 10\n"
               "smap: maxchildren 30\nsmap: minspare 12\nsmap: maxspare 20\nsmap: maxperhost 20\n")
    d.wait_idle(12, at_least=True)
    codes, lock = [], threading.Lock()

    def guesser(n):
        s = d.connect()
        greet(s)
        for i in range(20):   # 10 connections x 20 guesses: 200
            code, lines = s.cmd(f"AUTH PLAIN {_plain('alice', f'guess-{n}-{i}')}")
            with lock:
                codes.append(code)
        s.cmd("QUIT")
    threads = [threading.Thread(target=guesser, args=(n,)) for n in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(codes) == 200 and set(codes) <= {535, 454}, codes
    # At the limit, give or take the guesses already in flight in the
    # other connections when it was reached.
    assert 10 <= codes.count(535) < 10 + 10, codes
    d.syslog.wait(r"AUTH refused: \d+ AUTH failures from this address in 600s \(auth-failures-max 10\)")
    # The right password from that address is refused too, for now (454,
    # never 535: nothing was checked); from another address it works.
    s = d.connect()
    greet(s)
    assert s.cmd(f"AUTH PLAIN {_plain('alice', 'wonderland')}")[0] == 454
    other = Smtp(socket.create_connection(("127.0.0.1", d.port), source_address=("127.0.0.2", 0), timeout=30))
    greet(other)
    assert other.cmd(f"AUTH PLAIN {_plain('alice', 'wonderland')}")[0] == 235


# ------------------------------------------------ slow clients and stress

def _idle_connections(port, sources, each):
    """`each` connections from every source address, left silent; connect
    without waiting (most wait in the listen backlog)."""
    import socket
    out = []
    for src in sources:
        for _ in range(each):
            s = socket.socket()
            s.bind((src, 0))
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            out.append(s)
    return out


def test_a_slow_client_flood_leaves_room_for_a_real_client(daemon):
    """300 silent connections from 30 addresses of one /24 against 50
    children: maxpernet (30 by default) keeps the flood to 30 sessions,
    and a client from another network is served at once."""
    import socket
    import time
    from support.smtp import Smtp
    d = daemon("smap: maxchildren 50\n")
    flood = _idle_connections(d.port, [f"127.0.0.{i}" for i in range(1, 31)], 10)
    try:
        t0 = time.monotonic()
        s = Smtp(socket.create_connection(("127.0.0.1", d.port), source_address=("127.0.1.1", 0), timeout=30))
        greet(s)
        send_message(s)
        assert time.monotonic() - t0 < 10
        d.syslog.wait(r"refused: too many connections from this network \(maxpernet 30\)")
        from smapd.prefork.scoreboard import BUSY, STOPPING
        from support.programs import wait_for
        # Children still sending a 421 count as busy for an instant: once
        # the refusals are done, the flood holds its network's 30, beside
        # the real client's own session.
        wait_for(lambda: d.count(BUSY) + d.count(STOPPING) <= 30 + 1, what="the flood to hold at most 30 children")
    finally:
        for c in flood:
            c.close()


def test_under_stress_idle_sessions_get_the_short_time_out(daemon):
    import time
    d = daemon("smap: maxchildren 10\nsmap: minspare 2\nsmap: maxspare 10\nsmap: maxperhost 100\n"
               "smap: maxpernet 100\nsmap: stress-timeout 2\n")
    idle = [d.connect() for _ in range(9)]
    for s in idle:
        assert s.reply()[0] == 220   # in a session, then silent
    d.syslog.wait(r"stress: \d+ of 10 children busy")
    t0 = time.monotonic()
    for s in idle:
        code, lines = s.reply()
        assert code == 421 and "timeout exceeded (under stress)" in lines[-1], lines
    # The short limit (2 s, seen within a second), not the 300 s of timeout.
    assert time.monotonic() - t0 < 8
    d.syslog.wait(r"stress over: \d+ of 10 children busy")


# ------------------------------------------------------------------ logs

def test_one_queue_id_from_connect_to_the_message(smap_table, spool, smap):
    p = smap(smap_table(spool))
    s = p.smtp
    greet(s)
    qid = send_message(s)
    assert s.cmd("QUIT")[0] == 221
    p.wait()
    log = p.log
    assert re.search(rf"connect host=\S+ id={qid}$", log, re.M), log
    assert re.search(rf"host=\S+ bytes=\d+ from=<a@example.org> to=<b@example.net> nrcpt=1 id={qid}$", log, re.M)
    [name] = spool_files(spool)
    assert name == "sma" + qid and f" id {qid}\n" in spooled_message(spool, name).decode()
    # The session's end is a disconnect; exiting is for a process.
    assert re.search(rf"disconnect host=\S+ messages=1 bytes=\d+ id={qid}$", log, re.M), log
    assert "exiting host=" not in log


def test_a_refusal_line_names_code_id_sender_and_helo(smap_table, spool, smap, tmp_path):
    db = tmp_path / "spamdb"
    db.write_text("spammer@spam.example\n")
    p = smap(smap_table(spool, f"smap: spam-database {db}\n"))
    s = p.smtp
    greet(s, "helo.example")
    assert s.cmd("MAIL FROM:<spammer@spam.example>")[0] == 554
    assert s.cmd("MAIL FROM:<a@example.org>")[0] == 250
    assert s.cmd("RCPT TO:<b@[999.1.1.1]>")[0] == 501
    s.cmd("QUIT")
    p.wait()
    log = p.log
    [connect] = re.findall(r"connect host=\S+ id=(\S+)$", log, re.M)
    assert re.search(r"refused: sender in the spam database \(\S+:1: spammer@spam\.example\); code=554 5\.7\.1 "
                     rf"id={connect} from=<spammer@spam\.example> helo=<helo\.example>$", log, re.M), log
    assert re.search(rf"refused: recipient: \[999\.1\.1\.1\] is not an address literal; code=501 5\.1\.3 id={connect} "
                     r"from=<a@example\.org> helo=<helo\.example>$", log, re.M), log


@pytest.mark.parametrize("stage, commands", [("CONNECT", []), ("EHLO", ["EHLO c.example"]),
                                             ("RCPT", ["EHLO c.example", "MAIL FROM:<a@example.org>",
                                                       "RCPT TO:<b@example.net>"]),
                                             ("DATA", ["EHLO c.example", "MAIL FROM:<a@example.org>",
                                                       "RCPT TO:<b@example.net>", "DATA"])])
def test_lost_connection_names_the_stage(smap_table, spool, smap, stage, commands):
    p = smap(smap_table(spool))
    s = p.smtp
    assert s.reply()[0] == 220
    for c in commands:
        assert s.cmd(c)[0] in (250, 354)
    if stage == "DATA":
        s.send(b"Subject: half a message\r\n")
    p.wait()
    assert re.search(rf"lost connection after {stage} id=\S+$", p.log, re.M), p.log
    assert spool_files(spool) == []
