"""The listening-socket mode: xinetd `wait = yes` and systemd `Accept=no`
(systemd-socket-activate without --inetd) hand smap and ssl-gw the
listening socket; they run their prefork pool on it, many connections
for one start, and exit when idle (xinetd starts them again at the next
connection)."""

import os
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import sys

import pytest

from support.daemons import running_xinetd
from support.logs import Syslog
from support.process import stop
from support.programs import ROOT, children, command, free_port, make_spool, nobody_ids, proc_status, wait_for
from test_check import make_pem
from test_sslgw import Backend, greeter

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the master runs as root and its children drop to nobody")

MESSAGE = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: handed over\r\n\r\nbody\r\n"


@pytest.fixture
def pool_table(tmp_path, smap_table):
    """pool_table(syslog, extra) -> (table, spool): conftest's smap table
    with a scoreboard and a syslog socket of the test's own."""
    def write(syslog, extra=""):
        spool = make_spool(tmp_path / "spool")
        return smap_table(spool, f"smap: scoreboard {tmp_path / 'smap.scoreboard'}\n"
                                 f"smap: log-socket {syslog.path}\n" + extra), spool
    return write


def sample_stanza(tmp_path, port, server, args):
    """etc/xinetd.d/smtp-pool as shipped, with the test's program, table,
    port and log file."""
    text = open(os.path.join(ROOT, "etc", "xinetd.d", "smtp-pool")).read()
    assert "    wait            = yes\n" in text and "server          = /usr/local/bin/smap\n" in text
    text = text.replace("/usr/local/bin/smap", server).replace("#   server_args", "    server_args")
    text = text.replace("--config /usr/local/etc/netperm-table smap", args)
    return text.rstrip().rstrip("}") + (f"    port            = {port}\n    type            = UNLISTED\n"
                                        f"    bind            = 127.0.0.1\n"
                                        f"    log_type        = FILE {tmp_path / 'service.log'}\n}}\n")


def stanza(tmp_path, name, port, server, args):
    """A `wait = yes` stanza that logs each start and exit in tmp_path/service.log."""
    return (f"service {name}\n{{\n    socket_type = stream\n    protocol = tcp\n    wait = yes\n"
            f"    user = root\n    server = {server}\n    server_args = {args}\n    port = {port}\n"
            f"    type = UNLISTED\n    bind = 127.0.0.1\n    log_type = FILE {tmp_path / 'service.log'}\n"
            f"    log_on_success = PID EXIT\n    disable = no\n}}\n")


def send(port, n=1):
    for _ in range(n):
        s = smtplib.SMTP("127.0.0.1", port, local_hostname="client.example.test", timeout=30)
        try:
            s.sendmail("a@example.org", ["b@example.org"], MESSAGE)
        finally:
            s.quit()


def spooled(spool):
    return [f for f in os.listdir(spool) if f.startswith("sma")]


def starts(xlog, service):
    return len(re.findall(rf"START: {service}\b", xlog.read_text())) if xlog.exists() else 0


def test_smap_under_xinetd_wait_yes(tmp_path, pool_table):
    syslog = Syslog(tmp_path / "log")
    table, spool = pool_table(syslog, "smap: idle-exit 2\nsmap: minspare 2\n")
    port = free_port()
    try:
        with running_xinetd(tmp_path, [sample_stanza(tmp_path, port, command("smap"), f"--config {table}")],
                            1) as xinetd:
            xlog = tmp_path / "service.log"
            send(port, 6)
            assert len(wait_for(lambda: len(spooled(spool)) >= 6 and spooled(spool), what="6 spool files")) == 6
            assert starts(xlog, "smtp") == 1  # one start served the six connections
            [master] = children(xinetd.pid)
            kids = wait_for(lambda: children(master), what="the pool's children")
            for pid in kids:  # the children, not the master, are jailed
                st = proc_status(pid)
                assert os.readlink(f"/proc/{pid}/root") == str(spool)
                assert st["Uid"].split() == [str(nobody_ids()[0])] * 4
                assert st["CapEff"] == "0000000000000000"
            syslog.wait(r"started: listening on 127\.0\.0\.1:\d+ \(handed over\)")
            # Idle for idle-exit seconds: the master goes, xinetd listens again ...
            syslog.wait(r"no connection for 2s \(idle-exit\): exiting")
            wait_for(lambda: "EXIT: smtp" in xlog.read_text(), what="xinetd to see smap exit")
            assert not children(xinetd.pid)
            # ... and the next connection starts a new pool.
            send(port)
            wait_for(lambda: len(spooled(spool)) == 7, what="the 7th spool file")
            assert starts(xlog, "smtp") == 2
    finally:
        syslog.close()


def test_smap_table_error_under_xinetd_wait_yes_answers_421(tmp_path, pool_table):
    """A table smap cannot use: the waiting client hears 421, not silence
    (the error goes to the system's log: the table's log-socket is in the
    table that cannot be read)."""
    syslog = Syslog(tmp_path / "log")
    table, _ = pool_table(syslog, "smap: maxbytes lots\n")
    port = free_port()
    try:
        with running_xinetd(tmp_path, [stanza(tmp_path, "smtp", port, command("smap"), f"--config {table}")], 1):
            with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
                assert c.recv(200) == b"421 4.3.0 Service temporarily unavailable (configuration error)\r\n"
                assert c.recv(200) == b""
    finally:
        syslog.close()


def test_smap_under_systemd_accept_no(tmp_path, pool_table):
    """systemd-socket-activate without --inetd: LISTEN_FDS, and the socket
    named smtps (FileDescriptorName=smtps) begins with TLS."""
    syslog = Syslog(tmp_path / "log")
    pem = tmp_path / "mail.pem"
    make_pem(pem)
    table, spool = pool_table(syslog, f"smap: ssl {pem}\n")
    plain, smtps = free_port(), free_port()
    proc = subprocess.Popen(["systemd-socket-activate", "-l", f"127.0.0.1:{plain}", "-l", f"127.0.0.1:{smtps}",
                             "--fdname=smtp:smtps", command("smap"), "--config", str(table)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        def connected():
            try:
                return smtplib.SMTP("127.0.0.1", plain, local_hostname="client.example.test", timeout=30)
            except OSError:
                return None
        s = wait_for(connected, what="systemd-socket-activate listening")
        s.sendmail("a@example.org", ["b@example.org"], MESSAGE)
        s.quit()
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        s = smtplib.SMTP_SSL("127.0.0.1", smtps, local_hostname="client.example.test", context=context, timeout=30)
        s.sendmail("a@example.org", ["b@example.org"], MESSAGE)
        s.quit()
        wait_for(lambda: len(spooled(spool)) == 2, what="2 spool files")
        line = syslog.wait(r"started: listening on")[0]
        assert re.search(rf"127\.0\.0\.1:{plain} \(handed over\), 127\.0\.0\.1:{smtps} \(handed over\) smtps", line)
        # systemd-socket-activate exec'd smap: the master is that process.
        assert len(children(proc.pid)) >= 1
        # HUP re-reads the table and keeps the sockets systemd handed over.
        os.kill(proc.pid, signal.SIGHUP)
        syslog.wait(rf"reloaded: listening on 127\.0\.0\.1:{plain} \(handed over\), 127\.0\.0\.1:{smtps}")
        send(plain)
        wait_for(lambda: len(spooled(spool)) == 3, what="3 spool files")
    finally:
        stop(proc, timeout=20)
        proc.stderr.close()
        syslog.close()


def test_sslgw_under_xinetd_wait_yes_and_systemd(tmp_path, pki):
    backend = Backend(greeter)
    syslog = Syslog(tmp_path / "log")
    table = tmp_path / "table"
    table.write_text(f"ssl-gw: log-socket {syslog.path}\nssl-gw: tcpwrappers no\nssl-gw: minspare 1\n")
    args = f"--config {table} -r 127.0.0.1:{backend.port} -p {pki.server_pem} -s nobody -g nogroup -P none"

    def fetch(port, n):
        for _ in range(n):
            with socket.create_connection(("127.0.0.1", port), timeout=30) as raw, \
                    pki.client_context().wrap_socket(raw, server_hostname="test.example") as tls:
                assert tls.recv(100) == b"* OK backend ready\r\n"

    port = free_port()
    try:
        with running_xinetd(tmp_path, [stanza(tmp_path, "imaps", port, command("ssl-gw"), args)], 1):
            fetch(port, 4)
            assert starts(tmp_path / "service.log", "imaps") == 1
            syslog.wait(r"started: listening on 127\.0\.0\.1:\d+ \(handed over\)")
        # systemd's Accept=no: -l /usr/bin/env shows that LISTEN_FDS went no
        # further than ssl-gw (a program it runs must not take the sockets).
        port = free_port()
        argv = args.replace(f"-r 127.0.0.1:{backend.port}", "-l /usr/bin/env").split()
        proc = subprocess.Popen(["systemd-socket-activate", "-l", f"127.0.0.1:{port}", command("ssl-gw"), *argv],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(3):
                raw = wait_for(lambda: _connection(port), what="systemd-socket-activate listening")
                with pki.client_context().wrap_socket(raw, server_hostname="test.example") as tls:
                    environ = b""
                    while data := tls.recv(65536):
                        environ += data
                assert b"REMOTE_HOST=127.0.0.1" in environ and b"LISTEN_" not in environ
            assert len(children(proc.pid)) >= 1  # the master is the process systemd-socket-activate became
            syslog.wait(rf"started: listening on 127\.0\.0\.1:{port} \(handed over\)")
        finally:
            stop(proc, timeout=20)
    finally:
        backend.close()
        syslog.close()


def _connection(port):
    try:
        return socket.create_connection(("127.0.0.1", port), timeout=30)
    except OSError:
        return None


def test_sslgw_sees_a_deferred_accept_on_the_socket_systemd_hands_over(tmp_path, pki):
    """A socket unit's DeferAcceptSec= (TCP_DEFER_ACCEPT on the socket
    systemd passes): ssl-gw serves it as its own -d listeners, the kernel
    waking a child only once the ClientHello is there.  The socket is
    passed as systemd does (fd 3, LISTEN_FDS, LISTEN_PID of the process
    that execs ssl-gw)."""
    backend = Backend(greeter)
    syslog = Syslog(tmp_path / "log")
    table = tmp_path / "table"
    table.write_text(f"ssl-gw: log-socket {syslog.path}\nssl-gw: tcpwrappers no\nssl-gw: minspare 1\n")
    port = free_port()
    launcher = ("import os, socket, sys\n"
                "s = socket.socket()\n"
                "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
                f"s.bind(('127.0.0.1', {port}))\n"
                "s.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 10)\n"
                "s.listen(16)\n"
                "if s.fileno() != 3:\n"
                "    os.dup2(s.fileno(), 3)\n"
                "os.set_inheritable(3, True)\n"
                "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid()))\n"
                "os.execv(sys.argv[1], sys.argv[1:])\n")
    proc = subprocess.Popen([sys.executable, "-c", launcher, command("ssl-gw"), "--config", str(table),
                             "-r", f"127.0.0.1:{backend.port}", "-p", pki.server_pem, "-s", "nobody", "-g", "nogroup",
                             "-P", "none"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        syslog.wait(rf"started: listening on 127\.0\.0\.1:{port} \(handed over\) deferred")
        with socket.create_connection(("127.0.0.1", port), timeout=30) as raw, \
                pki.client_context().wrap_socket(raw, server_hostname="test.example") as tls:
            assert tls.recv(100) == b"* OK backend ready\r\n"
    finally:
        stop(proc, timeout=20)
        backend.close()
        syslog.close()
