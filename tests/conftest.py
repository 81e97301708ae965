"""Shared fixtures: the installed commands, tables written to a temporary
directory, and a real DNS server (dnsmasq) on a loopback port.

The tests use the programs as an operator does: the commands installed by
`make test` into .venv (found on PATH), real sockets, real servers.  A
component that is missing fails the test; nothing is skipped for it.
"""

import contextlib
import grp
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from support import system_files
from support.process import stop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The reference deployment, the project's own copy (tests/reference/README.md):
#: nothing outside the repository is read, as a user's clone has nothing beside it.
REFERENCE = os.path.join(ROOT, "tests", "reference")
REFERENCE_TABLE = os.path.join(REFERENCE, "netperm-table")

sys.path.insert(0, os.path.join(ROOT, "lib"))


def command(name):
    """The installed command `name` (from .venv, as make test puts it on PATH)."""
    path = shutil.which(name) or os.path.join(ROOT, ".venv", "bin", name)
    assert os.access(path, os.X_OK), f"{name} is not installed: run the tests with 'make test'"
    return path


def run(name, *args, input=None, env=None, timeout=60):
    full_env = dict(os.environ)
    full_env.pop("NETPERM_TABLE", None)
    full_env.update(env or {})
    return subprocess.run([command(name), *args], input=input, capture_output=True,
                          text=isinstance(input, str) or input is None, env=full_env, timeout=timeout)


def wait_for(predicate, timeout=10.0, what="condition"):
    """Poll `predicate` until it returns a true value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def free_port(kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def table(tmp_path):
    """Write a table into the test's directory: table("smap: maxbytes 1") -> path."""
    def write(text, name="netperm-table"):
        p = tmp_path / name
        p.write_text(text)
        return str(p)
    return write


class DnsServer:
    """dnsmasq answering only from its command line, on 127.0.0.1:port."""

    def __init__(self, tmp_path, records):
        binary = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
        assert os.access(binary, os.X_OK), "dnsmasq is not installed (make test installs it)"
        self.log = tmp_path / "dnsmasq.log"
        for attempt in range(3):
            # A free port is free when asked, not necessarily when dnsmasq
            # binds it (TCP and UDP both): another try on another port.
            self.port = free_port(socket.SOCK_DGRAM)
            args = [binary, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                    "--bind-interfaces", "--listen-address=127.0.0.1",
                    f"--port={self.port}", f"--pid-file={tmp_path / 'dnsmasq.pid'}", "--user=root",
                    "--log-queries", f"--log-facility={self.log}", *records]
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                wait_for(self._answers, what=f"dnsmasq on port {self.port}")
                return
            except AssertionError as e:
                if attempt == 2 or "in use" not in str(e):
                    raise

    def _answers(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"dnsmasq exited: {self.proc.stderr.read().decode()}")
        import dns.message
        import dns.query
        q = dns.message.make_query("ready.invalid.", "A")
        try:
            dns.query.udp(q, "127.0.0.1", port=self.port, timeout=0.2)
            return True
        except Exception:
            return False

    def resolver(self):
        from smapd.dnsclient import make_resolver
        return make_resolver([f"127.0.0.1:{self.port}"], lifetime=3.0)

    def stop(self):
        stop(self.proc, timeout=5)


@pytest.fixture
def dns_server(tmp_path):
    servers = []

    def start(*records):
        s = DnsServer(tmp_path, records)
        servers.append(s)
        return s
    yield start
    for s in servers:
        s.stop()


# ------------------------------------------------------------------ smap

def nobody_ids():
    """(uid, gid) of nobody and of nogroup (or nobody's own group)."""
    import grp
    import pwd
    try:
        gid = grp.getgrnam("nogroup").gr_gid
    except KeyError:
        gid = pwd.getpwnam("nobody").pw_gid
    return pwd.getpwnam("nobody").pw_uid, gid


def make_spool(path, uid=None, gid=None):
    """A spool directory the jailed smap (nobody, or uid/gid) can write."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "bad").mkdir(exist_ok=True)
    if os.geteuid() == 0:
        if uid is None:
            uid, gid = nobody_ids()
        for d in (path, path / "bad"):
            os.chown(d, uid, gid)
            os.chmod(d, 0o700)
    return path


def wire_name(name):
    """A domain name in DNS wire form, as hex (dnsmasq's --dns-rr data)."""
    return (b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0").hex()


LOOPBACK_RECORDS = ("--local=/example.test/", "--local=/example.org/", "--local=/127.in-addr.arpa/",
                    "--local=/ip6.arpa/", "--host-record=client.example.test,127.0.0.1",
                    # Name servers for the senders' domains (nospam ns-required).
                    f"--dns-rr=example.test,2,{wire_name('ns.example.test')}",
                    f"--dns-rr=example.org,2,{wire_name('ns.example.org')}")


@pytest.fixture(scope="session")
def loopback_dns(tmp_path_factory):
    """One dnsmasq for the whole run: 127.0.0.1 is client.example.test,
    forward-confirmed; everything else under the test zones is NXDOMAIN.
    No test depends on the machine's own DNS."""
    server = DnsServer(tmp_path_factory.mktemp("dns"), LOOPBACK_RECORDS)
    yield server.port
    server.stop()


@pytest.fixture
def smap_table(tmp_path, loopback_dns):
    """smap_table(spool, extra="", name="smap") -> the path of a table for
    smap with the spool, a test host name and the test's DNS server."""
    import grp

    def write(spool, extra="", name="smap"):
        group = grp.getgrgid(nobody_ids()[1]).gr_name
        text = (f"{name}: directory {spool}\n{name}: hostname test.example\n"
                f"{name}: resolver 127.0.0.1:{loopback_dns}\n{name}: userid nobody\n{name}: groupid {group}\n"
                + extra)
        p = tmp_path / "netperm-table"
        p.write_text(text)
        return str(p)
    return write


class Smtp:
    """A minimal SMTP client on a socket, for tests that need byte-level
    control (pipelining, bare LFs, oversized lines)."""

    def __init__(self, sock):
        self.sock = sock
        self.sock.settimeout(30)
        self.buf = b""

    def send(self, data: bytes):
        self.sock.sendall(data)

    def reply(self):
        """One whole reply: (code, [lines])."""
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError(f"closed; got {lines!r} {self.buf!r}")
                self.buf += data
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line.decode("ascii"))
            if line[3:4] == b" ":
                return int(line[:3]), lines

    def cmd(self, line):
        self.send(line.encode() + b"\r\n" if isinstance(line, str) else line)
        return self.reply()

    def closed(self):
        """True when the server has closed (EOF after any buffered text)."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self):
        self.sock.close()


class InetdSmap:
    """The installed smap started as inetd starts it: an accepted TCP
    connection on fds 0, 1 and 2; with -d the log goes to a file on fd 2."""

    def __init__(self, table, argv0="smap", extra_args=(), debug=True):
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            client = socket.create_connection(listener.getsockname())
            conn, _ = listener.accept()
        args = [argv0, "--config", table, *(["-d"] if debug else []), *extra_args]
        # The log goes to a file: a pipe nobody reads would block smap.
        import tempfile
        self.logfile = tempfile.TemporaryFile()
        # Without -d, fd 2 is the connection too, as inetd leaves it.
        self.proc = subprocess.Popen(args, executable=command("smap"), stdin=conn, stdout=conn,
                                     stderr=self.logfile if debug else conn, close_fds=True)
        conn.close()
        self.smtp = Smtp(client)

    @property
    def log(self):
        """What smap logged so far."""
        self.logfile.seek(0)
        return self.logfile.read().decode("utf-8", "replace")

    def wait(self):
        self.smtp.close()
        return self.proc.wait(30)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        self.smtp.close()


@pytest.fixture
def smap(tmp_path):
    started = []

    def start(table, **kw):
        s = InetdSmap(table, **kw)
        started.append(s)
        return s
    yield start
    for s in started:
        s.kill()


@pytest.fixture
def public_tmp():
    """A directory every user can traverse (tmp_path's parents are root's
    only): for what a program reads or runs after dropping to nobody."""
    import tempfile
    d = tempfile.mkdtemp(prefix="smapd-test-", dir="/tmp")
    os.chmod(d, 0o755)
    from pathlib import Path
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


# ------------------------------------------------------------ processes, logs

class Syslog:
    """A syslog socket of the test's own, as rsyslog would offer one, read
    all the time by a thread: a syslog daemon that stops reading makes
    every logging process block (the datagram queue is short)."""

    def __init__(self, path):
        import threading
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.lines = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            self.lines.append(data.decode("utf-8", "replace").rstrip("\x00"))

    def read(self):
        return list(self.lines)

    def wait(self, pattern):
        return wait_for(lambda: [l for l in self.read() if re.search(pattern, l)], what=f"log line {pattern!r}")

    def close(self):
        self._stop = True
        self._thread.join()
        self.sock.close()


def proc_status(pid):
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def children(ppid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == ppid:
                out.append(int(d))
    return out


# ------------------------------------------------------------ smap -daemon

class Daemon:
    """`smap -daemon -f` (as root) with a table of the test's own: `extra`
    lines appended, `listen` specs (default: 127.0.0.1 and a free port)."""

    def __init__(self, base, dns_port, extra="", listen=None):
        self.base = base
        self.spool = make_spool(base / "spool")
        self.port = free_port()
        self.table = base / "netperm-table"
        self.pidfile = base / "smap.pid"
        self.scoreboard = base / "smap.scoreboard"
        self.syslog = Syslog(base / "log")
        self.dns_port = dns_port
        self.proc = None
        self.write_table(extra, listen)

    def write_table(self, extra="", listen=None):
        group = grp.getgrgid(nobody_ids()[1]).gr_name
        listen = listen or [f"127.0.0.1:{self.port}"]
        text = (f"smap: directory {self.spool}\nsmap: hostname test.example\n"
                f"smap: resolver 127.0.0.1:{self.dns_port}\nsmap: userid nobody\nsmap: groupid {group}\n"
                f"smap: pidfile {self.pidfile}\nsmap: scoreboard {self.scoreboard}\n"
                f"smap: log-socket {self.base / 'log'}\n"
                + "".join(f"smap: listen {spec}\n" for spec in listen) + extra)
        self.table.write_text(text)

    def start(self, *args):
        self.proc = subprocess.Popen([command("smap"), "-daemon", "-f", "--config", str(self.table), *args],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.syslog.wait(r"started: listening on")
        self.master = int(wait_for(lambda: self.pidfile.read_text().strip(), what="the pid file"))
        assert self.master == self.proc.pid
        return self

    def log(self):
        return "\n".join(self.syslog.read())

    def kids(self):
        return children(self.master)

    def board(self):
        from smapd.prefork.scoreboard import Scoreboard
        return Scoreboard.open_readonly(str(self.scoreboard))

    def count(self, state):
        b = self.board()
        try:
            return b.count(state)
        finally:
            b.close()

    def wait_idle(self, n, at_least=False):
        from smapd.prefork.scoreboard import IDLE

        def ok():
            idle, kids = self.count(IDLE), len(self.kids())
            return (idle >= n) if at_least else (idle == n and kids == n)
        wait_for(ok, timeout=20, what=f"{n} idle children")

    def connect(self, addr="127.0.0.1", port=None):
        return Smtp(socket.create_connection((addr, port or self.port), timeout=30))

    def signal(self, sig):
        os.kill(self.master, sig)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()
        self.syslog.close()


@pytest.fixture
def daemon(tmp_path, loopback_dns):
    started = []

    def make(extra="", listen=None, start=True):
        d = Daemon(tmp_path / f"d{len(started)}", loopback_dns, extra, listen) if started else \
            Daemon(tmp_path, loopback_dns, extra, listen)
        started.append(d)
        return d.start() if start else d
    yield make
    for d in started:
        d.stop()
        for pid in d.kids() if d.proc else ():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# ------------------------------------------------------------------ TLS

class Pki:
    """Throw-away certificates made with `smapctl mkcert`: a CA, a server
    certificate for test.example/localhost/127.0.0.1, a client certificate,
    its twin (same subject, another key), and a stranger signed by another
    CA.  `X.pem` holds key and certificate, `X.crt` the certificate only."""

    def __init__(self, base):
        self.base = base

        def mk(name, *args):
            r = run("smapctl", "mkcert", "--key", "ec:p256", *args, str(base / f"{name}.pem"))
            assert r.returncode == 0, r.stderr
            text = (base / f"{name}.pem").read_text()
            (base / f"{name}.crt").write_text(text[text.index("-----BEGIN CERTIFICATE-----"):])
        mk("ca", "--make-ca", "--cn", "smapd test CA")
        mk("other-ca", "--make-ca", "--cn", "another CA")
        mk("server", "--ca", str(base / "ca.pem"), "--cn", "test.example",
           "--san", "DNS:test.example,DNS:localhost,IP:127.0.0.1")
        mk("client", "--ca", str(base / "ca.pem"), "--client", "--subject", "/O=smapd tests/CN=client.example.test")
        mk("client-twin", "--ca", str(base / "ca.pem"), "--client",
           "--subject", "/O=smapd tests/CN=client.example.test")
        mk("stranger", "--ca", str(base / "other-ca.pem"), "--client", "--cn", "stranger.example.test")

    def __getattr__(self, name):
        """pki.server_pem, pki.ca_crt ... -> the path as text."""
        stem, _, ext = name.rpartition("_")
        path = self.base / f"{stem.replace('_', '-')}.{ext}"
        if ext not in ("pem", "crt") or not path.exists():
            raise AttributeError(name)
        return str(path)

    def client_context(self, cert=None, verify=True):
        """An ssl client context trusting the test CA, with a client certificate."""
        import ssl
        ctx = ssl.create_default_context(cafile=self.ca_crt)
        if not verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if cert:
            ctx.load_cert_chain(getattr(self, f"{cert.replace('-', '_')}_pem"))
        return ctx


@pytest.fixture(scope="session")
def pki():
    import tempfile
    from pathlib import Path
    d = Path(tempfile.mkdtemp(prefix="smapd-pki-", dir="/tmp"))
    os.chmod(d, 0o755)
    yield Pki(d)
    shutil.rmtree(d, ignore_errors=True)


def run_testssl(args):
    """testssl.sh's protocol, cipher-category, renegotiation and compression checks."""
    r = subprocess.run(["testssl", "--quiet", "--color", "0", "--warnings", "off", "--ip", "one", "-p", "-s", "-R",
                        "-C", *args], capture_output=True, text=True, timeout=300)
    assert "Done" in r.stdout, r.stdout + r.stderr
    return r.stdout


def assert_strong_tls(out):
    """What testssl.sh must say of a server of this suite."""
    lines = {}
    for line in out.splitlines():
        m = re.match(r"^ (\S.*?) {2,}(\S.*)$", line)
        if m:
            lines[m.group(1).strip()] = m.group(2).strip()

    def said(key):
        return lines[key] if key in lines else next(v for k, v in lines.items() if k.startswith(key))
    for proto in ("SSLv2", "SSLv3", "TLS 1 ", "TLS 1.1"):
        key = proto.strip()
        assert said(key).startswith("not offered"), (key, out)
    assert said("TLS 1.2").startswith("offered") and said("TLS 1.3").startswith("offered")
    for weak in ("NULL ciphers", "Anonymous NULL", "Export ciphers", "LOW: 64 Bit", "Triple DES",
                 "Obsolete CBC"):
        assert said(weak).startswith("not offered"), (weak, out)
    assert said("Strong encryption (AEAD ciphers)").startswith("offered")
    assert said("Secure Client-Initiated Renegotiation").startswith("not vulnerable")
    assert said("CRIME, TLS").startswith("not vulnerable")


# ------------------------------------------------------- the machine's defaults

DEFAULT_TABLE = "/usr/local/etc/netperm-table"


@contextlib.contextmanager
def installed_table(text):
    """`text` as the table of programs started without --config (xinetd
    passes none); whatever was there is put back afterwards
    (support/system_files.py says why, and mends an interrupted run)."""
    with system_files.replaced(DEFAULT_TABLE, text):
        yield DEFAULT_TABLE


@contextlib.contextmanager
def running_xinetd(tmp_path, stanzas, services):
    """The real xinetd on `stanzas` (a list of texts), in the foreground,
    until it says it serves `services` services."""
    conf = tmp_path / "xinetd.conf"
    conf.write_text("defaults\n{\n    instances = 50\n}\n\n" + "\n".join(stanzas))
    xlog = tmp_path / "xinetd.log"
    xinetd = subprocess.Popen(["xinetd", "-dontfork", "-f", str(conf), "-pidfile", str(tmp_path / "xinetd.pid"),
                               "-filelog", str(xlog)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wanted = f"Started working: {services} available service{'s' if services > 1 else ''}"
        wait_for(lambda: xlog.exists() and wanted in xlog.read_text(), what="xinetd to start")
        yield xinetd
    finally:
        stop(xinetd, timeout=10)
        xinetd.stderr.close()


def pytest_sessionstart(session):
    # A run killed while a system file was replaced left it so: mend it.
    if os.geteuid() == 0:
        system_files.restore_leftovers()
