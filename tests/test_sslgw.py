"""ssl-gw, the stunnel-compatible TLS wrapper: standalone (-d) in front of
a real Dovecot and of backends of the test's own; TCP wrappers; client
certificates; half-close and a large transfer; a TLS scan."""

import hashlib
import imaplib
import os
import poplib
import re
import socket
import ssl
import subprocess
import threading
import time

import pytest

from support.programs import command, free_port, proc_status, children, wait_for
from support.tls import assert_strong_tls, run_testssl
from dovecot import Dovecot
from support.process import stop

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="ssl-gw -d binds, loads its key and drops as root")

MESSAGE = "From: a@example.org\nSubject: through ssl-gw\n\nfetched over TLS\n"


class Gw:
    """`ssl-gw -f -d 127.0.0.1:PORT ...` with a table of the test's own; the
    log (stderr in the foreground, as stunnel's -f) goes to a file."""

    def __init__(self, base, remote, *args, table="", service=None):
        base.mkdir(parents=True, exist_ok=True)
        self.base = base
        self.port = free_port()
        self.table = base / "netperm-table"
        self.table.write_text(f"ssl-gw: pidfile {base / 'gw.pid'}\nssl-gw: scoreboard {base / 'gw.sb'}\n"
                              f"ssl-gw: minspare 2\n" + table)
        self.logfile = base / "gw.log"
        argv = [command("ssl-gw"), "--config", str(self.table), "-f", "-d", f"127.0.0.1:{self.port}",
                *(["-r", remote] if remote else []), *args]
        with open(self.logfile, "wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        wait_for(lambda: "started: listening" in self.log() or self.proc.poll() is not None,
                 what="ssl-gw to start")
        assert self.proc.poll() is None, self.log()

    def log(self):
        return self.logfile.read_text(errors="replace")

    def wait_log(self, pattern):
        return wait_for(lambda: re.search(pattern, self.log()), what=f"log line {pattern!r}")

    def connect(self, ctx, source=None):
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=30,
                                       source_address=(source, 0) if source else None)
        return ctx.wrap_socket(raw, server_hostname="test.example")

    def stop(self):
        stop(self.proc)


@pytest.fixture
def gw(tmp_path):
    started = []

    def start(remote, *args, **kw):
        g = Gw(tmp_path / f"gw{len(started)}", remote, *args, **kw)
        started.append(g)
        return g
    yield start
    for g in started:
        g.stop()


@pytest.fixture
def dovecot():
    dc = Dovecot(free_port(), free_port()).start()
    dc.deliver(MESSAGE)
    yield dc
    dc.stop()


class Backend:
    """A TCP server of the test's own on 127.0.0.1: `handler(conn)` per connection."""

    def __init__(self, handler):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.handler = handler
        self.errors = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        try:
            with conn:
                self.handler(conn)
        except Exception as e:  # reported by the test that uses it
            self.errors.append(e)

    def close(self):
        # close() alone leaves the thread blocked in accept() on a socket
        # that still listens (the blocked call holds it); shutdown wakes it.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(10)


def greeter(conn):
    conn.sendall(b"* OK backend ready\r\n")
    while conn.recv(65536):
        pass


# ------------------------------------------------------------ with Dovecot

def test_imap_and_pop3_through_ssl_gw(gw, dovecot, pki, public_tmp):
    jail = public_tmp / "empty"
    jail.mkdir()
    imaps = gw(f"127.0.0.1:{dovecot.imap_port}", "-p", pki.server_pem, "-s", "nobody", "-g", "nogroup",
               table=f"ssl-gw: directory {jail}\nssl-gw: tcpwrappers no\n")
    pop3s = gw(f"127.0.0.1:{dovecot.pop3_port}", "-p", pki.server_pem, "-s", "nobody", "-g", "nogroup",
               table="ssl-gw: tcpwrappers no\n")
    ctx = pki.client_context()

    m = imaplib.IMAP4_SSL("127.0.0.1", imaps.port, ssl_context=ctx, timeout=30)
    assert m.login(dovecot.user, dovecot.password)[0] == "OK"
    assert m.select("INBOX") == ("OK", [b"1"])
    # While the session is open: the child serving it is nobody, chrooted.
    kids = children(imaps.proc.pid)
    uid = proc_status(kids[0])["Uid"].split()
    assert all(proc_status(k)["Uid"].split()[0] == uid[0] != "0" for k in kids)
    assert all(os.readlink(f"/proc/{k}/root") == str(jail) for k in kids)
    assert all(proc_status(k)["Groups"].split() == [proc_status(k)["Gid"].split()[0]] for k in kids)
    assert all(proc_status(k)["CapBnd"] == "0000000000000000" and proc_status(k)["NoNewPrivs"] == "1" for k in kids)
    typ, data = m.fetch("1", "(BODY[])")
    assert data[0][1] == MESSAGE.replace("\n", "\r\n").encode()
    m.logout()

    p = poplib.POP3_SSL("127.0.0.1", pop3s.port, context=ctx, timeout=30)
    p.user(dovecot.user)
    assert p.pass_(dovecot.password).startswith(b"+OK")
    assert b"\n".join(p.retr(1)[1]) + b"\n" == MESSAGE.encode()
    p.quit()
    kids = children(pop3s.proc.pid)
    assert all(os.readlink(f"/proc/{k}/root") == "/" for k in kids)  # no directory: no chroot

    for url in (f"imaps://127.0.0.1:{imaps.port}/INBOX;UID=1", f"pop3s://127.0.0.1:{pop3s.port}/1"):
        r = subprocess.run(["curl", "-sS", "--cacert", pki.ca_crt, "--resolve", "x:1:127.0.0.1",
                            "-u", f"{dovecot.user}:{dovecot.password}", url], capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout.replace(b"\r\n", b"\n").endswith(b"fetched over TLS\n"), r.stdout
    imaps.wait_log(r"Connection closed: \d+ bytes sent to SSL, \d+ bytes sent to socket")
    imaps.wait_log(rf"127\.0\.0\.1\.{dovecot.imap_port} connected from 127\.0\.0\.1:\d+")


# ------------------------------------------------------------ TCP wrappers

def test_tcp_wrappers_rules(gw, pki, tmp_path, dns_server):
    dns = dns_server("--local=/example.test/", "--local=/127.in-addr.arpa/",
                     "--host-record=mailhost,127.0.0.5", "--host-record=client.example.test,127.0.0.6")
    backend = Backend(greeter)
    wrap = tmp_path / "wrap"
    wrap.mkdir()
    (wrap / "trusted").write_text("# a list of clients\n127.0.0.3\n")
    (wrap / "hosts.allow").write_text(
        "imaps-test: 127.0.0.0/255.255.255.252 EXCEPT 127.0.0.1 127.0.0.3\n"
        f"imaps-test: {wrap / 'trusted'}\n"
        "imaps-test: LOCAL\n"
        "imaps-test, other: .example.test : allow\n"
        "imaps-test: 127.0.0.7 : deny\n")
    (wrap / "hosts.deny").write_text("ALL: ALL\n")
    g = gw(f"127.0.0.1:{backend.port}", "-p", pki.server_pem, "-N", "imaps-test",
           table=f"ssl-gw: tcpwrappers-dir {wrap}\nssl-gw: resolver 127.0.0.1:{dns.port}\n")
    ctx = pki.client_context()
    served = {"127.0.0.2": True,    # the net/mask
              "127.0.0.1": False,   # ... EXCEPT
              "127.0.0.3": True,    # the /file list
              "127.0.0.5": True,    # LOCAL: 'mailhost' has no dot
              "127.0.0.6": True,    # .example.test, ': allow'
              "127.0.0.7": False,   # ': deny' in hosts.allow
              "127.0.0.8": False}   # hosts.deny ALL: ALL
    for source, ok in served.items():
        if ok:
            s = g.connect(ctx, source)
            assert s.recv(100) == b"* OK backend ready\r\n"
            s.close()
        else:
            raw = socket.create_connection(("127.0.0.1", g.port), timeout=30, source_address=(source, 0))
            assert raw.recv(100) == b""  # closed before a single TLS byte
            raw.close()
            g.wait_log(rf"imaps-test: connection from {re.escape(source)}:\d+ REFUSED by libwrap")
    assert not backend.errors


# -------------------------------------------------------- client certificates

def _served(g, ctx):
    try:
        s = g.connect(ctx)
        data = s.recv(100)
        s.close()
        return data == b"* OK backend ready\r\n"
    except (ssl.SSLError, ConnectionError, OSError):
        return False


def test_client_certificate_levels(gw, pki, tmp_path):
    backend = Backend(greeter)
    remote = f"127.0.0.1:{backend.port}"
    both = tmp_path / "ca-and-client.crt"
    both.write_text(open(pki.ca_crt).read() + open(pki.client_crt).read())
    cases = {
        ("0", ()): {None: True, "client": True, "stranger": True},
        ("1", ("-A", pki.ca_crt)): {None: True, "client": True, "stranger": False},
        ("2", ("-A", pki.ca_crt)): {None: False, "client": True, "client-twin": True, "stranger": False},
        # Level 3: the certificate itself must be installed; its twin (same
        # subject, same CA, another key) is refused after the handshake.
        ("3", ("-A", str(both))): {None: False, "client": True, "client-twin": False, "stranger": False},
        # ... also when the client's certificate is installed without its CA.
        ("3", ("-A", pki.client_crt)): {None: False, "client": True, "client-twin": False},
    }
    for (level, extra), expected in cases.items():
        g = gw(remote, "-p", pki.server_pem, "-v", level, *extra, table="ssl-gw: tcpwrappers no\n")
        for cert, ok in expected.items():
            assert _served(g, pki.client_context(cert)) is ok, (level, extra, cert)
        if level == "3" and str(both) in extra:
            g.wait_log(r"REFUSED: client certificate /O=smapd tests/CN=client\.example\.test is not one of the "
                       r"locally installed ones")
        g.stop()


# ------------------------------------------------------------ the relay

def test_half_close_and_a_large_transfer_are_byte_exact(gw, pki):
    size = 100 * 1024 * 1024
    results = {}

    def digest_then_answer(conn):
        h, n = hashlib.sha256(), 0
        while True:  # everything up to the client's end of stream
            data = conn.recv(1 << 20)
            if not data:
                break
            h.update(data)
            n += len(data)
        results["received"] = (n, h.hexdigest())
        # The answer comes after the client's FIN: it reaches the client only
        # if ssl-gw forwarded the half-close and kept the other way open.
        block = bytes(range(256)) * 4096
        for _ in range(size // len(block)):
            conn.sendall(block)

    backend = Backend(digest_then_answer)
    g = gw(f"127.0.0.1:{backend.port}", "-p", pki.server_pem, table="ssl-gw: tcpwrappers no\n")
    s = g.connect(pki.client_context())
    payload = os.urandom(1 << 20)
    sent = hashlib.sha256()
    for _ in range(size // len(payload)):
        s.sendall(payload)
        sent.update(payload)
    # Shut our write side down (TCP FIN), keep reading through TLS.
    socket.socket(fileno=os.dup(s.fileno())).shutdown(socket.SHUT_WR)
    got, n = hashlib.sha256(), 0
    while True:
        data = s.recv(1 << 20)
        if not data:
            break
        got.update(data)
        n += len(data)
    s.close()
    assert results["received"] == (size, sent.hexdigest())
    expect = hashlib.sha256()
    block = bytes(range(256)) * 4096
    for _ in range(size // len(block)):
        expect.update(block)
    assert (n, got.hexdigest()) == (size, expect.hexdigest())
    g.wait_log(rf"Connection closed: {size} bytes sent to SSL, {size} bytes sent to socket")
    assert not backend.errors


def test_backend_closing_first_sends_close_notify(gw, pki):
    def speak_and_close(conn):
        conn.sendall(b"bye\r\n")
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(65536):
            pass

    backend = Backend(speak_and_close)
    g = gw(f"127.0.0.1:{backend.port}", "-p", pki.server_pem, table="ssl-gw: tcpwrappers no\n")
    s = g.connect(pki.client_context())
    assert s.recv(100) == b"bye\r\n"
    assert s.recv(100) == b""  # a close_notify, not a truncation (which would raise SSLEOFError)
    s.close()
    g.wait_log(r"Connection closed: 5 bytes sent to SSL, 0 bytes sent to socket")


def test_handshake_and_idle_timeouts(gw, pki):
    backend = Backend(greeter)
    g = gw(f"127.0.0.1:{backend.port}", "-p", pki.server_pem, "-t", "2",
           table="ssl-gw: tcpwrappers no\nssl-gw: handshake-timeout 1\n")
    raw = socket.create_connection(("127.0.0.1", g.port), timeout=30)
    # The first bytes of a record, then nothing: a silent socket would not
    # even be accepted (TCP_DEFER_ACCEPT), a stalled handshake is cut.
    raw.sendall(b"\x16\x03\x01")
    assert raw.recv(100) == b""  # no whole ClientHello within a second: closed
    g.wait_log(r"SSL_accept from 127\.0\.0\.1:\d+: timed out after 1s")
    s = g.connect(pki.client_context())
    assert s.recv(100) == b"* OK backend ready\r\n"
    assert s.recv(100) == b""  # two seconds of silence both ways end it
    g.wait_log(r"idle time-out after")


def test_backend_down(gw, pki):
    g = gw(f"127.0.0.1:{free_port()}", "-p", pki.server_pem, table="ssl-gw: tcpwrappers no\n")
    s = g.connect(pki.client_context())
    assert s.recv(100) == b""
    g.wait_log(r"connect to 127\.0\.0\.1:\d+: Connection refused")


def test_tls_scan(gw, pki):
    backend = Backend(greeter)
    g = gw(f"127.0.0.1:{backend.port}", "-p", pki.server_pem, table="ssl-gw: tcpwrappers no\n")
    assert_strong_tls(run_testssl([f"127.0.0.1:{g.port}"]))


# ------------------------------------------------------------ latency

def _read_until(sock, end=b"\n"):
    data = b""
    while not data.endswith(end):
        chunk = sock.recv(100)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    return data


def test_tcp_nodelay_on_both_relay_sockets(gw, pki):
    """A backend that answers in two writes 5 ms apart, and a client that
    writes twice 5 ms apart: through ssl-gw each whole answer arrives
    within milliseconds.  With Nagle on either relay socket the second
    write waits for the peer's delayed ACK (about 40 ms)."""
    import statistics
    gaps_up = []

    def two_writes(conn):
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)   # the test's own sockets never wait
        conn.sendall(b"* OK\r\n")
        while True:
            first = conn.recv(1)
            if not first:
                return
            if first == b"D":          # down: "a", then 5 ms later "b\n"
                _read_until(conn)
                conn.sendall(b"a")
                time.sleep(0.005)
                conn.sendall(b"b\n")
            else:                      # up: the client's two writes, timed here
                t0 = time.monotonic()
                _read_until(conn)
                gaps_up.append(time.monotonic() - t0)
                conn.sendall(b"ok\n")
    backend = Backend(two_writes)
    g = gw(f"127.0.0.1:{backend.port}", "-p", pki.server_pem, table="ssl-gw: tcpwrappers no\n")
    s = g.connect(pki.client_context())
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    _read_until(s)
    gaps_down = []
    for _ in range(10):
        s.sendall(b"D\n")
        first = s.recv(1)
        t0 = time.monotonic()
        assert first == b"a"
        assert _read_until(s) == b"b\n"
        gaps_down.append(time.monotonic() - t0)
        s.sendall(b"U")
        time.sleep(0.005)
        s.sendall(b"p\n")
        assert _read_until(s) == b"ok\n"
    s.close()
    assert statistics.median(gaps_down) < 0.015, gaps_down
    assert statistics.median(gaps_up) < 0.015, gaps_up
    assert backend.errors == []


# ------------------------------------------------------ certificate refusals

def _expired_client_pem(pki, path):
    """A client certificate of the test CA whose validity ended yesterday."""
    import datetime
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    data = open(pki.ca_pem, "rb").read()
    ca_key = serialization.load_pem_private_key(data, None)
    ca = x509.load_pem_x509_certificate(data[data.index(b"-----BEGIN CERTIFICATE-----"):])
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "expired.example.test")]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=30)).not_valid_after(now - datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()) + cert.public_bytes(serialization.Encoding.PEM))
    return str(path)


def test_certificate_refusals_say_why(gw, pki, tmp_path):
    selfsigned = tmp_path / "self.pem"
    r = subprocess.run([command("smapctl"), "mkcert", "--key", "ec:p256", "--client", "--cn", "self.example.test",
                        str(selfsigned)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    certs = {"expired": _expired_client_pem(pki, tmp_path / "expired.pem"), "self-signed": str(selfsigned),
             "foreign CA": pki.stranger_pem}
    why = {"expired": r"certificate has expired \(X509 error 10\)",
           "self-signed": r"self.signed certificate \(X509 error 18\)",
           "foreign CA": r"unable to get local issuer certificate \(X509 error 20\)"}
    backend = Backend(greeter)
    g = gw(f"127.0.0.1:{backend.port}", "-p", pki.server_pem, "-v", "2", "-A", pki.ca_crt,
           table="ssl-gw: tcpwrappers no\n")
    for name, pem in certs.items():
        ctx = pki.client_context()
        ctx.load_cert_chain(pem)
        with pytest.raises((ssl.SSLError, ConnectionError)):
            s = g.connect(ctx)
            s.recv(100)   # TLS 1.3: the client learns of the refusal at its first read
        g.wait_log(r"SSL_accept from 127\.0\.0\.1:\d+: CERTIFICATE_VERIFY_FAILED: " + why[name])
    # And no certificate at all, where -v 2 asks for one.
    with pytest.raises((ssl.SSLError, ConnectionError)):
        s = g.connect(pki.client_context())
        s.recv(100)
    g.wait_log(r"SSL_accept from 127\.0\.0\.1:\d+: PEER_DID_NOT_RETURN_A_CERTIFICATE")


def test_silent_sockets_do_not_stop_the_service(gw, pki):
    """100 TCP connections from 10 addresses that never send a ClientHello
    take no child (the listener defers the accept until the client
    speaks): a real client is served within a second."""
    backend = Backend(greeter)
    g = gw(f"127.0.0.1:{backend.port}", "-p", pki.server_pem,
           table="ssl-gw: tcpwrappers no\nssl-gw: maxchildren 20\nssl-gw: maxperhost 100\nssl-gw: maxpernet 100\n")
    silent = []
    try:
        for i in range(100):
            c = socket.socket()
            c.bind((f"127.0.0.{2 + i % 10}", 0))
            c.connect(("127.0.0.1", g.port))
            silent.append(c)
        t0 = time.monotonic()
        s = g.connect(pki.client_context())
        assert s.recv(100) == b"* OK backend ready\r\n"
        assert time.monotonic() - t0 < 1.0
        s.close()
        assert "no ClientHello" not in g.log()
    finally:
        for c in silent:
            c.close()


def test_under_stress_idle_relays_end_soon(gw, pki):
    """With 80 % of maxchildren busy the master declares stress: relays
    that are idle after their handshake (IMAP clients between commands)
    end after stress-timeout instead of timeout, and say so; relays that
    move bytes go on."""
    backend = Backend(greeter)
    g = gw(f"127.0.0.1:{backend.port}", "-p", pki.server_pem,
           table="ssl-gw: tcpwrappers no\nssl-gw: maxchildren 10\nssl-gw: maxspare 10\nssl-gw: maxperhost 20\n"
                 "ssl-gw: timeout 300\nssl-gw: stress-timeout 2\n")
    stop_talking = threading.Event()
    chatty, idle = [], []

    def talk():
        # Eight clients that keep their relays busy: the pool stays stressed
        # (8 of 10) after the idle ones are gone.
        while not stop_talking.wait(0.5):
            for s in chatty:
                s.sendall(b"x")
    try:
        for group in (chatty, idle):
            for _ in range(8 if group is chatty else 2):
                s = g.connect(pki.client_context())
                assert s.recv(100) == b"* OK backend ready\r\n"
                group.append(s)
            if group is chatty:
                talker = threading.Thread(target=talk, daemon=True)
                talker.start()
        g.wait_log(r"stress: \d+ of 10 children busy")
        t0 = time.monotonic()
        for s in idle:
            s.settimeout(15)
            assert s.recv(100) == b""            # ended by ssl-gw, not by us
        assert time.monotonic() - t0 < 10
        assert g.log().count("idle time-out (under stress)") == 2
        stop_talking.set()
        talker.join()
        assert "stress over" not in g.log()
        assert g.log().count("idle time-out") == 2  # the chatty relays went on
    finally:
        stop_talking.set()
        for s in chatty + idle:
            s.close()
        backend.close()
