"""smapd's SMTP hand-off (`mta smtp:HOST:PORT`) into a real Postfix smtpd
on loopback: a client sends to smap (inetd mode, jailed), smapd (as
nobody) speaks SMTP to Postfix, whose virtual(8) delivers into Maildirs.
Each recipient's reply counts: a 5xx is bounced to the sender as an RFC
3464 report, the others are delivered once; an MTA that cannot be
reached leaves the message in the spool for a retry."""

import email
import grp
import os
import re
import signal
import subprocess

import pytest

from support.programs import command, free_port, make_spool, nobody_ids, wait_for
from support.smtp import InetdSmap
from postfix import Postfix
from test_smapd_postfix import MESSAGE, send

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="smap and smapd drop to nobody")


@pytest.fixture
def smtpd_postfix(tmp_path):
    """A private Postfix with an smtpd on 127.0.0.1 that refuses unknown
    mailboxes at RCPT (550 5.1.1), as a production Postfix does."""
    instance = Postfix(tmp_path, smtpd_port=True, main_cf={"smtpd_reject_unlisted_recipient": "yes"})
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


def table_for(public_tmp, loopback_dns, mta):
    spool = make_spool(public_tmp / "spool")
    group = grp.getgrgid(nobody_ids()[1]).gr_name
    table = public_tmp / "netperm-table"
    table.write_text(
        f"smap, smapd: directory {spool}\nsmap, smapd: userid nobody\nsmap, smapd: groupid {group}\n"
        f"smap: hostname smap.example.test\nsmap: resolver 127.0.0.1:{loopback_dns}\nsmap: maxrecip 200\n"
        "smap: relay-domain example.net example.org\n"
        f"smapd: mta {mta}\nsmapd: wakeup 2\nsmapd: retry-max 2\n")
    table.chmod(0o644)
    return spool, table


def start_smapd(public_tmp, table):
    log = open(public_tmp / "smapd.log", "a+b")
    return subprocess.Popen([command("smapd"), "-d", "--config", str(table)], stdout=log, stderr=log), log


def stop_smapd(smapd, log):
    smapd.send_signal(signal.SIGTERM)
    smapd.wait(20)
    log.seek(0)
    text = log.read().decode()
    print(text)  # shown when the test fails
    return text


def test_smtp_handoff_byte_exact_with_a_bounce_for_the_refused_recipient(smtpd_postfix, public_tmp, loopback_dns):
    postfix = smtpd_postfix
    spool, table = table_for(public_tmp, loopback_dns, f"smtp:127.0.0.1:{postfix.smtpd_port}")
    good = ["bob@example.net", "carol@example.net"]
    many = [f"user{i}@example.net" for i in range(150)]
    postfix.add_mailbox("alice@example.org", *good, *many)
    ids = [send(InetdSmap(str(table)), "alice@example.org", [good[0], "nosuch@example.net", good[1]], MESSAGE),
           send(InetdSmap(str(table)), "alice@example.org", many, b"Subject: many\r\n\r\nto 150\r\n")]
    smapd, log = start_smapd(public_tmp, table)
    try:
        for r in good:
            [msg] = postfix.wait_delivered(r, 1)
            # Byte-exact: the body as the client sent it, dot-unstuffed, LF
            # line ends in the Maildir; smap's Received header first.
            assert msg.endswith(MESSAGE.replace(b"\r\n", b"\n").split(b"\n\n", 1)[1])
            assert b"\nFrom: Alice <alice@example.org>\nSubject: through postfix\n" in msg
            assert re.search(rb"\nReceived: from client\.example\.test \(client\.example\.test \[127\.0\.0\.1\]\)\n"
                             rb"\tby smap\.example\.test \(smap, smapd [0-9.]+\) with ESMTP id " + ids[0].encode(),
                             msg)
            assert b"Return-Path: <alice@example.org>" in msg
        for r in many:
            [msg] = postfix.wait_delivered(r, 1)
            assert msg.endswith(b"\n\nto 150\n")
        # The refused recipient: one report in the sender's Maildir.
        [bounce] = postfix.wait_delivered("alice@example.org", 1)
        report = email.message_from_bytes(bounce)
        assert report.get_content_type() == "multipart/report"
        assert report.get_param("report-type") == "delivery-status"
        _text, status, headers = report.get_payload()
        [per_rcpt] = status.get_payload()[1:]
        assert per_rcpt["Final-Recipient"] == "rfc822; nosuch@example.net"
        assert per_rcpt["Action"] == "failed" and per_rcpt["Status"] == "5.1.1"
        assert per_rcpt["Diagnostic-Code"].startswith("smtp; 550 5.1.1 <nosuch@example.net>")
        assert "Subject: through postfix" in headers.get_payload()
        assert b"Return-Path: <>" in bounce
        wait_for(lambda: not any(f.startswith("sma") for f in os.listdir(spool)), what="the spool to drain")
        assert os.listdir(spool / "bad") == []
    finally:
        text = stop_smapd(smapd, log)
    assert f"mta smtp:127.0.0.1:{postfix.smtpd_port}" in text
    assert f"id={ids[0]} from=<alice@example.org> nrcpt=2 sent" in text
    # 100 recipients per transaction, as on the sendmail path.
    assert f"id={ids[1]} from=<alice@example.org> nrcpt=100 sent" in text
    assert f"id={ids[1]} from=<alice@example.org> nrcpt=50 sent" in text
    assert re.search(rf"id={ids[0]} from=<alice@example\.org> to=<nosuch@example\.net> failed: 550 5\.1\.1 .*"
                     rf"bounced to <alice@example\.org> \(DSN id=\w+\)", text)
    # Each good recipient once: no duplicates.
    for r in good:
        assert len(postfix.mailbox(r)) == 1


def test_an_mta_that_cannot_be_reached_defers_and_loses_nothing(public_tmp, loopback_dns):
    port = free_port()  # nothing listens there: the MTA is down
    spool, table = table_for(public_tmp, loopback_dns, f"smtp:127.0.0.1:{port}")
    qid = send(InetdSmap(str(table)), "alice@example.org", ["bob@example.net"], MESSAGE)
    smapd, log = start_smapd(public_tmp, table)
    try:
        wait_for(lambda: b"deferred" in open(public_tmp / "smapd.log", "rb").read(), what="the deferral")
    finally:
        text = stop_smapd(smapd, log)
    assert re.search(rf"id={qid} deferred: cannot connect to smtp:127\.0\.0\.1:{port}: .*refused", text), text
    assert os.listdir(spool / "bad") == [] and os.path.exists(spool / f"sma{qid}")


def test_lmtp_handoff_into_dovecot_counts_each_recipients_reply(public_tmp, loopback_dns):
    """`mta lmtp:unix:PATH` into a real Dovecot LMTP: after DATA, one reply
    per accepted recipient (RFC 2033); a recipient Dovecot does not know
    is refused at RCPT and bounced to the sender."""
    from dovecot import Dovecot
    with Dovecot(imap_port=free_port(), pop3_port=free_port(), lmtp=True) as dc:
        spool, table = table_for(public_tmp, loopback_dns, f"lmtp:unix:{dc.lmtp_socket}")
        me = f"{dc.user}@example.org"
        qid = send(InetdSmap(str(table)), me, [me, f"{dc.user}@example.net", "nosuch@example.org"], MESSAGE)
        smapd, log = start_smapd(public_tmp, table)
        new = os.path.join(dc.maildir(), "new")
        try:
            wait_for(lambda: os.path.isdir(new) and len(os.listdir(new)) == 3, timeout=30,
                     what="two copies and a bounce in Dovecot's Maildir")
            wait_for(lambda: not any(f.startswith("sma") for f in os.listdir(spool)), what="the spool to drain")
        finally:
            text = stop_smapd(smapd, log)
        messages = [open(os.path.join(new, f), "rb").read() for f in os.listdir(new)]
        reports = [m for m in messages if b"multipart/report" in m]
        copies = [m for m in messages if m not in reports]
        assert len(reports) == 1 and len(copies) == 2
        for m in copies:
            assert m.endswith(MESSAGE.replace(b"\r\n", b"\n").split(b"\n\n", 1)[1])
        [per_rcpt] = email.message_from_bytes(reports[0]).get_payload()[1].get_payload()[1:]
        assert per_rcpt["Final-Recipient"] == "rfc822; nosuch@example.org"
        assert per_rcpt["Status"].startswith("5.")
        assert f"id={qid} from=<{me}> nrcpt=2 sent (lmtp:unix:{dc.lmtp_socket}: 250 " in text
        assert os.listdir(spool / "bad") == []


def test_a_4xx_recipient_stays_in_the_spool_and_the_others_are_sent_once(tmp_path, public_tmp, loopback_dns):
    busy = "450 4.2.1 mailbox busy, try later"
    postfix = Postfix(tmp_path, smtpd_port=True, main_cf={
        "smtpd_recipient_restrictions": f"check_recipient_access inline:{{{{later@example.net={busy}}}}}"})
    postfix.start()
    try:
        spool, table = table_for(public_tmp, loopback_dns, f"smtp:127.0.0.1:{postfix.smtpd_port}")
        postfix.add_mailbox("alice@example.org", "bob@example.net", "later@example.net")
        qid = send(InetdSmap(str(table)), "alice@example.org", ["bob@example.net", "later@example.net"], MESSAGE)
        smapd, log = start_smapd(public_tmp, table)
        try:
            postfix.wait_delivered("bob@example.net", 1)
            wait_for(lambda: b"deferred" in open(public_tmp / "smapd.log", "rb").read(), what="the deferral")
        finally:
            text = stop_smapd(smapd, log)
        assert re.search(rf"id={qid} deferred: <later@example\.net>: 450 4\.2\.1 .*mailbox busy", text), text
        head = open(spool / f"sma{qid}", "rb").read().split(b"\nBODY\n", 1)[0]
        assert head.splitlines() == [b"FROM <alice@example.org>", b"ATTR client-addr=127.0.0.1",
                                     b"ATTR client-name=client.example.test", b"ATTR helo=client.example.test",
                                     b"ATTR proto=ESMTP", b"SENT <bob@example.net>", b"RCPT <later@example.net>"]
        assert postfix.mailbox("later@example.net") == [] and postfix.mailbox("alice@example.org") == []
    finally:
        postfix.stop()


def test_one_connection_carries_several_files(smtpd_postfix, public_tmp, loopback_dns):
    """A delivery child sends the due files through one connection, a
    transaction each: twelve messages, one child, one smtpd connection."""
    postfix = smtpd_postfix
    spool, table = table_for(public_tmp, loopback_dns, f"smtp:127.0.0.1:{postfix.smtpd_port}")
    with open(table, "a") as f:
        f.write("smapd: maxchildren 1\n")
    postfix.add_mailbox("alice@example.org", "bob@example.net")
    ids = [send(InetdSmap(str(table)), "alice@example.org", ["bob@example.net"],
                f"Subject: n{i}\r\n\r\nmessage {i}\r\n".encode()) for i in range(12)]
    smapd, log = start_smapd(public_tmp, table)
    try:
        messages = postfix.wait_delivered("bob@example.net", 12)
        wait_for(lambda: not any(f.startswith("sma") for f in os.listdir(spool)), what="the spool to drain")
    finally:
        text = stop_smapd(smapd, log)
    assert sorted(m.rsplit(b"\n\n", 1)[1] for m in messages) == sorted(f"message {i}\n".encode() for i in range(12))
    assert all(f"id={q} from=<alice@example.org> nrcpt=1 sent" in text for q in ids)
    connects = re.findall(r"postfix/smtpd\[\d+\]: connect from", postfix.log())
    assert len(connects) == 1, postfix.log()
