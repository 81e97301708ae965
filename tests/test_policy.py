"""smap's relay control and SMTP AUTH, through smap -daemon, as SMTP
clients see them: the open-relay battery from an outsider, from an
internal client and after AUTH; AUTH LOGIN and PLAIN with swaks over
STARTTLS against a password file in the reference format."""

import base64
import hashlib
import os
import re
import smtplib
import subprocess
import time

import pytest

from support.programs import command, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="smap -daemon binds and jails as root")

OURS = "ours.example"

# Each of these tries to make smap relay to a domain it does not serve.
TRICKS = [
    "user%other.example@ours.example",
    '"user@other.example"@ours.example',
    "@ours.example:user@other.example",
    "other.example!user@ours.example",
    "user@other.example@ours.example",
    "user@[192.0.2.1]",
    "user@other.example.",
    "user@OTHER.EXAMPLE",
    "user@ours.example.other.example",
    "user@other.example",
    '"user%other.example"@ours.example',
    "user%other.example@[127.0.0.1]",
    "user@[IPv6:2001:db8::1]",
    "user@ours.example@other.example",
    '"user@ours.example"@other.example',
    "user@sub.ours.example",
    "user%ours.example@other.example",
    '"user!other.example"@ours.example',
    "user@other.example%ours.example",
    "@other.example:user@ours.example",
    "user@localhost",
    "USER%OTHER.EXAMPLE@OURS.EXAMPLE",
    "user@ours.example..",
    "user@[ours.example]",
]
# Those of them an internal or authenticated client may use: valid addresses.
VALID = {
    "user%other.example@ours.example", '"user@other.example"@ours.example', "other.example!user@ours.example",
    "user@[192.0.2.1]", "user@other.example.", "user@OTHER.EXAMPLE", "user@ours.example.other.example",
    "user@other.example", '"user%other.example"@ours.example', "user%other.example@[127.0.0.1]",
    "user@[IPv6:2001:db8::1]", '"user@ours.example"@other.example', "user@sub.ours.example",
    "user%ours.example@other.example", '"user!other.example"@ours.example', "user@localhost",
    "USER%OTHER.EXAMPLE@OURS.EXAMPLE",
}
LOCAL = ["user@ours.example", "User@OURS.EXAMPLE", "user@ours.example.", "postmaster", "postmaster@ours.example"]


def rcpt_codes(d, recipients, login=None, tls_ctx=None):
    """RCPT TO replies for each recipient, in one session (RSET between)."""
    s = smtplib.SMTP("127.0.0.1", d.port, local_hostname="client.example.test", timeout=30)
    try:
        s.ehlo()
        if tls_ctx:
            s.starttls(context=tls_ctx)
            s.ehlo()
        if login:
            s.login(*login)
        out = {}
        for r in recipients:
            assert s.docmd("MAIL", "FROM:<sender@example.test>")[0] == 250
            out[r] = s.docmd("RCPT", f"TO:<{r}>")[0]
            s.rset()
        return out
    finally:
        s.close()


@pytest.fixture
def relay_daemon(daemon, pki, tmp_path):
    def start(extra=""):
        pw = tmp_path / "smtppass"
        pw.write_text("alice:" + hashlib.md5(b"wonderland").hexdigest() + "\n")
        pw.chmod(0o600)
        return daemon(f"smap: relay-domain {OURS} *.relay.example\nsmap: relay-hosts 10.0.0.0/8\n"
                      f"smap: ssl {pki.server_pem}\nsmap: auth login plain\nsmap: md5file {pw}\n"
                      f"smap: errors-max 100\nsmap: minspare 2\n" + extra)
    return start


def test_no_relay_trick_works_from_outside(relay_daemon):
    d = relay_daemon()
    codes = rcpt_codes(d, TRICKS)
    accepted = [r for r, c in codes.items() if c < 400]
    assert accepted == [], accepted
    assert len(TRICKS) >= 20
    assert re.search(r"refused: relay to <user@other\.example> denied", d.log())
    local = rcpt_codes(d, LOCAL + ["x@a.relay.example"])
    assert all(c == 250 for c in local.values()), local


def test_internal_clients_may_relay_valid_addresses(relay_daemon):
    d = relay_daemon("smap: relay-hosts 127.0.0.1\n")
    codes = rcpt_codes(d, TRICKS)
    assert {r for r, c in codes.items() if c == 250} == VALID, codes


def test_authenticated_clients_may_relay(relay_daemon, pki):
    d = relay_daemon()
    codes = rcpt_codes(d, TRICKS, login=("alice", "wonderland"), tls_ctx=pki.client_context())
    assert {r for r, c in codes.items() if c == 250} == VALID, codes
    d.syslog.wait(r"authenticated as alice \(PLAIN|LOGIN\)")
    assert "wonderland" not in d.log()


def test_auth_with_swaks_over_starttls(relay_daemon, pki):
    d = relay_daemon()
    for mech in ("LOGIN", "PLAIN"):
        r = subprocess.run(["swaks", "--server", f"127.0.0.1:{d.port}", "-tls", "--auth", mech,
                            "--auth-user", "alice", "--auth-password", "wonderland", "--from", "alice@ours.example",
                            "--to", "friend@far.away.example", "--helo", "client.example.test"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout
        assert "<~  235 2.7.0 Authentication successful" in r.stdout
    spooled = sorted(f for f in os.listdir(d.spool) if f.startswith("sma"))
    assert len(spooled) == 2
    for name in spooled:
        assert b" with ESMTPSA id " in (d.spool / name).read_bytes()


def test_auth_refused_on_a_plain_channel_and_tarpitted(relay_daemon, pki):
    d = relay_daemon()
    s = d.connect()
    assert s.reply()[0] == 220
    code, lines = s.cmd("EHLO client.example.test")
    assert not any("AUTH" in line for line in lines)  # not offered in clear
    assert s.cmd("AUTH PLAIN " + base64.b64encode(b"\0alice\0wonderland").decode())[0] == 538
    s.close()
    with smtplib.SMTP("127.0.0.1", d.port, local_hostname="client.example.test", timeout=30) as c:
        c.starttls(context=pki.client_context())
        c.ehlo()
        assert c.has_extn("auth") and c.esmtp_features["auth"].upper().split() == ["LOGIN", "PLAIN"]
        t0 = time.monotonic()
        code, _ = c.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0alice\0guess").decode())
        assert code == 535 and time.monotonic() - t0 >= 1.9  # the tarpit
        assert c.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0mallory\0wonderland").decode())[0] == 535
        assert c.docmd("AUTH", "LOGIN")[0] == 334
        assert c.docmd("*")[0] == 501  # cancelled
        code, _ = c.docmd("RCPT", "TO:<x@other.example>")
        assert code == 503
        assert c.docmd("MAIL", "FROM:<a@example.test>")[0] == 250
        assert c.docmd("RCPT", "TO:<x@other.example>")[0] == 554  # still an outsider
    d.syslog.wait(r"authentication failed for alice \(PLAIN\)")
    d.syslog.wait(r"authentication failed for mallory \(PLAIN\)")
    assert "guess" not in d.log() and "wonderland" not in d.log()


def test_no_relay_control_does_not_start(daemon):
    """The FWTK's smap accepted every recipient and left relaying to the
    MTA; behind a modern MTA, which takes smapd's hand-off as a local
    submission, that is an open relay: smap -daemon refuses the table."""
    d = daemon("smap: minspare 1\n", relay_control=False, start=False)
    p = subprocess.run([command("smap"), "-daemon", "-f", "--config", str(d.table)], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stderr
    assert f"{d.table}: error: smap: no relay-domain, relay-hosts or recipients line" in p.stderr


def test_recipients_map_refuses_unknown_users_and_reloads(daemon, tmp_path):
    """`recipients` alone is relay control: listed mailboxes are accepted
    from anyone, unlisted ones of the map's domains get 550 5.1.1 (from
    internal clients too), other domains are not relayed; the master
    re-reads the map when it changes."""
    rmap = tmp_path / "recipients"
    rmap.write_text("# mailboxes that exist\nalice@ours.example OK\n\"Bob Smith\"@ours.example x\n"
                    "@lists.example\nnot an address\n")
    os.chmod(rmap, 0o644)
    d = daemon(f"smap: recipients {rmap}\nsmap: minspare 1\n", relay_control=False)
    d.syslog.wait(rf"{rmap}:5: 'not' is not an address \(local-part@domain\) or @domain; line ignored")
    codes = rcpt_codes(d, ["alice@ours.example", "ALICE@Ours.Example.", '"alice"@ours.example',
                           '"Bob Smith"@ours.example', "anyone@lists.example", "postmaster@ours.example",
                           "postmaster", "nosuch@ours.example", "alice+tag@ours.example", "alice@other.example"])
    assert codes == {"alice@ours.example": 250, "ALICE@Ours.Example.": 250, '"alice"@ours.example': 250,
                     '"Bob Smith"@ours.example': 250, "anyone@lists.example": 250, "postmaster@ours.example": 250,
                     "postmaster": 250, "nosuch@ours.example": 550, "alice+tag@ours.example": 550,
                     "alice@other.example": 554}
    s = smtplib.SMTP("127.0.0.1", d.port, local_hostname="client.example.test", timeout=30)
    s.ehlo()
    s.docmd("MAIL", "FROM:<sender@example.test>")
    assert s.docmd("RCPT", "TO:<nosuch@ours.example>") == \
        (550, b"5.1.1 <nosuch@ours.example>: Recipient address rejected: User unknown")
    s.close()
    d.syslog.wait(rf"unknown recipient <nosuch@ours\.example> \(not in {rmap}\)")
    rmap.write_text("alice@ours.example\nnosuch@ours.example\n")
    d.syslog.wait(rf"{rmap} changed: reloading")
    wait_for(lambda: rcpt_codes(d, ["nosuch@ours.example"])["nosuch@ours.example"] == 250,
             what="the new map in use")
    assert rcpt_codes(d, ["anyone@lists.example"]) == {"anyone@lists.example": 554}


def test_recipients_map_applies_to_internal_clients(daemon, tmp_path):
    rmap = tmp_path / "recipients"
    rmap.write_text("alice@ours.example\n")
    os.chmod(rmap, 0o644)
    d = daemon(f"smap: recipients {rmap}\nsmap: relay-hosts 127.0.0.1\nsmap: minspare 1\n")
    assert rcpt_codes(d, ["alice@ours.example", "nosuch@ours.example", "far@other.example"]) == \
        {"alice@ours.example": 250, "nosuch@ours.example": 550, "far@other.example": 250}
