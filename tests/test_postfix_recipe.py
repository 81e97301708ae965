"""The recipe of smap(8) and smapd(8), "POSTFIX BEHIND SMAP", run as
written: etc/postfix/main.cf and etc/postfix/master.cf go into a private
Postfix (only the re-injection port differs: a free one instead of
10025), smap -daemon takes the clients, smapd hands off by SMTP with
`mta smtp:127.0.0.1:PORT`.  swaks is the client, from a loopback address
of its own (127.0.0.44, outside.example.test in the test DNS), so that
what Postfix says of the client can only have come from smapd.

What a user sees: the message byte-exact in the Maildir, Postfix's
Received header and log naming the original client and its HELO
(XCLIENT), Postfix's own client rules refusing that client (XCLIENT: the
refusal becomes a bounce), and with only XFORWARD offered, the log still
naming it."""

import email
import grp
import os
import re
import subprocess

import pytest

from postfix import Postfix, recipe_main_cf, recipe_master_cf
from support.daemons import Daemon
from support.programs import free_port, nobody_ids, wait_for
from test_smapd_smtp import start_smapd, stop_smapd

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="smap and smapd drop to nobody")

OUTSIDE, OUTSIDE_NAME, HELO = "127.0.0.44", "outside.example.test", "helo.outside.example"
#: A client with no name in the test DNS, refused by Postfix's own rule.
REFUSED = "127.0.0.45"


class Recipe:
    """Postfix as the recipe sets it up, smap -daemon in front, smapd
    between them (started by start_smapd())."""

    def __init__(self, tmp_path, public_tmp, dns_port, xclient=True, main_cf=None, smapd_extra="", smap_extra=""):
        self.port = free_port()
        self.postfix = Postfix(tmp_path, main_cf=recipe_main_cf(**(main_cf or {})),
                               master_cf=recipe_master_cf(self.port, xclient))
        group = grp.getgrgid(nobody_ids()[1]).gr_name
        self.base = public_tmp
        self.smap = Daemon(public_tmp, dns_port,
                           f"smap: maxrecip 200\nsmapd: directory {public_tmp / 'spool'}\nsmapd: userid nobody\n"
                           f"smapd: groupid {group}\nsmapd: mta smtp:127.0.0.1:{self.port}\n"
                           f"smapd: wakeup 2\nsmapd: retry-max 2\n{smapd_extra}{smap_extra}")
        self.smapd = self.smapd_log = None

    def __enter__(self):
        self.postfix.start()
        self.smap.start()
        return self

    def start_smapd(self):
        self.smapd, self.smapd_log = start_smapd(self.base, self.smap.table)

    def stop_smapd(self):
        return stop_smapd(self.smapd, self.smapd_log)

    def __exit__(self, *exc):
        if self.smapd and self.smapd.poll() is None:
            self.stop_smapd()
        self.smap.stop()
        self.postfix.stop()

    def swaks(self, source, sender, recipients, data_file, *options):
        r = subprocess.run(["swaks", "--server", "127.0.0.1", "--port", str(self.smap.port),
                            "--local-interface", source, "--helo", HELO, "--from", sender,
                            "--to", ",".join(recipients), "--data", str(data_file), *options],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        return re.search(r"<-  250 2\.0\.0 Ok: queued as (\w+)", r.stdout).group(1)

    def drained(self):
        wait_for(lambda: not any(f.startswith("sma") for f in os.listdir(self.smap.spool)), timeout=30,
                 what="the spool to drain")
        assert os.listdir(self.smap.spool / "bad") == []


def test_the_recipe_end_to_end_with_xclient(tmp_path, public_tmp, loopback_dns):
    recipients = [f"user{i}@example.net" for i in range(150)]
    body = (b"8-bit: caf\xc3\xa9\r\n.\r\n" + b"x" * 998 + b"\r\n..two dots\r\nend")
    message = tmp_path / "message.eml"
    # swaks ends the data with CRLF.CRLF itself: the file has no final line end.
    # A bare address in a header: Postfix completes it for a local client
    # (local_header_rewrite_clients), and the client here is remote.
    message.write_bytes(b"From: Alice <alice@example.org>\r\nCc: carol\r\nSubject: the recipe\r\n\r\n" + body)
    with Recipe(tmp_path, public_tmp, loopback_dns) as r:
        r.postfix.add_mailbox("alice@example.org", *recipients)
        qid = r.swaks(OUTSIDE, "alice@example.org", recipients, message)
        head = open(r.smap.spool / f"sma{qid}", "rb").read().split(b"\nRCPT ", 1)[0]
        assert head.splitlines() == [b"FROM <alice@example.org>", f"ATTR client-addr={OUTSIDE}".encode(),
                                     f"ATTR client-name={OUTSIDE_NAME}".encode(), f"ATTR helo={HELO}".encode(),
                                     b"ATTR proto=ESMTP"]
        r.start_smapd()
        for rcpt in recipients:
            [msg] = r.postfix.wait_delivered(rcpt, 1)
            # Byte-exact: the file swaks sent (it dot-stuffs), LF line ends.
            assert msg.endswith(b"\nCc: carol\nSubject: the recipe\n\n" + body.replace(b"\r\n", b"\n") + b"\n")
            assert b"Message-Id:" not in msg   # nor completed as local mail (XFORWARD SOURCE=REMOTE)
            # Postfix's Received header names the client that talked to
            # smap, and its HELO, not smapd on 127.0.0.1.
            first = msg.split(b"\nReceived: ", 1)[1]
            assert first.startswith(f"from {HELO} ({OUTSIDE_NAME} [{OUTSIDE}])\n\tby postfix.example.test "
                                    f"(Postfix) with ESMTP id ".encode()), first[:200]
            assert f"\nReceived: from {HELO} ({OUTSIDE_NAME} [{OUTSIDE}])\n\tby test.example (smap, smapd".encode() in msg
        r.drained()
        log = r.postfix.log()
        text = r.stop_smapd()
    assert re.search(rf"postfix/smap/smtpd\[\d+\]: \w+: client={re.escape(OUTSIDE_NAME)}\[{re.escape(OUTSIDE)}\]",
                     log), log
    assert f"id={qid} from=<alice@example.org> nrcpt=100 sent" in text
    assert f"id={qid} from=<alice@example.org> nrcpt=50 sent" in text


def test_postfix_client_rules_judge_the_original_client(tmp_path, public_tmp, loopback_dns):
    """With XCLIENT, Postfix's check_client_access sees the address that
    talked to smap: it refuses 127.0.0.45, smapd bounces that message to
    its sender; a message from another client right after it, through
    the same delivery child, is delivered."""
    refuse = {"smtpd_client_restrictions": f"check_client_access inline:{{{{{REFUSED}=REJECT not from there}}}}"}
    message = tmp_path / "message.eml"
    message.write_bytes(b"From: alice@example.org\r\nSubject: who\r\n\r\nhello")
    with Recipe(tmp_path, public_tmp, loopback_dns, main_cf=refuse, smapd_extra="smapd: maxchildren 1\n") as r:
        r.postfix.add_mailbox("alice@example.org", "bob@example.net")
        refused = r.swaks(REFUSED, "alice@example.org", ["bob@example.net"], message)
        accepted = r.swaks(OUTSIDE, "alice@example.org", ["bob@example.net"], message)
        r.start_smapd()
        [bounce] = r.postfix.wait_delivered("alice@example.org", 1)
        [delivered] = r.postfix.wait_delivered("bob@example.net", 1)
        r.drained()
        text = r.stop_smapd()
        log = r.postfix.log()
    assert f"[{OUTSIDE}])\n\tby postfix.example.test".encode() in delivered
    report = email.message_from_bytes(bounce)
    assert report.get_content_type() == "multipart/report"
    [per_rcpt] = report.get_payload()[1].get_payload()[1:]
    assert per_rcpt["Final-Recipient"] == "rfc822; bob@example.net"
    assert per_rcpt["Status"] == "5.7.1"
    assert "not from there" in per_rcpt["Diagnostic-Code"]
    assert re.search(rf"id={refused} from=<alice@example\.org> to=<bob@example\.net> failed: 554 5\.7\.1 .*"
                     rf"not from there", text), text
    assert f"id={accepted} from=<alice@example.org> nrcpt=1 sent" in text
    assert re.search(rf"reject: RCPT from unknown\[{re.escape(REFUSED)}\]: 554 5\.7\.1 ", log), log
    # A connection per client (XCLIENT holds for the connection), and one
    # for the bounce (smapd's own message, no client to impersonate).
    assert len(re.findall(r"postfix/smap/smtpd\[\d+\]: connect from", log)) == 3, log
    assert "insufficient authorization" not in log and "deferred" not in text


def test_a_client_that_authenticated_to_smap_counts_as_authenticated_in_postfix(
        tmp_path, public_tmp, loopback_dns):
    """XCLIENT LOGIN: Postfix's permit_sasl_authenticated holds for a
    client that authenticated to smap (AUTH PLAIN), and only for it."""
    import hashlib
    secret = public_tmp / "passwords"
    secret.write_text(f"alice:{hashlib.md5(b'wonderland').hexdigest()}\n")
    secret.chmod(0o600)
    # 127.0.0.44 is not in mynetworks: it may send only when authenticated.
    # smapd's own bounces come from 127.0.0.1, which is.
    only_authenticated = {"mynetworks": "127.0.0.1/32",
                          "smtpd_relay_restrictions": "permit_mynetworks, permit_sasl_authenticated, reject"}
    message = tmp_path / "message.eml"
    message.write_bytes(b"From: alice@example.org\r\nSubject: auth\r\n\r\nhello")
    with Recipe(tmp_path, public_tmp, loopback_dns, main_cf=only_authenticated,
                smap_extra=f"smap: auth plain\nsmap: auth-requires-tls no\nsmap: md5file {secret}\n") as r:
        r.postfix.add_mailbox("alice@example.org", "bob@example.net", "carol@example.net")
        authenticated = r.swaks(OUTSIDE, "alice@example.org", ["bob@example.net"], message,
                                "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "wonderland")
        anonymous = r.swaks(OUTSIDE, "alice@example.org", ["carol@example.net"], message)
        head = open(r.smap.spool / f"sma{authenticated}", "rb").read().split(b"\nRCPT ", 1)[0]
        assert b"\nATTR proto=ESMTPA\nATTR login=alice" in head
        r.start_smapd()
        r.postfix.wait_delivered("bob@example.net", 1)
        [bounce] = r.postfix.wait_delivered("alice@example.org", 1)
        r.drained()
        text = r.stop_smapd()
    assert f"id={authenticated} from=<alice@example.org> nrcpt=1 sent" in text
    assert re.search(rf"id={anonymous} from=<alice@example\.org> to=<carol@example\.net> failed: 554 5\.7\.1 ", text)
    assert r.postfix.mailbox("carol@example.net") == []
    assert email.message_from_bytes(bounce).get_content_type() == "multipart/report"


def test_with_only_xforward_the_log_still_names_the_client(tmp_path, public_tmp, loopback_dns):
    message = tmp_path / "message.eml"
    message.write_bytes(b"From: alice@example.org\r\nCc: carol\r\nSubject: xforward\r\n\r\nhello")
    with Recipe(tmp_path, public_tmp, loopback_dns, xclient=False) as r:
        r.postfix.add_mailbox("bob@example.net")
        r.swaks(OUTSIDE, "alice@example.org", ["bob@example.net"], message)
        r.start_smapd()
        [msg] = r.postfix.wait_delivered("bob@example.net", 1)
        r.drained()
        log = r.postfix.log()
    # The client of record is smapd (XFORWARD changes no decision)...
    assert b"(localhost [127.0.0.1])\n\tby postfix.example.test" in msg
    # SOURCE=REMOTE: the headers are not completed as for local mail.
    assert b"\nCc: carol\nSubject: xforward\n" in msg and b"Message-Id:" not in msg
    # ...and the log names the original one.
    assert re.search(rf"postfix/smap/smtpd\[\d+\]: \w+: client=localhost\[127\.0\.0\.1\], "
                     rf"orig_client={re.escape(OUTSIDE_NAME)}\[{re.escape(OUTSIDE)}\]", log), log
