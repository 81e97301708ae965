"""Shared fixtures: the installed commands, tables written to a temporary
directory, and a real DNS server (dnsmasq) on a loopback port.

The tests use the programs as an operator does: the commands installed by
`make test` into .venv (found on PATH), real sockets, real servers.  A
component that is missing fails the test; nothing is skipped for it.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.normpath(os.path.join(ROOT, "..", "shared"))
REFERENCE = os.path.join(SHARED, "reference")
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
        self.port = free_port(socket.SOCK_DGRAM)
        binary = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
        assert os.access(binary, os.X_OK), "dnsmasq is not installed (make test installs it)"
        self.log = tmp_path / "dnsmasq.log"
        args = [binary, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                "--bind-interfaces", "--listen-address=127.0.0.1",
                f"--port={self.port}", f"--pid-file={tmp_path / 'dnsmasq.pid'}", "--user=root",
                "--log-queries", f"--log-facility={self.log}", *records]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for(self._answers, what=f"dnsmasq on port {self.port}")

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
        from smapd.dns import make_resolver
        return make_resolver([f"127.0.0.1:{self.port}"], lifetime=3.0)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


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
