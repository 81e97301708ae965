"""Self-test of the private Postfix instance (tests/postfix.py)."""

import os
import re
import smtplib
import subprocess

from postfix import Postfix, postfix  # noqa: F401  (postfix is the fixture)

SENDER = "alice@example.test"
RECIPIENTS = ["bob@example.test", "carol@example.org"]

FIRST = (b"From: Alice <alice@example.test>\n"
         b"To: bob@example.test, carol@example.org\n"
         b"Subject: first, with an 8-bit body\n"
         b"Date: Mon, 2 Jan 2023 10:00:00 +0000\n"
         b"Message-ID: <first@example.test>\n"
         b"MIME-Version: 1.0\n"
         b"Content-Type: text/plain; charset=utf-8\n"
         b"Content-Transfer-Encoding: 8bit\n"
         b"\n"
         b"Gr\xc3\xbc\xc3\x9fe aus K\xc3\xb6ln, \xe2\x82\xac 5\n"
         b".\n"
         b"..two dots, then a line that is just a dot (above), -oi keeps it\n"
         b"raw bytes: \x80\xfe\xff\n"
         b"\n"
         b"From the start of a line\n"
         b"last line\n")

SECOND = (b"From: Alice <alice@example.test>\n"
          b"To: bob@example.test, carol@example.org\n"
          b"Subject: second\n"
          b"Date: Mon, 2 Jan 2023 10:00:01 +0000\n"
          b"Message-ID: <second@example.test>\n"
          b"\n"
          b"second body\n"
          b".\n"
          b"  indented line with trailing spaces  \n")

ADDED_BY_POSTFIX = {"return-path", "x-original-to", "delivered-to", "received"}


def split_message(data):
    headers, sep, body = data.partition(b"\n\n")
    assert sep, f"no header/body separator in {data!r}"
    return headers + b"\n", body


def prepended_fields(prefix):
    """The header field names of `prefix` (unfolded)."""
    names = []
    for line in prefix.decode("ascii").splitlines():
        if line[:1] in (" ", "\t"):
            assert names, f"continuation line first in {prefix!r}"
            continue
        names.append(line.split(":", 1)[0].lower())
    return names


def check_delivered(delivered, message, recipient):
    """Postfix only prepends its trace headers: headers and body are the original's, byte for byte."""
    headers, body = split_message(message)
    got_headers, got_body = split_message(delivered)
    assert got_body == body
    assert got_headers.endswith(headers), got_headers
    prefix = got_headers[:-len(headers)]
    assert set(prepended_fields(prefix)) <= ADDED_BY_POSTFIX, prefix
    assert f"Return-Path: <{SENDER}>\n".encode() in prefix
    assert f"Delivered-To: {recipient}\n".encode() in prefix


def test_sendmail_delivers_byte_exact_into_each_recipients_maildir(postfix):
    for message in (FIRST, SECOND):
        p = subprocess.run([*postfix.sendmail_command, "-oi", "-f", SENDER, "--", *RECIPIENTS],
                           input=message, capture_output=True, timeout=30)
        assert p.returncode == 0, p.stderr
    for rcpt in RECIPIENTS:
        delivered = postfix.wait_delivered(rcpt, 2)
        assert len(delivered) == 2, delivered
        # One Maildir per recipient, under the instance's Maildir root.
        assert os.path.isdir(os.path.join(postfix.maildir_root, rcpt, "new"))
        by_subject = {re.search(rb"^Subject: (\w+)", m, re.M).group(1): m for m in delivered}
        check_delivered(by_subject[b"first"], FIRST, rcpt)
        check_delivered(by_subject[b"second"], SECOND, rcpt)
    assert "Mail queue is empty" in postfix.queue()
    postfix.flush()


def test_smtpd_delivery_and_nothing_left_after_stop(tmp_path):
    had_main_cf = os.path.exists("/etc/postfix/main.cf")
    instance = Postfix(tmp_path, smtpd_port=True)
    instance.start()
    try:
        master = instance.master_pid
        assert master in instance.processes()
        with smtplib.SMTP("127.0.0.1", instance.smtpd_port, timeout=30) as smtp:
            smtp.sendmail("sender@example.net", ["Dave@Example.NET"], SECOND.replace(b"\n", b"\r\n"))
        [delivered] = instance.wait_delivered("dave@example.net", 1)
        assert split_message(delivered)[1] == split_message(SECOND)[1]
        assert b"Delivered-To: Dave@Example.NET\n" in delivered
    finally:
        instance.stop()
    assert instance.processes() == []
    assert not os.path.exists(f"/proc/{master}")
    # The tree (log, Maildirs) is now in tmp_path; nothing of the system instance changed.
    assert instance.root == str(tmp_path / "postfix") and not os.path.islink(instance.root)
    assert "stopping the Postfix mail system" in instance.log()
    assert instance.mailbox("dave@example.net") == [delivered]
    assert os.path.exists("/etc/postfix/main.cf") == had_main_cf
