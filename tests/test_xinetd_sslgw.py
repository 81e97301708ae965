"""ssl-gw under the real xinetd with the reference deployment's imaps and
pop3s stanzas and its hosts.allow/hosts.deny, in front of a real Dovecot.

Changed from tests/reference/, and only where a test machine must:
* the stanzas: `server` (ssl-gw instead of /usr/sbin/stunnel), the `-p`
  path (a certificate of the test's own), a `port` with `type =
  UNLISTED`, and `server_args` joined on one line (xinetd has no line
  continuation);
* the TCP wrappers files are read where they are (`tcpwrappers-dir` in a
  table installed at /usr/local/etc/netperm-table, which ssl-gw reads by
  default: the stanzas pass no --config), and that table names the test's
  syslog socket.
What the stanzas ask of the machine is provided as it is: `-r imap` is
port 143 of 127.0.0.1, where the test's Dovecot listens (and POP3 on 110);
`-g nobody` needs a group named nobody, which Debian does not have: the
test creates it for its duration if it is missing.  hosts.allow admits
10.0.0.0/255.0.0.0 only: the admitted client connects from 10.99.0.1, an
address the test adds to the loopback interface.
"""

import grp
import imaplib
import os
import re
import socket
import subprocess

import pytest

from support.daemons import installed_table, running_xinetd
from support.logs import Syslog
from support.programs import REFERENCE, children, command, free_port, proc_status, wait_for
from dovecot import Dovecot

CLIENT = "10.99.0.1"
MESSAGE = "From: a@example.org\nSubject: reference imaps\n\nthrough xinetd and ssl-gw\n"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="xinetd runs ssl-gw as root, which drops to nobody")


def _port_free(port):
    """Whether Dovecot can listen on `port`: as it does, with SO_REUSEADDR,
    so that the TIME_WAIT of an earlier run's connections does not count."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


@pytest.fixture
def group_nobody():
    """The group the stanzas' `-g nobody` names, created when missing."""
    try:
        yield grp.getgrnam("nobody").gr_gid
        return
    except KeyError:
        pass
    subprocess.run(["groupadd", "--system", "nobody"], check=True)
    try:
        yield grp.getgrnam("nobody").gr_gid
    finally:
        subprocess.run(["groupdel", "nobody"], check=True)


@pytest.fixture
def client_address():
    subprocess.run(["ip", "addr", "add", f"{CLIENT}/32", "dev", "lo"], check=True)
    try:
        yield CLIENT
    finally:
        subprocess.run(["ip", "addr", "del", f"{CLIENT}/32", "dev", "lo"], check=True)


@pytest.fixture
def deployment(tmp_path, pki, group_nobody, client_address):
    for port in (143, 110):
        assert _port_free(port), f"port {port} of 127.0.0.1 is taken: the stanzas' -r imap needs it for Dovecot"
    dc = Dovecot(143, 110).start()
    dc.deliver(MESSAGE)
    syslog = Syslog(tmp_path / "log")
    ports, stanzas = {}, []
    for name in ("imaps", "pop3s"):
        text = open(os.path.join(REFERENCE, "xinetd.d", name)).read()
        assert "server          = /usr/sbin/stunnel" in text and "-p /usr/share/ssl/certs/stunnel.pem" in text
        text = text.replace("/usr/sbin/stunnel", command("ssl-gw"))
        text = text.replace("/usr/share/ssl/certs/stunnel.pem", pki.server_pem)
        text = re.sub(r"\\\n\s*", "", text)  # join the continued server_args line
        ports[name] = free_port()
        text = text.rstrip().rstrip("}") + f"    port            = {ports[name]}\n    type            = UNLISTED\n}}\n"
        stanzas.append(text)
    table = f"ssl-gw: tcpwrappers-dir {REFERENCE}\nssl-gw: log-socket {syslog.path}\n"
    try:
        with installed_table(table), running_xinetd(tmp_path, stanzas, 2) as xinetd:
            yield dict(ports=ports, syslog=syslog, xinetd=xinetd, dovecot=dc, stanzas=stanzas, gid=group_nobody)
    finally:
        dc.stop()
        syslog.close()


def test_reference_stanzas_and_wrappers(deployment, pki):
    ports, log = deployment["ports"], deployment["syslog"]
    assert "server_args     = -r imap -s nobody -g nobody -p " in deployment["stanzas"][0]

    # 127.0.0.1 is refused by hosts.deny before a single TLS byte.
    for name in ("imaps", "pop3s"):
        raw = socket.create_connection(("127.0.0.1", ports[name]), timeout=30)
        assert raw.recv(100) == b""
        raw.close()
    log.wait(r"ssl-gw\[\d+\]: imap: connection from 127\.0\.0\.1:\d+ REFUSED by libwrap \(hosts\.deny:1: "
             r"pop3,imap: ALL\)")

    # A client of 10.0.0.0/255.0.0.0 is served: IMAP over TLS, fetching the message.
    ctx = pki.client_context(verify=False)
    m = imaplib.IMAP4_SSL(CLIENT, ports["imaps"], ssl_context=ctx, timeout=30)
    assert m.login(deployment["dovecot"].user, deployment["dovecot"].password)[0] == "OK"
    # The ssl-gw serving it runs as nobody, in the group nobody and no other.
    [pid] = wait_for(lambda: children(deployment["xinetd"].pid), what="ssl-gw under xinetd")
    st = proc_status(pid)
    uid = str(__import__("pwd").getpwnam("nobody").pw_uid)
    assert st["Uid"].split() == [uid] * 4
    assert st["Gid"].split() == [str(deployment["gid"])] * 4 and st["Groups"].split() == [str(deployment["gid"])]
    assert m.select("INBOX") == ("OK", [b"1"])
    assert m.fetch("1", "(BODY[])")[1][0][1] == MESSAGE.replace("\n", "\r\n").encode()
    m.logout()
    log.wait(rf"imap connected from {re.escape(CLIENT)}:\d+")
    log.wait(r"Connection closed: \d+ bytes sent to SSL, \d+ bytes sent to socket")

    # The pop3s stanza forwards to imap, as the operator wrote it.
    s = ctx.wrap_socket(socket.create_connection((CLIENT, ports["pop3s"]), timeout=30))
    assert s.recv(200).startswith(b"* OK")
    s.close()

    r = subprocess.run(["curl", "-sS", "-k", "-u", f"{deployment['dovecot'].user}:{deployment['dovecot'].password}",
                        f"imaps://{CLIENT}:{ports['imaps']}/INBOX;UID=1"], capture_output=True, timeout=60)
    assert r.returncode == 0 and r.stdout.replace(b"\r\n", b"\n").endswith(b"through xinetd and ssl-gw\n"), r
