"""The whole chain with the real MTA: a client sends to smap (inetd mode,
jailed), smapd (as nobody) hands the spool to a private Postfix through
its own sendmail, and Postfix's virtual(8) delivers into Maildirs.  The
body arrives byte-exact, with smap's Received header added."""

import grp
import os
import re
import signal
import subprocess

import pytest

from support.programs import command, make_spool, nobody_ids, wait_for
from support.smtp import InetdSmap
from postfix import postfix, unprivileged_sendmail  # noqa: F401  (the fixture)

MESSAGE = (b"From: Alice <alice@example.org>\r\nSubject: through postfix\r\n\r\n"
           b"8-bit: gr\xc3\xbc\xc3\x9fe, \xe2\x82\xac\r\n.\r\n..leading dot\r\n" + b"W" * 998 + b"\r\nend\r\n")


def stuffed(message: bytes) -> bytes:
    return b"".join((b"." + line if line.startswith(b".") else line)
                    for line in message.splitlines(keepends=True))


def send(smap, sender, rcpts, message):
    s = smap.smtp
    assert s.reply()[0] == 220
    assert s.cmd("EHLO client.example.test")[0] == 250
    assert s.cmd(f"MAIL FROM:<{sender}>")[0] == 250
    s.send(b"".join(f"RCPT TO:<{r}>\r\n".encode() for r in rcpts))
    assert [s.reply()[0] for _ in rcpts] == [250] * len(rcpts)
    assert s.cmd("DATA")[0] == 354
    code, lines = s.cmd(stuffed(message) + b".\r\n")
    assert code == 250, lines
    assert s.cmd("QUIT")[0] == 221
    return lines[0].rsplit(" ", 1)[1]


@pytest.fixture
def unprivileged_submission(postfix):  # noqa: F811
    """Postfix's sendmail run by a user other than root honours -C only for
    a directory that the default main.cf lists in
    alternate_config_directories (a Postfix safety rule).  smapd runs as
    nobody, so the system main.cf names the test's instance for the
    test's duration, and is put back as it was afterwards."""
    with unprivileged_sendmail(postfix):
        yield postfix


def test_smap_smapd_postfix_byte_exact(unprivileged_submission, public_tmp, loopback_dns):
    postfix = unprivileged_submission
    spool = make_spool(public_tmp / "spool")
    group = grp.getgrgid(nobody_ids()[1]).gr_name
    table = public_tmp / "netperm-table"
    table.write_text(
        f"smap, smapd: directory {spool}\nsmap, smapd: userid nobody\nsmap, smapd: groupid {group}\n"
        f"smap: hostname smap.example.test\nsmap: resolver 127.0.0.1:{loopback_dns}\nsmap: maxrecip 200\n"
        "smap: relay-domain example.net example.org\n"
        f"smapd: sendmail /usr/sbin/sendmail -C {postfix.config_dir}\nsmapd: wakeup 2\n")
    table.chmod(0o644)
    rcpts_a = ["bob@example.net", "carol@example.net"]
    rcpts_b = [f"user{i}@example.net" for i in range(150)]  # two batches: 100, then 50
    postfix.add_mailbox("alice@example.org", *rcpts_a, *rcpts_b)
    ids = [send(InetdSmap(str(table)), "alice@example.org", rcpts_a, MESSAGE),
           send(InetdSmap(str(table)), "alice@example.org", rcpts_b, b"Subject: hundred\r\n\r\nto 100\r\n")]

    log = open(public_tmp / "smapd.log", "a+b")
    smapd = subprocess.Popen([command("smapd"), "-d", "--config", str(table)], stdout=log, stderr=log)
    try:
        for r in rcpts_a:
            [msg] = postfix.wait_delivered(r, 1)
            head, body = msg.split(b"\n\n", 1)
            assert body == MESSAGE.split(b"\r\n\r\n", 1)[1].replace(b"\r\n", b"\n")
            assert msg.endswith(MESSAGE.replace(b"\r\n", b"\n").split(b"\n\n", 1)[1])
            assert b"\nFrom: Alice <alice@example.org>\nSubject: through postfix\n" in head + b"\n"
            assert re.search(rb"\nReceived: from client\.example\.test \(client\.example\.test \[127\.0\.0\.1\]\)\n"
                             rb"\tby smap\.example\.test \(smap, smapd [0-9.]+\) with ESMTP id " + ids[0].encode(),
                             head)
            assert b"Delivered-To: " + r.encode() in head and b"Return-Path: <alice@example.org>" in head
        for r in rcpts_b:
            [msg] = postfix.wait_delivered(r, 1)
            # (Postfix adds the Date, From and Message-ID this message lacks.)
            assert msg.endswith(b"\n\nto 100\n") and b"\nSubject: hundred\n" in msg
        wait_for(lambda: not any(f.startswith("sma") for f in os.listdir(spool)), what="the spool to drain")
        log.seek(0)
        text = log.read().decode()
        assert f"id={ids[1]} from=<alice@example.org> nrcpt=100 sent" in text
        assert f"id={ids[1]} from=<alice@example.org> nrcpt=50 sent" in text
    finally:
        smapd.send_signal(signal.SIGTERM)
        smapd.wait(20)
        log.seek(0)
        print(log.read().decode())  # shown when the test fails
