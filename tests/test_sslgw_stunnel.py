"""ssl-gw used as stunnel 3 was: typed at a shell, without a table, with
-D facility.level, -P none and -P dir/, -l program, -c (client mode, in
front of ssl-gw itself) and -n smtp (STARTTLS with smap)."""

import os
import re
import smtplib
import socket
import ssl
import subprocess

import pytest

from support.logs import Syslog
from support.programs import command, free_port, wait_for
from test_smap_tls import tls_daemon  # noqa: F401 (a fixture)
from test_sslgw import Backend, greeter, gw  # noqa: F401 (gw: a fixture)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="ssl-gw binds, loads its key and drops as root")


def echo(conn):
    while True:
        data = conn.recv(65536)
        if not data:
            return
        conn.sendall(data)


def test_typed_at_a_shell_it_says_why_on_stderr(tmp_path, pki):
    # A syslog socket is there, and takes the line; the terminal's user
    # reads it too.
    syslog = Syslog(tmp_path / "log")
    table = tmp_path / "table"
    table.write_text(f"ssl-gw: log-socket {syslog.path}\n")
    try:
        r = subprocess.run([command("ssl-gw"), "--config", str(table), "-r", "imap", "-p", pki.server_pem],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
        syslog.wait("standard input is not a connected socket")
    finally:
        syslog.close()
    assert r.returncode == 1
    assert "ssl-gw: standard input is not a connected socket: run ssl-gw from inetd, or as a daemon" in r.stderr


def _hidden_system_files(tmp_path):
    """A shell prefix for `unshare -m`: the default table's directory and
    the system's hosts.allow/hosts.deny hidden behind empty ones, in a
    mount namespace of the test's own (nothing outside it changes)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "nothing").write_text("")
    steps = ["mount --make-rprivate /", f"mount --bind {empty} /usr/local/etc"]
    for f in ("/etc/hosts.allow", "/etc/hosts.deny"):
        if os.path.exists(f):
            steps.append(f"mount --bind {tmp_path / 'nothing'} {f}")
    return " && ".join(steps)


def test_no_table_means_the_defaults(tmp_path, pki):
    """stunnel 3 read no file: without --config and NETPERM_TABLE, a missing
    /usr/local/etc/netperm-table is an empty one, and the letters are all."""
    backend = Backend(greeter)
    env = {k: v for k, v in os.environ.items() if k != "NETPERM_TABLE"}
    script = (f"{_hidden_system_files(tmp_path)} && test ! -e /usr/local/etc/netperm-table && "
              f"exec {command('ssl-gw')} -r 127.0.0.1:{backend.port} -p {pki.server_pem} -o {tmp_path / 'log'}")
    proc, client = _inetd(["unshare", "-m", "sh", "-c", script], env=env)
    try:
        with pki.client_context().wrap_socket(client, server_hostname="test.example") as tls:
            tls.settimeout(20)
            assert tls.recv(100) == b"* OK backend ready\r\n"
    finally:
        assert proc.wait(30) == 0, proc.stderr.read()
        backend.close()
    assert re.search(r"connected from 127\.0\.0\.1:\d+", (tmp_path / "log").read_text())


def _inetd(argv, **kw):
    """ssl-gw started as inetd starts it: a connected TCP socket on fds
    0 and 1.  (the process, the test's end of the connection)"""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    conn, _ = listener.accept()
    listener.close()
    proc = subprocess.Popen(argv, stdin=conn, stdout=conn, stderr=subprocess.PIPE, **kw)
    conn.close()
    return proc, client


def test_debug_level_with_a_facility(tmp_path, pki):
    """-D local3.7: the facility of -D wins over the table's, the level
    lets the debug lines through; -D mail.7, the issue's words, too."""
    syslog = Syslog(tmp_path / "log")
    backend = Backend(greeter)
    table = tmp_path / "table"
    table.write_text(f"ssl-gw: log-socket {syslog.path}\nssl-gw: log-facility mail\n")
    try:
        for level, facility in (("local3.7", 19), ("mail.7", 2)):
            proc, client = _inetd([command("ssl-gw"), "--config", str(table), "-r", f"127.0.0.1:{backend.port}",
                                   "-p", pki.server_pem, "-D", level])
            with pki.client_context().wrap_socket(client, server_hostname="test.example") as tls:
                assert tls.recv(100).startswith(b"* OK")
            assert proc.wait(30) == 0, proc.stderr.read()
            lines = syslog.wait(r"connected from 127\.0\.0\.1")
            assert {int(re.match(r"<(\d+)>", line).group(1)) // 8 for line in lines} == {facility}
            syslog.lines.clear()
    finally:
        syslog.close()
        backend.close()


def test_pid_file_none_and_in_a_directory(gw, pki, tmp_path):
    backend = Backend(greeter)
    try:
        # -P none: no pid file, whatever the table says (it names one).
        g = gw(f"127.0.0.1:{backend.port}", "-p", pki.server_pem, "-P", "none")
        with g.connect(pki.client_context()) as tls:
            assert tls.recv(100).startswith(b"* OK")
        assert not (g.base / "gw.pid").exists()
        g.stop()
        # -P dir/: PROG.SERVICE.pid in that directory, as stunnel 3's
        # stunnel.SERVICE.pid.
        piddir = tmp_path / "run"
        piddir.mkdir()
        g = gw(f"127.0.0.1:{backend.port}", "-p", pki.server_pem, "-P", f"{piddir}/", "-N", "imaps")
        pidfile = piddir / "ssl-gw.imaps.pid"
        wait_for(pidfile.exists, what="the pid file")
        assert int(pidfile.read_text()) == g.proc.pid
    finally:
        backend.close()


def test_l_runs_a_program_on_the_stream(gw, pki):
    g = gw(None, "-p", pki.server_pem, "-l", "/bin/cat")
    with g.connect(pki.client_context()) as tls:
        tls.settimeout(20)
        tls.sendall(b"round trip\r\n")
        got = b""
        while len(got) < 12:
            data = tls.recv(100)
            assert data, g.log()
            got += data
        assert got == b"round trip\r\n"
    g.wait_log(r"running /bin/cat \(pid \d+\)")
    g.wait_log(r"Connection closed: 12 bytes sent to SSL, 12 bytes sent to socket")
    # The program's own argv after --, and stunnel 3's REMOTE_HOST.
    g2 = gw(None, "-p", pki.server_pem, "-l", "/usr/bin/env", "--", "env")
    with g2.connect(pki.client_context()) as tls:
        tls.settimeout(20)
        out = b""
        while True:
            data = tls.recv(4096)
            if not data:
                break
            out += data
    assert b"REMOTE_HOST=127.0.0.1\n" in out


def test_l_refuses_a_program_it_cannot_run(tmp_path, pki):
    table = tmp_path / "table"
    table.write_text(f"ssl-gw: pidfile {tmp_path / 'pid'}\nssl-gw: scoreboard {tmp_path / 'sb'}\n")
    r = subprocess.run([command("ssl-gw"), "--config", str(table), "-f", "-d", f"127.0.0.1:{free_port()}",
                        "-p", pki.server_pem, "-l", "cat"], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "-l cat: give the program's absolute path" in r.stderr


def test_client_mode_in_front_of_ssl_gw(gw, pki, tmp_path):
    backend = Backend(echo)
    try:
        server = gw(f"127.0.0.1:{backend.port}", "-p", pki.server_pem)
        # -c -v 3: the server's certificate must be the one installed locally.
        client = gw(f"127.0.0.1:{server.port}", "-c", "-v", "3", "-A", pki.server_crt)
        with socket.create_connection(("127.0.0.1", client.port), timeout=20) as plain:
            plain.sendall(b"plain in, TLS out\n")
            assert plain.recv(100) == b"plain in, TLS out\n"
        client.wait_log(r"127\.0\.0\.1:\d+: TLSv1\.[23] ")
        server.wait_log(r"connected from 127\.0\.0\.1")
        # Another CA's server: the handshake fails, and the log says why.
        other = gw(f"127.0.0.1:{server.port}", "-c", "-v", "2", "-A", pki.other_ca_crt)
        with socket.create_connection(("127.0.0.1", other.port), timeout=20) as plain:
            assert plain.recv(100) == b""
        other.wait_log(r"SSL_connect to 127\.0\.0\.1:\d+: CERTIFICATE_VERIFY_FAILED: "
                       r"unable to get local issuer certificate")
    finally:
        backend.close()


def test_n_smtp_starttls_with_smap(gw, tls_daemon, pki):
    d = tls_daemon()
    g = gw(f"127.0.0.1:{d.port}", "-c", "-n", "smtp", "-v", "2", "-A", pki.ca_crt)
    with smtplib.SMTP("127.0.0.1", g.port, timeout=30) as s:
        code, text = s.ehlo("client.example.test")
        assert code == 250 and b"STARTTLS" not in text      # TLS is on already
        s.sendmail("a@example.org", ["b@example.net"], b"Subject: -n smtp\r\n\r\nthrough ssl-gw -c\r\n")
    [name] = [f for f in os.listdir(d.spool) if f.startswith("sma")]
    with open(os.path.join(d.spool, name), "rb") as f:
        assert b" with ESMTPS id " in f.read()
