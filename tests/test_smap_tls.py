"""smap with TLS: STARTTLS and smtps, with swaks, Python's smtplib and a
scanner, against smap -daemon (as root) and in inetd mode."""

import os
import re
import smtplib
import ssl
import subprocess

import pytest

from support.programs import command, wait_for
from support.smtp import Smtp
from support.tls import assert_strong_tls, run_testssl
from smapd import spool as queue

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="smap -daemon binds and jails as root")

MESSAGE = b"From: a@example.org\r\nSubject: tls\r\n\r\nsent over TLS\r\n"


def spooled(spool):
    return sorted(f for f in os.listdir(spool) if f.startswith("sma"))


def received(spool, name):
    with open(os.path.join(spool, name), "rb") as f:
        queue.read_envelope(f)
        return f.read()


@pytest.fixture
def tls_daemon(daemon, pki):
    """smap -daemon with `ssl`, a STARTTLS port and an smtps port."""
    def start(extra=""):
        d = daemon(start=False)
        d.smtps_port = _free()
        d.write_table(f"smap: ssl {pki.server_pem}\nsmap: minspare 2\n" + extra,
                      listen=[f"127.0.0.1:{d.port}", f"127.0.0.1:{d.smtps_port} smtps"])
        return d.start()
    return start


def _free():
    from support.programs import free_port
    return free_port()


def test_starttls_with_swaks(tls_daemon, pki):
    d = tls_daemon()
    r = subprocess.run(["swaks", "--server", f"127.0.0.1:{d.port}", "-tls", "--tls-verify", "--tls-ca-path",
                        pki.ca_crt, "--tls-sni", "test.example", "--from", "a@example.org",
                        "--to", "b@example.net", "--helo", "client.example.test"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"^<-  250[- ]STARTTLS$", r.stdout, re.M) and "<-  220 2.0.0 Ready to start TLS" in r.stdout
    assert re.search(r"=== TLS started with cipher TLSv1\.[23]", r.stdout)
    assert "STARTTLS" not in r.stdout.split("=== TLS started")[1].split("MAIL FROM")[0]  # not offered again
    [name] = spooled(d.spool)
    assert b" with ESMTPS id " in received(d.spool, name)
    d.syslog.wait(r"host=client\.example\.test/127\.0\.0\.1 TLS TLSv1\.3 TLS_\w+ \(\d+ bits\)")


def test_starttls_with_smtplib_forgets_what_came_before(tls_daemon, pki):
    d = tls_daemon()
    with smtplib.SMTP("127.0.0.1", d.port, local_hostname="client.example.test", timeout=30) as s:
        s.ehlo()
        assert s.has_extn("starttls")
        s.starttls(context=pki.client_context())
        # RFC 3207: the EHLO before TLS is forgotten; MAIL without a new one is refused.
        assert s.docmd("MAIL", "FROM:<a@example.org>")[0] == 503
        s.ehlo()
        assert not s.has_extn("starttls")
        assert s.docmd("STARTTLS")[0] == 554
        s.sendmail("a@example.org", ["b@example.net"], MESSAGE)
    [name] = spooled(d.spool)
    assert received(d.spool, name).endswith(b"sent over TLS\n")


def test_plaintext_pipelined_behind_starttls_is_never_executed(tls_daemon):
    d = tls_daemon()
    s = d.connect()
    assert s.reply()[0] == 220
    assert s.cmd("EHLO client.example.test")[0] == 250
    s.send(b"STARTTLS\r\nMAIL FROM:<injected@attacker.example>\r\n")
    code, lines = s.reply()
    assert code == 554 and "pipelining after STARTTLS" in lines[0]
    assert s.closed()
    d.syslog.wait(r"refused: improper pipelining after STARTTLS")
    assert "injected" not in d.log().replace("improper pipelining", "")
    assert spooled(d.spool) == []


def test_plaintext_after_the_220_fails_the_handshake(tls_daemon):
    d = tls_daemon()
    s = d.connect()
    assert s.reply()[0] == 220
    assert s.cmd("EHLO client.example.test")[0] == 250
    assert s.cmd("STARTTLS")[0] == 220
    s.send(b"MAIL FROM:<injected@attacker.example>\r\n")  # not a ClientHello
    rest = b""
    while True:  # at most a TLS alert, then the end
        try:
            data = s.sock.recv(4096)
        except ConnectionResetError:
            break
        if not data:
            break
        rest += data
    assert not rest.startswith((b"250", b"5", b"4"))
    d.syslog.wait(r"TLS handshake failed")
    assert not re.search(r"from=<injected", d.log())


def test_smtps_listener(tls_daemon, pki):
    d = tls_daemon()
    with smtplib.SMTP_SSL("127.0.0.1", d.smtps_port, local_hostname="client.example.test", timeout=30,
                          context=pki.client_context()) as s:
        s.ehlo()
        assert not s.has_extn("starttls")
        s.sendmail("a@example.org", ["b@example.net"], MESSAGE)
    r = subprocess.run(["swaks", "--server", f"127.0.0.1:{d.smtps_port}", "--tls-on-connect", "--from",
                        "a@example.org", "--to", "b@example.net"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout
    assert len(spooled(d.spool)) == 2
    for name in spooled(d.spool):
        assert b" with ESMTPS id " in received(d.spool, name)


def test_ssl_auth_required(tls_daemon, pki):
    d = tls_daemon(f"smap: ssl-auth required\nsmap: ssl-ca {pki.ca_crt}\n")
    with pytest.raises((ssl.SSLError, ConnectionError, smtplib.SMTPServerDisconnected)):
        with smtplib.SMTP_SSL("127.0.0.1", d.smtps_port, timeout=30, context=pki.client_context()) as s:
            s.ehlo()  # TLS 1.3: the server's refusal arrives after the client's Finished
    d.syslog.wait(r"TLS handshake failed: .*(CERTIFICATE|certificate)")
    for bad in ("stranger",):  # signed by a CA smap does not trust
        with pytest.raises((ssl.SSLError, ConnectionError, smtplib.SMTPServerDisconnected)):
            with smtplib.SMTP_SSL("127.0.0.1", d.smtps_port, timeout=30, context=pki.client_context(bad)) as s:
                s.ehlo()
    with smtplib.SMTP_SSL("127.0.0.1", d.smtps_port, local_hostname="client.example.test", timeout=30,
                          context=pki.client_context("client")) as s:
        s.sendmail("a@example.org", ["b@example.net"], MESSAGE)
    d.syslog.wait(r"TLS TLSv1\.3 .* client=/O=smapd tests/CN=client\.example\.test")
    assert len(spooled(d.spool)) == 1


def test_inetd_mode_starttls_and_smtps(smap_table, smap, tmp_path, pki):
    from support.programs import make_spool
    spool = make_spool(tmp_path / "spool")
    table = smap_table(spool, f"smap: ssl {pki.server_pem}\n")
    s = smap(table)
    assert s.smtp.reply()[0] == 220
    assert s.smtp.cmd("EHLO client.example.test")[0] == 250
    assert s.smtp.cmd("STARTTLS")[0] == 220
    tls = pki.client_context().wrap_socket(s.smtp.sock, server_hostname="test.example")
    t = Smtp(tls)
    assert t.cmd("EHLO client.example.test")[1][-1] == "250 ENHANCEDSTATUSCODES"
    assert t.cmd("MAIL FROM:<a@example.org>")[0] == 250
    assert t.cmd("RCPT TO:<b@example.net>")[0] == 250
    assert t.cmd("DATA")[0] == 354
    assert t.cmd(MESSAGE + b".\r\n")[0] == 250
    assert t.cmd("QUIT")[0] == 221
    assert s.proc.wait(30) == 0
    # --smtps: TLS from the first byte, as an smtps line of inetd.conf asks.
    s2 = smap(table, extra_args=("--smtps",))
    tls2 = pki.client_context().wrap_socket(s2.smtp.sock, server_hostname="test.example")
    t2 = Smtp(tls2)
    assert t2.reply()[0] == 220
    assert t2.cmd("QUIT")[0] == 221
    wait_for(lambda: len(spooled(spool)) == 1, what="the message")
    assert b" with ESMTPS id " in received(spool, spooled(spool)[0])


def test_no_old_protocol_weak_cipher_compression_or_renegotiation(tls_daemon):
    d = tls_daemon()
    out = run_testssl(["--starttls", "smtp", f"127.0.0.1:{d.port}"])
    assert_strong_tls(out)


def test_a_key_that_will_not_load_stops_the_master_at_start(daemon, tmp_path):
    d = daemon(start=False)
    bad = tmp_path / "not-a-key.pem"
    bad.write_text("not a key\n")
    d.write_table(f"smap: ssl {bad}\n")
    r = subprocess.run([command("smap"), "-daemon", "-f", "--config", str(d.table)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2
    assert re.search(rf"ssl \({re.escape(str(d.table))}:\d+\): {re.escape(str(bad))}: not a usable private key",
                     r.stderr), r.stderr
    assert not d.pidfile.exists() and not d.scoreboard.exists()


def test_only_the_operators_ca_makes_a_certificate_exempt(tls_daemon, pki, monkeypatch):
    """With ssl-ca, a verified client certificate lets its client relay;
    without it, a certificate from a CA of the system's store (here a
    stand-in root, through SSL_CERT_FILE) is verified and logged, but its
    client is held to relay control like any other."""
    relay = "smap: relay-domain example.org\nsmap: ssl-auth optional\n"
    own = tls_daemon(relay + f"smap: ssl-ca {pki.ca_crt}\n")
    with smtplib.SMTP_SSL("127.0.0.1", own.smtps_port, local_hostname="client.example.test", timeout=30,
                          context=pki.client_context("client")) as s:
        s.sendmail("a@example.org", ["someone@far-away.example"], MESSAGE)
    assert len(spooled(own.spool)) == 1
    own.stop()

    monkeypatch.setenv("SSL_CERT_FILE", pki.ca_crt)  # the "system" store of the smap started next
    public = tls_daemon(relay)
    with smtplib.SMTP_SSL("127.0.0.1", public.smtps_port, local_hostname="client.example.test", timeout=30,
                          context=pki.client_context("client")) as s:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
            s.sendmail("a@example.org", ["someone@far-away.example"], MESSAGE)
        assert e.value.recipients["someone@far-away.example"][0] == 554
        s.sendmail("a@example.org", ["postmaster@example.org"], MESSAGE)  # its own domains still work
    public.syslog.wait(r"client=/O=smapd tests/CN=client\.example\.test")  # it was verified
    assert len(spooled(public.spool)) == 1
