"""smap under the real xinetd, with the reference deployment's stanza and
table (tests/reference/), changed only where a test machine must:

* xinetd.d/smtp: the `server` path (smap installed as `smmap`), a `port`,
  and `type = UNLISTED`, without which xinetd refuses any port but 25 for
  a service /etc/services knows;
* netperm-table: the paths (spool, certificate, password file, spam
  database) moved under the test's directory, plus two lines for the test
  machine: its DNS server and its syslog socket.

The table is installed where smmap looks by default,
/usr/local/etc/netperm-table (any table already there is put back
afterwards): the stanza passes smmap no arguments.
"""

import hashlib
import os
import re
import smtplib
import subprocess

import pytest

from support.daemons import installed_table, running_xinetd
from support.logs import Syslog
from support.programs import REFERENCE, children, command, free_port, make_spool, proc_status, wait_for
from test_check import make_pem

REF_UID = REF_GID = 99

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="xinetd runs smap as root, which then drops to uid 99")


@pytest.fixture
def deployment(tmp_path, loopback_dns):
    root = tmp_path / "root"
    spool = make_spool(root / "var/spool/smmap", REF_UID, REF_GID)
    (root / "var/ssl/certs").mkdir(parents=True)
    make_pem(root / "var/ssl/certs/mail.pem")
    (root / "etc").mkdir()
    (root / "etc/smtppass").write_text("user:" + hashlib.md5(b"secret").hexdigest() + "\n")
    (root / "etc/smtppass").chmod(0o600)
    (root / "etc/spamdb").write_text("")
    syslog = Syslog(tmp_path / "log")

    text = open(os.path.join(REFERENCE, "netperm-table")).read()
    for path in ("/var/spool/smmap", "/var/ssl/certs/mail.pem", "/etc/smtppass", "/etc/spamdb"):
        text = text.replace(" " + path, f" {root}{path}")
    text += (f"\n# The test machine's DNS server and syslog socket.\n"
             f"smmap:      resolver 127.0.0.1:{loopback_dns}\nsmmap:      log-socket {syslog.path}\n")
    smmap = root / "usr/local/etc/smmap"
    smmap.parent.mkdir(parents=True)
    smmap.symlink_to(command("smap"))
    port = free_port()
    stanza = open(os.path.join(REFERENCE, "xinetd.d", "smtp")).read()
    assert "server         = /usr/local/etc/smmap" in stanza
    stanza = stanza.replace("/usr/local/etc/smmap", str(smmap))
    stanza = stanza.rstrip().rstrip("}") + f"    port           = {port}\n    type           = UNLISTED\n}}\n"
    with installed_table(text), running_xinetd(tmp_path, [stanza], 1) as xinetd:
        yield dict(port=port, spool=spool, syslog=syslog, xinetd=xinetd, stanza=stanza)


def spooled(spool):
    return sorted(f for f in os.listdir(spool) if f.startswith("sma"))


def wait_spooled(spool, n):
    return wait_for(lambda: len(spooled(spool)) >= n and spooled(spool), what=f"{n} spool file(s)")


#: What smap records of these tests' client (the ATTR lines after FROM).
CLIENT_ATTRS = b"ATTR client-addr=127.0.0.1\nATTR client-name=client.example.test\nATTR helo=client.example.test\n"


def split_spool_file(path):
    data = open(path, "rb").read()
    head, body = data.split(b"BODY\n", 1)
    received, rest = body.split(b"\n", 1)
    while rest.startswith(b"\t"):
        fold, rest = rest.split(b"\n", 1)
        received += b"\n" + fold
    return head, received, rest


MESSAGE = (b"From: Alice <alice@example.org>\r\nTo: Bob <bob@localdomain.com>\r\nSubject: reference test\r\n"
           b"\r\n8-bit body: gr\xc3\xbc\xc3\x9fe, caf\xc3\xa9\r\n" + b"L" * 998 + b"\r\n.\r\n..two dots\r\n"
           b"last line\r\n")


def test_python_smtplib_through_xinetd(deployment):
    spool = deployment["spool"]
    with smtplib.SMTP("127.0.0.1", deployment["port"], local_hostname="client.example.test", timeout=30) as s:
        code, banner = s.ehlo()
        assert code == 250 and b"8BITMIME" in banner
        s.sendmail("alice@example.org", ["bob@localdomain.com", "carol@localdomain.com"], MESSAGE)
    [name] = wait_spooled(spool, 1)
    head, received, body = split_spool_file(spool / name)
    assert head == (b"FROM <alice@example.org>\n" + CLIENT_ATTRS + b"ATTR proto=ESMTP\n"
                    b"RCPT <bob@localdomain.com>\nRCPT <carol@localdomain.com>\n")
    qid = name[3:]
    assert re.match(rb"Received: from client\.example\.test \(client\.example\.test \[127\.0\.0\.1\]\)\n"
                    rb"\tby \S+ \(smap, smapd [0-9.]+\) with ESMTP id " + qid.encode() + rb";\n\t\w{3}, ",
                    received), received
    # Byte-exact: the message as sent, with LF line ends (and smtplib's
    # dot-stuffing undone).
    assert body == MESSAGE.replace(b"\r\n", b"\n")
    st = os.stat(spool / name)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (REF_UID, REF_GID, 0o660)
    log = deployment["syslog"]
    log.wait(r"^<22>smmap\[\d+\]: disconnect host=client\.example\.test/127\.0\.0\.1 messages=1 bytes=%d id=%s$"
             % (len(body), qid))
    lines = log.read()
    assert any(re.match(r"<22>smmap\[\d+\]: connect host=client\.example\.test/127\.0\.0\.1 id=%s$" % qid, l)
               for l in lines), lines
    assert any(re.match(r"<22>smmap\[\d+\]: host=client\.example\.test/127\.0\.0\.1 bytes=%d "
                        r"from=<alice@example\.org> to=<bob@localdomain\.com> nrcpt=2 id=%s$"
                        % (len(body), qid), l) for l in lines), lines
    assert any(re.match(r"<22>smmap\[\d+\]: id=%s to=<carol@localdomain\.com>$" % qid, l) for l in lines), lines


def test_swaks_through_xinetd(deployment, tmp_path):
    spool = deployment["spool"]
    msg = tmp_path / "message.eml"
    # swaks ends the data with CRLF.CRLF itself: the file has no final line end.
    msg.write_bytes(b"From: swaks@example.org\r\nSubject: swaks\r\n\r\nsent by swaks\r\n.\r\nend")
    r = subprocess.run(["swaks", "--server", "127.0.0.1", "--port", str(deployment["port"]),
                        "--helo", "client.example.test", "--from", "swaks@example.org",
                        "--to", "dave@localdomain.com", "--data", str(msg)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"<-  250 2\.0\.0 Ok: queued as \w+", r.stdout)
    [name] = wait_spooled(spool, 1)
    head, received, body = split_spool_file(spool / name)
    assert head == b"FROM <swaks@example.org>\n" + CLIENT_ATTRS + b"ATTR proto=ESMTP\nRCPT <dave@localdomain.com>\n"
    assert b"\tfor <dave@localdomain.com>; " in received
    assert body == b"From: swaks@example.org\nSubject: swaks\n\nsent by swaks\n.\nend\n"


def test_reference_relay_control_and_auth(deployment):
    """The reference table's smmap lines: relay-domain localdomain.com, auth
    login with md5file in the reference format (user:md5hex), STARTTLS
    with the table's certificate, the nospam checks."""
    port = str(deployment["port"])
    common = ["swaks", "--server", "127.0.0.1", "--port", port, "--helo", "client.example.test",
              "--from", "alice@example.org"]
    r = subprocess.run(common + ["--to", "friend@far.example"], capture_output=True, text=True, timeout=60)
    assert re.search(r"<\*\* 554 5\.7\.1 <friend@far\.example>: Relay access denied", r.stdout), r.stdout
    r = subprocess.run(common + ["-tls", "--auth", "LOGIN", "--auth-user", "user", "--auth-password", "wrong",
                                 "--to", "friend@far.example"], capture_output=True, text=True, timeout=60)
    assert "<~* 535 5.7.8 Error: authentication failed" in r.stdout, r.stdout
    r = subprocess.run(common + ["-tls", "--auth", "LOGIN", "--auth-user", "user", "--auth-password", "secret",
                                 "--to", "friend@far.example"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout
    assert "<~  235 2.7.0 Authentication successful" in r.stdout
    [name] = wait_spooled(deployment["spool"], 1)
    head, received, body = split_spool_file(deployment["spool"] / name)
    assert head == (b"FROM <alice@example.org>\n" + CLIENT_ATTRS
                    + b"ATTR proto=ESMTPSA\nATTR login=user\nRCPT <friend@far.example>\n")
    assert b" with ESMTPSA id " in received
    deployment["syslog"].wait(r"authenticated as user \(LOGIN\)")
    assert not [line for line in deployment["syslog"].read() if "secret" in line or "wrong" in line]


def test_child_is_jailed_as_uid_99_without_groups(deployment):
    spool = deployment["spool"]
    s = smtplib.SMTP("127.0.0.1", deployment["port"], local_hostname="client.example.test", timeout=30)
    try:
        assert s.ehlo()[0] == 250  # past the greeting: the child is in its jail
        [pid] = wait_for(lambda: children(deployment["xinetd"].pid), what="smmap under xinetd")
        assert os.readlink(f"/proc/{pid}/root") == str(spool)
        st = proc_status(pid)
        assert st["Uid"].split() == [str(REF_UID)] * 4
        assert st["Gid"].split() == [str(REF_GID)] * 4
        assert st["Groups"].split() == [str(REF_GID)]
        assert st["CapEff"] == "0000000000000000"
        assert st["CapBnd"] == "0000000000000000" and st["NoNewPrivs"] == "1"
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            assert os.path.basename(f.read().split(b"\0")[1]) == b"smmap"
    finally:
        s.quit()
